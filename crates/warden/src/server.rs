//! The running broker: binds every listener, accepts connections (one task each), runs the
//! housekeeping (`tick`) and `$SYS` timers, and shuts down on request. This is the one place
//! where tasks are spawned for connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};
use warden_core::{Broker, BrokerConfig};
use warden_policy::AllowAll;

use crate::auth::Authenticator;
use crate::config::{Config, ListenerProtocol};
use crate::conn::ConnContext;
use crate::tls::TlsListener;

/// A listener that is bound and accepting.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Transport.
    pub protocol: ListenerProtocol,
    /// The actual address (the port is known even when the config said 0).
    pub addr: SocketAddr,
    /// WebSocket path (ws only).
    pub path: String,
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
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
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
        max_keep_alive: l.max_keep_alive,
        max_session_expiry: l.max_session_expiry,
        max_topic_levels: l.max_topic_levels,
        max_subscriptions_per_client: l.max_subscriptions_per_client,
        sys_interval: l.sys_interval,
    }
}

struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Server {
    /// Bind every listener and start serving.
    pub async fn start(cfg: &Config) -> anyhow::Result<Server> {
        let auth = Arc::new(Authenticator::load(&cfg.auth, cfg.identity)?);
        if !cfg.auth.allow_anonymous && cfg.auth.password_file.is_none() {
            warn!("no authentication method is configured and anonymous access is off: every client will be refused");
        }
        warn!("no authorization source configured: every authenticated client may publish and subscribe anywhere");
        let broker = Broker::new(broker_config(cfg), Arc::new(AllowAll), Instant::now());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(ConnContext {
            broker: broker.clone(),
            auth: auth.clone(),
            max_packet_size: cfg.limits.max_packet_size,
            connect_timeout: cfg.limits.connect_timeout,
            shutdown: shutdown_rx.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut listeners = Vec::new();
        let mut tls_listeners = Vec::new();
        let live = Arc::new(AtomicUsize::new(0));
        for l in &cfg.listeners {
            let tls = match &l.tls {
                Some(t) => {
                    let t =
                        Arc::new(TlsListener::load(t).with_context(|| format!("{} listener {}", l.protocol, l.bind))?);
                    tls_listeners.push(t.clone());
                    Some(t)
                }
                None => None,
            };
            let tcp = TcpListener::bind(l.bind)
                .await
                .with_context(|| format!("cannot listen on {} ({})", l.bind, l.protocol.as_str()))?;
            let addr = tcp.local_addr()?;
            listeners.push(BoundListener { protocol: l.protocol, addr, path: l.path.clone() });
            let ctx = ctx.clone();
            let live = live.clone();
            let max = cfg.limits.max_connections;
            let protocol = l.protocol;
            let path: Arc<str> = Arc::from(l.path.as_str());
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    let (sock, peer) = tokio::select! {
                        r = tcp.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                // EMFILE and friends: back off briefly rather than spin.
                                warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                        _ = stop.changed() => break,
                    };
                    if live.load(Ordering::Relaxed) >= max {
                        warn!(%peer, max, "max_connections reached: connection refused");
                        drop(sock);
                        continue;
                    }
                    live.fetch_add(1, Ordering::Relaxed);
                    let guard = ConnGuard(live.clone());
                    let ctx = ctx.clone();
                    let path = path.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        serve_socket(sock, peer, protocol, tls, path, ctx).await;
                    });
                }
            });
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
        Ok(Server { listeners, broker, auth, tls: tls_listeners, shutdown, tasks })
    }

    /// The address of the first listener of this kind.
    pub fn addr(&self, protocol: ListenerProtocol) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.protocol == protocol).map(|l| l.addr)
    }

    /// Re-read what can change without a restart: the password file and every TLS
    /// listener's certificate, key, client CA and CRLs. Errors leave the old state in force;
    /// live connections are never dropped.
    pub fn reload(&self) {
        match self.auth.reload() {
            Ok(n) => info!(users = n, "password file reloaded"),
            Err(e) => warn!(error = %e, "password file reload failed; the previous one stays in force"),
        }
        crate::tls::reload_all(&self.tls);
    }

    /// Stop accepting, tell every client the server is shutting down (v5 DISCONNECT 0x8B),
    /// and wait for the listeners to stop.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Give connection tasks a moment to flush their DISCONNECT.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve_socket(
    sock: TcpStream,
    peer: SocketAddr,
    protocol: ListenerProtocol,
    tls: Option<Arc<TlsListener>>,
    path: Arc<str>,
    ctx: Arc<ConnContext>,
) {
    let _ = sock.set_nodelay(true);
    let Some(tls) = tls else {
        match protocol {
            ListenerProtocol::Ws | ListenerProtocol::Wss => crate::ws::serve(sock, peer, None, path, ctx).await,
            ListenerProtocol::Mqtt | ListenerProtocol::Mqtts => crate::conn::run(sock, peer, None, ctx).await,
        }
        return;
    };
    // The handshake counts against connect_timeout (slowloris over TLS).
    let (stream, identity) = match tokio::time::timeout(ctx.connect_timeout, tls.accept(sock, peer)).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    if protocol.is_ws() {
        crate::ws::serve(stream, peer, identity, path, ctx).await;
    } else {
        crate::conn::run(stream, peer, identity, ctx).await;
    }
}
