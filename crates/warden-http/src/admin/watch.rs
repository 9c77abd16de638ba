//! `/admin/watch`: the behaviour watch (docs/watch.md). Its rules are part of the policy store
//! (`watch`; absent: the default rules) and are edited like the rest of it (validated with the
//! whole store, persisted, applied at once); its alerts and the restrictions in force
//! (quarantines, throttles) are the running broker's, through the backend. Each change is
//! written to the audit trail (`watch.rule.put`, `watch.rule.delete`, `watch.quarantine_topics`,
//! `watch.lift`).

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warden_policy::watch::{WatchPolicy, WatchRule};

use super::audit::AdminActor;
use super::{done, edit, parse, AdminError, ApiResult, Change, St};

/// A restriction the watch holds on a principal (quarantine or throttle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchRestrictionView {
    /// `user`, `certificate`, `token` or `fallback`.
    pub principal_kind: String,
    /// The principal's name.
    pub principal: String,
    /// `quarantine` or `throttle`.
    pub action: String,
    /// The rule that set it.
    pub rule: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds when it lifts by itself; none: when an operator lifts it.
    pub until: Option<u64>,
    /// A throttle's messages/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

#[derive(Serialize)]
struct RulesView {
    /// Whether the broker runs the watch (`[watch] enabled`).
    enabled: bool,
    /// True when the store holds no watch rules of its own: these are the defaults.
    defaults: bool,
    rules: Vec<WatchRule>,
    quarantine_topics: Vec<String>,
}

fn current(p: &warden_policy::store::PolicyStore) -> (bool, WatchPolicy) {
    match &p.watch {
        Some(w) => (false, w.clone()),
        None => (true, WatchPolicy::defaults()),
    }
}

/// `GET /admin/watch/rules`.
pub(super) async fn list_rules(State(st): St) -> ApiResult<Response> {
    let (defaults, w) = current(&st.backend.policy());
    let view = RulesView {
        enabled: st.backend.watch_enabled(),
        defaults,
        rules: w.rules,
        quarantine_topics: w.quarantine_topics,
    };
    Ok(Json(view).into_response())
}

/// `PUT /admin/watch/rules/{id}`: add or replace a rule (the body is the rule; its `id`, if
/// given, must be the path's). The first change copies the defaults into the store.
pub(super) async fn put_rule(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "watch.rule.put", id.clone());
    let answer = (|| {
        let mut v: Value = parse(&body)?;
        let obj =
            v.as_object_mut().ok_or_else(|| AdminError::bad_request("the body must be a JSON object (a rule)"))?;
        match obj.get("id") {
            None => {
                obj.insert("id".into(), Value::String(id.clone()));
            }
            Some(Value::String(s)) if *s == id => {}
            Some(_) => return Err(AdminError::bad_request("the rule's id must be the one in the path")),
        }
        let rule: WatchRule =
            serde_json::from_value(v).map_err(|e| AdminError::bad_request(format!("invalid rule: {e}")))?;
        rule.validate()?;
        c.set("rule", &rule);
        edit(&st, |p| {
            let (_, mut w) = current(p);
            match w.rules.iter_mut().find(|r| r.id == rule.id) {
                Some(r) => *r = rule.clone(),
                None => w.rules.push(rule.clone()),
            }
            p.watch = Some(w);
            Ok(())
        })
    })()
    .map(|()| done());
    c.done(answer)
}

/// `DELETE /admin/watch/rules/{id}`.
pub(super) async fn delete_rule(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let c = Change::new(&st, a, "watch.rule.delete", id.clone());
    let answer = edit(&st, |p| {
        let (_, mut w) = current(p);
        let before = w.rules.len();
        w.rules.retain(|r| r.id != id);
        if w.rules.len() == before {
            return Err(AdminError::not_found(format!("no watch rule '{id}'")));
        }
        p.watch = Some(w);
        Ok(())
    })
    .map(|()| done());
    c.done(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineTopics {
    quarantine_topics: Vec<String>,
}

/// `PUT /admin/watch/quarantine-topics`: `{"quarantine_topics": ["devices/%c/#"]}`.
pub(super) async fn put_quarantine_topics(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "watch.quarantine_topics", "watch");
    let answer = (|| {
        let q: QuarantineTopics = parse(&body)?;
        c.set("quarantine_topics", &q.quarantine_topics);
        edit(&st, |p| {
            let (_, mut w) = current(p);
            w.quarantine_topics = q.quarantine_topics.clone();
            p.watch = Some(w);
            Ok(())
        })
    })()
    .map(|()| done());
    c.done(answer)
}

/// Most alerts `GET /admin/watch/alerts` returns by default.
const ALERTS_DEFAULT: usize = 100;
const ALERTS_MAX: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlertsQuery {
    limit: Option<usize>,
}

/// `GET /admin/watch/alerts?limit=N`: the newest N alerts, newest first.
pub(super) async fn list_alerts(
    State(st): St,
    q: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| AdminError::bad_request(format!("expected ?limit=N: {e}")))?;
    let limit = q.limit.unwrap_or(ALERTS_DEFAULT);
    if !(1..=ALERTS_MAX).contains(&limit) {
        return Err(AdminError::bad_request(format!("limit: 1 to {ALERTS_MAX}")));
    }
    Ok(Json(st.backend.watch_alerts(limit)?).into_response())
}

/// `GET /admin/watch/restrictions`: the quarantines and throttles in force.
pub(super) async fn list_restrictions(State(st): St) -> ApiResult<Response> {
    Ok(Json(st.backend.watch_restrictions()?).into_response())
}

/// `DELETE /admin/watch/restrictions/{kind}/{name}`: lift the principal's quarantine and
/// throttle (a ban is lifted with `DELETE /admin/bans`).
pub(super) async fn lift(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((kind, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let c = Change::new(&st, a, "watch.lift", format!("{kind}:{name}"));
    let answer = (|| {
        if !matches!(kind.as_str(), "user" | "certificate" | "token" | "fallback") {
            return Err(AdminError::bad_request(format!(
                "unknown principal kind '{kind}': user, certificate, token or fallback"
            )));
        }
        if st.backend.watch_lift(&kind, &name)? {
            Ok(done())
        } else {
            Err(AdminError::not_found(format!("no quarantine or throttle in force for {kind} '{name}'")))
        }
    })();
    c.done(answer)
}
