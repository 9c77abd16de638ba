//! The running broker: binds every listener, accepts connections (one task each), runs the
//! housekeeping (`tick`) and `$SYS` timers, and shuts down on request. This is the one place
//! where tasks are spawned for connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};
use warden_core::{Broker, BrokerConfig};
use warden_policy::PolicyAuthorizer;

use crate::admin::oauth_store::oauth_clients;
use crate::admin::policy_store::PolicyManager;
use crate::admin::trust::Trust;
use crate::admission::bans::BanList;
use crate::admission::guard::{Admitted, Guard, Refusal};
use crate::auth::tokens::TokenAuth;
use crate::auth::Authenticator;
use crate::config::{AuthzConfig, Config, DurabilityMode, ListenerProtocol, OnDeny};
use crate::conn::live::LiveClients;
use crate::conn::{BoundListener, ConnContext};
use crate::tls::TlsListener;
use warden_core::limits::hit;
use warden_http::{OAuthService, OAuthSettings};
use warden_policy::trust::TrustEvent;
use warden_store::{Durability, Store};

/// Divide the file descriptors the soft limit leaves between the MQTT listeners and the HTTP
/// listener ([`crate::admission::fdlimit::plan`]); logs the limit, and the warning once when the
/// configured caps do not fit.
fn fd_plan(cfg: &Config, listeners: &[BoundListener], http: Option<SocketAddr>) -> crate::admission::fdlimit::FdPlan {
    let demand = crate::admission::fdlimit::Demand {
        mqtt_listeners: listeners.iter().map(BoundListener::url).collect(),
        mqtt_max: cfg.limits.max_connections,
        http: http.zip(cfg.http.as_ref()).map(|(a, h)| (format!("{}://{a}", h.scheme()), h.limits.max_connections)),
    };
    let limit = match crate::admission::fdlimit::current() {
        Ok((soft, _)) => soft,
        Err(e) => {
            warn!(error = %e, "cannot read the file descriptor limit: the configured connection caps stand");
            u64::MAX
        }
    };
    let plan = crate::admission::fdlimit::plan(limit, &demand);
    info!(
        limit = plan.limit,
        budget = plan.budget,
        mqtt_max_connections = plan.mqtt,
        http_max_connections = plan.http,
        "file descriptors"
    );
    if let Some(w) = &plan.warning {
        warn!("{w}");
    }
    plan
}

/// A running broker.
pub struct Server {
    /// Bound listeners, in configuration order.
    pub listeners: Vec<BoundListener>,
    /// The broker core (for inspection and tests).
    pub broker: Arc<Broker>,
    /// Authentication (reloadable).
    pub auth: Arc<Authenticator>,
    /// TLS listeners' certificates (reloadable).
    pub tls: Vec<Arc<TlsListener>>,
    /// The built-in OAuth 2.0 token service, when enabled.
    pub oauth: Option<Arc<OAuthService>>,
    /// The HTTP listener's address, when configured.
    pub http_addr: Option<SocketAddr>,
    /// The connection caps in force, after the file descriptor limit (`fdlimit`).
    pub fd_plan: crate::admission::fdlimit::FdPlan,
    /// The policy in force: ACL file and policy store.
    pub policy: Arc<PolicyManager>,
    /// Live connections.
    pub live: Arc<LiveClients>,
    /// The admin ban list.
    pub bans: Arc<BanList>,
    /// The hashing budget shared by MQTT and HTTP (for inspection and tests).
    pub hashing: Arc<warden_http::HashBudget>,
    /// Where changes of trust are applied (revocation, removal, narrowing).
    pub trust: Arc<Trust>,
    config: Config,
    /// The configuration as last read (at start or by a SIGHUP): what a reload compares with.
    applied: parking_lot::Mutex<Config>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The durable store (`[persistence]`), closed at shutdown.
    store: Option<Arc<Store>>,
    /// Where idle connections park (stopped at shutdown, after they were told to end).
    parking: Option<Arc<crate::conn::park::ParkingLot>>,
    /// This node's side of the cluster (`[cluster]`), if any.
    pub cluster: Option<Arc<warden_cluster::Cluster>>,
    /// Where this node shares with the cluster what a reload changed.
    sync: Option<Arc<crate::admin::cluster_sync::ClusterSync>>,
}

impl Drop for Server {
    /// Whatever way the server ends, the store commits what it holds and stops its writer.
    fn drop(&mut self) {
        self.stop();
        if let Some(s) = &self.store {
            s.close();
        }
    }
}

/// Create `dir` (and missing parents) for the owner only (0700): it holds the store, keys and
/// credential files. An existing directory is left as the operator made it, with a warning
/// when others may read it.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o007 != 0 {
        warn!(data_dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "data_dir is accessible to every user: consider chmod 700");
    }
    Ok(())
}

/// Open `data_dir/state.redb` and say what it held (and what it had to drop).
fn open_store(cfg: &Config) -> crate::Result<(Arc<Store>, warden_store::Loaded)> {
    private_dir(&cfg.data_dir)
        .map_err(|e| crate::Error::io(format!("cannot create data_dir {}", cfg.data_dir.display()), e))?;
    let path = cfg.data_dir.join("state.redb");
    let durability = match cfg.persistence.durability {
        DurabilityMode::Sync => Durability::Sync,
        DurabilityMode::Batched => Durability::Batched,
        DurabilityMode::None => Durability::None,
    };
    let started = Instant::now();
    let (store, loaded) = Store::open(&path, durability).map_err(crate::Error::Store)?;
    store.set_commit_interval(cfg.persistence.commit_interval);
    let r = &loaded.report;
    info!(
        path = %path.display(),
        ?durability,
        sessions = r.sessions,
        subscriptions = r.subscriptions,
        messages = r.deliveries,
        retained = r.retained,
        expired = r.expired,
        ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    if r.migrated > 0 {
        info!(path = %path.display(), sessions = r.migrated, "store: subscriptions moved out of version 1 session records");
    }
    for d in &r.dropped {
        warn!(path = %path.display(), dropped = %d, "store: record dropped");
    }
    if let Some(a) = &r.moved_aside {
        error!(path = %path.display(), kept_at = %a.display(), "store was damaged: rebuilt from what was readable; the damaged file is kept");
    }
    Ok((store, loaded))
}

/// Map the validated configuration onto the core's limits.
pub fn broker_config(cfg: &Config) -> BrokerConfig {
    let l = &cfg.limits;
    BrokerConfig {
        max_packet_size: l.max_packet_size,
        receive_maximum: l.receive_maximum,
        max_inflight: l.max_inflight,
        topic_alias_maximum: l.topic_alias_maximum,
        max_queued_messages: l.max_queued_messages,
        max_queued_bytes: l.max_queued_bytes,
        max_queued_bytes_per_principal: l.queued_bytes_per_principal(),
        max_keep_alive: l.max_keep_alive,
        max_session_expiry: l.max_session_expiry,
        max_topic_levels: l.max_topic_levels,
        max_subscriptions_per_client: l.max_subscriptions_per_client,
        max_sessions_per_principal: l.max_sessions_per_principal,
        max_subscriptions_per_principal: l.max_subscriptions_per_principal,
        max_subscription_bytes_per_principal: l.max_subscription_bytes_per_principal,
        max_retained_messages_per_principal: l.max_retained_messages_per_principal,
        max_retained_bytes_per_principal: l.max_retained_bytes_per_principal,
        max_retained_messages: l.max_retained_messages,
        max_retained_bytes: l.max_retained_bytes,
        sys_interval: l.sys_interval,
        check_retain_source: cfg.authz.check_retain_source,
        // The core reads no clock: the seed of assigned client ids is the start time.
        id_seed: crate::clock::unix_nanos(),
    }
}

/// The token service: its signing key lives in `<data_dir>/oauth/signing-key.pem` (made on
/// first start, mode 0600); revoking a token disconnects the connections that used it, and the
/// revocation is kept in `<data_dir>/oauth/revoked.json` until the token expires.
fn oauth_service(
    cfg: &Config,
    http: &crate::config::HttpConfig,
    trust: &Arc<Trust>,
) -> crate::Result<Arc<OAuthService>> {
    let keys = crate::admin::oauth_store::load_keys(&cfg.data_dir)?;
    if cfg.cluster.is_some() && cfg.oauth.issuer.is_none() {
        warn!(
            "[oauth] issuer is not set on a node of a cluster: this node's tokens carry its own address as issuer \
             and the other nodes refuse them; set the same issuer (the address clients use) on every node"
        );
    }
    let issuer = cfg.oauth.issuer.clone().unwrap_or_else(|| format!("{}://{}", http.scheme(), http.bind));
    let service = Arc::new(OAuthService::new(
        OAuthSettings { issuer, token_ttl: cfg.oauth.token_ttl, audience: cfg.oauth.audience.clone() },
        oauth_clients(cfg)?,
        keys,
        Arc::new(crate::clock::unix_now),
    ));
    // Revocations survive restarts: saved on every revocation, loaded here.
    crate::admin::revocations::attach(&service, &cfg.data_dir)?;
    let trust = trust.clone();
    service.on_revoke(Box::new(move |jti| {
        trust.apply(&TrustEvent::TokenRevoked { jti: jti.to_owned() });
    }));
    Ok(service)
}

/// The authorization policy of the ACL file alone (for `warden check`).
pub fn load_policy(cfg: &AuthzConfig) -> crate::Result<PolicyAuthorizer> {
    Ok(PolicyAuthorizer::new(crate::admin::policy_store::load_acl(cfg)?, cfg.on_deny == OnDeny::Disconnect))
}

impl Server {
    /// Bind every listener and start serving.
    pub async fn start(cfg: &Config) -> crate::Result<Server> {
        let live = Arc::new(LiveClients::default());
        // Every change of trust (revocation, removal, narrowing) is applied here (SPEC §10).
        let trust = Trust::new(live.clone());
        let oauth = match (&cfg.http, cfg.oauth.enabled) {
            (Some(http), true) => Some(oauth_service(cfg, http, &trust)?),
            _ => None,
        };
        let tokens = TokenAuth::new(cfg.auth.jwt.as_ref(), oauth.clone())?;
        // One hashing budget for the process: MQTT passwords, OAuth client secrets, the admin
        // token; HTTP holds at most its share of it.
        let l = &cfg.limits;
        let hash_slots = if l.auth_hash_concurrency == 0 {
            crate::auth::default_hash_concurrency()
        } else {
            l.auth_hash_concurrency
        };
        let hashing = warden_http::HashBudget::new(hash_slots, l.auth_hash_http_max, l.auth_hash_wait);
        let auth = Arc::new(Authenticator::load(&cfg.auth, cfg.identity, tokens)?.with_hash_budget(hashing.clone()));
        let any_method = cfg.listeners.iter().any(|l| l.anonymous(&cfg.auth))
            || cfg.auth.password_file.is_some()
            || cfg.auth.jwt.is_some()
            || (cfg.http.is_some() && cfg.oauth.enabled)
            || cfg.listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
        if !any_method {
            warn!("no authentication method is configured and anonymous access is off: every client will be refused");
        }
        // The same warnings as `warden check`: inline secrets, secret files open to others.
        for w in cfg.warnings() {
            warn!("{w}");
        }
        let bans = Arc::new(BanList::load(&cfg.data_dir)?);
        let policy =
            Arc::new(PolicyManager::load(&cfg.data_dir, &cfg.authz, auth.clone(), live.clone(), trust.clone())?);
        // The behaviour watch (docs/watch.md): asked by the authorizer, so attached before the
        // broker takes its first one.
        let watch = cfg.watch.enabled.then(|| crate::watch::Watch::new(cfg.watch.clone(), None));
        if let Some(w) = &watch {
            policy.attach_watch(w.clone());
        }
        if !policy.has_rules() {
            warn!("no ACL file and no policy-store rules: every authenticated client (but token clients, bound by their scopes) may publish and subscribe anywhere");
        }
        let store = if cfg.persistence.enabled { Some(open_store(cfg)?) } else { None };
        let broker = match &store {
            Some((store, _)) => Broker::with_store(
                broker_config(cfg),
                policy.authorizer(),
                Some(store.clone() as Arc<dyn warden_core::persist::Persist>),
                Instant::now(),
            ),
            None => Broker::new(broker_config(cfg), policy.authorizer(), Instant::now()),
        };
        let store = store.map(|(store, loaded)| {
            broker.restore(loaded.sessions, loaded.retained, Instant::now());
            store
        });
        policy.attach(broker.clone());
        if let Some(w) = &watch {
            // A quarantine begins or ends: the authorizer is swapped, so cached allows and
            // queued deliveries are decided again (weak: the manager holds the watch).
            let p = Arc::downgrade(&policy);
            w.on_quarantine_change(Box::new(move || {
                if let Some(p) = p.upgrade() {
                    p.reapply();
                }
            }));
        }
        trust.attach(broker.clone());
        // A node of a cluster (SPEC §11): attached before any client connects.
        let cluster = match &cfg.cluster {
            Some(c) => Some(warden_cluster::Cluster::start(cluster_config(c), broker.clone()).await?),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(ConnContext {
            broker: broker.clone(),
            auth: auth.clone(),
            max_packet_size: cfg.limits.max_packet_size,
            connect_timeout: cfg.limits.connect_timeout,
            shutdown: shutdown_rx.clone(),
            store: store.clone(),
            cluster: cluster.clone(),
            publish_limits: crate::admission::limits::PublishLimits {
                rate: cfg.limits.max_publish_rate,
                bandwidth: cfg.limits.max_publish_bandwidth,
                max_packet_size: cfg.limits.max_packet_size,
                throttle: cfg.limits.publish_throttle,
            },
            memory: crate::admission::limits::MemoryGauge::new(cfg.limits.max_memory),
            write_stall_timeout: cfg.limits.write_stall_timeout,
            limit_log: crate::admission::limits::LogOnce::new(crate::admission::limits::LOG_INTERVAL, 10_000),
            refusal_log: crate::admission::limits::LogBurst::new(Duration::from_secs(10), 20, 10_000),
            tls_handshake_timeout: cfg.limits.tls_handshake_timeout,
            live: live.clone(),
            bans: bans.clone(),
            arrivals: Default::default(),
            watch: watch.clone(),
            parking: if cfg.limits.idle_park_after.is_zero() {
                None
            } else {
                Some(
                    crate::conn::park::ParkingLot::start(cfg.limits.idle_park_after, cfg.limits.idle_park_max)
                        .map_err(|e| crate::Error::io("cannot start the parking lot", e))?,
                )
            },
        });
        let mut tasks = JoinSet::new();
        let mut listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        let live_count = Arc::new(AtomicUsize::new(0));
        let l = &cfg.limits;
        let guard =
            Guard::with_backoff(l.max_connections_per_ip, l.connect_rate_per_ip, l.auth_fail_ban, l.auth_fail_backoff);
        // The HTTP side checks secrets through the same guard, before hashing, and within the
        // HTTP share of the same hashing budget.
        let secret_checks = warden_http::SecretChecks {
            guard: Some(Arc::new(crate::admission::guard::HttpGuard::new(guard.clone(), broker.clone()))),
            budget: hashing.clone(),
        };
        if let Some(o) = &oauth {
            o.set_secret_checks(secret_checks.clone());
        }
        // Bind every listener first, then divide the file descriptors between them.
        let mut bound = Vec::new();
        for l in &cfg.listeners {
            let tls = match &l.tls {
                Some(t) => {
                    let t = Arc::new(TlsListener::load(t).map_err(|source| crate::Error::Tls {
                        listener: format!("{} listener {}", l.protocol, l.bind),
                        source,
                    })?);
                    tls_listeners.push(t.clone());
                    Some(t)
                }
                None => None,
            };
            let tcp = TcpListener::bind(l.bind)
                .await
                .map_err(|e| crate::Error::io(format!("cannot listen on {} ({})", l.bind, l.protocol.as_str()), e))?;
            let addr = tcp.local_addr().map_err(|e| crate::Error::io(format!("{}: no local address", l.bind), e))?;
            let open = Arc::new(crate::conn::OpenCounts { total: live_count.clone(), listener: AtomicUsize::new(0) });
            listeners.push(BoundListener { protocol: l.protocol, addr, path: l.path.clone(), open });
            bound.push((tcp, l, tls));
        }
        let http_tcp = match &cfg.http {
            Some(http) => Some(
                TcpListener::bind(http.bind)
                    .await
                    .map_err(|e| crate::Error::io(format!("cannot listen on {} (http)", http.bind), e))?,
            ),
            None => None,
        };
        let http_addr = http_tcp
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
            .map_err(|e| crate::Error::io("the HTTP listener has no local address", e))?;
        let fd_plan = fd_plan(cfg, &listeners, http_addr);
        for ((tcp, l, tls), b) in bound.into_iter().zip(&listeners) {
            let name = b.url();
            let open = b.open.clone();
            let ctx = ctx.clone();
            let live = live_count.clone();
            let bans = bans.clone();
            let max = fd_plan.mqtt;
            let protocol = l.protocol;
            let path = Arc::new(crate::conn::ws::WsSettings::new(&l.path, &l.allowed_origins));
            let mut stop = shutdown_rx.clone();
            let guard = guard.clone();
            let accept_errors = crate::admission::fdlimit::AcceptErrors::new(name);
            let proxy_trusted = l.proxy_protocol.then(|| Arc::new(l.proxy_trusted.clone()));
            let listener_auth = l.auth_rules();
            let endpoint = Arc::new(Endpoint { protocol, tls: tls.clone(), path: path.clone(), auth: listener_auth });
            tasks.spawn(async move {
                loop {
                    let (sock, peer) = tokio::select! {
                        r = tcp.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                // EMFILE and friends: back off briefly rather than spin.
                                accept_errors.failed(&e).await;
                                continue;
                            }
                        },
                        _ = stop.changed() => break,
                    };
                    let lim = &ctx.broker.stats.limits;
                    if live.load(Ordering::Relaxed) >= max {
                        hit(&lim.max_connections);
                        ctx.log_limit("max_connections", "max_connections", "connection refused");
                        drop(sock);
                        continue;
                    }
                    if let Some(trusted) = &proxy_trusted {
                        // PROXY protocol: only the load balancers speak here, and the per-address
                        // checks wait for the address their header gives.
                        if !trusted.iter().any(|net| net.contains(peer.ip())) {
                            tracing::debug!(%peer, "connection closed: not from a proxy_trusted network");
                            drop(sock);
                            continue;
                        }
                        let live_slot = crate::conn::ConnCount::new(open.clone());
                        let serve = proxied(
                            sock,
                            peer,
                            endpoint.clone(),
                            Admission { bans: bans.clone(), guard: guard.clone() },
                            ctx.clone(),
                        );
                        tokio::spawn(Box::pin(serve).map(move |()| drop(live_slot)));
                        continue;
                    }
                    // Admin bans, per-address limits and bans, before any handshake or hashing.
                    let Some(slot) = admit(&bans, &guard, &ctx, peer) else {
                        drop(sock);
                        continue;
                    };
                    let live_slot = crate::conn::ConnCount::new(open.clone());
                    let ctx = ctx.clone();
                    // A task's future lives as long as its connection: plain MQTT gets the
                    // small one; WebSocket and TLS handshakes (kilobytes of state) are boxed
                    // so that they do not make every idle TCP connection pay for them.
                    if tls.is_none() && protocol == ListenerProtocol::Mqtt {
                        let _ = sock.set_nodelay(true);
                        tokio::spawn(crate::conn::run(
                            sock,
                            peer,
                            None,
                            listener_auth,
                            Some(slot),
                            Some(live_slot),
                            ctx,
                        ));
                    } else {
                        let serve = serve_socket(sock, peer, endpoint.clone(), slot, ctx);
                        tokio::spawn(Box::pin(serve).map(move |()| drop(live_slot)));
                    }
                }
            });
        }
        // The admin API's view of the broker; on a node of a cluster, also where the other
        // nodes' changes are applied (with or without an [http] listener here).
        let backend = Arc::new(crate::admin::backend::Backend {
            policy: policy.clone(),
            live: live.clone(),
            bans: bans.clone(),
            guard: guard.clone(),
            oauth: oauth.clone(),
            trust: trust.clone(),
            config: cfg.clone(),
            broker: broker.clone(),
            audit: Arc::new(crate::admin::audit_log::AuditLog::new(&cfg.data_dir)),
            cluster: cluster.clone(),
            tls: tls_listeners.clone(),
            history: Default::default(),
            oauth_shared: Default::default(),
            watch: watch.clone(),
        });
        // Enrollment by claim: `$warden/enroll/` requests go to its service (and `POST /enroll`
        // on the HTTP listener, below).
        let enroll = match cfg.enroll.enabled {
            true => {
                let e = crate::enroll::Enroll::new(&cfg.enroll, &cfg.data_dir, backend.clone())?;
                broker.attach_services(e.clone());
                Some(e)
            }
            false => None,
        };
        // The behaviour watch's windows: rules evaluated, actions applied.
        if let Some(w) = &watch {
            let engine = crate::admin::watch::Engine {
                watch: w.clone(),
                backend: backend.clone(),
                webhook: w.cfg.webhook_url.as_deref().map(crate::admin::watch::Webhook::new),
            };
            let mut stop = shutdown_rx.clone();
            let period = w.cfg.window;
            tasks.spawn(async move {
                let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => engine.tick(),
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        // The Overview's history: the counters every few seconds.
        {
            let backend = backend.clone();
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(crate::admin::backend::STATS_EVERY);
                loop {
                    tokio::select! {
                        _ = every.tick() => backend.sample_stats(),
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        let sync = match (&cluster, &cfg.cluster) {
            (Some(c), Some(settings)) => {
                let sync =
                    crate::admin::cluster_sync::ClusterSync::new(backend.clone(), settings.node.clone(), auth.clone());
                c.attach_control(sync.clone(), crate::admin::cluster_sync::DOCUMENTS);
                sync.start();
                Some(sync)
            }
            _ => None,
        };
        // The HTTP side: token service, health.
        if let (Some(http), Some(tcp)) = (&cfg.http, http_tcp) {
            let http_tls = match &http.tls {
                Some(t) => {
                    let t = Arc::new(TlsListener::load(t).map_err(|source| crate::Error::Tls {
                        listener: format!("[http] listener {}", http.bind),
                        source,
                    })?);
                    tls_listeners.push(t.clone());
                    Some(t)
                }
                None => None,
            };
            let metrics_auth = Arc::new(crate::http::metrics::MetricsAuth::new(
                http.metrics_token_hash.as_ref().map(|s| s.0.clone()),
                hashing.clone(),
            ));
            let metrics = Arc::new(crate::http::metrics::Metrics {
                broker: broker.clone(),
                store: store.clone(),
                bans: bans.clone(),
                guard: guard.clone(),
                listeners: listeners.clone(),
                parking: ctx.parking.clone(),
                cluster: cluster.clone(),
            });
            // /healthz: the process answers. /livez: the same (the Kubernetes name).
            // /readyz: listeners bound and the store loaded (both happen before this line), and
            // with a [cluster], connected to NATS and holding the cluster's retained messages (503
            // while not).
            let ready_cluster = cluster.clone();
            let mut app = axum::Router::new()
                .route("/healthz", axum::routing::get(|| async { "ok\n" }))
                .route("/livez", axum::routing::get(|| async { "ok\n" }))
                .route(
                    "/readyz",
                    axum::routing::get(move || {
                        let c = ready_cluster.clone();
                        async move {
                            match c {
                                Some(c) if !c.connected() => {
                                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready: no NATS connection\n")
                                }
                                Some(c) if !c.ready() => (
                                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                    "not ready: the cluster's retained messages are still loading\n",
                                ),
                                _ => (axum::http::StatusCode::OK, "ready\n"),
                            }
                        }
                    }),
                )
                .route(
                    "/metrics",
                    axum::routing::get(move |headers: axum::http::HeaderMap| {
                        let (m, auth) = (metrics.clone(), metrics_auth.clone());
                        async move {
                            use axum::response::IntoResponse as _;
                            if !auth.allows(&headers).await {
                                return (
                                    axum::http::StatusCode::UNAUTHORIZED,
                                    [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                                    "a bearer token is required for /metrics\n",
                                )
                                    .into_response();
                            }
                            (
                                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                                m.render(),
                            )
                                .into_response()
                        }
                    }),
                );
            if let Some(o) = &oauth {
                app = app.merge(warden_http::router(o.clone()));
            }
            let admin_auth = warden_http::admin::AdminAuth {
                token_hash: http.admin_token_hash.as_ref().map(|s| s.0.clone()),
                oauth: oauth.clone(),
                checks: secret_checks.clone(),
                verified: Default::default(),
            };
            app = app.merge(warden_http::admin::admin_router(backend, admin_auth));
            if let Some(e) = &enroll {
                app = app.merge(crate::enroll::router(e.clone(), secret_checks.guard.clone()));
            }
            // The security console (SPEC §12): a static page that calls the admin API above.
            app = app.merge(warden_http::console::console_router());
            let mut limits = http.limits;
            limits.max_connections = fd_plan.http.unwrap_or(limits.max_connections);
            tasks.spawn(crate::http::serve::serve(tcp, app, limits, bans.clone(), http_tls, shutdown_rx.clone()));
        }
        // Housekeeping: due wills and expired sessions, once a second.
        {
            let broker = broker.clone();
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = every.tick() => broker.tick(Instant::now()),
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        // The memory high-water mark: sample the core's queues, move the pause threshold.
        if ctx.memory.enabled() {
            let broker = broker.clone();
            let memory = ctx.memory.clone();
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut every = tokio::time::interval(crate::admission::limits::MemoryGauge::SAMPLE);
                let mut over = false;
                loop {
                    tokio::select! {
                        _ = every.tick() => {
                            let now_over = memory.set_queued(broker.queued_bytes());
                            if now_over != over {
                                let used = memory.used();
                                if now_over {
                                    warn!(used, "above max_memory: the heaviest publishers are not read");
                                } else {
                                    info!(used, "back under max_memory");
                                }
                                over = now_over;
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        // $SYS topics.
        {
            let broker = broker.clone();
            let mut stop = shutdown_rx.clone();
            let period = cfg.limits.sys_interval;
            tasks.spawn(async move {
                let mut every = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = every.tick() => broker.publish_sys(Instant::now()),
                        _ = stop.changed() => break,
                    }
                }
            });
        }
        Ok(Server {
            listeners,
            broker,
            auth,
            tls: tls_listeners,
            oauth,
            http_addr,
            fd_plan,
            policy,
            live,
            bans,
            hashing,
            trust,
            config: cfg.clone(),
            applied: parking_lot::Mutex::new(cfg.clone()),
            shutdown,
            tasks,
            store,
            parking: ctx.parking.clone(),
            cluster,
            sync,
        })
    }

    /// Connections parked now (idle, without a task; see [`crate::conn::park`]).
    pub fn parked_connections(&self) -> usize {
        self.parking.as_ref().map_or(0, |p| p.parked())
    }

    /// Parked connections resumed since the start (0 when parking is off).
    pub fn connection_resumes(&self) -> u64 {
        self.parking.as_ref().map_or(0, |p| p.resumes())
    }

    /// The address of the first listener of this kind.
    pub fn addr(&self, protocol: ListenerProtocol) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.protocol == protocol).map(|l| l.addr)
    }

    /// Re-read what can change without a restart: the password file, every TLS listener's
    /// certificate, key, client CA and CRLs, the OAuth clients and keys, and the ACL file.
    /// Errors leave the old state in force. What a reload takes standing from (a user removed
    /// from the password file, a certificate a CRL now revokes, an OAuth client deleted or
    /// narrowed) ends its live connections, wills discarded ([`crate::admin::trust`]); nothing else is
    /// disturbed.
    pub fn reload(&self) {
        let reread = self.reload_config_file();
        match self.auth.reload() {
            Ok(Some(file)) => {
                info!(users = file.len(), "password file reloaded");
                self.trust.apply(&TrustEvent::PasswordFile(file));
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "password file reload failed; the previous one stays in force"),
        }
        let revoked = crate::tls::reload_all(&self.tls);
        if !self.tls.is_empty() {
            self.trust.apply(&TrustEvent::CertificatesRevoked(Arc::new(revoked)));
        }
        if let Some(o) = &self.oauth {
            // The OAuth clients of the configuration file as re-read now (their secret hashes
            // given as "env:NAME" or `secret_hash_file` read again too).
            let cfg = match reread {
                Some(c) => c,
                None => self.config.with_reread_secrets(&crate::config::process_env).unwrap_or_else(|e| {
                    warn!(error = %e, "configuration secrets not re-read; the ones loaded at start stay");
                    self.applied.lock().clone()
                }),
            };
            match (oauth_clients(&cfg), crate::admin::oauth_store::load_keys(&self.config.data_dir)) {
                (Ok(clients), Ok(keys)) => {
                    let n = clients.len();
                    o.set_clients(clients);
                    // Retired keys first, so the current key ends up signing; all stay published.
                    for k in keys.into_iter().rev() {
                        o.rotate(k);
                    }
                    info!(clients = n, kid = %o.current_kid(), "token service reloaded");
                    self.trust.oauth_clients_changed(o);
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "token service reload failed; the previous clients and keys stay")
                }
            }
        }
        if self.config.authz.acl_file.is_some() {
            match self.policy.reload_acl() {
                Ok(()) => info!("ACL file reloaded"),
                Err(e) => warn!(error = %e, "ACL reload failed; the previous ACL stays in force"),
            }
        }
        // On a node of a cluster: the other nodes hear of this node's CRLs and OAuth clients.
        if let Some(s) = &self.sync {
            s.reloaded();
        }
    }

    /// SIGHUP, the configuration file itself (none for the embedded default): read it again;
    /// apply what can change live (`[authz] on_deny` and `audit` here, the OAuth clients and
    /// every file the configuration names in [`Server::reload`]), and name in one log line
    /// every other setting that changed, which needs a restart — never ignored silently. A
    /// file that no longer loads is reported and the running configuration stays. Returns
    /// the configuration read, when it loaded.
    fn reload_config_file(&self) -> Option<Config> {
        let path = self.config.source.as_ref()?;
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "configuration file not reloaded: the running configuration stays");
                return None;
            }
        };
        let mut applied = self.applied.lock();
        if new.authz.on_deny != applied.authz.on_deny || new.authz.audit != applied.authz.audit {
            self.policy.set_modes(new.authz.on_deny, new.authz.audit);
            info!(on_deny = ?new.authz.on_deny, audit = ?new.authz.audit, "configuration reloaded: [authz] on_deny and audit applied");
            applied.authz.on_deny = new.authz.on_deny;
            applied.authz.audit = new.authz.audit;
        }
        applied.oauth.clients = new.oauth.clients.clone();
        let pending = restart_only_changes(&applied, &new);
        if pending.is_empty() {
            info!(config = %path.display(), "configuration file reloaded");
        } else {
            warn!(
                config = %path.display(),
                settings = pending.join("; ").as_str(),
                "configuration file reloaded: these settings changed and apply only after a restart: {}",
                pending.join("; ")
            );
        }
        Some(new)
    }

    /// Raise the shutdown flag (listeners and timers stop), then end every live connection
    /// (0x8B). In this order: a connection that registers after `end_all` sees the flag.
    fn stop(&self) {
        self.shutdown.send_replace(true);
        self.live.end_all(mqtt_codec::ReasonCode::SERVER_SHUTTING_DOWN);
        if let Some(p) = &self.parking {
            p.stop();
        }
    }

    /// Stop accepting, tell every client the server is shutting down (v5 DISCONNECT 0x8B),
    /// and wait for the listeners to stop.
    pub async fn shutdown(mut self) {
        self.stop();
        while self.tasks.join_next().await.is_some() {}
        // Give connection tasks a moment to flush their DISCONNECT.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Admin bans, then the per-address limits and bans, for a connection from `peer`: its slot,
/// or `None` (counted and logged) when it is refused.
fn admit(bans: &BanList, guard: &Arc<Guard>, ctx: &ConnContext, peer: SocketAddr) -> Option<Admitted> {
    if bans.ip_banned(peer.ip(), crate::clock::unix_now()) {
        tracing::debug!(%peer, "connection refused: address banned by an administrator");
        return None;
    }
    match guard.admit(peer.ip(), Instant::now()) {
        Ok(s) => Some(s),
        Err(why) => {
            let lim = &ctx.broker.stats.limits;
            let (counter, name) = match why {
                Refusal::Banned => (&lim.banned_refused, "auth_fail_ban"),
                Refusal::TooManyConnections => (&lim.connections_per_ip, "max_connections_per_ip"),
                Refusal::RateExceeded => (&lim.connect_rate_per_ip, "connect_rate_per_ip"),
            };
            hit(counter);
            ctx.log_limit(&peer.ip().to_string(), name, "connection refused");
            None
        }
    }
}

/// What [`admit`] checks with.
struct Admission {
    bans: Arc<BanList>,
    guard: Arc<Guard>,
}

/// A connection on a `proxy_protocol` listener from a trusted balancer: its PROXY header first
/// (within `connect_timeout`, before TLS and WebSocket), then the admission checks and the
/// connection itself with the address the header gives (the socket's own for `UNKNOWN`/LOCAL).
/// A missing, late or malformed header closes the connection, logged at debug level only.
async fn proxied(
    mut sock: TcpStream,
    socket_peer: SocketAddr,
    endpoint: Arc<Endpoint>,
    checks: Admission,
    ctx: Arc<ConnContext>,
) {
    let peer = match crate::conn::proxy::read_header(&mut sock, ctx.connect_timeout).await {
        Ok(h) => h.source.unwrap_or(socket_peer),
        Err(e) => {
            tracing::debug!(peer = %socket_peer, "connection closed: no valid PROXY header ({e:?})");
            return;
        }
    };
    let Some(slot) = admit(&checks.bans, &checks.guard, &ctx, peer) else { return };
    serve_socket(sock, peer, endpoint, slot, ctx).await;
}

/// What a listener's connections are served with: its transport, TLS, WebSocket settings and
/// the authentication methods it allows.
struct Endpoint {
    protocol: ListenerProtocol,
    tls: Option<Arc<TlsListener>>,
    path: Arc<crate::conn::ws::WsSettings>,
    auth: warden_policy::authn::ListenerAuth,
}

async fn serve_socket(
    sock: TcpStream,
    peer: SocketAddr,
    endpoint: Arc<Endpoint>,
    slot: Admitted,
    ctx: Arc<ConnContext>,
) {
    let (protocol, tls, path, auth) = (endpoint.protocol, endpoint.tls.clone(), endpoint.path.clone(), endpoint.auth);
    drop(endpoint);
    let slot = Some(slot);
    let _ = sock.set_nodelay(true);
    // This future is the connection task's for as long as a TLS connection lives (they do not
    // park), and a future is as large as its largest state: the handshake and the WebSocket
    // paths are boxed so that an idle mqtts connection does not keep their room (issue 24:
    // 21.7 KB per idle TLS connection before, see docs/PERFORMANCE.md "Idle TLS connections").
    let Some(tls) = tls else {
        match protocol {
            ListenerProtocol::Ws | ListenerProtocol::Wss => {
                Box::pin(crate::conn::ws::serve(sock, peer, None, auth, slot, path, ctx)).await
            }
            ListenerProtocol::Mqtt | ListenerProtocol::Mqtts => {
                crate::conn::run(sock, peer, None, auth, slot, None, ctx).await
            }
        }
        return;
    };
    // The handshake must finish within tls_handshake_timeout, and never takes longer than
    // connect_timeout either (slowloris over TLS); then CONNECT has connect_timeout.
    let handshake_deadline = ctx.tls_handshake_timeout.min(ctx.connect_timeout);
    let (stream, identity) = match Box::pin(tokio::time::timeout(handshake_deadline, tls.accept(sock, peer))).await {
        Ok(Some((stream, identity, seen))) => {
            if let Some(seen) = seen {
                ctx.live.certs.record(seen, peer);
            }
            (stream, identity)
        }
        Ok(None) => {
            hit(&ctx.broker.stats.security.tls_handshake_failures);
            // A refused certificate counts like a failed password towards a ban.
            if let Some(s) = &slot {
                if s.auth_failed(Instant::now()) {
                    hit(&ctx.broker.stats.limits.bans);
                }
            }
            return;
        }
        Err(_) => {
            hit(&ctx.broker.stats.security.tls_handshake_failures);
            hit(&ctx.broker.stats.limits.tls_handshake_timeouts);
            ctx.log_limit(&peer.ip().to_string(), "tls_handshake_timeout", "connection closed");
            return;
        }
    };
    if protocol.is_ws() {
        Box::pin(crate::conn::ws::serve(stream, peer, identity, auth, slot, path, ctx)).await;
    } else {
        crate::conn::run(stream, peer, identity, auth, slot, None, ctx).await;
    }
}

/// The settings that differ between the running configuration and `new` and apply only after
/// a restart, named as an operator wrote them.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let binds = |c: &Config| c.listeners.iter().map(|l| format!("{}://{}", l.protocol, l.bind)).collect::<Vec<_>>();
    if binds(running) != binds(new) {
        out.push(format!("[[listener]] bind ({} -> {})", binds(running).join(", "), binds(new).join(", ")));
    } else if running.listeners != new.listeners {
        out.push("[[listener]]".to_owned());
    }
    if running.data_dir != new.data_dir {
        out.push("data_dir".to_owned());
    }
    if running.worker_threads != new.worker_threads {
        out.push("worker_threads".to_owned());
    }
    if running.auth != new.auth {
        out.push("[auth]".to_owned());
    }
    if running.identity != new.identity {
        out.push("[identity]".to_owned());
    }
    if running.http != new.http {
        out.push("[http]".to_owned());
    }
    let mut oauth = running.oauth.clone();
    oauth.clients = new.oauth.clients.clone();
    if oauth != new.oauth {
        out.push("[oauth] (other than its clients)".to_owned());
    }
    if running.authz != new.authz {
        out.push("[authz] (other than on_deny and audit)".to_owned());
    }
    if running.limits != new.limits {
        out.push("[limits]".to_owned());
    }
    if running.persistence != new.persistence {
        out.push("[persistence]".to_owned());
    }
    // The log file is reopened on SIGHUP (same path); a new level, format or path takes a
    // restart.
    if running.log != new.log {
        out.push("[log]".to_owned());
    }
    out
}

/// The cluster crate's settings from `[cluster]`.
fn cluster_config(c: &crate::config::ClusterSettings) -> warden_cluster::ClusterConfig {
    warden_cluster::ClusterConfig {
        node: c.node.clone(),
        nats: c.nats.clone(),
        replicas: c.replicas,
        user: c.nats_user.clone(),
        password: c.nats_password.as_ref().map(|p| p.0.clone()),
        creds_file: c.nats_creds_file.clone(),
        subject_prefix: c.subject_prefix.clone(),
        publish_timeout: c.publish_timeout,
        connect_patience: c.connect_patience,
    }
}

#[cfg(test)]
mod tests {
    /// Issue 19: a change to `[log]` is named among the settings that need a restart.
    #[test]
    fn a_log_change_is_named_on_reload() {
        let running = crate::config::Config::embedded_default();
        let mut new = running.clone();
        assert!(super::restart_only_changes(&running, &new).is_empty());
        new.log.level = "debug".into();
        assert_eq!(super::restart_only_changes(&running, &new), vec!["[log]".to_string()]);
        let mut new = running.clone();
        new.worker_threads = std::num::NonZeroUsize::new(1);
        assert_eq!(super::restart_only_changes(&running, &new), vec!["worker_threads".to_string()]);
    }

    /// Issue 17 (smaller ones): a data_dir the broker creates is the owner's only (0700).
    #[test]
    fn a_new_data_dir_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b/data");
        super::private_dir(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        // Again on the existing directory: fine, unchanged.
        super::private_dir(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
