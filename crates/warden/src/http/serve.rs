//! The HTTP listener's serving loop (token service, admin API, health), hardened against
//! slowloris and descriptor exhaustion (`axum::serve` has neither a header timeout nor a
//! connection cap):
//!
//! - accept: the admin ban list (`ip` / `cidr` bans; loopback peers exempt, so that a ban on a
//!   range holding the operator's own address can still be lifted), then at most `max_connections` open
//!   connections in all and `max_connections_per_ip` per source address (IPv4-mapped IPv6
//!   counted as IPv4); a connection over a cap is closed at once;
//! - TLS (`[http] cert`/`key`, optional `client_ca`): the handshake must finish within
//!   `header_timeout` (a client that opens a connection and sends a slow or no ClientHello
//!   holds its slot no longer than one that sends slow headers); it runs on the connection's
//!   own task, after the caps, so a slow handshake never delays accepting others;
//! - per connection (hyper's HTTP/1 server): the request headers must be complete within
//!   `header_timeout` (hyper's `header_read_timeout`, which also runs while a kept-alive
//!   connection waits for its next request); reading the body and answering must finish within
//!   `request_timeout` (408); a connection on which no byte moves for `request_timeout` (a
//!   client that stopped reading its response) is closed; bodies over `max_body_size` get 413;
//! - shutdown: accepting stops, every connection finishes its request in progress and closes
//!   (hyper's graceful shutdown), bounded by [`GRACE`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

use crate::admission::bans::{canonical_ip, BanList};
use crate::config::HttpLimits;
use crate::tls::TlsListener;

/// How long shutdown waits for open HTTP connections to finish their request.
pub const GRACE: Duration = Duration::from_secs(2);

/// Open connections, in all and per source address.
#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place in [`Counts`]; given back on drop.
struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.counts.per_ip.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Counts {
    /// A slot for a connection from `ip`, or why not.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &HttpLimits) -> Result<Slot, &'static str> {
        let ip = canonical_ip(ip);
        let mut m = self.per_ip.lock();
        if self.total.load(Ordering::Acquire) >= limits.max_connections {
            return Err("max_connections");
        }
        let n = m.entry(ip).or_insert(0);
        if *n >= limits.max_connections_per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Ok(Slot { counts: self.clone(), ip })
    }
}

/// Is `ip` refused by an admin ban on the HTTP listener? Loopback is exempt: an operator who
/// bans a range holding their own address can still reach the admin API on the host to lift
/// the ban (and a loopback peer is not a remote one).
fn banned(bans: &BanList, ip: IpAddr, now: u64) -> bool {
    !canonical_ip(ip).is_loopback() && bans.ip_banned(ip, now)
}

/// Serve `app` on `tcp` (over TLS when `tls` is given) until `stop` changes (or its sender is
/// dropped).
pub async fn serve(
    tcp: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    bans: Arc<BanList>,
    tls: Option<Arc<TlsListener>>,
    mut stop: watch::Receiver<bool>,
) {
    let app = app.layer(axum::middleware::from_fn(move |req, next| limit_request(req, next, limits)));
    let counts = Arc::new(Counts::default());
    let mut conns = JoinSet::new();
    let accept_errors = crate::admission::fdlimit::AcceptErrors::new(
        tcp.local_addr().map_or_else(|_| "http".into(), |a| format!("http://{a}")),
    );
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let (sock, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    accept_errors.failed(&e).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stop.changed() => break,
        };
        if banned(&bans, peer.ip(), crate::clock::unix_now()) {
            debug!(%peer, "HTTP connection refused: address banned by an administrator");
            continue;
        }
        let slot = match counts.admit(peer.ip(), &limits) {
            Ok(s) => s,
            Err(limit) => {
                debug!(%peer, limit, "HTTP connection refused");
                continue;
            }
        };
        let (app, stop) = (app.clone(), stop.clone());
        match tls.clone() {
            None => {
                conns.spawn(serve_connection(sock, peer, app, limits, slot, stop));
            }
            Some(tls) => {
                conns.spawn(async move {
                    let _ = sock.set_nodelay(true);
                    // A slowloris handshake holds its slot no longer than slow headers would.
                    match tokio::time::timeout(limits.header_timeout, tls.handshake(sock, peer)).await {
                        Ok(Some(stream)) => serve_connection(stream, peer, app, limits, slot, stop).await,
                        Ok(None) => {}
                        Err(_) => debug!(%peer, "HTTPS: TLS handshake not finished within header_timeout: closed"),
                    }
                });
            }
        }
    }
    drop(tcp);
    // Connections saw the same signal and are finishing their request; wait for them, bounded.
    let _ = tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    conns.abort_all();
}

/// One connection: hyper's HTTP/1 server with the header timeout, an idle watchdog, and
/// graceful shutdown on `stop`.
async fn serve_connection<S: Stream>(
    sock: S,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    let _slot = slot;
    sock.nodelay();
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = hyper_util::rt::TokioIo::new(Tracked { inner: sock, start, last: last.clone() });
    // Handlers learn the peer's address from this extension (the failure guard is per address).
    let app = tower::ServiceExt::map_request(app, move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(warden_http::PeerAddr(peer));
        req
    });
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle = limits.request_timeout;
    let mut stopping = false;
    loop {
        let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(quiet_since + idle) => {
                if Instant::now().saturating_duration_since(start + Duration::from_millis(last.load(Ordering::Relaxed))) >= idle {
                    debug!(%peer, "HTTP connection idle for request_timeout: closed");
                    return;
                }
            }
            r = stop.changed(), if !stopping => {
                let _ = r;
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Per request: the body limit (Content-Length checked first, then the body itself is
/// limited as it is read) and the request timeout.
async fn limit_request(req: Request, next: Next, limits: HttpLimits) -> Response {
    let max = usize::try_from(limits.max_body_size).unwrap_or(usize::MAX);
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_size) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(http_body_util::Limited::new(body, max));
    let req = Request::from_parts(parts, body);
    match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "request timeout\n").into_response(),
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Turn off Nagle's algorithm (best effort).
    fn nodelay(&self);
}

impl Stream for TcpStream {
    fn nodelay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn nodelay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

/// A socket that records when a byte last moved (milliseconds since `start`).
struct Tracked<S> {
    inner: S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_http::admin::{Ban, BanKind};

    #[test]
    fn admin_bans_apply_except_to_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let bans = BanList::load(dir.path()).unwrap();
        let ban = |kind, value: &str| Ban { kind, value: value.into(), expires_at: None, reason: None };
        bans.add(ban(BanKind::Ip, "192.0.2.7")).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(banned(&bans, ip("192.0.2.7"), 0));
        assert!(banned(&bans, ip("::ffff:192.0.2.7"), 0), "IPv4-mapped");
        assert!(!banned(&bans, ip("192.0.2.8"), 0));
        bans.add(ban(BanKind::Cidr, "0.0.0.0/0")).unwrap();
        bans.add(ban(BanKind::Cidr, "::/0")).unwrap();
        assert!(banned(&bans, ip("198.51.100.1"), 0));
        for l in ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"] {
            assert!(!banned(&bans, ip(l), 0), "{l}: loopback is exempt");
        }
    }

    #[test]
    fn connection_caps() {
        let counts = Arc::new(Counts::default());
        let limits = HttpLimits { max_connections: 3, max_connections_per_ip: 2, ..HttpLimits::default() };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = counts.admit(ip("10.0.0.1"), &limits).unwrap();
        let _b = counts.admit(ip("::ffff:10.0.0.1"), &limits).unwrap();
        assert_eq!(counts.admit(ip("10.0.0.1"), &limits).err(), Some("max_connections_per_ip"));
        let _c = counts.admit(ip("10.0.0.2"), &limits).unwrap();
        assert_eq!(counts.admit(ip("10.0.0.3"), &limits).err(), Some("max_connections"));
        drop(a);
        assert!(counts.admit(ip("10.0.0.1"), &limits).is_ok(), "a slot given back is usable");
        assert_eq!(counts.total.load(Ordering::Relaxed), 2);
        assert!(counts.per_ip.lock().get(&ip("10.0.0.1")).is_some_and(|n| *n == 1));
    }
}
