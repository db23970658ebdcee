//! The REST API under `/api/v1`, on the same TLS port as gRPC (HTTP/1.1 and HTTP/2), every
//! route behind a bearer token (the admin token created on first start; stored only as a
//! hash). `GET /api/v1/openapi.json` describes it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::service::Shared;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// Checks the bearer token; `Err` is the status and message to answer with.
fn authorise(shared: &Shared, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or((StatusCode::UNAUTHORIZED, "a bearer token is required"))?;
    match shared.state.is_admin(token) {
        Ok(true) => Ok(()),
        Ok(false) => Err((StatusCode::UNAUTHORIZED, "invalid token")),
        Err(e) => {
            tracing::error!("checking a token: {e}");
            Err((StatusCode::INTERNAL_SERVER_ERROR, "internal server error"))
        }
    }
}

/// Query parameters of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    tenant: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn alerts(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<AlertsQuery>,
) -> Response {
    if let Err((status, message)) = authorise(&shared, &headers) {
        return error(status, message);
    }
    let limit = q.limit.unwrap_or(100).min(10_000);
    let st = shared.clone();
    match tokio::task::spawn_blocking(move || {
        st.state
            .alerts_where(q.tenant.as_deref(), q.status.as_deref(), None, limit)
    })
    .await
    {
        Ok(Ok(a)) => Json(a).into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

async fn alert(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    if let Err((status, message)) = authorise(&shared, &headers) {
        return error(status, message);
    }
    let st = shared.clone();
    match tokio::task::spawn_blocking(move || st.state.alert(id)).await {
        Ok(Ok(Some(a))) => Json(a).into_response(),
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, "no such alert"),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

/// Body of `POST /api/v1/alerts/{id}/status`.
#[derive(Debug, Deserialize)]
pub struct StatusChange {
    status: String,
    #[serde(default)]
    reason: String,
}

async fn alert_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<i64>,
    body: axum::body::Bytes,
) -> Response {
    if let Err((status, message)) = authorise(&shared, &headers) {
        return error(status, message);
    }
    let change: StatusChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"status\": …, \"reason\": …}}: {e}"),
            );
        }
    };
    if change.reason.len() > 1000 {
        return error(StatusCode::BAD_REQUEST, "reason: at most 1000 characters");
    }
    let st = shared.clone();
    let r = tokio::task::spawn_blocking(move || {
        st.state
            .set_alert_status("admin:api", id, &change.status, &change.reason)
    })
    .await;
    match r {
        Ok(Ok(true)) => Json(json!({"id": id, "changed": true})).into_response(),
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, "no such alert"),
        Ok(Err(crate::ServerError::Invalid(why))) => error(StatusCode::BAD_REQUEST, &why),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

async fn hosts(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err((status, message)) = authorise(&shared, &headers) {
        return error(status, message);
    }
    let st = shared.clone();
    match tokio::task::spawn_blocking(move || st.state.hosts()).await {
        Ok(Ok(h)) => Json(h).into_response(),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

/// Query parameters of `POST /api/v1/ingest/windows`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    host: String,
    tenant: Option<String>,
}

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// Windows telemetry from hosts without an agent: an EVTX file, or JSON lines / a JSON array
/// of Winlogbeat, ECS or Sysmon-shaped events. Stored and detected like agent events, under
/// the pseudo-agent `win:<host>`.
async fn upload_windows(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<UploadQuery>,
    body: axum::body::Bytes,
) -> Response {
    if let Err((status, message)) = authorise(&shared, &headers) {
        return error(status, message);
    }
    let valid = |v: &str| {
        !v.is_empty()
            && v.len() <= 128
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let tenant = q.tenant.unwrap_or_else(|| "default".into());
    if !valid(&q.host) || !valid(&tenant) {
        return error(
            StatusCode::BAD_REQUEST,
            "host and tenant: letters, digits, '-', '_' and '.'",
        );
    }
    let st = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut events = Vec::new();
        let stats = mamori_sources::read_bytes(&body, &mut |rec| {
            let text = rec
                .text
                .map(str::to_string)
                .unwrap_or_else(|| rec.event.data.to_string());
            if text.trim_start().starts_with('{') {
                events.push(text.into_bytes());
            }
        });
        if events.is_empty() {
            return Err(format!(
                "no events in the upload ({} unreadable records{})",
                stats.errors,
                stats
                    .first_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        let agent = format!("win:{}", q.host);
        let appended = {
            let mut log = st
                .log
                .lock()
                .map_err(|_| "event log lock poisoned".to_string())?;
            let first = log.watermark(&agent) + 1;
            log.append(&agent, first, &events)
                .map_err(|e| e.to_string())?
        };
        let _ = st.state.audit(
            "admin:api",
            "windows.upload",
            &format!("host:{}", q.host),
            &format!(
                "tenant={tenant} events={} unreadable={}",
                appended.stored, stats.errors
            ),
        );
        if let Some(queue) = &st.detect {
            let _ = queue.send(crate::detect::Job {
                agent,
                tenant,
                events,
            });
        }
        Ok(
            json!({"stored": appended.stored, "unreadable": stats.errors,
                  "durable_through": appended.durable_through}),
        )
    })
    .await;
    match result {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(why)) => error(StatusCode::BAD_REQUEST, &why),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error"),
    }
}

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

/// The OpenAPI 3.1 description of the API.
pub fn openapi_document() -> serde_json::Value {
    let bearer = json!([{"bearer": []}]);
    let unauthorised = json!({"description": "missing or invalid bearer token"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Mamori server API", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/v1/alerts": {"get": {
                "summary": "Alerts, newest first, with their evidence",
                "security": bearer,
                "parameters": [
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"enum": ["open", "acknowledged", "closed"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}}
                ],
                "responses": {"200": {"description": "alerts"}, "401": unauthorised}
            }},
            "/api/v1/alerts/{id}": {"get": {
                "summary": "One alert with its evidence",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "the alert"}, "401": unauthorised, "404": {"description": "no such alert"}}
            }},
            "/api/v1/alerts/{id}/status": {"post": {
                "summary": "Change an alert's status (audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                    "required": ["status"], "properties": {
                        "status": {"enum": ["open", "acknowledged", "closed"]},
                        "reason": {"type": "string", "maxLength": 1000}}}}}},
                "responses": {"200": {"description": "changed"}, "400": {"description": "bad status or body"},
                              "401": unauthorised, "404": {"description": "no such alert"}}
            }},
            "/api/v1/hosts": {"get": {
                "summary": "Enrolled hosts with sensor status and last health report",
                "security": bearer,
                "responses": {"200": {"description": "hosts"}, "401": unauthorised}
            }},
            "/api/v1/ingest/windows": {"post": {
                "summary": "Windows telemetry from a host without an agent: EVTX, or JSON lines / array (Winlogbeat, ECS, Sysmon)",
                "security": bearer,
                "parameters": [
                    {"name": "host", "in": "query", "required": true, "schema": {"type": "string"}},
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}}
                ],
                "requestBody": {"content": {"application/octet-stream": {}, "application/x-ndjson": {}}},
                "responses": {"200": {"description": "stored and queued for detection"},
                              "400": {"description": "nothing readable in the upload"},
                              "401": unauthorised, "413": {"description": "over 64 MiB"}}
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document", "responses": {"200": {"description": "OpenAPI"}}
            }}
        }
    })
}

/// The API routes.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}", get(alert))
        .route(
            "/api/v1/alerts/{id}/status",
            axum::routing::post(alert_status),
        )
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/ingest/windows",
            axum::routing::post(upload_windows)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .with_state(shared)
}
