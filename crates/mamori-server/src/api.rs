//! The REST API under `/api/v1`, on the same TLS port as gRPC (HTTP/1.1 and HTTP/2), every
//! route behind a bearer token (stored only as a hash). Tokens have a role (`viewer` reads,
//! `analyst` also changes alerts and rules and uploads logs, `admin` also manages tokens)
//! and may be bound to one tenant, whose data is then all they see: another tenant's alert
//! is "not found", a query's `events` table holds only that tenant's events. The first admin
//! token is created on first start. Every change is written to the audit log with the
//! token's id and name. `GET /api/v1/openapi.json` describes it.
//!
//! Handlers take a [`Caller`] (the authenticated token, with at least the role the route
//! needs), do their work off the async threads ([`blocking`]), and answer JSON; a refusal is
//! `{"error": reason}` with its status.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;

mod soc;

use crate::ServerError;
use crate::service::Shared;
use crate::state::{AlertFilter, Principal, Role};

/// A refusal: the status and the reason given to the caller.
#[derive(Debug)]
pub struct Refused(StatusCode, String);

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

fn internal() -> Refused {
    refused(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult = Result<Response, Refused>;

/// Runs `f` on the blocking pool: state and store calls never stall the async threads.
/// [`ServerError::Invalid`] is the caller's mistake (400, with the reason); a database that
/// cannot take the request now is 503; anything else is logged and answered 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, Refused> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ServerError::Invalid(why))) => Err(refused(StatusCode::BAD_REQUEST, why)),
        Ok(Err(e)) if e.is_transient() => {
            tracing::warn!("API request: {e}");
            Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state database is busy: try again",
            ))
        }
        Ok(Err(e)) => {
            tracing::error!("API request: {e}");
            Err(internal())
        }
        Err(e) => {
            tracing::error!("API request handler: {e}");
            Err(internal())
        }
    }
}

/// The role a route needs.
pub trait Need {
    /// The least role allowed.
    const ROLE: Role;
}
/// Routes that read.
pub struct Viewer;
/// Routes that change alerts and rules, or upload logs.
pub struct Analyst;
/// Routes that manage tokens.
pub struct Admin;
impl Need for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Need for Analyst {
    const ROLE: Role = Role::Analyst;
}
impl Need for Admin {
    const ROLE: Role = Role::Admin;
}

/// Checks the bearer token in `headers` and that its role is at least `need`.
async fn authenticate(
    shared: &Arc<Shared>,
    headers: &axum::http::HeaderMap,
    need: Role,
) -> Result<Principal, Refused> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| refused(StatusCode::UNAUTHORIZED, "a bearer token is required"))?
        .to_string();
    let st = shared.clone();
    match blocking(move || st.state.authenticate(&token)).await? {
        Some(p) if p.role >= need => Ok(p),
        Some(p) => Err(refused(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {} role; the token has {}",
                need.as_str(),
                p.role.as_str()
            ),
        )),
        None => Err(refused(StatusCode::UNAUTHORIZED, "invalid token")),
    }
}

/// The caller: a valid bearer token with at least the role `R` (routes without a body).
pub struct Caller<R>(pub Principal, PhantomData<R>);

impl<R: Need> FromRequestParts<Arc<Shared>> for Caller<R> {
    type Rejection = Refused;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let p = authenticate(shared, &parts.headers, R::ROLE).await?;
        Ok(Caller(p, PhantomData))
    }
}

/// The caller and the request body, for routes with a body. The body (within the route's
/// size limit) is read before the token is checked: a refusal sent while the client is
/// still sending is lost by some clients, so the answer waits for the request.
pub struct WithBody<R>(pub Principal, pub axum::body::Bytes, PhantomData<R>);

impl<R: Need> FromRequest<Arc<Shared>> for WithBody<R> {
    type Rejection = Refused;

    async fn from_request(
        req: axum::extract::Request,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let body = axum::body::Bytes::from_request(req, shared)
            .await
            .map_err(|e| refused(e.status(), e.body_text()))?;
        let p = authenticate(shared, &headers, R::ROLE).await?;
        Ok(WithBody(p, body, PhantomData))
    }
}

/// The tenant a request works on: a tenant-bound token's own (asking for another is
/// refused), else what the request names (`None`: all).
fn tenant_of(p: &Principal, asked: Option<String>) -> Result<Option<String>, Refused> {
    match (&p.tenant, asked) {
        (Some(own), Some(a)) if *own != a => Err(refused(
            StatusCode::FORBIDDEN,
            format!("this token is limited to tenant {own:?}"),
        )),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked),
    }
}

/// Rule changes apply to every tenant: only tokens not bound to one may make them.
fn global(p: &Principal) -> Result<(), Refused> {
    every_tenant(p, "rules apply")
}

/// Refuses a token limited to one tenant: `what` (e.g. "the audit log belongs") belongs or
/// applies to every tenant.
fn every_tenant(p: &Principal, what: &str) -> Result<(), Refused> {
    match &p.tenant {
        None => Ok(()),
        Some(t) => Err(refused(
            StatusCode::FORBIDDEN,
            format!("{what} to every tenant; this token is limited to {t:?}"),
        )),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Refused> {
    serde_json::from_slice(body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("expected {shape}: {e}")))
}

fn not_found(what: &str) -> Refused {
    refused(StatusCode::NOT_FOUND, what)
}

fn created(v: serde_json::Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// Query parameters of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    tenant: Option<String>,
    status: Option<String>,
    /// The last alert id the caller has: only later ones, oldest first.
    after: Option<i64>,
    limit: Option<usize>,
}

async fn alerts(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<AlertsQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let a = blocking(move || {
        let filter = AlertFilter {
            tenant: tenant.as_deref(),
            status: q.status.as_deref(),
            id: None,
            after: q.after,
        };
        shared.state.alerts_where(filter, limit)
    })
    .await?;
    Ok(Json(a).into_response())
}

async fn alert(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Path(id): Path<i64>,
) -> ApiResult {
    match blocking(move || shared.state.alert(id)).await? {
        // Another tenant's alert does not exist for this token.
        Some(a) if p.sees(&a.tenant) => Ok(Json(a).into_response()),
        _ => Err(not_found("no such alert")),
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
    Path(id): Path<i64>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let change: StatusChange = json_body(&body, r#"{"status": …, "reason": …}"#)?;
    if change.reason.len() > 1000 {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "reason: at most 1000 characters",
        ));
    }
    let changed = blocking(move || {
        match shared.state.alert(id)? {
            Some(a) if p.sees(&a.tenant) => {}
            _ => return Ok(false),
        }
        shared
            .state
            .set_alert_status(&p.actor(), id, &change.status, &change.reason)
    })
    .await?;
    if !changed {
        return Err(not_found("no such alert"));
    }
    Ok(Json(json!({"id": id, "changed": true})).into_response())
}

async fn hosts(State(shared): State<Arc<Shared>>, Caller(p, _): Caller<Viewer>) -> ApiResult {
    let hosts = blocking(move || shared.state.hosts()).await?;
    let mine: Vec<_> = hosts.into_iter().filter(|h| p.sees(&h.tenant)).collect();
    Ok(Json(mine).into_response())
}

/// Body of `POST /api/v1/hosts/{agent}/actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    action: mamori_wire::command::Action,
    reason: String,
    ttl_seconds: Option<i64>,
}

/// The agent `id` if the caller may see it: (agent, tenant).
fn visible_agent(
    shared: &Shared,
    p: &Principal,
    id: &str,
) -> Result<Option<crate::state::Agent>, ServerError> {
    Ok(shared.state.agent(id)?.filter(|a| p.sees(&a.tenant)))
}

async fn action_request(
    State(shared): State<Arc<Shared>>,
    Path(agent): Path<String>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let req: ActionRequest = json_body(
        &body,
        r#"{"action": {"type": "isolate"|"release"|"kill"|…, …}, "reason": …, "ttl_seconds": n}"#,
    )?;
    let rec = blocking(move || {
        let Some(a) = visible_agent(&shared, &p, &agent)? else {
            return Ok(None);
        };
        if a.revoked_at.is_some() {
            return Err(ServerError::Invalid(format!("agent {agent} is revoked")));
        }
        crate::actions::issue(
            &shared,
            &p.actor(),
            &a.id,
            &a.tenant,
            req.action,
            &req.reason,
            req.ttl_seconds,
        )
        .map(Some)
    })
    .await?
    .ok_or_else(|| not_found("no such host"))?;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

async fn host_isolation(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Path(agent): Path<String>,
) -> ApiResult {
    let v = blocking(move || match visible_agent(&shared, &p, &agent)? {
        Some(a) => shared.state.isolation(&a.id).map(Some),
        None => Ok(None),
    })
    .await?
    .ok_or_else(|| not_found("no such host"))?;
    Ok(Json(v).into_response())
}

/// Query parameters of `GET /api/v1/actions`.
#[derive(Debug, Deserialize)]
pub struct ActionsQuery {
    agent: Option<String>,
    tenant: Option<String>,
    limit: Option<usize>,
}

async fn actions_list(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<ActionsQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = blocking(move || {
        shared
            .state
            .commands(tenant.as_deref(), q.agent.as_deref(), limit)
    })
    .await?;
    Ok(Json(list).into_response())
}

async fn action_get(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Path(id): Path<String>,
) -> ApiResult {
    match blocking(move || shared.state.command(&id)).await? {
        Some(c) if p.sees(&c.tenant) => Ok(Json(c).into_response()),
        _ => Err(not_found("no such action")),
    }
}

async fn action_file(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Analyst>,
    Path(id): Path<String>,
) -> ApiResult {
    let bytes = blocking(move || {
        let Some(c) = shared.state.command(&id)? else {
            return Ok(None);
        };
        if !p.sees(&c.tenant) || c.action != "collect_file" || c.status != "succeeded" {
            return Ok(None);
        }
        let path = shared.collected_dir.join(format!("{}.bin", c.id));
        let b = std::fs::read(&path)
            .map_err(|e| ServerError::Store(format!("{}: {e}", path.display())))?;
        shared.state.audit(
            &p.actor(),
            "response.collected_file.read",
            &format!("command:{}", c.id),
            "",
        )?;
        Ok(Some(b))
    })
    .await?
    .ok_or_else(|| not_found("no collected file for this action"))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

async fn audit(State(shared): State<Arc<Shared>>, Caller(p, _): Caller<Admin>) -> ApiResult {
    // Audit records are not per tenant: only administrators of all tenants read them.
    every_tenant(&p, "the audit log belongs")?;
    let log = blocking(move || shared.state.audit_log()).await?;
    Ok(Json(log).into_response())
}

/// `GET /api/v1/status`: how far the server's pipeline has got, for its operators. Events
/// are durable in the log through `log.synced`; detection and the columnar store follow it.
/// `ingest` is the log writer's latest round: the longest a batch waited in the server to
/// be durable (`wait_ms`) and the age of its oldest event then (`event_age_ms`, by the
/// agents' clocks: the agent's linger, the way to the server and the wait in it).
/// `detection.delay_ms` is how long the oldest durable event detection has not finished
/// with has waited (0 while detection keeps up): how late alerts are, beyond the events' way
/// to the server. `detection.failing_since` is set while the state database refuses
/// detection's writes (detection then waits, and so, once its queue is full, does ingest).
async fn status(State(shared): State<Arc<Shared>>, Caller(p, _): Caller<Admin>) -> ApiResult {
    // The pipeline is shared by every tenant.
    every_tenant(&p, "the server's status belongs")?;
    let synced = blocking({
        let shared = shared.clone();
        move || {
            shared
                .log
                .lock()
                .map(|l| l.synced())
                .map_err(|_| ServerError::Store("event log lock poisoned".into()))
        }
    })
    .await?;
    let stored = shared.events.position();
    let detection = shared.detected.as_ref().map(|d| {
        // `through` is u64::MAX once the detection thread has ended.
        let through = d.through();
        let failing = d.failing();
        json!({
            "running": through != u64::MAX,
            "through": (through != u64::MAX).then_some(through),
            "behind": (through != u64::MAX).then(|| synced.saturating_sub(through)),
            "delay_ms": d.delay().map(|t| t.as_millis() as u64),
            "failing_since": failing.as_ref().map(|f| f.0),
            "last_error": failing.map(|f| f.1),
        })
    });
    let (wait, age) = shared.writer.pace().latest();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ingest": {"wait_ms": wait.as_millis() as u64, "event_age_ms": age.as_millis() as u64},
        "log": {"synced": synced},
        "detection": detection,
        "store": {"through": stored, "behind": synced.saturating_sub(stored)},
    }))
    .into_response())
}

/// Query parameters naming a tenant.
#[derive(Debug, Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
}

/// Body of `POST /api/v1/blocklist`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashListChange {
    sha256: String,
    /// `block` (default) or `allow`.
    list: Option<String>,
    reason: String,
    tenant: Option<String>,
}

async fn blocklist_get(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Viewer>,
    Query(q): Query<TenantQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?.unwrap_or_else(|| "default".into());
    let l = blocking(move || shared.state.hash_lists(&tenant)).await?;
    Ok(Json(l).into_response())
}

async fn blocklist_add(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let req: HashListChange = json_body(
        &body,
        r#"{"sha256": …, "list": "block"|"allow", "reason": …, "tenant": …}"#,
    )?;
    if req.reason.trim().is_empty() || req.reason.len() > 1000 {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "reason: 1 to 1000 characters",
        ));
    }
    let tenant = tenant_of(&p, req.tenant)?.unwrap_or_else(|| "default".into());
    let list = req.list.unwrap_or_else(|| "block".into());
    let v = blocking(move || {
        let sha = req.sha256.to_ascii_lowercase();
        let v = shared
            .state
            .change_hash_list(&p.actor(), &tenant, &list, &sha, &req.reason, true)?;
        let agents = crate::actions::push_blocklist(&shared, &tenant, None)?;
        Ok(json!({"tenant": tenant, "list": list, "sha256": sha, "version": v, "agents_updated": agents}))
    })
    .await?;
    Ok(created(v))
}

async fn blocklist_remove(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Analyst>,
    Path((list, sha256)): Path<(String, String)>,
    Query(q): Query<TenantQuery>,
) -> ApiResult {
    let tenant = tenant_of(&p, q.tenant)?.unwrap_or_else(|| "default".into());
    let v = blocking(move || {
        let v =
            shared
                .state
                .change_hash_list(&p.actor(), &tenant, &list, &sha256, "removed", false)?;
        if v.is_some() {
            crate::actions::push_blocklist(&shared, &tenant, None)?;
        }
        Ok(v)
    })
    .await?;
    match v {
        Some(v) => Ok(Json(json!({"removed": true, "version": v})).into_response()),
        None => Err(not_found("not on that list")),
    }
}

/// Query parameters of `POST /api/v1/ingest/windows`.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    host: Option<String>,
    tenant: Option<String>,
}

/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// Windows telemetry from hosts without an agent: an EVTX file, or JSON lines / a JSON array
/// of Winlogbeat, ECS or Sysmon-shaped events. Stored and detected like agent events, under
/// the pseudo-agent `win:<host>`.
async fn upload_windows(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<UploadQuery>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    let valid = |v: &str| {
        !v.is_empty()
            && v.len() <= 128
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let tenant = tenant_of(&p, q.tenant)?.unwrap_or_else(|| "default".into());
    let host = q.host.unwrap_or_default();
    if !valid(&host) || !valid(&tenant) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "host and tenant: letters, digits, '-', '_' and '.'",
        ));
    }
    let reply = blocking(move || {
        let mut events = Vec::new();
        // A line is stored as it was sent, so it is checked as an agent's events are: a line
        // serde_json would read as something else (`json::RESERVED_KEY`) is not stored.
        let (mut refused, mut refusal) = (0u64, None);
        let mut stats = mamori_sources::read_bytes(&body, &mut |rec| {
            let text = rec
                .text
                .map(str::to_string)
                .unwrap_or_else(|| rec.event.data.to_string());
            if !text.trim_start().starts_with('{') {
                return;
            }
            if let Err(e) = mamori_model::json::validate(text.as_bytes()) {
                refused += 1;
                refusal.get_or_insert_with(|| format!("record {}: {e}", rec.source.record));
                return;
            }
            events.push(mamori_wire::Bytes::from(text.into_bytes()));
        });
        stats.errors += refused;
        stats.first_error = stats.first_error.or(refusal);
        if events.is_empty() {
            return Err(ServerError::Invalid(format!(
                "no events in the upload ({} unreadable records{})",
                stats.errors,
                stats
                    .first_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        let agent = format!("win:{host}");
        let appended = shared
            .writer
            .append_blocking(crate::store::Append {
                tenant: tenant.as_str().into(),
                agent: agent.into(),
                first_seq: None,
                events,
            })
            .map_err(ServerError::Store)?;
        shared
            .state
            .record_upload(&tenant, &host, appended.stored)?;
        shared.state.audit(
            &p.actor(),
            "windows.upload",
            &format!("host:{host}"),
            &format!(
                "tenant={tenant} events={} unreadable={}",
                appended.stored, stats.errors
            ),
        )?;
        Ok(
            json!({"stored": appended.stored, "unreadable": stats.errors,
                  "durable_through": appended.durable_through}),
        )
    })
    .await?;
    Ok(Json(reply).into_response())
}

/// An events query: `GET /api/v1/events?sql=…` or `POST /api/v1/events/query` with this as
/// the JSON body.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    sql: String,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Rows returned at most (default 1,000, at most 100,000).
    limit: Option<usize>,
    /// Only this tenant's events.
    tenant: Option<String>,
}

/// Longest SQL text accepted.
pub const MAX_SQL_BYTES: usize = 64 << 10;

async fn events_get(
    State(shared): State<Arc<Shared>>,
    caller: Caller<Viewer>,
    Query(q): Query<EventsQuery>,
) -> ApiResult {
    events_query(shared, caller.0, q).await
}

async fn events_post(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Viewer>,
) -> ApiResult {
    let q = json_body(
        &body,
        r#"{"sql": …, "format": "json"|"csv", "limit": n, "tenant": …}"#,
    )?;
    events_query(shared, p, q).await
}

async fn events_query(shared: Arc<Shared>, p: Principal, q: EventsQuery) -> ApiResult {
    if q.sql.len() > MAX_SQL_BYTES {
        return Err(refused(StatusCode::BAD_REQUEST, "sql: at most 64 KiB"));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                format!("format {other:?}: json or csv"),
            ));
        }
    };
    let scope = match tenant_of(&p, q.tenant)? {
        Some(t) => mamori_columnar::Scope::Tenant(t),
        None => mamori_columnar::Scope::All,
    };
    let limits = mamori_columnar::Limits {
        rows: q.limit.unwrap_or(1000).clamp(1, 100_000),
        ..Default::default()
    };
    let table = blocking(move || {
        shared
            .events
            .query(&scope, &q.sql, limits)
            .map_err(|e| match e {
                mamori_columnar::StoreError::Query(why) => ServerError::Invalid(why),
                other => ServerError::Store(other.to_string()),
            })
    })
    .await?;
    Ok(if csv {
        (
            [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            table.to_csv(),
        )
            .into_response()
    } else {
        Json(table.to_json()).into_response()
    })
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    name: String,
    role: String,
    tenant: Option<String>,
}

async fn tokens_list(State(shared): State<Arc<Shared>>, Caller(p, _): Caller<Admin>) -> ApiResult {
    let tokens = blocking(move || shared.state.api_tokens()).await?;
    let mine: Vec<_> = tokens
        .into_iter()
        .filter(|t| p.tenant.is_none() || t.tenant == p.tenant)
        .collect();
    Ok(Json(mine).into_response())
}

async fn tokens_create(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Admin>,
) -> ApiResult {
    let req: NewApiToken = json_body(
        &body,
        r#"{"name": …, "role": "viewer"|"analyst"|"admin", "tenant": …}"#,
    )?;
    let role = Role::parse(&req.role)
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "role: viewer, analyst or admin"))?;
    // A tenant's administrator makes tokens for that tenant only.
    let tenant = tenant_of(&p, req.tenant)?;
    let t2 = tenant.clone();
    let (id, token) = blocking(move || {
        shared
            .state
            .create_api_token(&p.actor(), &req.name, role, t2.as_deref())
    })
    .await?;
    Ok(created(
        json!({"id": id, "token": token, "role": role, "tenant": tenant,
                      "note": "shown once: the server keeps only its hash"}),
    ))
}

async fn tokens_revoke(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Admin>,
    Path(id): Path<i64>,
) -> ApiResult {
    let revoked = tokio::task::spawn_blocking(move || {
        let visible = shared
            .state
            .api_tokens()?
            .into_iter()
            .any(|t| t.id == id && (p.tenant.is_none() || t.tenant == p.tenant));
        if !visible {
            return Ok(false);
        }
        shared.state.revoke_api_token(&p.actor(), id)
    })
    .await
    .map_err(|_| internal())?;
    match revoked {
        Ok(true) => Ok(Json(json!({"id": id, "revoked": true})).into_response()),
        Ok(false) => Err(not_found("no such token, or already revoked")),
        Err(ServerError::Invalid(why)) => Err(refused(StatusCode::CONFLICT, why)),
        Err(e) => {
            tracing::error!("revoking an API token: {e}");
            Err(internal())
        }
    }
}

/// Body of `POST /api/v1/enrollment-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollToken {
    tenant: Option<String>,
    uses: Option<i64>,
    ttl_seconds: Option<i64>,
}

async fn enroll_tokens_list(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Admin>,
) -> ApiResult {
    let tokens = blocking(move || shared.state.enroll_tokens(p.tenant.as_deref())).await?;
    Ok(Json(tokens).into_response())
}

async fn enroll_tokens_create(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Admin>,
) -> ApiResult {
    let req: NewEnrollToken = json_body(&body, r#"{"tenant": …, "uses": n, "ttl_seconds": n}"#)?;
    let tenant = tenant_of(&p, req.tenant)?.unwrap_or_else(|| "default".into());
    let uses = req.uses.unwrap_or(1);
    let ttl = req.ttl_seconds.unwrap_or(86_400);
    if !(1..=100_000).contains(&uses) || !(1..=366 * 86_400).contains(&ttl) {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "uses: 1 to 100000; ttl_seconds: 1 to 31622400",
        ));
    }
    let fingerprint = shared.ca.fingerprint();
    let t = blocking(move || {
        shared
            .state
            .create_enroll_token(&p.actor(), &tenant, ttl, uses)
    })
    .await?;
    Ok(created(
        json!({"id": t.id, "token": t.token, "tenant": t.tenant, "uses": t.uses,
                      "expires_at": t.expires_at, "ca_fingerprint": fingerprint,
                      "note": "shown once: the server keeps only its hash"}),
    ))
}

async fn enroll_tokens_revoke(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Admin>,
    Path(id): Path<i64>,
) -> ApiResult {
    let revoked = blocking(move || {
        shared
            .state
            .revoke_enroll_token(&p.actor(), id, p.tenant.as_deref())
    })
    .await?;
    if !revoked {
        return Err(not_found("no such usable enrollment token"));
    }
    Ok(Json(json!({"id": id, "revoked": true})).into_response())
}

/// Query parameters of `GET /api/v1/rules`.
#[derive(Debug, Deserialize)]
pub struct RulesQuery {
    /// Words that must all appear in the title or id (case-insensitive).
    q: Option<String>,
    /// Only enabled (`true`) or disabled (`false`) rules.
    enabled: Option<bool>,
    /// Only custom (`true`) or base (`false`) rules.
    custom: Option<bool>,
    limit: Option<usize>,
}

fn rules_of(shared: &Shared) -> Result<Arc<crate::rules::Rules>, Refused> {
    shared.rules.clone().ok_or_else(|| {
        refused(
            StatusCode::CONFLICT,
            "this server runs without detection rules",
        )
    })
}

async fn rules_list(
    State(shared): State<Arc<Shared>>,
    _caller: Caller<Viewer>,
    Query(q): Query<RulesQuery>,
) -> ApiResult {
    let rules = rules_of(&shared)?;
    let words: Vec<String> =
        q.q.unwrap_or_default()
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let rows: Vec<_> = rules
        .list()
        .into_iter()
        .filter(|r| q.enabled.is_none_or(|e| r.enabled == e))
        .filter(|r| q.custom.is_none_or(|c| r.custom == c))
        .filter(|r| {
            let hay = format!("{} {}", r.title, r.id).to_lowercase();
            words.iter().all(|w| hay.contains(w))
        })
        .take(limit)
        .collect();
    Ok(Json(rows).into_response())
}

fn send_rules(shared: &Shared, set: Arc<mamori_sigma::RuleSet>) {
    if let Some(q) = &shared.detect {
        let _ = q.send(crate::detect::Msg::Rules(set));
    }
}

async fn rules_add(
    State(shared): State<Arc<Shared>>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    global(&p)?;
    let rules = rules_of(&shared)?;
    let yaml = String::from_utf8(body.to_vec())
        .map_err(|_| refused(StatusCode::BAD_REQUEST, "the rule is not UTF-8 text"))?;
    let ids = blocking(move || {
        let (ids, set) = rules.add_custom(&shared.state, &p.actor(), &yaml)?;
        send_rules(&shared, set);
        Ok(ids)
    })
    .await
    .map_err(|Refused(status, why)| {
        let status = if why.contains("already loaded") {
            StatusCode::CONFLICT
        } else {
            status
        };
        refused(status, format!("rule refused: {why}"))
    })?;
    Ok(created(json!({"added": ids})))
}

async fn rules_delete(
    State(shared): State<Arc<Shared>>,
    Caller(p, _): Caller<Analyst>,
    Path(id): Path<String>,
) -> ApiResult {
    global(&p)?;
    let rules = rules_of(&shared)?;
    let id2 = id.clone();
    let deleted = blocking(move || {
        let set = rules.delete_custom(&shared.state, &p.actor(), &id2)?;
        let deleted = set.is_some();
        if let Some(set) = set {
            send_rules(&shared, set);
        }
        Ok(deleted)
    })
    .await?;
    if !deleted {
        return Err(not_found("no custom rule with this id"));
    }
    Ok(Json(json!({"id": id, "deleted": true})).into_response())
}

/// Body of `POST /api/v1/rules/{id}/enable|disable` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSwitch {
    #[serde(default)]
    reason: String,
}

async fn rule_switch(
    shared: Arc<Shared>,
    p: Principal,
    id: String,
    body: axum::body::Bytes,
    enabled: bool,
) -> ApiResult {
    global(&p)?;
    let rules = rules_of(&shared)?;
    let switch: RuleSwitch = if body.iter().all(u8::is_ascii_whitespace) {
        RuleSwitch::default()
    } else {
        json_body(&body, r#"{"reason": …}"#)?
    };
    if switch.reason.len() > 1000 {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "reason: at most 1000 characters",
        ));
    }
    let id2 = id.clone();
    let known = blocking(move || {
        rules.set_enabled(&shared.state, &p.actor(), &id2, enabled, &switch.reason)
    })
    .await?;
    if !known {
        return Err(not_found("no rule with this id is loaded"));
    }
    Ok(Json(json!({"id": id, "enabled": enabled})).into_response())
}

async fn rule_enable(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    rule_switch(shared, p, id, body, true).await
}

async fn rule_disable(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    WithBody(p, body, _): WithBody<Analyst>,
) -> ApiResult {
    rule_switch(shared, p, id, body, false).await
}

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

/// The OpenAPI 3.1 description of the API.
pub fn openapi_document() -> serde_json::Value {
    let bearer = json!([{"bearer": []}]);
    let unauthorised = json!({"description": "missing or invalid bearer token"});
    let forbidden = json!({"description": "the token's role or tenant does not allow this"});
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "Mamori server API", "version": "1",
                 "description": "Any request may be answered 503 when the state database cannot take it now (locked by another writer past 5 s, disk full): the same request may succeed later."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/v1/alerts": {"get": {
                "summary": "Alerts, newest first, with their evidence; with `after`, the alerts raised after that one, oldest first (a reader that passes the last id it saw gets each new alert once)",
                "security": bearer,
                "parameters": [
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"enum": ["open", "acknowledged", "closed"]}},
                    {"name": "after", "in": "query", "schema": {"type": "integer"}},
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
            "/api/v1/status": {"get": {
                "summary": "The server's pipeline: events durable in the log (log.synced), how far detection and the columnar store have got (behind, in events), how long the oldest stored event detection has not finished with has waited (detection.delay_ms: 0 when detection keeps up; alerts are that late), the log writer's latest round (ingest.wait_ms: the longest a batch waited in the server to be durable; ingest.event_age_ms: how old its oldest event was then, by the agent's clock), and since when the state database has refused detection's writes (detection.failing_since, last_error; null when all is well). Null detection: the server runs without rules (admin of all tenants)",
                "security": bearer,
                "responses": {"200": {"description": "{version, ingest, log, detection, store}"}, "401": unauthorised, "403": forbidden}
            }},
            "/api/v1/hosts": {"get": {
                "summary": "Enrolled hosts with sensor status and last health report",
                "security": bearer,
                "responses": {"200": {"description": "hosts"}, "401": unauthorised}
            }},
            "/api/v1/hosts/{agent}/actions": {"post": {
                "summary": "Ask a host's agent to respond: isolate, release, kill, quarantine, restore, delete_quarantined, list_quarantine, collect_file, collect_process, triage (analyst; signed by the server, queued while the host is offline, audited)",
                "security": bearer,
                "parameters": [{"name": "agent", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                    "required": ["action", "reason"], "properties": {
                        "action": {"type": "object", "required": ["type"], "properties": {
                            "type": {"enum": ["isolate", "release", "kill", "quarantine", "restore", "delete_quarantined", "list_quarantine", "collect_file", "collect_process", "triage"]},
                            "allow": {"type": "array", "description": "isolate: [{net: ADDR[/PREFIX], port?}] reachable besides the server"},
                            "pid": {"type": "integer"}, "start_ticks": {"type": "integer", "description": "kill: the last part of process.entity_id"},
                            "boot_id": {"type": "string"}, "tree": {"type": "boolean"},
                            "path": {"type": "string"}, "item": {"type": "string"}, "max_bytes": {"type": "integer"}}},
                        "reason": {"type": "string", "minLength": 1, "maxLength": 1000},
                        "ttl_seconds": {"type": "integer", "minimum": 10, "maximum": 604800, "description": "how long it may wait for an offline host (default 3600)"}}}}}},
                "responses": {"202": {"description": "the action record (status queued)"}, "400": {"description": "refused, with the reason"},
                              "401": unauthorised, "403": forbidden, "404": {"description": "no such host"}}
            }},
            "/api/v1/hosts/{agent}/isolation": {"get": {
                "summary": "Whether the host is isolated (since, by whom, why, what was verified) and its isolation log",
                "security": bearer,
                "parameters": [{"name": "agent", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{isolated, current, log}"}, "401": unauthorised, "404": {"description": "no such host"}}
            }},
            "/api/v1/actions": {"get": {
                "summary": "Response actions, newest first, with status (queued, sent, received, succeeded, failed, expired) and outcome",
                "security": bearer,
                "parameters": [
                    {"name": "agent", "in": "query", "schema": {"type": "string"}},
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 10000}}
                ],
                "responses": {"200": {"description": "actions"}, "401": unauthorised}
            }},
            "/api/v1/actions/{id}": {"get": {
                "summary": "One response action with the agent's output",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the action"}, "401": unauthorised, "404": {"description": "no such action"}}
            }},
            "/api/v1/actions/{id}/file": {"get": {
                "summary": "The file a collect_file action fetched (analyst; audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the bytes"}, "401": unauthorised, "404": {"description": "no collected file"}}
            }},
            "/api/v1/audit": {"get": {
                "summary": "The audit log, oldest first: who did what to what, when and why (admin of all tenants)",
                "security": bearer,
                "responses": {"200": {"description": "[{at, actor, action, target, detail}]"}, "401": unauthorised, "403": forbidden}
            }},
            "/api/v1/blocklist": {
                "get": {
                    "summary": "The tenant's execution blocklist and allowlist (SHA-256) with version",
                    "security": bearer,
                    "parameters": [{"name": "tenant", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "{tenant, version, block, allow}"}, "401": unauthorised}
                },
                "post": {
                    "summary": "Block (or allowlist) a SHA-256 on every agent of the tenant: execution is refused in the kernel's exec path, also offline (analyst; audited)",
                    "security": bearer,
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                        "required": ["sha256", "reason"], "properties": {
                            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "list": {"enum": ["block", "allow"]},
                            "reason": {"type": "string", "maxLength": 1000},
                            "tenant": {"type": "string"}}}}}},
                    "responses": {"201": {"description": "{version, agents_updated}"}, "400": {"description": "refused (bad hash, allowlisted)"},
                                  "401": unauthorised, "403": forbidden}
                }
            },
            "/api/v1/blocklist/{list}/{sha256}": {"delete": {
                "summary": "Remove a hash from the block or allow list (analyst; audited)",
                "security": bearer,
                "parameters": [{"name": "list", "in": "path", "required": true, "schema": {"enum": ["block", "allow"]}},
                               {"name": "sha256", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "tenant", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "removed"}, "401": unauthorised, "403": forbidden, "404": {"description": "not on that list"}}
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
            "/api/v1/events": {"get": {
                "summary": "Search stored events with SQL over the `events` table (read-only; see the README for its columns)",
                "security": bearer,
                "parameters": [
                    {"name": "sql", "in": "query", "required": true, "schema": {"type": "string", "maxLength": 65536},
                     "example": "SELECT time, host_name, process_command_line FROM events WHERE process_name = 'curl' ORDER BY time DESC"},
                    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100000}},
                    {"name": "tenant", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "{columns, rows: [{column: value}], truncated} or CSV"},
                              "400": {"description": "the query was refused or failed, with the reason"},
                              "401": unauthorised}
            }},
            "/api/v1/events/query": {"post": {
                "summary": "As GET /api/v1/events, with the query in a JSON body",
                "security": bearer,
                "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                    "required": ["sql"], "properties": {
                        "sql": {"type": "string", "maxLength": 65536},
                        "format": {"enum": ["json", "csv"]},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100000},
                        "tenant": {"type": "string"}}}}}},
                "responses": {"200": {"description": "as GET"}, "400": {"description": "refused, with the reason"},
                              "401": unauthorised}
            }},
            "/api/v1/rules": {
                "get": {
                    "summary": "Detection rules with whether each is enabled and whether it is custom",
                    "security": bearer,
                    "parameters": [
                        {"name": "q", "in": "query", "schema": {"type": "string"}, "description": "words in the title or id"},
                        {"name": "enabled", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "custom", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100000}}
                    ],
                    "responses": {"200": {"description": "rules"}, "401": unauthorised}
                },
                "post": {
                    "summary": "Add a custom Sigma rule (YAML body, with an id); compiled with the running set first, refused with the reason if it does not compile (analyst, all tenants; audited)",
                    "security": bearer,
                    "requestBody": {"content": {"application/yaml": {"schema": {"type": "string", "maxLength": 262144}}}},
                    "responses": {"201": {"description": "{added: [ids]}; detection uses it at once"},
                                  "400": {"description": "refused, with the reason"},
                                  "401": unauthorised, "403": forbidden,
                                  "409": {"description": "a rule with this id is already loaded"}}
                }
            },
            "/api/v1/rules/{id}": {"delete": {
                "summary": "Delete a custom rule (analyst, all tenants; audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "deleted"}, "401": unauthorised, "403": forbidden,
                              "404": {"description": "no custom rule with this id"}}
            }},
            "/api/v1/rules/{id}/enable": {"post": {
                "summary": "Enable a rule (analyst, all tenants; audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object",
                    "properties": {"reason": {"type": "string", "maxLength": 1000}}}}}},
                "responses": {"200": {"description": "enabled"}, "401": unauthorised, "403": forbidden,
                              "404": {"description": "no such rule"}}
            }},
            "/api/v1/rules/{id}/disable": {"post": {
                "summary": "Disable a rule: no more alerts from it (analyst, all tenants; audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object",
                    "properties": {"reason": {"type": "string", "maxLength": 1000}}}}}},
                "responses": {"200": {"description": "disabled"}, "401": unauthorised, "403": forbidden,
                              "404": {"description": "no such rule"}}
            }},
            "/api/v1/tokens": {
                "get": {
                    "summary": "API tokens (never their secrets) (admin)",
                    "security": bearer,
                    "responses": {"200": {"description": "tokens"}, "401": unauthorised, "403": forbidden}
                },
                "post": {
                    "summary": "Create an API token; the secret is in the answer only (admin; audited)",
                    "security": bearer,
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                        "required": ["name", "role"], "properties": {
                            "name": {"type": "string", "maxLength": 64},
                            "role": {"enum": ["viewer", "analyst", "admin"]},
                            "tenant": {"type": "string", "description": "limit the token to this tenant"}}}}}},
                    "responses": {"201": {"description": "{id, token, role, tenant}"}, "400": {"description": "invalid"},
                                  "401": unauthorised, "403": forbidden}
                }
            },
            "/api/v1/tokens/{id}": {"delete": {
                "summary": "Revoke an API token (admin; audited; the last all-tenant admin token cannot be revoked)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "revoked"}, "401": unauthorised, "403": forbidden,
                              "404": {"description": "no such token"}, "409": {"description": "the last administrator token"}}
            }},
            "/api/v1/enrollment-tokens": {
                "get": {
                    "summary": "Enrollment tokens still usable (admin)",
                    "security": bearer,
                    "responses": {"200": {"description": "tokens"}, "401": unauthorised, "403": forbidden}
                },
                "post": {
                    "summary": "Create an enrollment token for agents; the secret is in the answer only (admin; audited)",
                    "security": bearer,
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                        "tenant": {"type": "string"},
                        "uses": {"type": "integer", "minimum": 1, "maximum": 100000},
                        "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 31622400}}}}}},
                    "responses": {"201": {"description": "{id, token, tenant, uses, expires_at, ca_fingerprint}"},
                                  "400": {"description": "invalid"}, "401": unauthorised, "403": forbidden}
                }
            },
            "/api/v1/enrollment-tokens/{id}": {"delete": {
                "summary": "Withdraw an enrollment token (admin; audited)",
                "security": bearer,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "withdrawn"}, "401": unauthorised, "403": forbidden,
                              "404": {"description": "no such usable token"}}
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document", "responses": {"200": {"description": "OpenAPI"}}
            }}
        }
    });
    if let (Some(paths), serde_json::Value::Object(more)) =
        (doc["paths"].as_object_mut(), soc::openapi_paths())
    {
        paths.extend(more);
    }
    doc
}

/// The API routes.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/alerts/{id}/status", post(alert_status))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/incidents", get(soc::incidents))
        .route("/api/v1/incidents/{id}", get(soc::incident))
        .route("/api/v1/incidents/{id}/status", post(soc::incident_status))
        .route("/api/v1/incidents/{id}/report", get(soc::incident_report))
        .route("/api/v1/reports/monthly", get(soc::monthly))
        .route(
            "/api/v1/suppressions",
            get(soc::suppressions).post(soc::suppression_add),
        )
        .route(
            "/api/v1/suppressions/preview",
            post(soc::suppression_preview),
        )
        .route("/api/v1/suppressions/{id}", delete(soc::suppression_remove))
        .route("/api/v1/tuning", get(soc::tuning))
        .route(
            "/api/v1/hosts/{agent}/actions",
            post(action_request).layer(axum::extract::DefaultBodyLimit::max(64 << 10)),
        )
        .route("/api/v1/hosts/{agent}/isolation", get(host_isolation))
        .route("/api/v1/actions", get(actions_list))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/status", get(status))
        .route("/api/v1/blocklist", get(blocklist_get).post(blocklist_add))
        .route(
            "/api/v1/blocklist/{list}/{sha256}",
            delete(blocklist_remove),
        )
        .route("/api/v1/actions/{id}", get(action_get))
        .route("/api/v1/actions/{id}/file", get(action_file))
        .route(
            "/api/v1/rules",
            get(rules_list)
                .post(rules_add)
                .layer(axum::extract::DefaultBodyLimit::max(
                    crate::rules::MAX_RULE_BYTES + 1024,
                )),
        )
        .route("/api/v1/rules/{id}", delete(rules_delete))
        .route("/api/v1/rules/{id}/enable", post(rule_enable))
        .route("/api/v1/rules/{id}/disable", post(rule_disable))
        .route("/api/v1/tokens", get(tokens_list).post(tokens_create))
        .route("/api/v1/tokens/{id}", delete(tokens_revoke))
        .route(
            "/api/v1/enrollment-tokens",
            get(enroll_tokens_list).post(enroll_tokens_create),
        )
        .route(
            "/api/v1/enrollment-tokens/{id}",
            delete(enroll_tokens_revoke),
        )
        .route("/api/v1/events", get(events_get))
        .route(
            "/api/v1/events/query",
            post(events_post).layer(axum::extract::DefaultBodyLimit::max(MAX_SQL_BYTES + 4096)),
        )
        .route("/api/v1/openapi.json", get(openapi))
        .route(
            "/api/v1/ingest/windows",
            post(upload_windows).layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .with_state(shared)
}
