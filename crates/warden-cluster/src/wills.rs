//! Wills that outlive their node (SPEC §11: "wills of a dead node's clients are published
//! once, by one node, after its lease expires and the will delay").
//!
//! Each connection of this node that has a will has an entry in the JetStream KV bucket
//! `{PREFIX}_WILLS` (key: SHA-256 of the client id, as in the client registry): a
//! [`WillHeader`] (the node and its run, the connection, the will delay, the owner principal
//! and what its standing is checked on) followed by the will as a message record
//! ([`warden_store::wire`]). The node writes it when it accepts the
//! connection ([`warden_core::fabric::Fabric::will_set`]) and deletes it when the will is no
//! longer its to keep — published or discarded here, or gone with the session
//! ([`warden_core::fabric::Fabric::will_cleared`]); a task writes both in the order the core
//! reported them.
//!
//! Every node follows the bucket with a KV watch (each entry's last version at start, then each
//! change: O(changes), never a scan of every entry) and keeps the headers only ([`Kept`]).
//! Every [`REAP_EVERY`], when it knows entries of other nodes, it reads the node leases
//! (O(nodes)): an entry whose node holds no lease, or a lease of another run (it restarted), is
//! a dead node's. From when a node first sees it so,
//! it waits the will's delay, then deletes the entry with a compare-and-set on the revision it
//! read: the one node whose delete succeeds publishes the will (exactly one node), through its
//! core, under the owner principal and the policy in force now — after the shell said the
//! owner still stands (not disabled, removed, its token revoked, its certificate revoked by a
//! CRL or the device registry: [`crate::control::ControlSink::will_owner_stands`]).
//! A client that claims its client id again first (on any node) cancels it: the claim
//! deletes another node's entry ([`crate::Cluster::claim`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warden_core::Message;
use warden_policy::trust::{CertChain, CertRef, Credential};
use warden_policy::Principal;

use crate::registry::{all_keys, key, timed};
use std::collections::HashSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often each node looks for the wills of dead nodes.
pub const REAP_EVERY: Duration = Duration::from_secs(2);

/// What an entry says besides the will itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillHeader {
    /// The node that holds the connection.
    pub node: String,
    /// That node's run (its lease's value while it lives).
    pub run: u64,
    /// The client id.
    pub client_id: String,
    /// The connection (unique in the node's run).
    pub generation: u64,
    /// Seconds after the connection ends (here: after the node is seen dead) before it is
    /// published.
    pub delay: u32,
    /// The will's message expiry interval (counted from its publication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expiry: Option<u32>,
    /// The owner principal: kind (`user`, `certificate`, `token`, `anonymous`, `fallback`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The kind of credential that proved it ([`CredentialSource::as_str`]).
    pub source: String,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Its token's scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Its token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Its certificate, as CRLs and the device registry name it (a certificate owner's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<WillCert>,
}

/// A certificate owner's certificate in a [`WillHeader`]: enough to check, when the will falls
/// due, that no CRL and no device registry entry revoked it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillCert {
    /// The issuer's distinguished name (DER, hex).
    pub issuer: String,
    /// The serial number (big-endian, hex).
    pub serial: String,
    /// The intermediate CAs it chained through: (issuer, serial) as above.
    #[serde(default)]
    pub chain: Vec<(String, String)>,
    /// SHA-256 of the DER certificate (lowercase hex), as the device registry names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Box<[u8]>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl WillCert {
    fn of(chain: &CertChain) -> WillCert {
        WillCert {
            issuer: hex(&chain.leaf.issuer),
            serial: hex(&chain.leaf.serial),
            chain: chain.issuers.iter().map(|c| (hex(&c.issuer), hex(&c.serial))).collect(),
            fingerprint: chain.fingerprint.as_deref().map(str::to_owned),
        }
    }

    /// The chain again (`None`: not hex).
    fn chain(&self) -> Option<CertChain> {
        let cert = |i: &str, s: &str| Some(CertRef { issuer: unhex(i)?, serial: unhex(s)? });
        Some(CertChain {
            leaf: cert(&self.issuer, &self.serial)?,
            issuers: self.chain.iter().map(|(i, s)| cert(i, s)).collect::<Option<_>>()?,
            fingerprint: self.fingerprint.as_deref().map(Into::into),
        })
    }
}

/// A will change for the wills task.
pub(crate) enum WillOp {
    Set { client_id: Arc<str>, generation: u64, value: Bytes },
    Cleared { client_id: Arc<str>, generation: u64 },
}

pub(crate) fn wills_bucket(prefix: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: format!("{prefix}_WILLS"),
        history: 1,
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// An entry's bytes: the header's length (4 bytes, big-endian), the header (JSON), the record.
pub(crate) fn encode_entry(header: &WillHeader, record: &[u8]) -> Result<Bytes, serde_json::Error> {
    let h = serde_json::to_vec(header)?;
    let mut out = Vec::with_capacity(4 + h.len() + record.len());
    out.extend_from_slice(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(record);
    Ok(out.into())
}

/// The header and record of an entry (`None`: not one).
pub(crate) fn decode_entry(b: &[u8]) -> Option<(WillHeader, &[u8])> {
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let h = b.get(4..4 + n)?;
    Some((serde_json::from_slice(h).ok()?, b.get(4 + n..)?))
}

/// The header of `owner`'s will.
pub(crate) fn header_of(
    node: &str,
    run: u64,
    client_id: &str,
    generation: u64,
    delay: u32,
    message_expiry: Option<u32>,
    owner: &Principal,
) -> WillHeader {
    WillHeader {
        node: node.to_owned(),
        run,
        client_id: client_id.to_owned(),
        generation,
        delay,
        message_expiry,
        kind: owner.kind.as_str().to_owned(),
        name: owner.name.to_string(),
        source: owner.source.as_str().to_owned(),
        roles: owner.roles.iter().map(|r| r.to_string()).collect(),
        scopes: owner.scopes.iter().map(|s| s.to_string()).collect(),
        jti: owner.token_id().map(str::to_owned),
        cert: match owner.credential() {
            Some(Credential::Certificate(chain)) => Some(WillCert::of(chain)),
            _ => None,
        },
    }
}

/// The owner principal a header names, made again as a session restored from the store is
/// ([`warden_store::wire::restore_owner`]: a token's scopes compiled again, a look-up's
/// principal with no grants of its own; a certificate's or token's credential details are
/// kept: the standing check uses the `jti`; a certificate's chain and fingerprint are, for the
/// CRL and device registry checks). `None`: a kind or source this node does not know, or a
/// certificate that does not decode.
pub(crate) fn owner_of(h: &WillHeader) -> Option<Principal> {
    let p = warden_store::wire::restore_owner(&h.kind, &h.name, &h.roles, &h.scopes, &h.source).ok()?;
    match &h.cert {
        Some(c) => {
            let source = p.source;
            Some(p.with_credential(source, Some(Credential::Certificate(c.chain()?))))
        }
        None => Some(p),
    }
}

/// The wills bucket as one node uses it.
pub(crate) struct Wills {
    pub(crate) kv: kv::Store,
    pub(crate) node: String,
    pub(crate) run: u64,
}

/// What a node keeps of one entry of the bucket, from its watch: the revision and the header
/// (the will itself is read when it falls due).
pub(crate) struct Kept {
    pub(crate) revision: u64,
    pub(crate) header: WillHeader,
}

/// Take one change the watch brought into `index` (key → what is kept of it).
pub(crate) fn note(index: &mut HashMap<String, Kept>, e: &kv::Entry) {
    match e.operation {
        kv::Operation::Put => match decode_entry(&e.value) {
            Some((header, _)) => {
                index.insert(e.key.clone(), Kept { revision: e.revision, header });
            }
            None => {
                tracing::debug!("cluster: a will entry did not decode; left alone");
                index.remove(&e.key);
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            index.remove(&e.key);
        }
    }
}

/// One dead node's will this node may publish.
pub(crate) struct Due {
    pub(crate) header: WillHeader,
    pub(crate) message: Message,
}

impl Wills {
    /// Apply one change; `written` is what this node wrote and has not deleted yet (client id
    /// → connection, revision).
    pub(crate) async fn apply(&self, op: WillOp, written: &mut HashMap<Arc<str>, (u64, u64)>) -> Result<(), BoxError> {
        match op {
            WillOp::Set { client_id, generation, value } => {
                let rev = timed(self.kv.put(key(&client_id), value)).await?;
                written.insert(client_id, (generation, rev));
            }
            WillOp::Cleared { client_id, generation } => {
                let Some(&(g, rev)) = written.get(&client_id) else { return Ok(()) };
                if g != generation {
                    return Ok(()); // a later connection's
                }
                written.remove(&client_id);
                // Changed meanwhile (taken by another node, or its claim cancelled it): not ours.
                if let Err(e) = timed(self.kv.delete_expect_revision(key(&client_id), Some(rev))).await {
                    tracing::debug!(error = %e, "cluster: a will's copy was not deleted (changed meanwhile?)");
                }
            }
        }
        Ok(())
    }

    /// A client id was claimed here: another node's (or another run's) will of it is
    /// cancelled [MQTT-3.1.3-9].
    pub(crate) async fn cancel_foreign(&self, client_id: &str) -> Result<bool, BoxError> {
        let k = key(client_id);
        let Some(e) = timed(self.kv.entry(k.clone())).await? else { return Ok(false) };
        if e.operation != kv::Operation::Put {
            return Ok(false);
        }
        let foreign = decode_entry(&e.value).is_none_or(|(h, _)| h.node != self.node || h.run != self.run);
        if !foreign {
            return Ok(false);
        }
        Ok(timed(self.kv.delete_expect_revision(k, Some(e.revision))).await.is_ok())
    }

    /// The leases now: node → run (0: a lease that names no run, taken as any run).
    async fn leases(&self, nodes: &kv::Store) -> Result<HashMap<String, u64>, BoxError> {
        let names = all_keys(nodes).await?;
        let mut out = HashMap::new();
        for n in names {
            if let Some(v) = timed(nodes.get(&n)).await? {
                out.insert(n, crate::registry::lease_run(&v));
            }
        }
        Ok(out)
    }

    /// Follow the bucket: each entry's last version (delete markers included), then every
    /// change.
    pub(crate) async fn watch(&self) -> Result<kv::Watch, BoxError> {
        timed(self.kv.watch_with_history(">")).await
    }

    /// One look at the entries the watch brought (`index`): those of dead nodes are noted in
    /// `seen` (key, revision → when first seen dead); those whose delay has passed since are
    /// read (at the stream's leader), deleted by compare-and-set on that revision, and the
    /// ones whose delete succeeded (this node's to publish) returned. The leases are read
    /// only when `index` holds another node's (or another run's) entry.
    pub(crate) async fn reap(
        &self,
        nodes: &kv::Store,
        index: &HashMap<String, Kept>,
        seen: &mut HashMap<(String, u64), tokio::time::Instant>,
    ) -> Result<Vec<Due>, BoxError> {
        let mine = |h: &WillHeader| h.node == self.node && h.run == self.run;
        if index.values().all(|k| mine(&k.header)) {
            seen.clear();
            return Ok(Vec::new());
        }
        let leases = self.leases(nodes).await?;
        let now = tokio::time::Instant::now();
        let mut present = HashSet::new();
        let mut due = Vec::new();
        for (k, kept) in index {
            let header = &kept.header;
            let alive = if header.node == self.node {
                header.run == self.run
            } else {
                leases.get(&header.node).is_some_and(|&run| run == header.run || run == 0)
            };
            if alive {
                continue;
            }
            let id = (k.clone(), kept.revision);
            present.insert(id.clone());
            let first = *seen.entry(id).or_insert(now);
            if now < first + Duration::from_secs(u64::from(header.delay)) {
                continue;
            }
            // The will itself, at the revision seen dead (changed since: the watch says so).
            let Some(e) = timed(self.kv.entry(k.clone())).await? else { continue };
            if e.operation != kv::Operation::Put || e.revision != kept.revision {
                continue;
            }
            let Some((header, record)) = decode_entry(&e.value) else { continue };
            let message = match warden_store::wire::decode(record) {
                Ok(Some((m, _))) => Some(m),
                Ok(None) => None, // expired
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: a dead node's will did not decode; dropped");
                    None
                }
            };
            // Whoever deletes it publishes it: exactly one node.
            if timed(self.kv.delete_expect_revision(k, Some(e.revision))).await.is_ok() {
                if let Some(message) = message {
                    due.push(Due { header, message });
                }
            }
        }
        seen.retain(|id, _| present.contains(id));
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_policy::trust::CredentialSource;
    use warden_policy::PrincipalKind;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let owner = Principal::token("dev", vec![Arc::from("r")], vec![Arc::from("mqtt:pub:x/#")]);
        let h = header_of("a", 7, "c1", 3, 10, Some(60), &owner);
        let b = encode_entry(&h, b"record").unwrap();
        let (h2, rec) = decode_entry(&b).unwrap();
        assert_eq!(h2, h);
        assert_eq!(rec, b"record");
        assert!(decode_entry(b"").is_none());
        assert!(decode_entry(&[0, 0, 0, 200, b'{']).is_none());
        let p = owner_of(&h2).unwrap();
        assert_eq!((p.kind, &*p.name, p.source), (PrincipalKind::Token, "dev", CredentialSource::Token));
        assert_eq!(&*p.roles, &[Arc::from("r")]);
        let mut odd = h2.clone();
        odd.kind = "martian".into();
        assert!(owner_of(&odd).is_none());
        let user = header_of(
            "a",
            7,
            "c1",
            3,
            0,
            None,
            &Principal::user("alice").with_credential(CredentialSource::PasswordFile, None),
        );
        let p = owner_of(&user).unwrap();
        assert_eq!((p.kind, p.source), (PrincipalKind::User, CredentialSource::PasswordFile));
        assert!(user.cert.is_none());
    }

    #[test]
    fn a_certificate_owners_chain_and_fingerprint_are_kept() {
        let chain = CertChain {
            leaf: CertRef { issuer: Box::from(&[0x30, 0x0a, 0xff][..]), serial: Box::from(&[0x01, 0x00][..]) },
            issuers: Box::from([CertRef { issuer: Box::from(&[0x30][..]), serial: Box::from(&[0x7f][..]) }]),
            fingerprint: Some("ab".repeat(32).into()),
        };
        let owner = Principal::certificate("dev-1")
            .with_credential(CredentialSource::Certificate, Some(Credential::Certificate(chain.clone())));
        let h = header_of("a", 7, "dev-1", 3, 0, None, &owner);
        let (h2, _) = decode_entry(&encode_entry(&h, b"").unwrap()).unwrap();
        let p = owner_of(&h2).unwrap();
        assert_eq!(p.credential(), Some(&Credential::Certificate(chain)));
        let mut bad = h2.clone();
        bad.cert.as_mut().unwrap().serial = "0g".into();
        assert!(owner_of(&bad).is_none(), "a certificate that does not decode names no owner");
    }
}
