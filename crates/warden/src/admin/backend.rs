//! The broker side of the admin API ([`warden_http::admin`]): the policy store, live clients,
//! bans and stored OAuth clients, each change persisted and applied at once; and the admin
//! audit trail ([`crate::admin::audit_log`]) every change through the API is written to.

use std::sync::Arc;

use crate::logsafe::Escaped;
use mqtt_codec::ReasonCode;
use tracing::info;
use warden_http::admin::audit::AuditRecord;
use warden_http::admin::{AdminBackend, AdminError, Ban, BanKind, ClientInfo, OAuthClientInfo, PolicyEdit};
use warden_http::OAuthService;
use warden_policy::store::PolicyStore;

use crate::admin::audit_log::AuditLog;
use crate::admin::policy_store::PolicyManager;
use crate::admission::bans::BanList;
use crate::config::Config;
use crate::conn::live::LiveClients;

/// The admin API's view of the running broker.
pub struct Backend {
    /// The policy store.
    pub policy: Arc<PolicyManager>,
    /// Live connections.
    pub live: Arc<LiveClients>,
    /// The ban list.
    pub bans: Arc<BanList>,
    /// The per-address guard, whose automatic bans (`auth_fail_ban`) are listed and lifted
    /// with the operator's.
    pub guard: Arc<crate::admission::guard::Guard>,
    /// The token service, when enabled (its clients are refreshed after a change).
    pub oauth: Option<Arc<OAuthService>>,
    /// Where a change to the OAuth clients ends what deleted or narrowed clients hold.
    pub trust: Arc<crate::admin::trust::Trust>,
    /// The configuration (data directory, declared OAuth clients).
    pub config: Config,
    /// The admin audit trail (`<data_dir>/audit.jsonl`).
    pub audit: Arc<AuditLog>,
    /// The broker core (sessions, retained messages).
    pub broker: Arc<warden_core::Broker>,
    /// This node's side of the cluster (SPEC §11): every change is shared with the other
    /// nodes ([`crate::admin::cluster_sync`]).
    pub cluster: Option<Arc<warden_cluster::Cluster>>,
    /// The MQTT TLS listeners, whose CRLs say which certificates seen are revoked.
    pub tls: Vec<Arc<crate::tls::TlsListener>>,
    /// The counters sampled every [`STATS_EVERY`], the newest [`STATS_KEPT`] (see
    /// [`Backend::sample_stats`]).
    pub history: parking_lot::Mutex<std::collections::VecDeque<warden_http::admin::StatsView>>,
    /// The stored OAuth clients as this node last shared them or applied another node's
    /// version (a reload shares the file only when it differs: `warden oauth client add`).
    pub oauth_shared: parking_lot::Mutex<Option<Vec<crate::admin::oauth_store::StoredClient>>>,
    /// The behaviour watch, when `[watch] enabled` (docs/watch.md).
    pub watch: Option<Arc<crate::watch::Watch>>,
}

/// How often the counters are sampled for `GET /admin/stats/history`.
pub const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How many samples are kept: 15 minutes.
pub const STATS_KEPT: usize = 180;

/// The reason shown for a ban the broker set itself after failed authentications.
pub const AUTO_BAN_REASON: &str = "automatic: repeated failed authentication (auth_fail_ban)";

fn internal(what: &str, e: impl std::fmt::Display) -> AdminError {
    tracing::warn!(error = %format!("{e:#}"), "admin API: {what} failed");
    AdminError::internal(format!("{what} failed (see the broker log)"))
}

impl Backend {
    /// Take one sample of the counters for the history (the server calls it every
    /// [`STATS_EVERY`]).
    pub fn sample_stats(&self) {
        let now = AdminBackend::stats(self);
        let mut h = self.history.lock();
        if h.len() >= STATS_KEPT {
            h.pop_front();
        }
        h.push_back(now);
    }

    /// Add a ban here and end the live connections it matches (not shared).
    fn apply_ban(&self, ban: Ban) -> Result<(), AdminError> {
        crate::admission::bans::validate(&ban).map_err(AdminError::bad_request)?;
        self.bans.add(ban.clone()).map_err(|e| internal("saving the ban list", e))?;
        let now = crate::clock::unix_now();
        if ban.expires_at.is_none_or(|e| now < e) {
            // 0x98 Administrative action: 0x8A Banned is a CONNACK-only code (MQTT 5
            // §3.14.2.1 has no 0x8A for DISCONNECT; clients read it as a malformed packet).
            let n = self.live.end_where(ReasonCode::ADMINISTRATIVE_ACTION, |c, p, peer| {
                BanList::matches(&ban, c, &p.name, peer.ip())
            });
            info!(kind = ?ban.kind, value = %Escaped(&ban.value), connections = n, "admin API: ban added");
        }
        Ok(())
    }

    /// Remove a listed ban here (not shared).
    fn apply_unban(&self, kind: BanKind, value: &str) -> Result<bool, AdminError> {
        self.bans.remove(kind, value).map_err(|e| internal("saving the ban list", e))
    }

    /// Share the policy store with the other nodes of the cluster.
    fn share_policy(&self) {
        if let Some(c) = &self.cluster {
            c.publish_document(crate::admin::cluster_sync::POLICY, self.policy.store().to_json().into_bytes());
        }
    }

    /// Share the operator's ban list with the other nodes of the cluster.
    fn share_bans(&self) {
        if let Some(c) = &self.cluster {
            match serde_json::to_vec(&self.bans.list()) {
                Ok(body) => c.publish_document(crate::admin::cluster_sync::BANS, body),
                Err(e) => tracing::warn!(error = %e, "cluster: the ban list could not be encoded"),
            }
        }
    }

    /// Replace the policy store with another node's version.
    pub(crate) fn policy_from_peer(&self, store: warden_policy::store::PolicyStore) -> Result<(), AdminError> {
        self.policy.update(&mut |s| {
            *s = store.clone();
            Ok(())
        })
    }

    /// Replace the operator's ban list with another node's version: the bans added there are
    /// applied here (live connections they match end), the ones removed there are lifted.
    pub(crate) fn bans_from_peer(&self, bans: Vec<Ban>) -> Result<(), AdminError> {
        let here = self.bans.list();
        for b in &here {
            if !bans.iter().any(|n| n.kind == b.kind && n.value == b.value) {
                self.apply_unban(b.kind, &b.value)?;
            }
        }
        for n in bans {
            if !here.contains(&n) {
                self.apply_ban(n)?;
            }
        }
        Ok(())
    }

    /// Share the stored OAuth clients (their secrets as the stored salted hashes, never in
    /// clear) with the other nodes of the cluster.
    pub(crate) fn share_oauth_clients(&self) {
        let Some(c) = &self.cluster else { return };
        let list = match crate::admin::oauth_store::stored_clients(&self.config.data_dir) {
            Ok(list) => list,
            Err(e) => return tracing::warn!(error = %e, "cluster: the OAuth clients could not be shared"),
        };
        match serde_json::to_vec(&list) {
            Ok(body) => {
                c.publish_document(crate::admin::cluster_sync::OAUTH_CLIENTS, body);
                *self.oauth_shared.lock() = Some(list);
            }
            Err(e) => tracing::warn!(error = %e, "cluster: the OAuth clients could not be encoded"),
        }
    }

    /// After a reload: share the stored OAuth clients when the file is not the version this
    /// node last shared or applied (a client added with `warden oauth client add` here).
    pub(crate) fn share_oauth_clients_if_changed(&self) {
        if self.cluster.is_none() {
            return;
        }
        let now = crate::admin::oauth_store::stored_clients(&self.config.data_dir).ok();
        let last = self.oauth_shared.lock().clone();
        let changed = match (&now, &last) {
            (Some(now), Some(last)) => now != last,
            (Some(now), None) => !now.is_empty(),
            (None, _) => false,
        };
        if changed {
            info!("cluster: the stored OAuth clients changed on this node; shared");
            self.share_oauth_clients();
        }
    }

    /// Replace the stored OAuth clients with another node's version and apply it as a local
    /// change: the token service takes the new clients, and the tokens of clients deleted or
    /// narrowed there lose their connections here.
    pub(crate) fn oauth_clients_from_peer(
        &self,
        clients: Vec<crate::admin::oauth_store::StoredClient>,
    ) -> Result<(), AdminError> {
        let left_out = crate::admin::oauth_store::replace_stored_clients(&self.config, clients)
            .map_err(|e| internal("saving OAuth clients", e))?;
        *self.oauth_shared.lock() = crate::admin::oauth_store::stored_clients(&self.config.data_dir).ok();
        for id in left_out {
            tracing::warn!(
                client = %Escaped(&id),
                "cluster: an OAuth client from another node left out (declared in this node's configuration, or an invalid id or secret hash)"
            );
        }
        self.refresh_oauth()
    }

    fn refresh_oauth(&self) -> Result<(), AdminError> {
        if let Some(o) = &self.oauth {
            let clients = crate::admin::oauth_store::oauth_clients(&self.config)
                .map_err(|e| internal("loading OAuth clients", e))?;
            o.set_clients(clients);
            self.trust.oauth_clients_changed(o);
        }
        Ok(())
    }
}

impl AdminBackend for Backend {
    fn certificates(&self) -> Vec<warden_http::admin::CertificateView> {
        // This node's CRLs and, on a node of a cluster, the other nodes'.
        let revoked: Vec<_> = self.tls.iter().flat_map(|t| [t.revoked(), t.peer_revoked()]).collect();
        let counts = self.live.cert_counts();
        self.live.certs.list(&revoked, |leaf| counts.get(leaf).copied().unwrap_or(0))
    }

    fn stats(&self) -> warden_http::admin::StatsView {
        use std::sync::atomic::Ordering::Relaxed;
        use warden_core::metrics::{AuthMethod, Denied};
        let st = &self.broker.stats;
        let mut by_method = std::collections::BTreeMap::new();
        for m in AuthMethod::ALL {
            let (_, refused) = st.security.auth_attempts(m);
            by_method.insert(m.as_str().to_owned(), refused);
        }
        let now = crate::clock::unix_now();
        let admin_bans = self.bans.in_force(now);
        let auto_bans = self.guard.auto_bans(std::time::Instant::now()).len();
        let at_ms = crate::clock::unix_nanos() / 1_000_000;
        warden_http::admin::StatsView {
            at_ms,
            connections: st.clients_connected.load(Relaxed),
            sessions: self.broker.session_count() as u64,
            subscriptions: self.broker.subscription_count() as u64,
            messages_received: st.messages_received.iter().map(|c| c.load(Relaxed)).sum(),
            messages_sent: st.messages_sent.iter().map(|c| c.load(Relaxed)).sum(),
            connections_accepted: st.connections_total.load(Relaxed),
            connections_refused: st.connections_refused.load(Relaxed),
            auth_failures: by_method.values().sum(),
            auth_failures_by_method: by_method,
            authz_denied: Denied::ALL.iter().map(|a| st.security.denials(*a)).sum(),
            bans_active: (admin_bans + auto_bans) as u64,
        }
    }

    fn stats_history(&self) -> Vec<warden_http::admin::StatsView> {
        self.history.lock().iter().cloned().collect()
    }

    fn explain(
        &self,
        req: &warden_http::admin::ExplainRequest,
    ) -> Result<warden_http::admin::ExplainAnswer, AdminError> {
        self.policy.explain(req)
    }

    fn watch_enabled(&self) -> bool {
        self.watch.is_some()
    }

    fn watch_alerts(&self, limit: usize) -> Result<Vec<serde_json::Value>, AdminError> {
        let Some(w) = &self.watch else { return Ok(Vec::new()) };
        Ok(w.alerts(limit).iter().filter_map(|a| serde_json::to_value(a).ok()).collect())
    }

    fn watch_restrictions(&self) -> Result<Vec<warden_http::admin::WatchRestrictionView>, AdminError> {
        let Some(w) = &self.watch else { return Ok(Vec::new()) };
        Ok(w.restrictions()
            .into_iter()
            .flat_map(|(k, rs)| {
                rs.into_iter().map(move |r| warden_http::admin::WatchRestrictionView {
                    principal_kind: k.0.as_str().to_owned(),
                    principal: k.1.to_string(),
                    action: r.action.to_owned(),
                    rule: r.rule,
                    since: r.since,
                    until: r.until,
                    rate: r.rate,
                })
            })
            .collect())
    }

    fn watch_lift(&self, kind: &str, name: &str) -> Result<bool, AdminError> {
        use warden_policy::PrincipalKind;
        let Some(w) = &self.watch else { return Ok(false) };
        let kind = match kind {
            "user" => PrincipalKind::User,
            "certificate" => PrincipalKind::Certificate,
            "token" => PrincipalKind::Token,
            "fallback" => PrincipalKind::Fallback,
            other => return Err(AdminError::bad_request(format!("unknown principal kind '{other}'"))),
        };
        let lifted = w.lift(&(kind, Arc::from(name)));
        if lifted {
            info!(principal = %Escaped(name), "admin API: behaviour watch restriction lifted");
        }
        Ok(lifted)
    }

    fn policy(&self) -> PolicyStore {
        self.policy.store()
    }

    fn update_policy(&self, edit: PolicyEdit<'_>) -> Result<(), AdminError> {
        self.policy.update(edit)?;
        self.share_policy();
        Ok(())
    }

    fn clients(&self) -> Vec<ClientInfo> {
        self.live.list()
    }

    fn kick(&self, client_id: &str) -> bool {
        let kicked = self.live.kick(client_id);
        if kicked {
            info!(client_id, "admin API: client kicked");
        }
        kicked
    }

    fn bans(&self) -> Vec<Ban> {
        let mut all = self.bans.list();
        let now = crate::clock::unix_now();
        all.extend(self.guard.auto_bans(std::time::Instant::now()).into_iter().map(|(ip, left)| Ban {
            kind: BanKind::Ip,
            value: ip.to_string(),
            expires_at: Some(now + left.as_secs().max(1)),
            reason: Some(AUTO_BAN_REASON.to_owned()),
        }));
        all
    }

    fn add_ban(&self, ban: Ban) -> Result<(), AdminError> {
        self.apply_ban(ban)?;
        self.share_bans();
        Ok(())
    }

    fn remove_ban(&self, kind: BanKind, value: &str) -> Result<bool, AdminError> {
        let listed = self.apply_unban(kind, value)?;
        // An automatic ban is lifted by its address (either spelling of an IPv4 peer); those
        // are this node's own (each node counts its failed logins).
        let lifted = kind == BanKind::Ip
            && value.parse::<std::net::IpAddr>().is_ok_and(|ip| self.guard.lift(ip, std::time::Instant::now()));
        if lifted {
            info!(address = %Escaped(value), "admin API: automatic ban lifted");
        }
        if listed {
            self.share_bans();
        }
        Ok(listed || lifted)
    }

    fn kick_elsewhere(&self, client_id: &str) -> warden_http::admin::BackendFuture<bool> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { false }) };
        let id = client_id.to_owned();
        Box::pin(async move { c.end_elsewhere(&id, ReasonCode::ADMINISTRATIVE_ACTION.0).await })
    }

    fn clients_elsewhere(&self) -> warden_http::admin::BackendFuture<Vec<ClientInfo>> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { Vec::new() }) };
        Box::pin(async move {
            let me = c.node().to_owned();
            let mut v: Vec<ClientInfo> = c
                .connected_clients()
                .await
                .into_iter()
                .filter(|e| e.node != me)
                .map(|e| ClientInfo {
                    client_id: e.client_id,
                    principal: e.identity,
                    peer: "-".into(),
                    protocol: "-".into(),
                    connected_at: 0,
                    node: Some(e.node),
                    ..ClientInfo::default()
                })
                .collect();
            v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            v
        })
    }

    fn oauth_clients(&self) -> Result<Vec<OAuthClientInfo>, AdminError> {
        let all =
            crate::admin::oauth_store::all_clients(&self.config).map_err(|e| internal("loading OAuth clients", e))?;
        Ok(all.into_iter().map(|c| OAuthClientInfo { id: c.id, scopes: c.scopes, roles: c.roles }).collect())
    }

    fn put_oauth_client(&self, client: OAuthClientInfo, secret_hash: String) -> Result<(), AdminError> {
        crate::admin::oauth_store::put_stored_client(
            &self.config,
            &client.id,
            secret_hash,
            client.scopes,
            client.roles,
        )
        .map_err(|e| AdminError::bad_request(format!("{e:#}")))?;
        self.share_oauth_clients();
        self.refresh_oauth()
    }

    fn remove_oauth_client(&self, id: &str) -> Result<bool, AdminError> {
        let removed = crate::admin::oauth_store::remove_stored_client(&self.config.data_dir, id)
            .map_err(|e| internal("saving OAuth clients", e))?;
        if removed {
            self.share_oauth_clients();
        }
        self.refresh_oauth()?;
        Ok(removed)
    }

    fn audit(&self, record: &AuditRecord) {
        if let Err(e) = self.audit.append(record) {
            tracing::error!(
                error = %format!("{e:#}"),
                action = %record.action,
                "admin audit trail: a change could not be recorded"
            );
        }
    }

    fn audit_since(&self, since: u64, limit: usize) -> Result<Vec<AuditRecord>, AdminError> {
        self.audit.since(since, limit).map_err(|e| internal("reading the audit trail", e))
    }

    fn posture(&self) -> Result<serde_json::Value, AdminError> {
        let now = i64::try_from(crate::auth::tokens::unix_now()).unwrap_or(i64::MAX);
        let input = crate::admin::posture::load(
            &self.config,
            Some(self.policy.store()),
            self.live.certificate_connections(),
            now,
        );
        Ok(crate::admin::posture::report_json(&crate::admin::posture::audit(&input)))
    }

    fn sessions(&self) -> Vec<warden_http::admin::SessionView> {
        let node = self.cluster.as_ref().map(|c| c.node().to_owned());
        self.broker
            .session_summaries(false, std::time::Instant::now())
            .into_iter()
            .map(|s| warden_http::admin::SessionView { node: node.clone(), ..session_view(s) })
            .collect()
    }

    fn sessions_elsewhere(&self) -> warden_http::admin::BackendFuture<Vec<warden_http::admin::SessionView>> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { Vec::new() }) };
        Box::pin(async move {
            let mut all = Vec::new();
            for (node, body) in c.sessions_elsewhere().await {
                match serde_json::from_slice::<Vec<warden_http::admin::SessionView>>(&body) {
                    Ok(list) => all.extend(
                        list.into_iter().map(|s| warden_http::admin::SessionView { node: Some(node.clone()), ..s }),
                    ),
                    Err(e) => {
                        tracing::warn!(node = %Escaped(&node), error = %e, "cluster: another node's sessions did not decode")
                    }
                }
            }
            // The sessions kept by nodes that are gone (listed without their subscriptions, as
            // the live nodes' are).
            let dead = c.sessions_of_dead_nodes().await.unwrap_or_default();
            all.extend(
                dead.into_iter().map(|s| warden_http::admin::SessionView {
                    subscriptions: Vec::new(),
                    ..dead_node_session_view(s)
                }),
            );
            all.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            all
        })
    }

    fn stats_cluster(&self) -> warden_http::admin::BackendFuture<Option<warden_http::admin::ClusterStatsView>> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { None }) };
        let here = AdminBackend::stats(self);
        Box::pin(async move {
            let (answers, missing) = c.stats_elsewhere().await?;
            let mut v = warden_http::admin::ClusterStatsView { missing, ..Default::default() };
            v.total.add(&here);
            v.nodes.insert(c.node().to_owned(), here);
            for (node, body) in answers {
                match serde_json::from_slice::<warden_http::admin::StatsView>(&body) {
                    Ok(s) => {
                        v.total.add(&s);
                        v.nodes.insert(node, s);
                    }
                    Err(e) => {
                        tracing::warn!(node = %Escaped(&node), error = %e, "cluster: another node's counters did not decode");
                        v.missing.push(node);
                    }
                }
            }
            v.missing.sort();
            Some(v)
        })
    }

    fn session(&self, client_id: &str) -> Option<warden_http::admin::SessionView> {
        let node = self.cluster.as_ref().map(|c| c.node().to_owned());
        self.broker
            .session_summary(client_id, std::time::Instant::now())
            .map(|s| warden_http::admin::SessionView { node, ..session_view(s) })
    }

    fn session_elsewhere(
        &self,
        client_id: &str,
    ) -> warden_http::admin::BackendFuture<Option<warden_http::admin::SessionView>> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { None }) };
        let id = client_id.to_owned();
        Box::pin(async move {
            let Some((node, body)) = c.session_elsewhere(&id).await else {
                return c.session_of_dead_node(&id).await.map(dead_node_session_view);
            };
            match serde_json::from_slice::<warden_http::admin::SessionView>(&body) {
                Ok(s) => Some(warden_http::admin::SessionView { node: Some(node), ..s }),
                Err(e) => {
                    tracing::warn!(node = %Escaped(&node), error = %e, "cluster: another node's session did not decode");
                    None
                }
            }
        })
    }

    fn delete_session_elsewhere(&self, client_id: &str) -> warden_http::admin::BackendFuture<bool> {
        let Some(c) = self.cluster.clone() else { return Box::pin(async { false }) };
        let id = client_id.to_owned();
        Box::pin(async move {
            if c.drop_session_elsewhere(&id).await {
                return true;
            }
            let dropped = c.drop_session_of_dead_node(&id).await;
            if dropped {
                info!(client_id = %Escaped(&id), "admin API: a dead node's session removed");
            }
            dropped
        })
    }

    fn delete_session(&self, client_id: &str) -> bool {
        // The live connection first (v5 DISCONNECT 0x98 Administrative action), then the
        // session: its subscriptions, queue and stored record, and its will, discarded.
        self.live.kick(client_id);
        let removed = self.broker.discard_session(client_id);
        if removed {
            info!(client_id = %crate::logsafe::Escaped(client_id), "admin API: session removed");
        }
        removed
    }

    fn retained(&self, filter: &str, limit: usize) -> Result<Vec<warden_http::admin::RetainedView>, AdminError> {
        let f = mqtt_codec::TopicFilter::new(filter)
            .map_err(|e| AdminError::bad_request(format!("filter {filter:?}: {e}")))?;
        if f.shared().is_some() {
            return Err(AdminError::bad_request("a shared subscription filter selects no retained message"));
        }
        Ok(self
            .broker
            .retained_summaries(filter, limit)
            .into_iter()
            .map(|r| warden_http::admin::RetainedView {
                topic: r.topic,
                payload_bytes: r.payload_bytes,
                qos: r.qos,
                publisher: r.publisher,
            })
            .collect())
    }

    fn delete_retained(&self, topic: &str) -> Result<bool, AdminError> {
        mqtt_codec::TopicName::new(topic).map_err(|e| AdminError::bad_request(format!("topic {topic:?}: {e}")))?;
        let cleared = self.broker.clear_retained(topic);
        if cleared {
            info!(topic = %crate::logsafe::Escaped(topic), "admin API: retained message cleared");
        }
        Ok(cleared)
    }
}

fn session_view(s: warden_core::broker::SessionSummary) -> warden_http::admin::SessionView {
    warden_http::admin::SessionView {
        client_id: s.client_id,
        principal: s.principal,
        connected: s.connected,
        expiry_interval: s.expiry_interval,
        disconnected_for: s.disconnected_for,
        subscription_count: s.subscription_count,
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|(filter, qos)| warden_http::admin::SubscriptionView { filter, qos })
            .collect(),
        queued: s.queued,
        queued_bytes: s.queued_bytes,
        inflight: s.inflight,
        node: None,
        node_gone: false,
    }
}

/// A session a dead node of the cluster kept, as the admin API shows it (offline, with its
/// node, `node_gone`).
fn dead_node_session_view(s: warden_cluster::DeadNodeSession) -> warden_http::admin::SessionView {
    let r = s.record;
    warden_http::admin::SessionView {
        client_id: r.client_id,
        principal: s.principal.unwrap_or_default(),
        connected: false,
        expiry_interval: r.expiry,
        disconnected_for: None,
        subscription_count: r.subs.len(),
        subscriptions: r
            .subs
            .iter()
            .map(|sub| warden_http::admin::SubscriptionView { filter: sub.filter.clone(), qos: sub.options & 3 })
            .collect(),
        queued: 0,
        queued_bytes: 0,
        inflight: 0,
        node: Some(r.node),
        node_gone: true,
    }
}
