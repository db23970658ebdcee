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
    match tokio::task::spawn_blocking(move || st.state.alerts(q.tenant.as_deref(), limit)).await {
        Ok(Ok(a)) => Json(a).into_response(),
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
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}}
                ],
                "responses": {"200": {"description": "alerts"}, "401": unauthorised}
            }},
            "/api/v1/hosts": {"get": {
                "summary": "Enrolled hosts with sensor status and last health report",
                "security": bearer,
                "responses": {"200": {"description": "hosts"}, "401": unauthorised}
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
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(shared)
}
