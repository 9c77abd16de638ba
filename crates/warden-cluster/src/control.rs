//! The cluster's control plane (SPEC §11 "trust changes are cluster-wide", "takeover"): what
//! the nodes share besides messages.
//!
//! - **Documents**: the shell's shared state (the policy store, the ban list, ...) as named
//!   documents, each a whole snapshot, kept in the JetStream stream `{PREFIX}_CONTROL` (the
//!   last version of each, on disk, on `replicas` servers). A node that changes one publishes
//!   it; every node reads the last version of each every [`POLL`], and at once when the
//!   writing node says so on core NATS (`{prefix}.c.changed`), and hands each version it did
//!   not write to its [`ControlSink`]. The stream's order is the one order: every node ends with the stream's
//!   last version (last writer wins; admin changes are rare and made by operators). A node
//!   that starts reads the last version of each document, so that the cluster's copy wins
//!   over a node's local file once any node has written one.
//! - **Node commands**: `{prefix}.c.node.<node>` (core NATS), telling one node to end one of its
//!   connections (a kick through another node's admin API, a takeover), or asking it for its
//!   sessions, for one of them or to remove one (request and reply: another node's
//!   `GET /admin/sessions`, `GET` and `DELETE /admin/sessions/{client_id}`).
//! - **The client registry** ([`crate::registry`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::envelope;

/// What the shell does with what the control plane brings.
pub trait ControlSink: Send + Sync + 'static {
    /// Another node changed the shared document `name` (or, at start, this is the cluster's
    /// last version of it): apply `body`, without publishing it again.
    fn document(&self, name: &str, body: &[u8]);
    /// End this node's connection of `client_id` with the MQTT reason code `reason`. True when
    /// there was one.
    fn end_client(&self, client_id: &str, reason: u8) -> bool;
    /// Another node took `client_id` over for the same principal: end its connection here
    /// (DISCONNECT 0x8E) and discard this node's copy of its session (the other node resumes
    /// it from the cluster's record, or starts anew).
    fn taken_over(&self, client_id: &str);
    /// A dead node's will is about to be published here under `owner` (made again from the
    /// cluster's copy, [`crate::wills`]; `jti`: its token's id): true when `owner` still stands
    /// on what this node reads now — not disabled, removed, its token revoked, or its
    /// certificate (the owner's credential, kept with the will) revoked by a CRL or the device
    /// registry. The core then
    /// authorizes the will against the policy in force. The default: it stands.
    fn will_owner_stands(&self, _owner: &warden_policy::Principal, _jti: Option<&str>) -> bool {
        true
    }
    /// This node's sessions, as the shell lists them (its encoding, at most
    /// [`MAX_SESSIONS_ANSWER`] bytes), for another node's admin API. The default: none.
    fn sessions(&self) -> Vec<u8> {
        Vec::new()
    }
    /// One session of this node with its subscriptions, as the shell shows it (its encoding),
    /// for another node's `GET /admin/sessions/{client_id}`; `None`: not here. The default:
    /// none.
    fn session(&self, _client_id: &str) -> Option<Vec<u8>> {
        None
    }
    /// Remove one session of this node (its connection ended, its will discarded), for another
    /// node's `DELETE /admin/sessions/{client_id}`: true when there was one. The default: none.
    fn drop_session(&self, _client_id: &str) -> bool {
        false
    }
    /// This node's counters now, as the shell shows them (its encoding), for another node's
    /// cluster-wide `GET /admin/stats?scope=cluster`. The default: none.
    fn stats(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// The largest answer to a sessions request (NATS refuses messages over 1 MiB by default).
pub const MAX_SESSIONS_ANSWER: usize = 900 * 1024;

/// How often each document's last version is read.
pub const POLL: Duration = Duration::from_millis(500);

/// A node command's operation byte: end a connection.
const OP_END: u8 = 1;
/// A node command's operation byte: the client id was taken over elsewhere.
const OP_TAKE: u8 = 2;
/// A node command's operation byte: a request for the node's sessions (answered on the
/// message's reply subject).
const OP_SESSIONS: u8 = 3;
/// A node command's operation byte: a request for one of the node's sessions (answered with
/// the shell's encoding, empty when the node holds none of that client id).
pub(crate) const OP_SESSION: u8 = 4;
/// A node command's operation byte: remove one of the node's sessions (answered `[1]` when it
/// held one, `[0]` when not).
pub(crate) const OP_DROP_SESSION: u8 = 5;
/// A node command's operation byte: a ping, answered at once (empty): the answer shows that
/// the interest this node's NATS server held before it sent the ping is held by the other
/// node's server too ([`crate::Cluster::wait_interest`]).
const OP_PING: u8 = 6;
/// A node command's operation byte: a request for the node's counters ([`ControlSink::stats`]).
const OP_STATS: u8 = 7;

/// The subject of node `node`'s commands.
/// Where a node says it wrote a version of a document (core NATS, no payload).
fn changed_subject(prefix: &str) -> String {
    format!("{prefix}.c.changed")
}

pub(crate) fn node_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.c.node.{node}")
}

/// The subject of document `name` (a plain token: the shell names them).
fn doc_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.c.doc.{name}")
}

/// A node command that ends `client_id`'s connection with `reason`.
pub(crate) fn end_command(client_id: &str, reason: u8) -> Bytes {
    let mut b = Vec::with_capacity(2 + client_id.len());
    b.push(OP_END);
    b.push(reason);
    b.extend_from_slice(client_id.as_bytes());
    b.into()
}

/// A node command telling that `client_id` was taken over on another node.
pub(crate) fn take_command(client_id: &str) -> Bytes {
    let mut b = Vec::with_capacity(2 + client_id.len());
    b.push(OP_TAKE);
    b.push(0x8E);
    b.extend_from_slice(client_id.as_bytes());
    b.into()
}

/// A request about `client_id`'s session: [`OP_SESSION`] or [`OP_DROP_SESSION`].
pub(crate) fn session_command(op: u8, client_id: &str) -> Bytes {
    let mut b = Vec::with_capacity(2 + client_id.len());
    b.push(op);
    b.push(0);
    b.extend_from_slice(client_id.as_bytes());
    b.into()
}

/// A ping ([`OP_PING`]).
pub(crate) fn ping_command() -> Bytes {
    Bytes::from_static(&[OP_PING, 0])
}

/// A request for a node's sessions.
pub(crate) fn sessions_command() -> Bytes {
    Bytes::from_static(&[OP_SESSIONS, 0])
}

/// A request for a node's counters.
pub(crate) fn stats_command() -> Bytes {
    Bytes::from_static(&[OP_STATS, 0])
}

/// Read a node command: `(operation, client_id, reason)`; `None` for anything else (counted,
/// ignored).
fn parse_command(b: &[u8]) -> Option<(u8, &str, u8)> {
    match b {
        [op @ (OP_END | OP_TAKE | OP_SESSIONS | OP_SESSION | OP_DROP_SESSION | OP_PING | OP_STATS), reason, id @ ..] => {
            std::str::from_utf8(id).ok().map(|id| (*op, id, *reason))
        }
        _ => None,
    }
}

/// True for a document name the control plane accepts: a plain subject token.
pub fn valid_doc_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The control stream: the last version of every document.
pub(crate) fn control_stream_config(prefix: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: format!("{prefix}_CONTROL"),
        subjects: vec![format!("{prefix}.c.doc.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The documents' task: publishes this node's versions (retrying until JetStream keeps them)
/// and follows everyone's.
pub(crate) struct Documents {
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) config: async_nats::jetstream::stream::Config,
    pub(crate) prefix: String,
    pub(crate) origin: u64,
    pub(crate) sink: Arc<dyn ControlSink>,
    /// The documents' names (the shell's).
    names: Vec<String>,
    /// The body of each document as this node has it now (applied or written here).
    current: HashMap<String, Bytes>,
    /// This node's versions not yet kept by JetStream.
    pending: HashMap<String, Bytes>,
    /// The stream sequence of this node's last version of each document.
    own_seq: HashMap<String, u64>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Documents {
    pub(crate) fn new(
        js: async_nats::jetstream::Context,
        config: async_nats::jetstream::stream::Config,
        prefix: String,
        origin: u64,
        sink: Arc<dyn ControlSink>,
        names: Vec<String>,
    ) -> Documents {
        Documents {
            names,
            js,
            config,
            prefix,
            origin,
            sink,
            current: HashMap::new(),
            pending: HashMap::new(),
            own_seq: HashMap::new(),
        }
    }

    /// Run for ever: on any failure (NATS away, no quorum), start again after a second.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(String, Bytes)>) {
        loop {
            match self.follow(&mut rx).await {
                Ok(()) => return, // the sender is gone: shutdown
                Err(e) => tracing::debug!(error = %e, "cluster: the control stream failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow(&mut self, rx: &mut mpsc::UnboundedReceiver<(String, Bytes)>) -> Result<(), BoxError> {
        let stream = self.js.get_or_create_stream(self.config.clone()).await?;
        self.flush().await?;
        // The last version of each document is read from the stream's leader every
        // [`POLL`]: a few small reads a second per node, and nothing that can stall unseen
        // (a long-lived consumer made while the NATS cluster was still electing its leaders
        // once stopped delivering for seconds).
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A node that wrote a version says so on core NATS: the others read at once instead
        // of at their next tick (a ban made on one node refuses the client id on the others
        // within milliseconds). A lost hint costs only the wait for the tick.
        let client = self.js.client();
        let mut changed = client.subscribe(changed_subject(&self.prefix)).await?;
        loop {
            tokio::select! {
                doc = rx.recv() => {
                    let Some((name, body)) = doc else { return Ok(()) };
                    self.current.insert(name.clone(), body.clone());
                    self.pending.insert(name, body);
                    if self.flush().await? {
                        let _ = client.publish(changed_subject(&self.prefix), Bytes::new()).await;
                    }
                }
                hint = changed.next() => {
                    if hint.is_none() {
                        return Err("the documents' change subscription ended".into());
                    }
                    tick.reset_immediately();
                }
                _ = tick.tick() => {
                    self.flush().await?;
                    for name in self.names.clone() {
                        match stream.get_last_raw_message_by_subject(&doc_subject(&self.prefix, &name)).await {
                            Ok(m) => self.received(&name, &m.payload, m.sequence),
                            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }

    /// Publish every pending version; each one that JetStream keeps leaves `pending`. True
    /// when one was published.
    async fn flush(&mut self) -> Result<bool, BoxError> {
        let names: Vec<String> = self.pending.keys().cloned().collect();
        let published = !names.is_empty();
        for name in names {
            let Some(body) = self.pending.get(&name).cloned() else { continue };
            let payload = envelope::wrap(self.origin, 0, &body);
            let ack = self.js.publish(doc_subject(&self.prefix, &name), payload.into()).await?.await?;
            self.own_seq.insert(name.clone(), ack.sequence);
            if self.pending.get(&name) == Some(&body) {
                self.pending.remove(&name);
            }
        }
        Ok(published)
    }

    fn received(&mut self, name: &str, payload: &[u8], seq: u64) {
        let Some((origin, _, body)) = envelope::unwrap(payload) else {
            tracing::debug!(document = name, "cluster: a control document did not decode");
            return;
        };
        if origin == self.origin {
            // Our own version: skipped while a newer one of ours is on its way or kept.
            if self.pending.contains_key(name) || self.own_seq.get(name).is_some_and(|&own| seq < own) {
                return;
            }
        }
        if self.current.get(name).is_some_and(|b| b[..] == *body) {
            return;
        }
        self.current.insert(name.to_owned(), Bytes::copy_from_slice(body));
        self.sink.document(name, body);
    }
}

/// Follow this node's commands (core NATS) for ever.
pub(crate) async fn node_commands(client: async_nats::Client, subject: String, sink: Arc<dyn ControlSink>) {
    loop {
        match client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                while let Some(m) = sub.next().await {
                    match parse_command(&m.payload) {
                        Some((OP_TAKE, client_id, _)) => sink.taken_over(client_id),
                        Some((
                            op @ (OP_SESSIONS | OP_SESSION | OP_DROP_SESSION | OP_PING | OP_STATS),
                            client_id,
                            _,
                        )) => {
                            let answer = match op {
                                OP_PING => Vec::new(),
                                OP_STATS => sink.stats(),
                                OP_SESSIONS => sink.sessions(),
                                OP_SESSION => sink.session(client_id).unwrap_or_default(),
                                _ => vec![u8::from(sink.drop_session(client_id))],
                            };
                            if let Some(reply) = m.reply.clone() {
                                if let Err(e) = client.publish(reply, answer.into()).await {
                                    tracing::debug!(error = %e, "cluster: answering a sessions request failed");
                                }
                            }
                        }
                        Some((_, client_id, reason)) => {
                            let ended = sink.end_client(client_id, reason);
                            tracing::debug!(ended, reason, "cluster: end-connection command");
                        }
                        None => tracing::debug!("cluster: a node command did not decode"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cluster: subscribing to node commands failed; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let c = end_command("dev/1", 0x98);
        assert_eq!(parse_command(&c), Some((OP_END, "dev/1", 0x98)));
        assert_eq!(parse_command(&end_command("", 0x98)), Some((OP_END, "", 0x98)));
        assert_eq!(parse_command(&take_command("dev/2")), Some((OP_TAKE, "dev/2", 0x8E)));
        assert_eq!(parse_command(&sessions_command()), Some((OP_SESSIONS, "", 0)));
        assert_eq!(parse_command(&ping_command()), Some((OP_PING, "", 0)));
        assert_eq!(parse_command(&session_command(OP_SESSION, "d/3")), Some((OP_SESSION, "d/3", 0)));
        assert_eq!(parse_command(&session_command(OP_DROP_SESSION, "d/4")), Some((OP_DROP_SESSION, "d/4", 0)));
        assert_eq!(parse_command(b""), None);
        assert_eq!(parse_command(&[9, 1, b'x']), None);
        assert_eq!(parse_command(&[OP_END, 0x8E, 0xff, 0xfe]), None);
    }

    #[test]
    fn document_names_are_plain_tokens() {
        assert!(valid_doc_name("policy"));
        assert!(valid_doc_name("oauth-clients"));
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(33)] {
            assert!(!valid_doc_name(bad), "{bad:?}");
        }
    }
}
