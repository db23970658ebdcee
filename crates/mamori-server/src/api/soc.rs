//! The SOC routes: incidents, their reports, the monthly report, suppressions and tuning.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{
    Analyst, ApiResult, Caller, Viewer, WithBody, blocking, created, json_body, not_found, refused,
    tenant_of,
};
use crate::service::Shared;
use crate::tuning::Scope;

/// Query of `GET /api/v1/incidents`.
#[derive(Debug, Deserialize)]
pub struct IncidentsQuery {
    tenant: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn incidents(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<IncidentsQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows = blocking(move || {
        shared
            .state
            .incidents(tenant.as_deref(), q.status.as_deref(), limit)
    })
    .await?;
    Ok(Json(rows).into_response())
}

pub(super) async fn incident(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Path(id): Path<i64>,
) -> ApiResult {
    let inc = blocking(move || {
        match shared.state.incident(id)? {
            Some(r) if p.sees(&r.tenant) => {}
            _ => return Ok(None),
        }
        crate::incidents::build(&shared, &shared.policy, id)
    })
    .await?
    .ok_or_else(|| not_found("no such incident"))?;
    Ok(Json(inc).into_response())
}

/// Body of `POST /api/v1/incidents/{id}/status`.
#[derive(Debug, Deserialize)]
pub struct IncidentStatus {
    status: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn incident_status(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let change: IncidentStatus = json_body(&body, r#"{"status": "open"|"closed", "reason": …}"#)?;
    if change.reason.trim().is_empty() || change.reason.len() > 1000 {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "reason: say why (1 to 1000 characters)",
        ));
    }
    let changed = blocking(move || {
        match shared.state.incident(id)? {
            Some(r) if p.sees(&r.tenant) => {}
            _ => return Ok(false),
        }
        shared
            .state
            .set_incident_status(&p.actor(), id, &change.status, &change.reason)
    })
    .await?;
    if !changed {
        return Err(not_found("no such incident"));
    }
    Ok(Json(json!({"id": id, "changed": true})).into_response())
}

/// Query of the report routes.
#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    lang: Option<String>,
    format: Option<String>,
    tenant: Option<String>,
    month: Option<String>,
}

fn lang_format(
    shared: &Shared,
    tenant: &str,
    q: &ReportQuery,
) -> Result<(mamori_report::Lang, Option<mamori_report::Format>), super::Refused> {
    let lang = match q.lang.as_deref() {
        None => mamori_report::Lang::parse(shared.policy.language(tenant).as_str())
            .unwrap_or(mamori_report::Lang::En),
        Some(l) => mamori_report::Lang::parse(l)
            .ok_or_else(|| refused(StatusCode::BAD_REQUEST, format!("lang {l:?}: en or ja")))?,
    };
    let format = match q.format.as_deref() {
        None | Some("html") => Some(mamori_report::Format::Html),
        Some("pdf") => Some(mamori_report::Format::Pdf),
        Some("json") => None,
        Some(f) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("format {f:?}: html, pdf or json"),
            ));
        }
    };
    Ok((lang, format))
}

fn rendered(
    format: Option<mamori_report::Format>,
    doc: &mamori_report::doc::Doc,
) -> axum::response::Response {
    let f = format.unwrap_or(mamori_report::Format::Html);
    (
        [(axum::http::header::CONTENT_TYPE, f.mime())],
        f.render(doc),
    )
        .into_response()
}

pub(super) async fn incident_report(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Path(id): Path<i64>,
    Query(q): Query<ReportQuery>,
) -> ApiResult {
    let s2 = shared.clone();
    let inc = blocking(move || {
        match s2.state.incident(id)? {
            Some(r) if p.sees(&r.tenant) => {}
            _ => return Ok(None),
        }
        crate::incidents::build(&s2, &s2.policy, id)
    })
    .await?
    .ok_or_else(|| not_found("no such incident"))?;
    let (lang, format) = lang_format(&shared, &inc.tenant, &q)?;
    if format.is_none() {
        return Ok(Json(inc).into_response());
    }
    let doc = mamori_report::text::incident(&inc, lang, crate::state::now());
    Ok(rendered(format, &doc))
}

pub(super) async fn monthly(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<ReportQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant.clone())?.unwrap_or_else(|| "default".into());
    let (lang, format) = lang_format(&shared, &tenant, &q)?;
    let month = q.month.clone();
    let s2 = shared.clone();
    let m = blocking(move || crate::incidents::monthly(&s2, &tenant, month.as_deref())).await?;
    if format.is_none() {
        return Ok(Json(m).into_response());
    }
    Ok(rendered(format, &mamori_report::text::monthly(&m, lang)))
}

/// Query of `GET /api/v1/suppressions` and `/tuning`.
#[derive(Debug, Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
    days: Option<i64>,
}

pub(super) async fn suppressions(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<TenantQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?;
    let s = blocking(move || shared.state.suppressions(tenant.as_deref())).await?;
    Ok(Json(s).into_response())
}

/// Body of `POST /api/v1/suppressions` and `/suppressions/preview`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSuppression {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(flatten)]
    scope: Scope,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    expires_days: Option<i64>,
    #[serde(default)]
    days: Option<i64>,
}

const SUPPRESSION_SHAPE: &str = r#"{"rule_id", "host", "process", "command_line", "sha256", "user" (globs), "reason", "expires_days", "tenant"}"#;

pub(super) async fn suppression_preview(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Viewer>,
) -> ApiResult {
    let n: NewSuppression = json_body(&body, SUPPRESSION_SHAPE)?;
    let tenant = tenant_of(&p, n.tenant)?.unwrap_or_else(|| "default".into());
    let days = n.days.unwrap_or(30).clamp(1, 400);
    let preview = blocking(move || {
        n.scope.check()?;
        shared
            .state
            .preview(&tenant, &n.scope, days, &shared.policy)
    })
    .await?;
    Ok(Json(preview).into_response())
}

pub(super) async fn suppression_add(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let n: NewSuppression = json_body(&body, SUPPRESSION_SHAPE)?;
    let tenant = tenant_of(&p, n.tenant)?.unwrap_or_else(|| "default".into());
    let days = n.expires_days.unwrap_or(90);
    let (s, preview) = blocking(move || {
        shared.state.add_suppression(
            &p.actor(),
            &tenant,
            &n.scope,
            &n.reason,
            days,
            &shared.policy,
        )
    })
    .await?;
    Ok(created(json!({"suppression": s, "preview": preview})))
}

pub(super) async fn suppression_remove(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Analyst>,
    Path(id): Path<i64>,
) -> ApiResult {
    let removed = blocking(move || {
        shared
            .state
            .remove_suppression(&p.actor(), id, |t| p.sees(t))
    })
    .await?;
    if !removed {
        return Err(not_found("no such suppression"));
    }
    Ok(Json(json!({"id": id, "removed": true})).into_response())
}

pub(super) async fn tuning(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<TenantQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?.unwrap_or_else(|| "default".into());
    let days = q.days.unwrap_or(30).clamp(1, 400);
    let r = blocking(move || crate::tuning::report(&shared.state, &shared.policy, &tenant, days))
        .await?;
    Ok(Json(json!({"days": days, "noisiest_rules": r})).into_response())
}

/// The OpenAPI description of these routes.
pub(super) fn openapi_paths() -> serde_json::Value {
    let bearer = json!([{"bearer": []}]);
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}]);
    let report_params = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
        {"name": "lang", "in": "query", "schema": {"enum": ["en", "ja"]}, "description": "default: the tenant's language in the SOC policy"},
        {"name": "format", "in": "query", "schema": {"enum": ["html", "pdf", "json"]}}
    ]);
    let scope = json!({"type": "object", "properties": {
        "tenant": {"type": "string"}, "rule_id": {"type": "string"}, "host": {"type": "string", "description": "glob"},
        "process": {"type": "string", "description": "executable, glob"}, "command_line": {"type": "string", "description": "glob"},
        "sha256": {"type": "string"}, "user": {"type": "string"}, "group": {"type": "string", "description": "host group of the SOC policy"}, "reason": {"type": "string"},
        "expires_days": {"type": "integer", "minimum": 1, "maximum": 365}, "days": {"type": "integer", "description": "preview: days to look back (30)"}}});
    json!({
        "/api/v1/incidents": {"get": {
            "summary": "Incidents (alerts grouped by process tree, user and spreading file), newest first",
            "security": bearer,
            "parameters": [{"name": "tenant", "in": "query", "schema": {"type": "string"}},
                           {"name": "status", "in": "query", "schema": {"enum": ["open", "closed"]}},
                           {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "incidents"}}
        }},
        "/api/v1/incidents/{id}": {"get": {
            "summary": "An incident with its verdict, hosts, users, files and their trajectory, destinations, ATT&CK techniques, process tree, timeline, actions, blind spots, clocks and notifications",
            "security": bearer, "parameters": id,
            "responses": {"200": {"description": "the incident"}, "404": {"description": "no such incident"}}
        }},
        "/api/v1/incidents/{id}/status": {"post": {
            "summary": "Close or reopen an incident (analyst; closing closes its alerts; audited)",
            "security": bearer, "parameters": id,
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["status", "reason"],
                "properties": {"status": {"enum": ["open", "closed"]}, "reason": {"type": "string"}}}}}},
            "responses": {"200": {"description": "changed"}, "404": {"description": "no such incident"}}
        }},
        "/api/v1/incidents/{id}/report": {"get": {
            "summary": "The incident report in plain language (English or Japanese) as HTML, PDF or JSON",
            "security": bearer, "parameters": report_params,
            "responses": {"200": {"description": "the report"}}
        }},
        "/api/v1/reports/monthly": {"get": {
            "summary": "The monthly report: alerts and incidents by severity and technique, hosts most affected, response times, sensor coverage and gaps, tuning changes, with charts",
            "security": bearer,
            "parameters": [{"name": "tenant", "in": "query", "schema": {"type": "string"}},
                           {"name": "month", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"}},
                           {"name": "lang", "in": "query", "schema": {"enum": ["en", "ja"]}},
                           {"name": "format", "in": "query", "schema": {"enum": ["html", "pdf", "json"]}}],
            "responses": {"200": {"description": "the report"}}
        }},
        "/api/v1/suppressions": {
            "get": {"summary": "Active suppressions with their hits", "security": bearer,
                    "responses": {"200": {"description": "suppressions"}}},
            "post": {"summary": "Add a suppression (analyst; reason and expiry required; answered with its preview; audited)",
                     "security": bearer, "requestBody": {"content": {"application/json": {"schema": scope}}},
                     "responses": {"201": {"description": "{suppression, preview}"}, "400": {"description": "refused, with the reason"}}}
        },
        "/api/v1/suppressions/preview": {"post": {
            "summary": "How many past alerts a suppression would have hidden (nothing is changed)",
            "security": bearer, "requestBody": {"content": {"application/json": {"schema": scope}}},
            "responses": {"200": {"description": "{alerts, detections, high_or_critical, of_alerts, days, examples}"}}
        }},
        "/api/v1/suppressions/{id}": {"delete": {
            "summary": "Remove a suppression (analyst; audited)", "security": bearer, "parameters": id,
            "responses": {"200": {"description": "removed"}, "404": {"description": "no such suppression"}}
        }},
        "/api/v1/tuning": {"get": {
            "summary": "The initial tuning report: the noisiest rules, each with a suggested suppression and its preview",
            "security": bearer,
            "parameters": [{"name": "tenant", "in": "query", "schema": {"type": "string"}},
                           {"name": "days", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "{days, noisiest_rules}"}}
        }}
    })
}
