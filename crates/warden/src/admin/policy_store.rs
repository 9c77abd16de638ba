//! The policy store on disk and live: `<data_dir>/policy.json`, loaded at start (a corrupt
//! file refuses start with the file and the reason), written atomically on every change (temp
//! file, fsync, rename, fsync of the directory), and applied at once: the broker's authorizer
//! is swapped (queued deliveries are authorized again), store users' password hashes go to the
//! authenticator, and the connections of users that were disabled or deleted are closed.
//!
//! Also here: [`Audited`], the authorizer the broker runs, which writes decisions to the audit
//! log (target `warden::audit`): denials always, every decision with `[authz] audit = "all"`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::logsafe::Escaped;
use parking_lot::{Mutex, RwLock};
use tracing::info;
use warden_core::Broker;
use warden_http::admin::AdminError;
use warden_policy::acl::AclFile;
use warden_policy::password::PasswordFile;
use warden_policy::store::PolicyStore;
use warden_policy::trust::TrustEvent;
use warden_policy::{Action, Authorizer, Decision, PolicyAuthorizer, Principal};

use crate::auth::Authenticator;
use crate::config::{AuditMode, AuthzConfig, OnDeny};
use crate::conn::live::LiveClients;

/// The file in the data directory.
pub const FILE: &str = "policy.json";

/// Read `<data_dir>/policy.json` (missing: an empty store).
pub fn load(data_dir: &Path) -> crate::Result<PolicyStore> {
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => PolicyStore::from_json(&text)
            .map_err(|e| crate::Error::invalid(&path, format_args!("corrupt policy store: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PolicyStore::default()),
        Err(e) => Err(crate::Error::io(format!("{}: cannot read policy store", path.display()), e)),
    }
}

/// Write the store atomically.
pub fn save(data_dir: &Path, store: &PolicyStore) -> crate::Result<()> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| crate::Error::io(format!("{}: cannot create", data_dir.display()), e))?;
    let path = data_dir.join(FILE);
    crate::fsutil::write_atomically(&path, store.to_json().as_bytes())
        .map_err(|e| crate::Error::io(format!("{}: cannot write policy store", path.display()), e))
}

/// The broker's authorizer: the policy, with decisions written to the audit log.
pub struct Audited {
    /// The policy.
    pub policy: PolicyAuthorizer,
    /// Log every decision, not only denials.
    pub all: bool,
    /// For the peer address of audit records.
    pub live: Option<Arc<LiveClients>>,
    /// The behaviour watch, when enabled: it observes topics and refuses what a quarantined
    /// principal may no longer do ([`crate::watch::Watch::observe`]).
    pub watch: Option<Arc<crate::watch::Watch>>,
}

impl Audited {
    fn record(&self, principal: &Principal, client_id: &str, action: Action<'_>, d: Decision, by: &str) {
        let topic = action.topic();
        let qos = action.qos().map(|q| q as u8);
        let (action, retain) = match action {
            Action::Publish { retain, .. } => ("publish", Some(retain)),
            Action::Subscribe { .. } => ("subscribe", None),
            Action::Receive { .. } => ("receive", None),
        };
        let peer = self.live.as_ref().and_then(|l| l.peer_of(client_id)).map(|p| p.to_string());
        let result = if d.is_allowed() { "allow" } else { "deny" };
        // No secret is in any of these fields: principal names, client ids, topics, rule ids.
        info!(
            target: "warden::audit",
            principal = %Escaped(principal),
            client_id,
            peer = peer.as_deref().unwrap_or("-"),
            action,
            topic,
            qos,
            retain,
            result,
            rule = by,
            "authorization {result}"
        );
    }
}

impl Authorizer for Audited {
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        if let Some(d) = self.watch.as_ref().and_then(|w| w.observe(principal, client_id, action)) {
            self.record(principal, client_id, action, d, "watch-quarantine");
            return d;
        }
        if !self.all {
            let d = self.policy.authorize(principal, client_id, action);
            if d.is_allowed() {
                return d;
            }
        }
        let (d, by) = self.policy.explain(principal, client_id, action);
        self.record(principal, client_id, action, d, &by.to_string());
        d
    }

    /// With `audit = "all"` every decision is logged, so none may be skipped.
    fn allows_are_cacheable(&self) -> bool {
        !self.all
    }

    /// The policy's explicit grants (asked for `$` topics), audited like other decisions.
    fn authorize_granted(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        if let Some(d) = self.watch.as_ref().and_then(|w| w.observe(principal, client_id, action)) {
            self.record(principal, client_id, action, d, "watch-quarantine");
            return d;
        }
        let d = self.policy.authorize_granted(principal, client_id, action);
        if self.all || !d.is_allowed() {
            let (_, by) = self.policy.explain(principal, client_id, action);
            let by = match by {
                // No source: `authorize` would allow, but a `$` topic needs a grant.
                warden_policy::DecidedBy::NoSource => "no-grant".to_owned(),
                by => by.to_string(),
            };
            self.record(principal, client_id, action, d, &by);
        }
        d
    }

    fn has_rules(&self) -> bool {
        self.policy.has_rules()
    }

    fn quotas(&self, principal: &Principal) -> warden_policy::Quotas {
        self.policy.quotas(principal)
    }
}

/// Load the ACL file named by the configuration.
pub fn load_acl(cfg: &AuthzConfig) -> crate::Result<Option<AclFile>> {
    match &cfg.acl_file {
        None => Ok(None),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| crate::Error::io(format!("{}: cannot read ACL file", p.display()), e))?;
            Ok(Some(AclFile::parse(&text).map_err(|e| crate::Error::acl_file(p, e))?))
        }
    }
}

/// One operation to explain (`warden check --explain`, `POST /admin/explain`), its topic parsed
/// by the codec as the broker would: a name for publish and receive, a filter for subscribe.
pub enum Operation {
    /// A PUBLISH to this topic.
    Publish(mqtt_codec::TopicName),
    /// A SUBSCRIBE to this filter.
    Subscribe(mqtt_codec::TopicFilter),
    /// A delivery of this topic.
    Receive(mqtt_codec::TopicName),
}

impl Operation {
    /// `action` (`publish`, `subscribe`, `receive`) on `topic`; `Ok(None)` when the topic is not
    /// valid for that action (denied: the broker never gets that far), `Err` for another action.
    pub fn parse(action: &str, topic: &str) -> Result<Option<Operation>, String> {
        use mqtt_codec::{TopicFilter, TopicName};
        Ok(match action {
            "publish" => TopicName::new(topic).ok().map(Operation::Publish),
            "subscribe" => TopicFilter::new(topic).ok().map(Operation::Subscribe),
            "receive" => TopicName::new(topic).ok().map(Operation::Receive),
            other => return Err(format!("unknown action {other:?}: publish, subscribe or receive")),
        })
    }

    /// The question asked of the authorizer, at `qos` (publish, subscribe) and `retain` (publish).
    pub fn action(&self, qos: mqtt_codec::QoS, retain: bool) -> Action<'_> {
        match self {
            Operation::Publish(t) => Action::publish(t, qos, retain),
            Operation::Subscribe(f) => Action::subscribe(f, qos),
            Operation::Receive(t) => Action::receive(t),
        }
    }
}

/// `FILE:LINE: rule` for the ACL file's line `line` (1-based), as an explanation names it.
pub fn acl_line(path: &Path, line: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    format!("{}:{line}: {}", path.display(), text.lines().nth(line.saturating_sub(1)).unwrap_or("").trim())
}

/// The policy in force (ACL file + store) and the store's persistence.
pub struct PolicyManager {
    data_dir: PathBuf,
    authz: RwLock<AuthzConfig>,
    acl: RwLock<Option<Arc<AclFile>>>,
    store: Mutex<PolicyStore>,
    auth: Arc<Authenticator>,
    live: Arc<LiveClients>,
    trust: Arc<crate::admin::trust::Trust>,
    broker: OnceLock<Arc<Broker>>,
    /// Told the fingerprints of device certificates a change revoked (enrollment writes them
    /// into its CA's CRL).
    revoked_sink: OnceLock<RevokedSink>,
    watch: OnceLock<Arc<crate::watch::Watch>>,
}

/// What is told of device certificates newly revoked in the registry (their fingerprints).
pub type RevokedSink = Arc<dyn Fn(&[String]) + Send + Sync>;

impl PolicyManager {
    /// Load the ACL file and the store; give the store's users to the authenticator.
    pub fn load(
        data_dir: &Path,
        authz: &AuthzConfig,
        auth: Arc<Authenticator>,
        live: Arc<LiveClients>,
        trust: Arc<crate::admin::trust::Trust>,
    ) -> crate::Result<PolicyManager> {
        let acl = load_acl(authz)?.map(Arc::new);
        let store = load(data_dir)?;
        auth.set_store_users(store_users(&store)?);
        auth.set_disabled(Arc::new(disabled_names(&store)));
        auth.set_device_certs(Arc::new(store.device_certs(auth.registered_certificates_only())));
        Ok(PolicyManager {
            data_dir: data_dir.to_path_buf(),
            authz: RwLock::new(authz.clone()),
            acl: RwLock::new(acl),
            store: Mutex::new(store),
            auth,
            live,
            trust,
            broker: OnceLock::new(),
            revoked_sink: OnceLock::new(),
            watch: OnceLock::new(),
        })
    }

    /// Tell `sink` the fingerprints of device certificates each change revokes, once the
    /// change is applied (set once; a second call is ignored).
    pub fn on_revoked(&self, sink: RevokedSink) {
        let _ = self.revoked_sink.set(sink);
    }

    /// The authorizer for the current ACL file and store.
    pub fn authorizer(&self) -> Arc<Audited> {
        let store = self.store.lock();
        self.build(&store)
    }

    fn build(&self, store: &PolicyStore) -> Arc<Audited> {
        let authz = self.authz.read();
        let policy = PolicyAuthorizer::new_shared(self.acl.read().clone(), authz.on_deny == OnDeny::Disconnect)
            .with_store(Arc::new(store.compile()));
        Arc::new(Audited {
            policy,
            all: authz.audit == AuditMode::All,
            live: Some(self.live.clone()),
            watch: self.watch.get().cloned(),
        })
    }

    /// The behaviour watch (set once, before the broker is made): the authorizer asks it
    /// first, and it gets the store's watch rules now and after every change.
    pub fn attach_watch(&self, watch: Arc<crate::watch::Watch>) {
        watch.set_policy(self.store.lock().watch.clone());
        let _ = self.watch.set(watch);
    }

    /// Swap the broker's authorizer for an identical one (a new policy generation): what was
    /// allowed and cached is decided again, queued deliveries too (the watch's quarantines).
    pub fn reapply(&self) {
        let store = self.store.lock();
        self.swap(&store);
    }

    /// The broker whose authorizer this manager swaps (set once, after the broker is made).
    pub fn attach(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    fn swap(&self, store: &PolicyStore) {
        if let Some(b) = self.broker.get() {
            b.set_authorizer(self.build(store));
        }
    }

    /// True when the ACL file or the store has rules (else everything is allowed).
    pub fn has_rules(&self) -> bool {
        self.acl.read().is_some() || self.store.lock().has_rules()
    }

    /// The store as it is now.
    pub fn store(&self) -> PolicyStore {
        self.store.lock().clone()
    }

    /// Apply `[authz]`'s `on_deny` and `audit` of a reloaded configuration file (SIGHUP): the
    /// next decision uses them.
    pub fn set_modes(&self, on_deny: OnDeny, audit: AuditMode) {
        {
            let mut a = self.authz.write();
            a.on_deny = on_deny;
            a.audit = audit;
        }
        let store = self.store.lock();
        self.swap(&store);
    }

    /// Re-read the ACL file (SIGHUP); on error the previous one stays.
    pub fn reload_acl(&self) -> crate::Result<()> {
        let acl = load_acl(&self.authz.read())?.map(Arc::new);
        let store = self.store.lock();
        *self.acl.write() = acl;
        self.swap(&store);
        Ok(())
    }

    /// `POST /admin/explain`: one decision of the authorizer in force (the same code path as
    /// a live connection's, ACL file, policy store and token scopes together), naming what
    /// decided. A topic the codec refuses for that action is denied as `invalid-topic`, as the
    /// broker never gets that far.
    pub fn explain(
        &self,
        req: &warden_http::admin::ExplainRequest,
    ) -> Result<warden_http::admin::ExplainAnswer, AdminError> {
        use mqtt_codec::QoS;
        use warden_http::admin::ExplainAnswer;
        use warden_policy::trust::CredentialSource;
        let arcs = |v: &[String]| v.iter().map(|s| Arc::from(s.as_str())).collect::<Vec<_>>();
        let name = req.principal.trim();
        let principal = match req.kind.as_deref().unwrap_or("user") {
            "anonymous" => Principal::anonymous(),
            _ if name.is_empty() => return Err(AdminError::bad_request("principal must not be empty")),
            "user" => {
                let source = if self.store.lock().users.contains_key(name) {
                    CredentialSource::StoreUser
                } else {
                    CredentialSource::PasswordFile
                };
                Principal::user(name).with_credential(source, None)
            }
            "certificate" => Principal::certificate(name).with_credential(CredentialSource::Certificate, None),
            "token" => Principal::token(name, arcs(&req.roles), arcs(&req.scopes))
                .with_credential(CredentialSource::Token, None),
            other => {
                return Err(AdminError::bad_request(format!(
                    "unknown principal kind '{other}': user, certificate, token or anonymous"
                )))
            }
        };
        let principal = match req.from {
            Some(ip) => principal.with_peer(ip),
            None => principal,
        };
        let qos = QoS::from_u8(req.qos).ok_or_else(|| AdminError::bad_request("qos must be 0, 1 or 2"))?;
        let invalid = || ExplainAnswer {
            decision: "deny".into(),
            decided_by: "invalid-topic".into(),
            role: None,
            rule: None,
            detail: format!("{:?} is not a valid topic for {}", req.topic, req.action),
        };
        let operation = match Operation::parse(&req.action, &req.topic) {
            Ok(Some(op)) => op,
            Ok(None) => return Ok(invalid()),
            Err(e) => return Err(AdminError::bad_request(e)),
        };
        let action = operation.action(qos, req.retain);
        let authz = self.authorizer();
        let (d, by) = authz.policy.explain(&principal, &req.client_id, action);
        let decision = if d.is_allowed() { "allow" } else { "deny" };
        let (mut role, mut rule) = (None, None);
        let detail = match &by {
            warden_policy::DecidedBy::Store(r) => {
                if let Some((ro, ru)) = r.split_once('/') {
                    role = Some(ro.to_owned());
                    rule = Some(ru.to_owned());
                }
                format!(
                    "rule '{}' of role '{}' in the policy store",
                    rule.as_deref().unwrap_or(""),
                    role.as_deref().unwrap_or("")
                )
            }
            warden_policy::DecidedBy::Acl(line) if *line > 0 => match self.authz.read().acl_file.as_deref() {
                Some(path) => acl_line(path, *line),
                None => format!("ACL line {line}"),
            },
            warden_policy::DecidedBy::Acl(_) => "the topic is not valid for this action".to_owned(),
            warden_policy::DecidedBy::Scopes => "the token's scopes or the look-up's rules".to_owned(),
            warden_policy::DecidedBy::Enrollment => {
                "enrollment: a client's own $warden/enroll/ topics only; a claim certificate may use nothing else"
                    .to_owned()
            }
            warden_policy::DecidedBy::Default => "no rule of any source matches: denied by default".to_owned(),
            warden_policy::DecidedBy::NoSource => "no ACL file, policy-store rule or scopes apply: allowed".to_owned(),
        };
        Ok(ExplainAnswer { decision: decision.into(), decided_by: by.to_string(), role, rule, detail })
    }

    /// Edit the store: on a copy, validated, persisted, then applied live. All or nothing.
    pub fn update(&self, edit: warden_http::admin::PolicyEdit<'_>) -> Result<(), AdminError> {
        let mut store = self.store.lock();
        let mut next = store.clone();
        edit(&mut next)?;
        next.validate()?; // a policy error becomes a 400 in warden-http (HttpError: From<StoreError>)
        let users = store_users(&next).map_err(|e| AdminError::bad_request(e.to_string()))?;
        save(&self.data_dir, &next).map_err(|e| {
            tracing::warn!(error = %e, "policy store not saved; the change is not applied");
            AdminError::internal("cannot save the policy store (see the broker log)")
        })?;
        let enabled: HashSet<String> = next
            .users
            .iter()
            .filter(|(_, u)| !u.disabled && u.password_hash.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let disabled = Arc::new(disabled_names(&next));
        let certs_changed = cert_standing_changed(&store, &next);
        let revoked_now = if certs_changed { newly_revoked(&store, &next) } else { Vec::new() };
        let certs = Arc::new(next.device_certs(self.auth.registered_certificates_only()));
        self.auth.set_store_users(users);
        self.auth.set_disabled(disabled.clone());
        self.auth.set_device_certs(certs.clone());
        self.swap(&next);
        if let Some(w) = self.watch.get() {
            w.set_policy(next.watch.clone());
        }
        *store = next;
        drop(store);
        // Store users deleted or disabled, and every principal of a disabled name (whichever
        // method proved it), lose their standing (SPEC §10); so do client certificates the
        // device registry made inactive, revoked, moved or (strict) unregistered.
        self.trust.apply(&TrustEvent::StoreUsers(Arc::new(enabled)));
        self.trust.apply(&TrustEvent::Disabled(disabled));
        if certs_changed {
            self.trust.apply(&TrustEvent::DeviceCertificates(certs));
        }
        if let (false, Some(sink)) = (revoked_now.is_empty(), self.revoked_sink.get()) {
            sink(&revoked_now);
        }
        Ok(())
    }
}

/// True when some registered certificate's standing differs between `a` and `b` (its status,
/// its device, or whether it is registered at all).
fn cert_standing_changed(a: &PolicyStore, b: &PolicyStore) -> bool {
    let standing =
        |s: &PolicyStore| -> std::collections::BTreeMap<String, (String, warden_policy::devices::CertStatus)> {
            let devices = s.devices.iter().flat_map(|(id, d)| d.certificates.iter().map(move |(fp, c)| (fp, id, c)));
            // A claim's certificates stand under "claim:<name>" (a certificate is never both a
            // device's and a claim's: the store refuses it).
            let claims = s.claims.iter().flat_map(|(n, c)| c.certificates.iter().map(move |(fp, cert)| (fp, n, cert)));
            devices
                .map(|(fp, id, c)| (fp.clone(), (id.clone(), c.status)))
                .chain(claims.map(|(fp, n, c)| (fp.clone(), (format!("claim:{n}"), c.status))))
                .collect()
        };
    let any = |s: &PolicyStore| !s.devices.is_empty() || !s.claims.is_empty();
    (any(a) || any(b)) && standing(a) != standing(b)
}

/// Device certificates revoked in `b` that were not in `a`.
fn newly_revoked(a: &PolicyStore, b: &PolicyStore) -> Vec<String> {
    use warden_policy::devices::CertStatus::Revoked;
    let revoked = |s: &PolicyStore| -> HashSet<String> {
        s.devices
            .values()
            .flat_map(|d| d.certificates.iter())
            .filter(|(_, c)| c.status == Revoked)
            .map(|(fp, _)| fp.clone())
            .collect()
    };
    let was = revoked(a);
    revoked(b).into_iter().filter(|fp| !was.contains(fp)).collect()
}

/// The names the store has disabled (users and devices).
fn disabled_names(store: &PolicyStore) -> HashSet<String> {
    let users = store.users.iter().filter(|(_, u)| u.disabled).map(|(n, _)| n.clone());
    // A disabled device is refused whichever method proves its name.
    let devices = store.devices.iter().filter(|(_, d)| d.disabled).map(|(id, _)| id.clone());
    users.chain(devices).collect()
}

fn store_users(store: &PolicyStore) -> crate::Result<PasswordFile> {
    store.password_file().map_err(|e| crate::Error::Policy(format!("policy store users: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit records written while `f` runs (JSON lines).
    fn audit_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = warden_testkit::LogBuf::default();
        let b = buf.clone();
        let sub = tracing_subscriber::fmt().json().with_writer(move || b.clone()).finish();
        tracing::subscriber::with_default(sub, || {
            // Shared callsites (other tests' threads): see audit_log's test.
            tracing::callsite::rebuild_interest_cache();
            f()
        });
        let text = buf.text();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn audited(all: bool) -> Audited {
        let acl = AclFile::parse("user ann\ntopic write a/#\ntopic deny a/secret\n").unwrap();
        Audited { policy: PolicyAuthorizer::new(Some(acl), true), all, live: None, watch: None }
    }

    #[test]
    fn denials_are_always_audited_and_allows_only_with_all() {
        let ann = Principal::user("ann");
        let name = |t: &str| mqtt_codec::TopicName::new(t).unwrap();
        let (a_x, a_secret, b) = (name("a/x"), name("a/secret"), name("b"));
        let pubq = |t| Action::publish(t, mqtt_codec::QoS::AtLeastOnce, false);
        let lines = audit_lines(|| {
            let a = audited(false);
            assert!(a.authorize(&ann, "c1", pubq(&a_x)).is_allowed());
            assert!(!a.authorize(&ann, "c1", pubq(&a_secret)).is_allowed());
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let f = &lines[0]["fields"];
        assert_eq!(lines[0]["target"], "warden::audit");
        assert_eq!(f["principal"], "user:ann");
        assert_eq!(f["client_id"], "c1");
        assert_eq!(f["action"], "publish");
        assert_eq!(f["topic"], "a/secret");
        assert_eq!(f["result"], "deny");
        assert_eq!(f["rule"], "acl:3");
        assert_eq!(f["peer"], "-");
        assert!(lines[0]["timestamp"].is_string());
        let lines = audit_lines(|| {
            let a = audited(true);
            a.authorize(&ann, "c1", pubq(&a_x));
            a.authorize(&ann, "c1", Action::receive(&b));
        });
        assert_eq!(lines.len(), 2);
        assert_eq!((&lines[0]["fields"]["result"], &lines[0]["fields"]["rule"]), (&"allow".into(), &"acl:2".into()));
        assert_eq!(
            (&lines[1]["fields"]["result"], &lines[1]["fields"]["rule"]),
            (&"deny".into(), &"default-deny".into())
        );
    }

    #[test]
    fn load_save_and_corrupt_store() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), PolicyStore::default());
        let mut s = PolicyStore::default();
        s.roles.insert("r".into(), Default::default());
        save(dir.path(), &s).unwrap();
        assert_eq!(load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(FILE), "[]").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("policy.json: corrupt policy store"), "{e}");
    }
}
