//! The task that drives one client connection: read bytes, decode, hand packets to the core,
//! write what the core produced — batched, so many small packets leave in one write.
//!
//! Phases: CONNECT must arrive within `connect_timeout` (slowloris guard); authentication
//! runs next (hashing off the async threads); then the core's [`Connection`] takes over
//! until a [`Close`], EOF, an I/O error, a keep-alive timeout or shutdown.
//!
//! Limits enforced here (see [`crate::admission::limits`]): publish rate and bandwidth (throttle, then
//! DISCONNECT 0x96 / 0x97), the memory high-water mark (publishers stop being read), stalled
//! writers (closed after `write_stall_timeout`), and the per-(user name, address) backoff
//! after failed authentications (CONNACK 0x9F before any hashing).

pub mod live;
pub mod order;
pub mod park;
pub mod proxy;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_codec::{decode, decode_cached, DecodeError, Packet, Protocol, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info};
use warden_core::broker::write_connack;
use warden_core::{Broker, Close, Connection};

use crate::conn::park::ConnWaker;

use crate::admission::guard::Admitted;
use crate::admission::limits::{LogOnce, MemCharge, MemoryGauge, PublishLimiter, PublishLimits, Throttle};
use crate::auth::Authenticator;
use crate::tls::CertIdentity;
use warden_core::limits::hit;
use warden_policy::authn;

/// Read buffer of a quiet connection: idle connections should cost little memory.
const IDLE_READ: usize = 512;
/// Read buffer growth once a connection is busy (the last read filled the buffer).
const BUSY_READ: usize = 32 * 1024;
/// Buffers grown beyond this are given back once they are empty.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Stop encoding deliveries once this much is waiting to be written.
const WRITE_BUDGET: usize = 64 * 1024;
/// Stop reading from a client while this much output is unwritten (it is not reading).
const WRITE_HIGH_WATER: usize = 1024 * 1024;

/// A connection that has not parked yet parks after this much quiet (or `idle_park_after`,
/// when shorter). Short: during a burst of connections (a fleet coming back after a restart)
/// the broker holds a task, a tokio I/O registration and buffers for every connection younger
/// than this, and the allocator keeps much of that memory afterwards (measured at 10,000
/// connections: 100 ms left 1.07 KB per connection, 20 ms 0.91 KB). A client that sends its
/// SUBSCRIBE later than this pays one resume (about 10 µs).
const FIRST_PARK_AFTER: Duration = Duration::from_millis(20);

/// What every connection task shares.
pub struct ConnContext {
    /// The broker core.
    pub broker: Arc<Broker>,
    /// Authentication.
    pub auth: Arc<Authenticator>,
    /// Largest inbound packet.
    pub max_packet_size: u32,
    /// Deadline for the CONNECT packet.
    pub connect_timeout: Duration,
    /// Flips to true on shutdown. Connections past their CONNACK are then ended through
    /// [`crate::conn::live::LiveClients::end_all`]; one that registers later sees the flag.
    pub shutdown: watch::Receiver<bool>,
    /// The durable store: acknowledgements wait for it (group commit).
    pub store: Option<Arc<warden_store::Store>>,
    /// Per-connection publish rate and bandwidth.
    pub publish_limits: PublishLimits,
    /// The broker-wide memory high-water mark.
    pub memory: Arc<MemoryGauge>,
    /// Close a connection whose output does not move for this long (zero = never).
    pub write_stall_timeout: Duration,
    /// Limit hits are logged once per client id (or address) per [`crate::admission::limits::LOG_INTERVAL`].
    pub limit_log: LogOnce<String>,
    /// Authentication refusals logged per peer address: a burst, then counted.
    pub refusal_log: crate::admission::limits::LogBurst<std::net::IpAddr>,
    /// Deadline for the TLS handshake (mqtts, wss).
    pub tls_handshake_timeout: Duration,
    /// Live connections, for the admin API (list, kick).
    pub live: Arc<crate::conn::live::LiveClients>,
    /// The admin ban list (client ids and user names are checked here).
    pub bans: Arc<crate::admission::bans::BanList>,
    /// The behaviour watch, when enabled: each connection feeds its principal's counters.
    pub watch: Option<Arc<crate::watch::Watch>>,
    /// Where idle plain-TCP connections park (`idle_park_after`; `None`: they never do).
    pub parking: Option<Arc<crate::conn::park::ParkingLot>>,
    /// This node's side of the cluster (`[cluster]`): SUBACKs wait for its interest.
    pub cluster: Option<Arc<warden_cluster::Cluster>>,
    /// Subscription changes read and applied ([`order`]: arrival order across connections).
    pub arrivals: order::Arrivals,
}

impl ConnContext {
    /// Log a limit hit for `key` (a client id or an address), at most once per interval.
    pub fn log_limit(&self, key: &str, limit: &'static str, action: &'static str) {
        if let Some(suppressed) = self.limit_log.check(key.to_owned(), Instant::now()) {
            info!(key, limit, action, suppressed, "limit hit (logged once per client per minute)");
        }
    }
}

impl ConnContext {
    /// Wait until what `conn`'s output so far acknowledges is durable (at once when nothing
    /// needs the store). False when it cannot be: on a node of a cluster, JetStream did not
    /// keep a QoS 1/2 message (no quorum) — the output must not leave (no PUBACK, SPEC §11).
    #[must_use]
    async fn wait_durable(&self, conn: &mut Connection) -> bool {
        let ticket = conn.take_durable();
        if let Some(store) = &self.store {
            store.wait(ticket).await;
        }
        if let (Some(c), Some((first, last))) = (&self.cluster, conn.take_forward_wait()) {
            // The cluster's own patience (`[cluster] publish_timeout`) decides; this cap only
            // bounds a wait that nothing answers.
            let cap = c.publish_timeout() + Duration::from_secs(5);
            if !c.wait_stored(first, last, cap).await {
                return false;
            }
        }
        // A node of a cluster sends a SUBACK once the subscription is in force on NATS
        // (SPEC §11); if NATS is away it does not wait for ever.
        let interest = conn.take_interest_wait();
        if let (Some(c), true) = (&self.cluster, interest != 0) {
            if !c.wait_interest(interest, Duration::from_secs(5)).await {
                tracing::debug!("cluster: SUBACK sent before the subscription reached NATS (not connected)");
            }
        }
        true
    }
}

/// Counts a live connection (`max_connections`) until dropped.
pub struct ConnCount(pub Arc<OpenCounts>);

/// The open-connection counts one accept loop keeps: its listener's and every listener's.
/// One pointer per connection (a parked connection's record stays in its size class).
#[derive(Debug, Default)]
pub struct OpenCounts {
    /// Connections open on every listener (`max_connections`).
    pub total: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections open on this listener (`warden_connections{listener}`).
    pub listener: std::sync::atomic::AtomicUsize,
}

impl ConnCount {
    /// Count one more connection in both.
    pub fn new(counts: Arc<OpenCounts>) -> Self {
        counts.total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counts.listener.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnCount(counts)
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.total.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0.listener.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

enum Pre {
    Connect(Box<mqtt_codec::Connect>),
    Closed(&'static str),
}

/// Why no packet could be read before the connection is in the main loop.
enum ReadError {
    /// The peer closed or the socket failed.
    Closed,
    /// The bytes do not decode.
    Decode(DecodeError),
}

/// Read until one whole packet is decoded (the phases before the main loop: CONNECT, SCRAM).
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    v: Protocol,
    max: u32,
) -> Result<Packet, ReadError> {
    loop {
        match decode(buf, v, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Decode(e)),
        }
        buf.reserve(IDLE_READ);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ReadError::Closed),
            Ok(_) => {}
        }
    }
}

async fn read_connect<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut, max: u32, out: &mut BytesMut) -> Pre {
    match read_packet(rd, buf, Protocol::V311, max).await {
        Ok(Packet::Connect(c)) => Pre::Connect(c),
        // [MQTT-3.1.0-1]: the first packet must be CONNECT.
        Ok(_) => Pre::Closed("first packet is not CONNECT"),
        Err(ReadError::Decode(DecodeError::UnsupportedProtocol)) => {
            // [MQTT-3.1.2-2]: CONNACK 0x01 (unacceptable protocol version), then close.
            write_connack(Protocol::V311, false, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, Default::default(), 0, out);
            Pre::Closed("unsupported protocol version")
        }
        Err(ReadError::Decode(_)) => Pre::Closed("malformed CONNECT"),
        Err(ReadError::Closed) => Pre::Closed("closed before CONNECT"),
    }
}

/// The admission state the authentication chain consults for one CONNECT: the admin ban list,
/// and the backoff of user names from this connection's address.
struct Gate<'a> {
    bans: &'a crate::admission::bans::BanList,
    slot: Option<&'a Admitted>,
    now: Instant,
}

impl authn::Admission for Gate<'_> {
    fn name_banned(&self, client_id: &str, username: Option<&str>, now: u64) -> bool {
        self.bans.name_banned(client_id, username, now)
    }

    fn backing_off(&self, username: &str) -> bool {
        self.slot.is_some_and(|s| s.user_backing_off(username, self.now))
    }
}

/// Run the authentication chain ([`warden_policy::authn`]) to its verdict, performing the I/O
/// it asks for: the slow hash on the blocking pool (within the hashing budget), the look-up
/// call, the JWKS fetch, and the SCRAM-SHA-256 exchange (RFC 5802 / 7677) carried in CONNECT →
/// AUTH (0x18) → AUTH (0x18) → CONNACK, within the same `connect_timeout` [MQTT-4.12.0-1].
#[allow(clippy::too_many_arguments)]
async fn authenticate<R, W>(
    ctx: &ConnContext,
    connect: &mqtt_codec::Connect,
    cert: CertIdentity,
    listener: authn::ListenerAuth,
    peer: SocketAddr,
    slot: Option<&Admitted>,
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
) -> Result<authn::Authenticated, authn::Refusal>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let gate = Gate { bans: &ctx.bans, slot, now: Instant::now() };
    let (mut chain, mut step) = authn::Chain::begin(
        ctx.auth.context(&gate, listener),
        authn::ConnectView::of(connect),
        cert,
        peer,
        crate::clock::unix_now(),
    );
    let mut exchange_deadline = None;
    loop {
        let answer = match step {
            authn::Step::Done(a) => return Ok(*a),
            authn::Step::Refuse(r) => {
                if let authn::Cause::Token(reason) = &r.cause {
                    // The reason is logged; the token never is.
                    info!(client_id = %crate::logsafe::Escaped(&connect.client_id),
                        reason = %crate::logsafe::Escaped(reason), "access token refused");
                }
                return Err(r);
            }
            authn::Step::NeedHash(job) => authn::Answer::Hash(ctx.auth.hash(job).await),
            authn::Step::NeedLookup(req) => authn::Answer::Lookup(ctx.auth.look_up(&req).await),
            authn::Step::NeedJwks => authn::Answer::Jwks(ctx.auth.refresh_jwks().await),
            authn::Step::NeedAuthData(challenge) => {
                let deadline =
                    *exchange_deadline.get_or_insert_with(|| tokio::time::Instant::now() + ctx.connect_timeout);
                // Boxed: this state is needed only during CONNECT, not for the connection's life.
                let exchange = Box::pin(auth_exchange(challenge, rd, wr, rbuf, ctx.max_packet_size));
                let reply = tokio::time::timeout_at(deadline, exchange).await.unwrap_or(authn::AuthReply::TimedOut);
                authn::Answer::AuthData(reply)
            }
        };
        step = chain.continue_with(answer);
    }
}

/// Send an AUTH packet (0x18 Continue authentication) and read the client's reply.
async fn auth_exchange<R, W>(
    challenge: authn::AuthChallenge,
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
    max: u32,
) -> authn::AuthReply
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use mqtt_codec::{Auth, Properties};
    let mut out = BytesMut::new();
    let props = Properties {
        authentication_method: Some(challenge.method),
        authentication_data: Some(bytes::Bytes::from(challenge.data)),
        ..Default::default()
    };
    Packet::Auth(Auth { reason_code: ReasonCode::CONTINUE_AUTHENTICATION, properties: props.into() })
        .encode(Protocol::V5, &mut out);
    if wr.write_all(&out).await.is_err() {
        return authn::AuthReply::Closed;
    }
    match read_packet(rd, rbuf, Protocol::V5, max).await {
        Ok(Packet::Auth(a)) => authn::AuthReply::Auth {
            reason_code: a.reason_code,
            method: a.properties.authentication_method.clone(),
            data: a.properties.authentication_data.as_deref().map(<[u8]>::to_vec),
        },
        Ok(_) => authn::AuthReply::Other,
        Err(ReadError::Decode(e)) => authn::AuthReply::Malformed(e.reason_code()),
        Err(ReadError::Closed) => authn::AuthReply::Closed,
    }
}

/// A connection's transport, split into halves that the driver reads and writes concurrently.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized {
    /// The read half.
    type Read: ReadReady;
    /// The write half.
    type Write: AsyncWrite + Unpin + Send;
    /// Split the transport.
    fn halves(self) -> (Self::Read, Self::Write);
    /// The socket of a plain TCP connection, taken out of tokio so that it can park
    /// ([`crate::conn::park`]): `Ok(Err(_))` when that failed (the connection is lost), `Err` with
    /// the halves for a transport that cannot park.
    #[allow(clippy::type_complexity)]
    fn into_std(
        rd: Self::Read,
        wr: Self::Write,
    ) -> Result<std::io::Result<std::net::TcpStream>, (Self::Read, Self::Write)> {
        Err((rd, wr))
    }
}

/// A read half that can wait for input without a buffer: an idle connection then holds none.
pub trait ReadReady: AsyncRead + Unpin + Send {
    /// [`ReadReady::ready`] really waits: an idle connection may give its read buffer back.
    const WAITS_WITHOUT_BUFFER: bool;

    /// Resolves once input, the end of input or an error is waiting (it may be spurious: the
    /// read that follows may still wait). A transport that cannot tell resolves at once, and
    /// the driver waits in `read` with a buffer.
    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl Transport for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
    fn into_std(
        rd: Self::Read,
        wr: Self::Write,
    ) -> Result<std::io::Result<std::net::TcpStream>, (Self::Read, Self::Write)> {
        match rd.reunite(wr) {
            Ok(s) => Ok(s.into_std()),
            Err(e) => Err((e.0, e.1)),
        }
    }
}

impl ReadReady for tokio::net::tcp::OwnedReadHalf {
    const WAITS_WITHOUT_BUFFER: bool = true;

    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        // Polled directly: `readable()` is a future of some 170 bytes in the task's state.
        std::future::poll_fn(move |cx| self.as_ref().poll_read_ready(cx))
    }
}

/// Transports whose input may be buffered above the socket (TLS records, WebSocket frames)
/// are split with [`tokio::io::split`] and read with a buffer.
macro_rules! buffered_transport {
    ($($t:ty),*) => {$(
        impl Transport for $t {
            type Read = tokio::io::ReadHalf<$t>;
            type Write = tokio::io::WriteHalf<$t>;
            fn halves(self) -> (Self::Read, Self::Write) {
                tokio::io::split(self)
            }
        }
    )*};
}
buffered_transport!(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, tokio::io::DuplexStream);

impl<S: AsyncRead + Unpin + Send> ReadReady for tokio::io::ReadHalf<S> {
    const WAITS_WITHOUT_BUFFER: bool = false;

    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// What a connection task starts with. Boxed, and consumed by the CONNECT phase, so that the
/// long-lived task keeps no room for it (an async fn keeps its arguments for its whole life).
struct Start<S> {
    stream: S,
    peer: SocketAddr,
    cert: CertIdentity,
    listener: authn::ListenerAuth,
    slot: Option<Admitted>,
    count: Option<ConnCount>,
    ctx: Arc<ConnContext>,
}

/// A connection past its CONNACK: its state, and the transport while a task drives it.
struct Live<R, W> {
    core: Core,
    rd: R,
    wr: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// What a connection keeps for its life, driven or parked ([`crate::conn::park`]).
pub struct Core {
    conn: Connection,
    notify: Arc<ConnWaker>,
    ctx: Arc<ConnContext>,
    /// Boxed: only SCRAM-authenticated connections (which may re-authenticate) and, with the
    /// behaviour watch, watched principals' connections have any; a token's expiry is the
    /// core's timeout ([`Connection::poll_timeout`]).
    limits: Option<Box<Limits>>,
    /// Removed from the admin registry when the connection ends; the driver reads the end
    /// signals (of the admin and the token registries) when it is woken.
    registration: crate::conn::live::LiveRegistration,
    /// The per-address admission slot, released when the connection ends.
    _slot: Option<Admitted>,
    _count: Option<ConnCount>,
    /// Made at the first PUBLISH (a bucket starts full, so this is the same as making it now):
    /// connections that never publish carry none.
    limiter: Option<Box<PublishLimiter>>,
    /// The quiet time after which it parks next, in [`park::TICK`]s (0: never parked yet: the
    /// first park comes after [`FIRST_PARK_AFTER`]); set from its last park and resume by
    /// [`crate::conn::park::ParkingLot::next_delay`]. Ticks, not ms, and 16 bits: the parked
    /// record stays in its allocation size class.
    park_delay: u16,
    /// When it last parked, in ticks since the parking lot started (wrapping).
    parked_at: u32,
    /// The input that resumed this parked connection starts with a subscription change, which
    /// the parking lot announced ([`order`]); the driver counts it applied once handled.
    announced: bool,
    /// On a node of a cluster: the client id's claim in the cluster's registry, released
    /// when the connection ends.
    claim: Option<(Arc<warden_cluster::Cluster>, Box<warden_cluster::ClaimTicket>)>,
}

impl Core {
    /// The connection's wake-up.
    pub fn waker(&self) -> &Arc<ConnWaker> {
        &self.notify
    }

    /// Where the connection parks when idle (none when parking is off).
    pub fn parking(&self) -> Option<&Arc<crate::conn::park::ParkingLot>> {
        self.ctx.parking.as_ref()
    }

    /// A parked connection is resumed: if the input waiting on `stream` holds a subscription
    /// change (before any PUBLISH), announce it now, before its task is spawned ([`order`]).
    pub fn announce_input(&mut self, stream: &std::net::TcpStream) {
        let mut head = [0u8; 64];
        if !self.announced && stream.peek(&mut head).is_ok_and(|n| order::has_subscription_change(&head[..n])) {
            self.ctx.arrivals.announce_detached();
            self.announced = true;
        }
    }
}

/// Drive one connection to its end. `cert` is what TLS proved about the client; `listener`
/// what the listener it arrived on allows (`[[listener]] auth`, `allow_anonymous`); `slot` is
/// its admission by the per-address guard (failed authentications are reported to it).
///
/// The task's future is allocated once, at the size of its largest state, and lives as long
/// as the connection: the CONNECT and authentication phase (kilobytes of state: the decoded
/// CONNECT, hashing, SCRAM) runs in a boxed future of its own that is freed once it ends, and
/// so is the closing phase; what stays is [`Live`] and the driver's wait.
/// `count` (the `max_connections` count) is held until the connection ends, parked or not.
pub fn run<S: Transport>(
    stream: S,
    peer: SocketAddr,
    cert: CertIdentity,
    listener: authn::ListenerAuth,
    slot: Option<Admitted>,
    count: Option<ConnCount>,
    ctx: Arc<ConnContext>,
) -> impl std::future::Future<Output = ()> + Send {
    serve(Box::new(Start { stream, peer, cert, listener, slot, count, ctx }))
}

async fn serve<S: Transport>(start: Box<Start<S>>) {
    let Some(l) = Box::pin(establish(start)).await else { return };
    live::<S>(l).await;
}

/// Drive a connection until it ends or parks.
async fn live<S: Transport>(mut l: Live<S::Read, S::Write>) {
    loop {
        match drive(&mut l).await {
            Driven::Closed(close) => return Box::pin(finish(l, close)).await,
            Driven::Quiet => {
                let Live { core, rd, wr, rbuf, wbuf } = l;
                match S::into_std(rd, wr) {
                    Ok(Ok(stream)) => {
                        // The core's next timeout (keep alive, token expiry) wakes it.
                        let deadline = core.conn.poll_timeout();
                        match core.parking().cloned() {
                            Some(lot) => lot.park(core, stream, deadline),
                            None => lost(core, &"no parking lot"),
                        }
                        return;
                    }
                    Ok(Err(e)) => return lost(core, &e),
                    Err((rd, wr)) => l = Live { core, rd, wr, rbuf, wbuf },
                }
            }
        }
    }
}

/// Drive a parked connection again ([`crate::conn::park`]): its socket back in tokio, a new task.
pub async fn resume(core: Core, stream: std::net::TcpStream) {
    let mut rbuf = BytesMut::new();
    if core.announced {
        // The subscription change is read at once (a socket new to tokio is read only once
        // its I/O driver has polled it); an error or EOF is left for the driver's own read.
        use std::io::Read;
        rbuf.resize(IDLE_READ, 0);
        let n = (&stream).read(&mut rbuf).unwrap_or(0);
        rbuf.truncate(n);
    }
    match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => {
            let (rd, wr) = s.into_split();
            let l = Live { core, rd, wr, rbuf, wbuf: BytesMut::new() };
            Box::pin(live::<tokio::net::TcpStream>(l)).await
        }
        Err(e) => lost(core, &e),
    }
}

/// A connection whose socket was lost on its way into or out of the parking lot: its session
/// sees it gone as after an I/O error (the will is published).
pub fn lost(core: Core, why: &dyn std::fmt::Display) {
    if core.announced {
        drop(core.ctx.arrivals.adopt()); // no driver will apply it
    }
    debug!(client_id = %crate::logsafe::Escaped(core.conn.client_id()), error = %why, "socket lost while parking or resuming");
    core.conn.closed(Close { reason: ReasonCode::UNSPECIFIED_ERROR, publish_will: true }, Instant::now());
}

/// How [`drive`] stopped.
enum Driven {
    /// The connection ends.
    Closed(Close),
    /// Nothing happened for `idle_park_after` and nothing is pending: park it.
    Quiet,
}

/// The end of a connection: unregister, flush what is pending, close the session.
async fn finish<R: ReadReady, W: AsyncWrite + Unpin + Send>(l: Live<R, W>, close: Close) {
    // The rest of `l` (the admission slot among it) is dropped once the session is closed.
    let Live { core, mut wr, mut wbuf, .. } = l;
    let Core { mut conn, ctx, registration, claim, .. } = core;
    // The peer address is kept once, in the registry: read as the entry is removed.
    let peer = registration.remove();
    if let Some((c, ticket)) = &claim {
        // The client id stays bound to its principal while its session lasts.
        let expiry = conn.session_expiry();
        let keep = (expiry > 0).then(|| crate::clock::unix_now().saturating_add(u64::from(expiry)));
        c.release(ticket, keep);
    }
    // Messages accepted in the last batch are routed now, and their acknowledgements (already
    // in `wbuf`) leave only once what the store must keep for them is durable.
    conn.flush_wakes();
    if !ctx.wait_durable(&mut conn).await {
        wbuf.clear(); // acknowledgements of messages the cluster did not keep stay unsent
    }
    // Flush what is pending (a DISCONNECT with a reason code, for instance), briefly.
    if !wbuf.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&wbuf)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    info!(peer = peer.as_str(), client_id = %crate::logsafe::Escaped(conn.client_id()), reason = %close.reason,
        why = close.reason.description(), "client disconnected");
    conn.closed(close, Instant::now());
}

/// CONNECT, authentication and CONNACK; `None` when the connection ended there.
async fn establish<S: Transport>(start: Box<Start<S>>) -> Option<Live<S::Read, S::Write>> {
    let Start { stream, peer, cert, listener, slot, count, ctx } = *start;
    let (mut rd, mut wr) = stream.halves();
    let mut rbuf = BytesMut::with_capacity(IDLE_READ);
    let mut wbuf = BytesMut::new();

    let pre =
        tokio::time::timeout(ctx.connect_timeout, read_connect(&mut rd, &mut rbuf, ctx.max_packet_size, &mut wbuf))
            .await;
    let connect = match pre {
        Ok(Pre::Connect(c)) => c,
        Ok(Pre::Closed(why)) => {
            debug!(%peer, why, "connection closed before CONNECT");
            let _ = wr.write_all(&wbuf).await;
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT within connect_timeout");
            hit(&ctx.broker.stats.limits.connect_timeouts);
            return None;
        }
    };
    let protocol = connect.protocol;
    // The certificate identity, for the connection's log line (the certificate itself goes to
    // authentication).
    let cert_identity = cert.as_ref().and_then(|c| c.identity.as_ref().ok().cloned());
    // Who the client is: bans, backoff, SCRAM, the configured methods, the client-id rules —
    // all decided by the chain; boxed, as its state is needed only during CONNECT.
    let decided =
        Box::pin(authenticate(&ctx, &connect, cert, listener, peer, slot.as_ref(), &mut rd, &mut wr, &mut rbuf)).await;
    let client_max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    let authed = match decided {
        Ok(a) => {
            ctx.broker.stats.security.auth_attempt(a.method, true);
            if a.principal.kind == warden_policy::PrincipalKind::Fallback {
                info!(client_id = %crate::logsafe::Escaped(&connect.client_id), claimed = %crate::logsafe::Escaped(&a.principal.name),
                    %peer, role = a.principal.roles.first().map_or("", |r| &**r),
                    "HTTP look-up unavailable: admitted as a fail-open fallback principal");
            }
            if let (Some(s), Some(user)) = (&slot, a.backoff_cleared.as_deref()) {
                s.user_succeeded(user);
            }
            a
        }
        Err(r) => {
            match r.cause {
                authn::Cause::Banned => {
                    // Banned client ids and user names are refused before any authentication
                    // work.
                    info!(%peer, client_id = %crate::logsafe::Escaped(&connect.client_id), user = ?connect.username, "banned client refused");
                }
                authn::Cause::BackingOff => {
                    // A user name backing off from this address after repeated failed
                    // passwords is refused before any hashing (v5 0x9F; v3 0x03).
                    if let Some(s) = &slot {
                        if s.auth_failed(Instant::now()) {
                            hit(&ctx.broker.stats.limits.bans);
                        }
                    }
                    hit(&ctx.broker.stats.limits.auth_backoff_refused);
                    ctx.broker.stats.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ctx.log_limit(&peer.ip().to_string(), "auth_fail_backoff", "CONNECT refused (0x9F)");
                }
                authn::Cause::Busy(why) => {
                    // One of the broker's own limits was full: the credentials were not
                    // checked, so this is not a failed login (no ban, no backoff). Logged once
                    // per address per interval.
                    let (counter, name) = match why {
                        authn::Busy::Hashing => (&ctx.broker.stats.limits.auth_hash_busy, "auth_hash_wait"),
                        authn::Busy::Lookup => (&ctx.broker.stats.limits.lookup_busy, "lookup max_in_flight"),
                    };
                    hit(counter);
                    ctx.broker.stats.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    ctx.log_limit(&peer.ip().to_string(), name, "CONNECT refused (0x89 server busy)");
                }
                authn::Cause::DeviceCertificate(why) => {
                    // The device registry refused a verified certificate: not a guess (no ban),
                    // logged with why (never the certificate).
                    ctx.broker.stats.security.auth_attempt(r.method, false);
                    if let Some(not_logged) = ctx.refusal_log.check(peer.ip(), Instant::now()) {
                        info!(%peer, client_id = %crate::logsafe::Escaped(&connect.client_id),
                            reason = %r.code, why = why.as_str(), not_logged,
                            "client certificate refused by the device registry");
                    }
                    ctx.broker.stats.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {
                    // A guess counts towards the address's ban, and a guessed password towards
                    // the user name's backoff (the chain says which).
                    if let Some(s) = slot.as_ref().filter(|_| r.guess) {
                        let now = Instant::now();
                        if s.auth_failed(now) {
                            hit(&ctx.broker.stats.limits.bans);
                        }
                        if let Some(user) = r.backoff_user.as_deref() {
                            s.user_failed(user, now);
                        }
                    }
                    let method = r.method;
                    ctx.broker.stats.security.auth_attempt(method, false);
                    if let (Some(w), Some(user)) = (&ctx.watch, connect.username.as_deref()) {
                        w.auth_failed(user);
                    }
                    // The user name is logged; the password never is.
                    // Logged per peer address: its first refusals in a window, then counted
                    // (reported with its next line), so that a wrong-password flood cannot fill
                    // the log.
                    let code = r.code;
                    if let Some(not_logged) = ctx.refusal_log.check(peer.ip(), Instant::now()) {
                        info!(%peer, client_id = %crate::logsafe::Escaped(&connect.client_id),
                            user = %crate::logsafe::Escaped(connect.username.as_deref().unwrap_or("-")),
                            method = method.as_str(), reason = %code, why = code.description(), not_logged,
                            "authentication refused");
                    }
                    ctx.broker.stats.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            write_connack(protocol, false, r.code, Default::default(), client_max, &mut wbuf);
            let _ = wr.write_all(&wbuf).await;
            let _ = wr.shutdown().await;
            return None;
        }
    };
    let enhanced_auth = authed.auth_data.map(bytes::Bytes::from);
    let scram_user = authed.scram_user;
    let principal = authed.principal;
    // A token-authenticated connection ends when its token expires (a core timeout) or is
    // revoked.
    let token_expiry = authed.token.as_ref().map(|t| {
        let left = t.expires_at.saturating_sub(crate::clock::unix_now());
        Instant::now() + Duration::from_secs(left)
    });
    // On a node of a cluster, the client id is claimed cluster-wide first (SPEC §3, §11):
    // another principal's elsewhere is refused (0x87), the same principal's connection on
    // another node is told to end (0x8E), and no registry means no CONNECT (0x88). A client
    // id the broker assigns is unique by construction.
    let claim = match &ctx.cluster {
        Some(c) if !connect.client_id.is_empty() => {
            static CONN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let conn_id = CONN_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let identity = principal.to_string();
            let (result, ticket) = c.claim(&connect.client_id, &identity, conn_id, crate::clock::unix_now()).await;
            let refused = match &result {
                warden_cluster::registry::ClaimResult::Granted { takeover: Some(node) } => {
                    // The same principal held the client id on another node: a resume takes
                    // its session from there (subscriptions, and the QoS 1/2 messages it
                    // missed), then that node lets its copy go.
                    if !connect.clean_start {
                        if let Some(resumed) = c.resume_session(&connect.client_id, node).await {
                            let now = Instant::now();
                            if ctx.broker.adopt_session(
                                &connect.client_id,
                                Arc::new(principal.clone()),
                                resumed.expiry,
                                resumed.subs.clone(),
                                now,
                            ) {
                                // Its subscriptions in force on NATS first: the replay reads
                                // up to the stream's position after that, so nothing falls
                                // between the two (at least once: some may come both ways).
                                if !c.wait_interest(c.interest_issued(), Duration::from_secs(5)).await {
                                    tracing::debug!(
                                        "cluster: a resumed session's subscriptions did not reach NATS in time"
                                    );
                                }
                                let n = c
                                    .replay_resumed(resumed)
                                    .await
                                    .into_iter()
                                    .filter(|m| ctx.broker.replay_to(&connect.client_id, m.clone()))
                                    .count();
                                info!(client_id = %crate::logsafe::Escaped(&connect.client_id), from = node.as_str(),
                                    queued = n, "cluster: session taken over from another node");
                            }
                        }
                    }
                    c.send_takeover(node, &connect.client_id).await;
                    None
                }
                warden_cluster::registry::ClaimResult::Granted { takeover: None } => None,
                warden_cluster::registry::ClaimResult::Refused => Some(ReasonCode::NOT_AUTHORIZED),
                warden_cluster::registry::ClaimResult::Unavailable => Some(ReasonCode::SERVER_UNAVAILABLE),
            };
            if let Some(code) = refused {
                info!(%peer, client_id = %crate::logsafe::Escaped(&connect.client_id),
                    principal = %crate::logsafe::Escaped(&principal), reason = %code, why = code.description(),
                    "connection refused by the cluster's client registry");
                ctx.broker.stats.connections_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                write_connack(protocol, false, code, Default::default(), client_max, &mut wbuf);
                let _ = wr.write_all(&wbuf).await;
                let _ = wr.shutdown().await;
                return None;
            }
            Some((c.clone(), Box::new(ticket)))
        }
        _ => None,
    };
    let notify = Arc::new(ConnWaker::default());
    let client_id_req = connect.client_id.clone();
    let mut conn =
        match ctx.broker.connect(*connect, principal.clone(), notify.clone(), enhanced_auth, Instant::now(), &mut wbuf)
        {
            Ok(c) => c,
            Err(e) => {
                if let Some((c, ticket)) = &claim {
                    c.release(ticket, None);
                }
                info!(%peer, client_id = %crate::logsafe::Escaped(&client_id_req),
                    principal = %crate::logsafe::Escaped(&principal), reason = %e.0, why = e.0.description(),
                    "connection refused");
                let _ = wr.write_all(&wbuf).await;
                let _ = wr.shutdown().await;
                return None;
            }
        };
    info!(%peer, client_id = %crate::logsafe::Escaped(conn.client_id()), principal = %crate::logsafe::Escaped(&principal),
        method = authed.method.as_str(),
        certificate = %crate::logsafe::Escaped(cert_identity.as_deref().unwrap_or("-")),
        protocol = match protocol { Protocol::V31 => "3.1", Protocol::V311 => "3.1.1", Protocol::V5 => "5" },
        "client connected");
    let registration =
        ctx.live.register(conn.client_id().clone(), conn.principal().clone(), peer, protocol, notify.clone());
    if *ctx.shutdown.borrow() {
        // Registered after the server told every live connection to end (it set the flag
        // first): end this one too.
        notify.end(ReasonCode::SERVER_SHUTTING_DOWN);
    } else if !ctx.auth.context(&authn::Unrestricted, authn::ListenerAuth::default()).stands(conn.principal()) {
        // A trust change (user disabled, removed from the password file or the store) made
        // while the chain waited — on the client's SCRAM reply, the hash pool, the look-up —
        // walked the live registry before this connection was in it; every change updates
        // what authentication reads first, so it is seen here (SPEC §10).
        notify.end(ReasonCode::NOT_AUTHORIZED);
    }
    conn.set_credential_expiry(token_expiry);
    if let Some((c, ticket)) = &claim {
        c.connected_as(ticket);
    }
    let watched = ctx.watch.as_ref().and_then(|w| w.connected(conn.principal(), peer.ip()));
    let limits = (scram_user.is_some() || watched.is_some()).then(|| Box::new(Limits { scram_user, watched }));
    let core = Core {
        conn,
        notify,
        ctx,
        limits,
        registration,
        _slot: slot,
        _count: count,
        limiter: None,
        park_delay: 0,
        parked_at: 0,
        announced: false,
        claim,
    };
    Some(Live { core, rd, wr, rbuf, wbuf })
}

/// What only some connections carry (the keep alive and the token's expiry are the core's
/// timeouts: `Connection::poll_timeout`).
struct Limits {
    /// The user of a connection authenticated with SCRAM-SHA-256 (it may re-authenticate).
    scram_user: Option<String>,
    /// With the behaviour watch: the principal's counters (see [`crate::watch`]). Here, not
    /// in [`Core`], so that a parked connection stays in its size class.
    watched: Option<crate::watch::Watched>,
}

async fn drive<R: ReadReady, W: AsyncWrite + Unpin>(l: &mut Live<R, W>) -> Driven {
    let Live { core, rd, wr, rbuf, wbuf } = l;
    let Core { conn, notify, ctx, limits, limiter, park_delay, announced: resumed_announced, .. } = core;
    // The behaviour watch's throttle applied to `limiter` (messages/s; 0: none).
    let mut watch_rate = 0u32;
    let (notify, ctx): (&ConnWaker, &ConnContext) = (notify, ctx);
    let limits = limits.as_deref();
    let scram_user = limits.and_then(|l| l.scram_user.as_deref());
    let watched = limits.and_then(|l| l.watched.as_deref());
    let lost = Close { reason: ReasonCode::UNSPECIFIED_ERROR, publish_will: true };
    let protocol = conn.protocol();
    // Quiet this long, the connection parks (plain TCP only: its transport can wait without a
    // buffer and be taken out of tokio).
    // Most idle connections are idle from their CONNACK on (devices that connect, subscribe
    // and wait): the first park comes sooner, so that a burst of connections (a fleet coming
    // back after a restart) never holds a task each at once.
    // Later parks wait the delay its last park and resume chose: a device that keeps coming
    // back soon after it parked (telemetry every few seconds) waits longer, up to
    // `idle_park_max`, so that it does not pay a park and a resume per message.
    let park_after = ctx.parking.as_ref().filter(|_| R::WAITS_WITHOUT_BUFFER).map(|p| {
        if *park_delay == 0 {
            p.after.min(FIRST_PARK_AFTER)
        } else {
            park::from_ticks(*park_delay)
        }
    });
    // Bytes read before CONNECT was decoded may already hold more packets (a resumed
    // connection may have been woken for deliveries).
    // A connection ended (revoked, kicked, banned) while it was parked or establishing takes
    // nothing more: no delivery is pulled, no packet handled.
    if let Some(close) = ended(notify, conn, wbuf) {
        return Driven::Closed(close);
    }
    let mut more = match conn.pull(Instant::now(), wbuf, WRITE_BUDGET) {
        Ok(m) => m,
        Err(c) => return Driven::Closed(c),
    };
    let mut pending_input = !rbuf.is_empty();
    let mut busy = false;
    // The last read came after this connection had read nothing for `order::FRESH_AFTER` (or
    // is its first since it was resumed): its PUBLISHes give way to other connections'
    // subscription changes woken in the same turn of the reactor (`order`).
    let mut fresh = true;
    let mut last_read: Option<Instant> = None;
    let mut reauth = authn::Reauth::default();
    // Reading is paused until then (publish rate or bandwidth throttle).
    let mut throttled_until: Option<tokio::time::Instant> = None;
    let mut mem = MemCharge::new(ctx.memory.clone(), Instant::now());
    let mut mem_paused = false;
    // Since when pending output has not moved.
    let mut stalled_since: Option<tokio::time::Instant> = None;
    // The name of the last PUBLISH, reused while a client publishes to the same topic.
    let mut last_topic = None;
    // A subscription change read and not yet handled (arrival order: `order`).
    let mut announced = std::mem::take(resumed_announced).then(|| ctx.arrivals.adopt());
    loop {
        if pending_input {
            pending_input = false;
            // Ended since the last turn (the wake-up may not have been seen yet): what it sent
            // meanwhile is not handled.
            if let Some(close) = ended(notify, conn, wbuf) {
                return Driven::Closed(close);
            }
            let now = Instant::now();
            // This batch waited for the subscription changes other connections read (once).
            let mut waited = false;
            // PUBLISH packets and bytes of this batch, for the behaviour watch (added to the
            // principal's counters once per batch).
            let (mut published, mut published_bytes) = (0u64, 0u64);
            loop {
                let before = rbuf.len();
                match decode_cached(rbuf, protocol, ctx.max_packet_size, &mut last_topic) {
                    Ok(Some(Packet::Auth(a))) if scram_user.is_some() => {
                        // MQTT 5 re-authentication (§4.12.1): the same user proves itself again,
                        // against the password file and disabled names in force now (the
                        // listener allowed SCRAM at CONNECT: re-authentication repeats it).
                        let step = reauth.step(
                            a.reason_code,
                            a.properties.authentication_method.as_deref(),
                            a.properties.authentication_data.as_deref(),
                            scram_user.unwrap_or(""),
                            &ctx.auth.context(&authn::Unrestricted, authn::ListenerAuth::default()),
                        );
                        match step {
                            Ok(reply) => {
                                let properties = mqtt_codec::Properties {
                                    authentication_method: Some(warden_policy::scram::MECHANISM.into()),
                                    authentication_data: Some(bytes::Bytes::from(reply.data)),
                                    ..Default::default()
                                };
                                Packet::Auth(mqtt_codec::Auth {
                                    reason_code: reply.reason_code,
                                    properties: properties.into(),
                                })
                                .encode(Protocol::V5, wbuf);
                            }
                            Err(code) => {
                                info!(client_id = %crate::logsafe::Escaped(conn.client_id()), reason = %code, "re-authentication refused");
                                return Driven::Closed(conn.disconnect(wbuf, code));
                            }
                        }
                    }
                    Ok(Some(p)) => {
                        let change = matches!(p, Packet::Subscribe(_) | Packet::Unsubscribe(_));
                        if let (Packet::Subscribe(s), Some(w)) = (&p, watched) {
                            w.subscribed(s.filters.len() as u64);
                        }
                        if matches!(p, Packet::Publish(_)) {
                            if !waited {
                                // Arrival order (`order`): a SUBSCRIBE another connection has
                                // read is applied before this batch's PUBLISHes are routed.
                                waited = true;
                                drop(announced.take()); // its own, handled by now
                                ctx.arrivals.give_way(fresh).await;
                            }
                            let size = before - rbuf.len();
                            mem.published(size as u64, now);
                            published += 1;
                            published_bytes += size as u64;
                            if limiter.is_none() {
                                *limiter = PublishLimiter::new(ctx.publish_limits, now).map(Box::new);
                            }
                            if let Some(Err(code)) = limiter.as_mut().map(|l| l.charge(size, now)) {
                                // publish_throttle = 0: refused before it is routed.
                                publish_limit_disconnect(ctx, conn.client_id(), code);
                                return Driven::Closed(conn.disconnect(wbuf, code));
                            }
                        }
                        if let Err(c) = conn.handle(p, now, wbuf) {
                            return Driven::Closed(c);
                        }
                        if change {
                            announced = None; // applied
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(client_id = %crate::logsafe::Escaped(conn.client_id()), error = %e, "bad packet");
                        return Driven::Closed(conn.decode_error(&e, wbuf));
                    }
                }
            }
            // An announcement never outlives its batch (a SUBSCRIBE not read whole yet is
            // announced again by the read that completes it): a client that stops halfway
            // through one cannot hold the broker's publishers back.
            announced = None;
            if let Some(w) = watched.filter(|_| published > 0) {
                w.published(published, published_bytes);
                let rate = w.throttle.load(std::sync::atomic::Ordering::Relaxed);
                if rate != watch_rate {
                    // Throttled (or lifted) by the behaviour watch: the publish limiter is made
                    // again with the lower rate.
                    watch_rate = rate;
                    let mut l = ctx.publish_limits;
                    if rate > 0 {
                        l.rate = if l.rate == 0 { rate } else { l.rate.min(rate) };
                    }
                    *limiter = PublishLimiter::new(l, now).map(Box::new);
                }
            }
            conn.flush_wakes();
            if let Some(close) = ended(notify, conn, wbuf) {
                return Driven::Closed(close);
            }
            match conn.pull(now, wbuf, WRITE_BUDGET) {
                Ok(m) => more = m,
                Err(c) => return Driven::Closed(c),
            }
            if let Some(l) = limiter.as_mut() {
                match l.after_batch(now) {
                    Throttle::Read => throttled_until = None,
                    Throttle::Pause { until, started } => {
                        let wait = until.saturating_duration_since(now);
                        throttled_until = Some(tokio::time::Instant::now() + wait);
                        if let Some(code) = started {
                            let (counter, name) = if code == ReasonCode::MESSAGE_RATE_TOO_HIGH {
                                (&ctx.broker.stats.limits.publish_rate_throttled, "max_publish_rate")
                            } else {
                                (&ctx.broker.stats.limits.publish_bandwidth_throttled, "max_publish_bandwidth")
                            };
                            hit(counter);
                            ctx.log_limit(conn.client_id(), name, "throttled (reading paused)");
                        }
                    }
                    Throttle::Disconnect(code) => {
                        publish_limit_disconnect(ctx, conn.client_id(), code);
                        return Driven::Closed(conn.disconnect(wbuf, code));
                    }
                }
            }
        }
        // Output that acknowledges something the store must keep leaves only once it is
        // durable; one commit covers every connection waiting meanwhile.
        if !ctx.wait_durable(conn).await {
            // The cluster did not keep messages this output acknowledges (no quorum): nothing
            // of it leaves, and the connection ends with DISCONNECT 0x89 Server busy (MQTT 5 §4.13)
            // (the client sends them again on a new connection: QoS 1/2 are not lost).
            wbuf.clear();
            return Driven::Closed(conn.disconnect(wbuf, ReasonCode::SERVER_BUSY));
        }
        // An empty read buffer is given back unless the connection is streaming (its last read
        // filled the buffer) or its transport cannot wait without one: an idle TCP connection
        // waits for input without a buffer (`ReadReady`).
        let idle = !busy && R::WAITS_WITHOUT_BUFFER;
        if rbuf.is_empty() && rbuf.capacity() > 0 && (idle || rbuf.capacity() > KEEP_CAPACITY) {
            *rbuf = BytesMut::new();
        }
        if wbuf.is_empty() && wbuf.capacity() > KEEP_CAPACITY {
            *wbuf = BytesMut::new();
        }
        mem.set((rbuf.capacity() + wbuf.capacity()) as u64);
        // Above max_memory the heaviest publishers are not read (backpressure).
        let paused_now = ctx.memory.enabled() && mem.should_pause();
        if paused_now && !mem_paused {
            hit(&ctx.broker.stats.limits.memory_paused);
            ctx.log_limit(conn.client_id(), "max_memory", "publisher not read (broker above max_memory)");
        }
        mem_paused = paused_now;
        if wbuf.is_empty() {
            stalled_since = None;
        } else if stalled_since.is_none() {
            stalled_since = Some(tokio::time::Instant::now());
        }
        let stall_deadline =
            stalled_since.filter(|_| !ctx.write_stall_timeout.is_zero()).map(|s| s + ctx.write_stall_timeout);
        let can_read = wbuf.len() < WRITE_HIGH_WATER && throttled_until.is_none() && !mem_paused;
        // One timer for every deadline (a `Sleep` is over 100 bytes of the task's state): the
        // keep alive, the access token's expiry, the end of a throttle, the write stall and
        // the memory sample; which of them passed is sorted out when it fires.
        let mem_sample = mem_paused.then(|| tokio::time::Instant::now() + MemoryGauge::SAMPLE);
        // Nothing to read, write or wait for but the client and the core: park after a while.
        let quiet = !more
            && !pending_input
            && rbuf.is_empty()
            && wbuf.is_empty()
            && throttled_until.is_none()
            && !mem_paused
            && reauth.is_idle();
        let park_at = park_after.filter(|_| quiet).map(|a| tokio::time::Instant::now() + a);
        // The core's own timeout: the keep alive [MQTT-3.1.2-24] or the access token's expiry.
        let core_deadline = conn.poll_timeout().map(tokio::time::Instant::from_std);
        let deadlines = Deadlines {
            stall: stall_deadline,
            core: core_deadline,
            throttle: throttled_until,
            park: park_at,
            memory_sample: mem_sample,
        };
        tokio::select! {
            r = read_some(rd, rbuf, busy), if can_read => {
                match r {
                    Ok((0, _)) | Err(_) => return Driven::Closed(lost),
                    Ok((_, filled)) => {
                        busy = filled;
                        if announced.is_none() && order::has_subscription_change(rbuf) {
                            announced = Some(ctx.arrivals.announce());
                        }
                        pending_input = true;
                        let now = Instant::now();
                        fresh = last_read.is_none_or(|t| now.saturating_duration_since(t) >= order::FRESH_AFTER);
                        last_read = Some(now);
                        conn.note_input(now);
                    }
                }
            }
            r = wr.write_buf(wbuf), if !wbuf.is_empty() => {
                match r {
                    Ok(0) | Err(_) => return Driven::Closed(lost),
                    Ok(_) => {
                        stalled_since = None;
                        if more && wbuf.len() < WRITE_BUDGET / 2 {
                            if let Some(close) = ended(notify, conn, wbuf) {
                                return Driven::Closed(close);
                            }
                            match conn.pull(Instant::now(), wbuf, WRITE_BUDGET) {
                                Ok(m) => more = m,
                                Err(c) => return Driven::Closed(c),
                            }
                        }
                    }
                }
            }
            // The core (deliveries, a take-over), an administrator, a token revocation and the
            // server's shutdown all wake the connection here: one wait instead of four.
            _ = notify.woken() => {
                // The admin registry (kick, ban, user disabled or deleted; shutdown) and the
                // trust seam (revocation, removal; crate::admin::trust) end a connection through its wake-up.
                if let Some(close) = ended(notify, conn, wbuf) {
                    return Driven::Closed(close);
                }
                match conn.pull(Instant::now(), wbuf, WRITE_BUDGET) {
                    Ok(m) => more = m,
                    Err(c) => return Driven::Closed(c),
                }
            }
            _ = sleep_until_opt(deadlines.next()) => match deadlines.passed(tokio::time::Instant::now()) {
                Some(Deadline::Stall) => {
                    // The client reads nothing: what is pending cannot be delivered, DISCONNECT
                    // included. Its QoS 1/2 messages stay in the session for a reconnect.
                    hit(&ctx.broker.stats.limits.write_stalled);
                    ctx.log_limit(conn.client_id(), "write_stall_timeout", "closed (output not read)");
                    wbuf.clear();
                    return Driven::Closed(conn.disconnect(&mut BytesMut::new(), ReasonCode::SERVER_BUSY));
                }
                Some(Deadline::Core) => {
                    // The keep alive ran out (0x8D, the will published) [MQTT-3.1.2-24], or the
                    // credential expired (0xA0, the will discarded like a revocation's: SPEC §10).
                    if let Err(close) = conn.handle_timeout(Instant::now(), wbuf) {
                        let what = if close.reason == ReasonCode::KEEP_ALIVE_TIMEOUT {
                            "keep alive timeout"
                        } else {
                            "access token expired"
                        };
                        debug!(client_id = %crate::logsafe::Escaped(conn.client_id()), "{what}");
                        return Driven::Closed(close);
                    }
                }
                Some(Deadline::Throttle) => throttled_until = None,
                Some(Deadline::Park) => {
                    // The delay it waited, for the resume to judge (at least 1: parked before).
                    *park_delay = park_after.map_or(1, park::to_ticks);
                    conn.shrink();
                    return Driven::Quiet;
                }
                // The memory sample: the next turn of the loop looks at the gauge again.
                Some(Deadline::MemorySample) | None => {}
            }
        }
    }
}

/// Which of a connection's [`Deadlines`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Output has not moved for `write_stall_timeout`: closed (Server busy).
    Stall,
    /// The core's timeout (`Connection::poll_timeout`: keep alive, credential expiry).
    Core,
    /// A publish throttle ends: reading resumes.
    Throttle,
    /// Quiet long enough: the connection parks.
    Park,
    /// Paused above `max_memory`: look at the gauge again.
    MemorySample,
}

/// The deadlines of a connection, as one pure value the driver builds each turn: it sleeps
/// until [`Deadlines::next`] (one timer: a tokio `Sleep` is over 100 bytes of the task's state)
/// and asks [`Deadlines::passed`] which one fired.
#[derive(Debug, Default, Clone, Copy)]
struct Deadlines {
    stall: Option<tokio::time::Instant>,
    core: Option<tokio::time::Instant>,
    throttle: Option<tokio::time::Instant>,
    park: Option<tokio::time::Instant>,
    memory_sample: Option<tokio::time::Instant>,
}

impl Deadlines {
    /// In the order they are acted on when several passed at once: a connection that must
    /// close is closed before it could park.
    fn in_order(&self) -> [(Deadline, Option<tokio::time::Instant>); 5] {
        [
            (Deadline::Stall, self.stall),
            (Deadline::Core, self.core),
            (Deadline::Throttle, self.throttle),
            (Deadline::Park, self.park),
            (Deadline::MemorySample, self.memory_sample),
        ]
    }

    /// The earliest deadline, if any.
    fn next(&self) -> Option<tokio::time::Instant> {
        self.in_order().into_iter().filter_map(|(_, d)| d).min()
    }

    /// The first deadline (in [`Deadlines::in_order`]) passed at `now`.
    fn passed(&self, now: tokio::time::Instant) -> Option<Deadline> {
        self.in_order().into_iter().find(|(_, d)| d.is_some_and(|d| d <= now)).map(|(w, _)| w)
    }
}

/// The close for a connection that an administrator, a ban, the trust seam (revocation,
/// removal; [`crate::admin::trust`]) or shutdown asked to end, if one did. Checked before every pull
/// of deliveries and before input is handled, not only when the wake-up is seen, so that a
/// connection whose credential lost its standing receives and publishes nothing more.
fn ended(notify: &ConnWaker, conn: &mut Connection, wbuf: &mut BytesMut) -> Option<Close> {
    match notify.end_reason()? {
        ReasonCode::SERVER_SHUTTING_DOWN => Some(conn.shutdown(wbuf)),
        reason => {
            let mut close = conn.disconnect(wbuf, reason);
            if notify.revoked() {
                // Its credential lost its standing (SPEC §10): the will is discarded.
                close.publish_will = false;
                info!(client_id = %crate::logsafe::Escaped(conn.client_id()), %reason, "ended: its credential lost its standing (will discarded)");
            } else {
                info!(client_id = %crate::logsafe::Escaped(conn.client_id()), %reason, "ended by an administrator or a ban");
            }
            Some(close)
        }
    }
}

/// Read what is waiting; `(bytes read, the read filled the buffer)`. A connection without a
/// read buffer (idle) waits for input before it allocates one.
async fn read_some<R: ReadReady>(rd: &mut R, rbuf: &mut BytesMut, busy: bool) -> std::io::Result<(usize, bool)> {
    if rbuf.capacity() == 0 {
        rd.ready().await?;
    }
    rbuf.reserve(if busy { BUSY_READ } else { IDLE_READ });
    let spare = rbuf.capacity() - rbuf.len();
    let n = rd.read_buf(rbuf).await?;
    Ok((n, n == spare))
}

/// Count and log a publish-limit disconnect (0x96 rate, 0x97 bandwidth).
fn publish_limit_disconnect(ctx: &ConnContext, client_id: &str, code: ReasonCode) {
    let (counter, name) = if code == ReasonCode::MESSAGE_RATE_TOO_HIGH {
        (&ctx.broker.stats.limits.publish_rate_disconnects, "max_publish_rate")
    } else {
        (&ctx.broker.stats.limits.publish_bandwidth_disconnects, "max_publish_bandwidth")
    };
    hit(counter);
    ctx.log_limit(client_id, name, "disconnected");
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A listener that is bound and accepting.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Transport.
    pub protocol: crate::config::ListenerProtocol,
    /// The actual address (the port is known even when the config said 0).
    pub addr: SocketAddr,
    /// WebSocket path (ws only).
    pub path: String,
    /// Connections open on it now (`warden_connections{listener}`).
    pub open: Arc<OpenCounts>,
}

impl BoundListener {
    /// The `listener` label: protocol and bound address (`mqtt:127.0.0.1:1883`).
    pub fn label(&self) -> String {
        format!("{}:{}", self.protocol.as_str(), self.addr)
    }
}

impl BoundListener {
    /// `mqtt://127.0.0.1:1883`, `ws://127.0.0.1:8083/mqtt`, …: how the logs name it.
    pub fn url(&self) -> String {
        match self.protocol {
            crate::config::ListenerProtocol::Ws | crate::config::ListenerProtocol::Wss => {
                format!("{}://{}{}", self.protocol, self.addr, self.path)
            }
            _ => format!("{}://{}", self.protocol, self.addr),
        }
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::{Deadline, Deadlines};
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn no_deadline_means_no_timer_and_nothing_passed() {
        let d = Deadlines::default();
        assert_eq!(d.next(), None);
        assert_eq!(d.passed(Instant::now()), None);
    }

    #[test]
    fn the_timer_is_set_for_the_earliest_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let d =
            Deadlines { core: Some(t0 + s), park: Some(t0 + 2 * s), throttle: Some(t0 + 3 * s), ..Default::default() };
        assert_eq!(d.next(), Some(t0 + s));
        assert_eq!(d.passed(t0), None, "none passed yet");
        assert_eq!(d.passed(t0 + s), Some(Deadline::Core), "a deadline passes at its instant");
        assert_eq!(d.passed(t0 + 2 * s), Some(Deadline::Core), "still the core's, which may close");
    }

    #[test]
    fn a_closing_deadline_wins_over_parking_and_sampling() {
        let t0 = Instant::now();
        let all =
            Deadlines { stall: Some(t0), core: Some(t0), throttle: Some(t0), park: Some(t0), memory_sample: Some(t0) };
        assert_eq!(all.passed(t0), Some(Deadline::Stall), "a stalled writer is closed first");
        let d = Deadlines { stall: None, ..all };
        assert_eq!(d.passed(t0), Some(Deadline::Core), "keep alive [MQTT-3.1.2-24] and token expiry next");
        let d = Deadlines { core: None, ..d };
        assert_eq!(d.passed(t0), Some(Deadline::Throttle));
        let d = Deadlines { throttle: None, ..d };
        assert_eq!(d.passed(t0), Some(Deadline::Park));
        let d = Deadlines { park: None, ..d };
        assert_eq!(d.passed(t0), Some(Deadline::MemorySample));
    }
}
