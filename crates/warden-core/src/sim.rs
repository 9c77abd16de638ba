//! An in-memory simulator of the core: many client connections to one [`Broker`], a virtual
//! clock, a recording [`Wake`], and the store of the caller's choice (none, or any
//! [`Persist`]). It drives the core the way the shell does (see the crate's call order): each
//! input is handled, the publisher's wakes flushed, then every connection that was woken is
//! pulled, until nothing moves. What the broker sends a client is decoded into that client's
//! inbox. No socket, no thread, no sleep: time passes only through [`Sim::advance`].
//!
//! Used by the crate's tests (`tests/sim.rs`) and by the `session_ops` fuzz target.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_codec::{decode, Connect, Packet, Protocol, ReasonCode};
use warden_policy::{Authorizer, Principal};

use crate::persist::Persist;
use crate::{Broker, BrokerConfig, Close, Connection, Wake};

/// A [`Wake`] that records: how many times it was called, and whether a wake is pending
/// (not yet seen by [`RecordingWaker::take`]).
#[derive(Debug, Default)]
pub struct RecordingWaker {
    wakes: AtomicU64,
    pending: AtomicBool,
}

impl RecordingWaker {
    /// How many times the core woke this connection.
    pub fn count(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// Whether a wake came since the last call (and clear it).
    pub fn take(&self) -> bool {
        self.pending.swap(false, Ordering::Relaxed)
    }
}

impl Wake for RecordingWaker {
    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.pending.store(true, Ordering::Relaxed);
    }
}

/// One simulated client: its connection while it is open, its waker, and what the broker
/// sent it.
pub struct Client {
    /// The connection, while open.
    pub conn: Option<Connection>,
    /// Its waker (a new one per connection).
    pub waker: Arc<RecordingWaker>,
    /// The protocol its packets are decoded with.
    pub protocol: Protocol,
    /// Every packet the broker sent it and the test has not taken yet, in order.
    pub inbox: Vec<Packet>,
    /// How its last connection ended (`None` while open or never closed).
    pub closed: Option<Close>,
}

/// A client's index in the simulator (stable for the simulator's life).
pub type ClientId = usize;

/// Why an input was not applied: the client has no open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotConnected;

/// The simulator.
pub struct Sim {
    /// The broker under test.
    pub broker: Arc<Broker>,
    /// The virtual clock: every input is given this instant.
    pub now: Instant,
    clients: Vec<Client>,
}

impl Sim {
    /// A broker with these limits and policy, no store, its clock starting at `start`.
    pub fn new(config: BrokerConfig, authorizer: Arc<dyn Authorizer>, start: Instant) -> Sim {
        Sim::with_store(config, authorizer, None, start)
    }

    /// As [`Sim::new`], reporting durable changes to `store`.
    pub fn with_store(
        config: BrokerConfig,
        authorizer: Arc<dyn Authorizer>,
        store: Option<Arc<dyn Persist>>,
        start: Instant,
    ) -> Sim {
        Sim { broker: Broker::with_store(config, authorizer, store, start), now: start, clients: Vec::new() }
    }

    /// A client slot with no connection yet.
    pub fn client(&mut self, protocol: Protocol) -> ClientId {
        self.clients.push(Client {
            conn: None,
            waker: Arc::new(RecordingWaker::default()),
            protocol,
            inbox: Vec::new(),
            closed: None,
        });
        self.clients.len() - 1
    }

    /// The client `c` (`None` for an index never handed out).
    pub fn get(&self, c: ClientId) -> Option<&Client> {
        self.clients.get(c)
    }

    /// The client `c`, to change (e.g. take packets out of its inbox).
    pub fn get_mut(&mut self, c: ClientId) -> Option<&mut Client> {
        self.clients.get_mut(c)
    }

    /// Run `f` on client `c`'s open connection (the shell's own calls, such as
    /// [`Connection::set_credential_expiry`]); `None` when it has none.
    pub fn with_connection<T>(&mut self, c: ClientId, f: impl FnOnce(&mut Connection) -> T) -> Option<T> {
        self.clients.get_mut(c).and_then(|cl| cl.conn.as_mut()).map(f)
    }

    /// Whether `c` has an open connection.
    pub fn is_connected(&self, c: ClientId) -> bool {
        self.clients.get(c).is_some_and(|cl| cl.conn.is_some())
    }

    /// Number of client slots.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client slot was made.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Connect a new client (a slot of its own) as `principal`; see [`Sim::reconnect`].
    pub fn connect(&mut self, connect: Connect, principal: Principal) -> (ClientId, Result<(), ReasonCode>) {
        let c = self.client(connect.protocol);
        let r = self.reconnect(c, connect, principal);
        (c, r)
    }

    /// Connect client `c` again (closing nothing: an open connection of the same client id is
    /// taken over by the broker, as on the network). The CONNACK (and then any deliveries)
    /// land in its inbox; a refusal returns the reason code.
    pub fn reconnect(&mut self, c: ClientId, connect: Connect, principal: Principal) -> Result<(), ReasonCode> {
        let Some(cl) = self.clients.get_mut(c) else { return Err(ReasonCode::UNSPECIFIED_ERROR) };
        cl.protocol = connect.protocol;
        let waker = Arc::new(RecordingWaker::default());
        cl.waker = waker.clone();
        let mut out = BytesMut::new();
        let r = self.broker.connect(connect, principal, waker, None, self.now, &mut out);
        decode_into(&mut out, cl.protocol, &mut cl.inbox);
        match r {
            Ok(conn) => {
                if let Some(old) = cl.conn.take() {
                    // The slot's previous connection (same client id): the network would close
                    // it when the broker says it was taken over; here it is closed at once.
                    old.closed(Close { reason: ReasonCode::SESSION_TAKEN_OVER, publish_will: true }, self.now);
                }
                cl.conn = Some(conn);
                cl.closed = None;
                self.settle(Some(c));
                Ok(())
            }
            Err(e) => {
                self.settle(None);
                Err(e.0)
            }
        }
    }

    /// Client `c` sends `packet`: handled, the batch's wakes flushed, then every woken
    /// connection pulled. A [`Close`] the packet causes ends the connection (the DISCONNECT,
    /// if any, is in the inbox) and is returned.
    pub fn send(&mut self, c: ClientId, packet: Packet) -> Result<Result<(), Close>, NotConnected> {
        self.send_batch(c, vec![packet])
    }

    /// Client `c` sends several packets read in one batch (one `flush_wakes` after them).
    pub fn send_batch(&mut self, c: ClientId, packets: Vec<Packet>) -> Result<Result<(), Close>, NotConnected> {
        let now = self.now;
        let cl = self.clients.get_mut(c).ok_or(NotConnected)?;
        let conn = cl.conn.as_mut().ok_or(NotConnected)?;
        let mut out = BytesMut::new();
        let mut result = Ok(());
        // The bytes arrived: the keep alive counts from now (as the shell does per read).
        conn.note_input(now);
        for p in packets {
            if let Err(close) = conn.handle(p, now, &mut out) {
                result = Err(close);
                break;
            }
        }
        conn.flush_wakes();
        let _ticket = conn.take_durable();
        decode_into(&mut out, cl.protocol, &mut cl.inbox);
        if let Err(close) = result {
            self.close(c, close);
        }
        self.settle(Some(c));
        Ok(result)
    }

    /// Client `c`'s network connection drops (no DISCONNECT): the will is published.
    pub fn drop_connection(&mut self, c: ClientId) {
        self.close(c, Close { reason: ReasonCode::UNSPECIFIED_ERROR, publish_will: true });
        self.settle(None);
    }

    /// The shell ends client `c`'s connection for `reason` (a server DISCONNECT, the will
    /// published), e.g. an administrator's kick.
    pub fn kick(&mut self, c: ClientId, reason: ReasonCode) {
        let Some(cl) = self.clients.get_mut(c) else { return };
        let Some(conn) = cl.conn.as_ref() else { return };
        let mut out = BytesMut::new();
        let close = conn.disconnect(&mut out, reason);
        decode_into(&mut out, cl.protocol, &mut cl.inbox);
        self.close(c, close);
        self.settle(None);
    }

    /// Time passes by `d`: every connection whose [`Connection::poll_timeout`] is due is told
    /// ([`Connection::handle_timeout`]), then the broker ticks (wills, session and retained
    /// expiry), then woken connections are pulled.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        let now = self.now;
        for c in 0..self.clients.len() {
            let cl = &mut self.clients[c];
            let Some(conn) = cl.conn.as_mut() else { continue };
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                let mut out = BytesMut::new();
                let r = conn.handle_timeout(now, &mut out);
                decode_into(&mut out, cl.protocol, &mut cl.inbox);
                if let Err(close) = r {
                    self.close(c, close);
                }
            }
        }
        self.broker.tick(now);
        self.settle(None);
    }

    /// Pull every connection that was woken (and `also`), again and again until no
    /// connection is woken any more. A connection whose session was taken over is closed.
    pub fn settle(&mut self, also: Option<ClientId>) {
        let mut first = also;
        // Each round pulls what the previous one woke; deliveries never wake their own
        // sender again, so this ends (bounded all the same).
        for _ in 0..64 {
            let mut moved = false;
            for c in 0..self.clients.len() {
                let woken = self.clients[c].waker.take();
                if !(woken || first == Some(c)) {
                    continue;
                }
                moved = true;
                self.pull(c);
            }
            first = None;
            if !moved {
                break;
            }
        }
    }

    /// Pull client `c`'s deliveries into its inbox (closing it if its session was taken over).
    pub fn pull(&mut self, c: ClientId) {
        let now = self.now;
        let Some(cl) = self.clients.get_mut(c) else { return };
        let Some(conn) = cl.conn.as_mut() else { return };
        let mut out = BytesMut::new();
        let r = conn.pull(now, &mut out, usize::MAX);
        let _ticket = conn.take_durable();
        decode_into(&mut out, cl.protocol, &mut cl.inbox);
        if let Err(close) = r {
            self.close(c, close);
        }
    }

    /// Take everything client `c` was sent since the last call.
    pub fn take(&mut self, c: ClientId) -> Vec<Packet> {
        self.clients.get_mut(c).map(|cl| std::mem::take(&mut cl.inbox)).unwrap_or_default()
    }

    /// How client `c`'s last connection ended.
    pub fn closed(&self, c: ClientId) -> Option<Close> {
        self.clients.get(c).and_then(|cl| cl.closed)
    }

    /// End client `c`'s connection with `close` (as the shell does once its output is flushed).
    fn close(&mut self, c: ClientId, close: Close) {
        let now = self.now;
        let Some(cl) = self.clients.get_mut(c) else { return };
        if let Some(conn) = cl.conn.take() {
            conn.closed(close, now);
            cl.closed = Some(close);
        }
    }
}

/// Decode every whole packet in `out` into `inbox` (what the broker writes always decodes; a
/// packet that would not is dropped with the rest of the buffer).
fn decode_into(out: &mut BytesMut, protocol: Protocol, inbox: &mut Vec<Packet>) {
    while let Ok(Some(p)) = decode(out, protocol, u32::MAX) {
        inbox.push(p);
    }
    out.clear();
}
