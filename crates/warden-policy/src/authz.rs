//! The authorization seam: one place where every publish, subscribe and delivery asks
//! "is this allowed?". The policy sources (ACL file, policy store, token scopes) plug in here.

use mqtt_codec::{QoS, TopicFilter, TopicName};

use crate::Principal;

/// What a client is trying to do, with the topic it is about in the codec's own type: a
/// validated [`TopicName`] for publish and receive, a validated [`TopicFilter`] for subscribe.
/// The broker holds these values decoded already, so an authorizer never re-validates a topic
/// and the hot path borrows, never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Publish to a topic name (with this QoS and retain flag).
    Publish {
        /// The topic name.
        topic: &'a TopicName,
        /// Requested QoS.
        qos: QoS,
        /// Retain flag.
        retain: bool,
    },
    /// Subscribe to a topic filter (with this maximum QoS). A shared subscription
    /// (`$share/{group}/{filter}`) is decided on `{filter}` ([`TopicFilter::match_filter`]).
    Subscribe {
        /// The requested filter.
        filter: &'a TopicFilter,
        /// Requested maximum QoS.
        qos: QoS,
    },
    /// Receive a message published on a topic name (checked at delivery time).
    Receive {
        /// The message's topic name.
        topic: &'a TopicName,
    },
}

impl<'a> Action<'a> {
    /// Publish to `topic` at `qos`, with `retain`.
    pub fn publish(topic: &'a TopicName, qos: QoS, retain: bool) -> Self {
        Action::Publish { topic, qos, retain }
    }

    /// Subscribe to `filter` with maximum `qos`.
    pub fn subscribe(filter: &'a TopicFilter, qos: QoS) -> Self {
        Action::Subscribe { filter, qos }
    }

    /// Receive a message published on `topic`.
    pub fn receive(topic: &'a TopicName) -> Self {
        Action::Receive { topic }
    }

    /// The text the rules are matched against: the topic name, or for a subscription the
    /// filter without its `$share/{group}/` prefix.
    #[inline]
    pub fn topic(&self) -> &'a str {
        match self {
            Action::Publish { topic, .. } | Action::Receive { topic } => topic.as_str(),
            Action::Subscribe { filter, .. } => filter.match_filter(),
        }
    }

    /// True for a publish (the only action a denial may disconnect for).
    #[inline]
    pub fn is_publish(&self) -> bool {
        matches!(self, Action::Publish { .. })
    }

    /// The requested QoS (publish, subscribe); `None` for receive.
    pub fn qos(&self) -> Option<QoS> {
        match self {
            Action::Publish { qos, .. } | Action::Subscribe { qos, .. } => Some(*qos),
            Action::Receive { .. } => None,
        }
    }
}

/// The answer to an authorization question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied; `disconnect` says whether the client is disconnected (else acknowledged and dropped).
    Deny {
        /// Disconnect the client (v5 DISCONNECT 0x87) rather than acknowledge-and-drop.
        disconnect: bool,
    },
}

impl Decision {
    /// True when allowed.
    pub fn is_allowed(self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Decides what a principal may do. Implementations must be cheap: this is on the hot path.
pub trait Authorizer: Send + Sync {
    /// Decide `action` (which carries its topic name or filter).
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision;

    /// True when an `Allow` for the same principal, client id, action and topic may be reused
    /// until this authorizer is replaced: the decision is a pure function of them and has no
    /// side effect that must happen every time (such as auditing every decision). Denials are
    /// never reused. Default: false.
    fn allows_are_cacheable(&self) -> bool {
        false
    }

    /// Decide `action` allowing only what a rule of a configured source grants:
    /// where [`Authorizer::authorize`] allows because no source applies (Mosquitto without an
    /// ACL), this denies. The broker asks it for client publishes and wills to `$` topics
    /// (`$SYS/…`), which need an explicit grant even when no source is configured (SPEC §10).
    /// Default: denied, so that an authorizer (or a wrapper) grants `$` topics only by saying
    /// so.
    fn authorize_granted(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        let _ = (principal, client_id, action);
        Decision::Deny { disconnect: false }
    }

    /// True when some authorization source with rules is in force (an ACL file, policy-store
    /// rules), so that a principal without grants of its own gets only what rules give it;
    /// false when no source is configured (everything is allowed). The broker asks it for a
    /// retained message whose publisher is unknown (stored by an older version). Default: true.
    fn has_rules(&self) -> bool {
        true
    }

    /// The per-principal quota overrides of `principal`'s roles (policy store); empty: the
    /// broker's configured quotas apply. Asked on cold paths only (CONNECT, a policy change).
    fn quotas(&self, principal: &Principal) -> crate::Quotas {
        let _ = principal;
        crate::Quotas::default()
    }
}

/// No authorization source configured: everything is allowed (Mosquitto's behaviour, SPEC §6);
/// the broker logs a warning at start when it runs with this.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    /// Everything, but what enrollment confines ([`crate::enroll::confine`]).
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        match crate::enroll::confine(principal, client_id, action) {
            Some(false) => Decision::Deny { disconnect: false },
            _ => Decision::Allow,
        }
    }

    fn allows_are_cacheable(&self) -> bool {
        true
    }

    /// Nothing is granted explicitly: `$` topics stay closed to clients (but a client's own
    /// enrollment topics).
    fn authorize_granted(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        match crate::enroll::confine(principal, client_id, action) {
            Some(true) => Decision::Allow,
            _ => Decision::Deny { disconnect: false },
        }
    }

    fn has_rules(&self) -> bool {
        false
    }
}

/// The rules that `mqtt:` scopes stand for: `mqtt:pub:<filter>` grants `write` on the filter,
/// `mqtt:sub:<filter>` grants `read`, numbered from 1 in scope order. Other scopes (role names)
/// and scopes whose filter is empty or not a valid topic filter give no rule. The rules are the
/// principal's own: checked with no user name, like an ACL file's lines before any `user`.
pub fn scope_rules<S: AsRef<str>>(scopes: &[S]) -> Vec<crate::acl::AclRule> {
    use crate::acl::{Access, AclRule, RuleScope};
    let mut rules = Vec::new();
    for s in scopes {
        let s = s.as_ref();
        let (access, filter) = if let Some(f) = s.strip_prefix(PUB_SCOPE_PREFIX) {
            (Access::Write, f)
        } else if let Some(f) = s.strip_prefix(SUB_SCOPE_PREFIX) {
            (Access::Read, f)
        } else {
            continue;
        };
        // Surrounding ASCII white space is not part of the filter (as when scopes were
        // compiled through rule lines); a line break is no filter at all.
        let filter = filter.trim_matches(|c: char| c.is_ascii_whitespace());
        if filter.is_empty() || filter.contains(['\n', '\r']) {
            continue;
        }
        if let Ok(filter) = TopicFilter::new(filter) {
            rules.push(AclRule::new(rules.len() + 1, RuleScope::Anonymous, access, filter));
        }
    }
    rules
}

/// Compile token scopes into rules (see [`scope_rules`]): `mqtt:pub:<filter>` allows
/// publishing to what the filter matches, `mqtt:sub:<filter>` allows subscribing within the
/// filter and receiving what it matches.
pub fn compile_scopes(scopes: &[std::sync::Arc<str>]) -> crate::acl::AclFile {
    crate::acl::AclFile::from_rules(scope_rules(scopes))
}

/// The native publish scope prefix: `mqtt:pub:<topic-filter>`.
pub const PUB_SCOPE_PREFIX: &str = "mqtt:pub:";
/// The native subscribe scope prefix: `mqtt:sub:<topic-filter>`.
pub const SUB_SCOPE_PREFIX: &str = "mqtt:sub:";

/// How an outside issuer's scopes become grants (`[auth.jwt]` `publish_scope_prefixes`,
/// `subscribe_scope_prefixes`, `scope_roles`): a scope starting with a publish prefix grants
/// publishing to the filter after it, one starting with a subscribe prefix grants subscribing
/// and receiving (a prefix in both lists grants both); a scope named in the role table grants
/// those roles. Everything else grants nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMap {
    /// Prefixes of publish scopes (non-empty strings).
    pub publish: Vec<String>,
    /// Prefixes of subscribe scopes (non-empty strings).
    pub subscribe: Vec<String>,
    /// Scope → role names.
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for ScopeMap {
    /// The native grammar: `mqtt:pub:` and `mqtt:sub:`, no roles.
    fn default() -> Self {
        ScopeMap {
            publish: vec![PUB_SCOPE_PREFIX.to_owned()],
            subscribe: vec![SUB_SCOPE_PREFIX.to_owned()],
            roles: Default::default(),
        }
    }
}

/// What [`ScopeMap::map`] made of a token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MappedScopes {
    /// Native scopes (`mqtt:pub:<filter>`, `mqtt:sub:<filter>`), each once, in token order:
    /// what [`compile_scopes`] turns into rules (also after a restart).
    pub scopes: Vec<String>,
    /// Roles from the role table, each once.
    pub roles: Vec<String>,
    /// Scopes that granted nothing (for the log).
    pub unmapped: usize,
}

impl ScopeMap {
    /// Translate a token's scopes. An empty filter (the bare prefix) grants nothing; invalid
    /// filters are dropped later by [`compile_scopes`], as for native scopes.
    pub fn map<S: AsRef<str>>(&self, scopes: &[S]) -> MappedScopes {
        let mut out = MappedScopes::default();
        let push = |v: &mut Vec<String>, s: String| {
            if !v.contains(&s) {
                v.push(s);
            }
        };
        for s in scopes {
            let s = s.as_ref();
            let mut used = false;
            for (prefixes, native) in [(&self.publish, PUB_SCOPE_PREFIX), (&self.subscribe, SUB_SCOPE_PREFIX)] {
                // The longest matching prefix decides the filter (`a:` and `a:b:` both listed).
                let filter = prefixes
                    .iter()
                    .filter(|p| s.starts_with(p.as_str()))
                    .max_by_key(|p| p.len())
                    .map(|p| &s[p.len()..]);
                if let Some(f) = filter.filter(|f| !f.is_empty()) {
                    push(&mut out.scopes, format!("{native}{f}"));
                    used = true;
                }
            }
            if let Some(roles) = self.roles.get(s) {
                for r in roles {
                    push(&mut out.roles, r.clone());
                }
                used = true;
            }
            if !used {
                out.unmapped += 1;
            }
        }
        out
    }
}

/// Which source decided a request (for audit records and `check --explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// No source is configured for this principal: allowed (Mosquitto without an ACL).
    NoSource,
    /// Sources are configured but none has a rule for this request: denied by default.
    Default,
    /// The ACL file, at this line (0: a malformed topic).
    Acl(usize),
    /// The policy store: `role/rule-id` (empty for a malformed topic).
    Store(String),
    /// The principal's token scopes or look-up rules.
    Scopes,
    /// Enrollment's own topics and a claim certificate's confinement ([`crate::enroll::confine`]),
    /// decided before any rule.
    Enrollment,
}

impl std::fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecidedBy::NoSource => f.write_str("no-source"),
            DecidedBy::Default => f.write_str("default-deny"),
            DecidedBy::Acl(line) => write!(f, "acl:{line}"),
            DecidedBy::Store(r) => write!(f, "store:{r}"),
            DecidedBy::Scopes => f.write_str("scopes"),
            DecidedBy::Enrollment => f.write_str("enrollment"),
        }
    }
}

/// The broker's policy: the ACL file (if configured), the policy store (when it has rules) and
/// each token principal's scopes. A principal's permissions are the union of the grants of
/// every source that names it; an explicit deny from any source wins (SPEC §6). Within the
/// store, priorities decide first (see [`crate::store`]), so its answer is one allow or deny.
/// With no source at all for a principal (no ACL file, no store rules, not a token
/// principal), everything is allowed, as in Mosquitto without an ACL.
#[derive(Debug)]
pub struct PolicyAuthorizer {
    acl: Option<std::sync::Arc<crate::acl::AclFile>>,
    store: Option<std::sync::Arc<crate::store::CompiledStore>>,
    /// The policy store for its roles' quota overrides, rules or not.
    quotas: Option<std::sync::Arc<crate::store::CompiledStore>>,
    deny_disconnects: bool,
}

impl PolicyAuthorizer {
    /// `deny_disconnects`: a denied PUBLISH disconnects (`on_deny = "disconnect"`) instead of
    /// being acknowledged and dropped.
    pub fn new(acl: Option<crate::acl::AclFile>, deny_disconnects: bool) -> Self {
        Self::new_shared(acl.map(std::sync::Arc::new), deny_disconnects)
    }

    /// [`PolicyAuthorizer::new`] with an ACL file shared with other policies (the policy store
    /// rebuilds the authorizer on every change, keeping the ACL file as loaded).
    pub fn new_shared(acl: Option<std::sync::Arc<crate::acl::AclFile>>, deny_disconnects: bool) -> Self {
        PolicyAuthorizer { acl, store: None, quotas: None, deny_disconnects }
    }

    /// The same policy with the policy store as a source (it counts only when it has rules).
    pub fn with_store(mut self, store: std::sync::Arc<crate::store::CompiledStore>) -> Self {
        self.quotas = Some(store.clone());
        self.store = Some(store).filter(|s| s.is_configured());
        self
    }

    /// The attributes of the device `principal` is, from the policy store's registry (rules or
    /// not): `%{attr:NAME}` in ACL patterns and store rules.
    #[inline]
    fn device_attrs(&self, principal: &Principal) -> Option<&crate::devices::DeviceAttrs> {
        // Looked up only where an ACL pattern uses attributes (the store looks up its own).
        if !self.acl.as_ref().is_some_and(|a| a.uses_attrs()) {
            return None;
        }
        self.quotas.as_ref().and_then(|s| s.device_attrs(principal))
    }

    /// True when an ACL file is in force.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// True when the policy store has rules in force.
    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// The ACL file in force.
    pub fn acl(&self) -> Option<&std::sync::Arc<crate::acl::AclFile>> {
        self.acl.as_ref()
    }

    /// Decide, naming the deciding source and rule (slower than [`Authorizer::authorize`]:
    /// it builds the rule name).
    pub fn explain(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> (Decision, DecidedBy) {
        if let Some(allowed) = crate::enroll::confine(principal, client_id, action) {
            return (self.decision(allowed, action), DecidedBy::Enrollment);
        }
        let user = match principal.kind {
            crate::PrincipalKind::Anonymous => None,
            _ => Some(&*principal.name),
        };
        // A fail-open client gets its fallback role only: the ACL file does not apply to it.
        let acl = self
            .acl
            .as_ref()
            .filter(|_| !is_fallback(principal))
            .map(|a| a.explain_with(user, client_id, principal.peer(), self.device_attrs(principal), action));
        let store = self.store.as_ref().map(|s| (s, s.check(principal, client_id, action)));
        let scopes = principal.grants().map(|g| g.check_from(None, client_id, principal.peer(), action));
        let store_name = |s: &crate::store::CompiledStore, m: crate::store::StoreMatch| {
            DecidedBy::Store(
                m.rule.and_then(|i| s.rule(i)).map(|r| format!("{}/{}", r.role, r.rule.id)).unwrap_or_default(),
            )
        };
        let mut answers: Vec<(bool, DecidedBy)> = Vec::new();
        if let Some(Some(m)) = acl {
            answers.push((m.allowed, DecidedBy::Acl(m.line)));
        }
        if let Some((s, Some(m))) = store {
            answers.push((m.allowed, store_name(s, m)));
        }
        if let Some(Some(ok)) = scopes {
            answers.push((ok, DecidedBy::Scopes));
        }
        let (allowed, by) = if acl.is_none() && store.is_none() && scopes.is_none() {
            (true, DecidedBy::NoSource)
        } else if let Some((_, by)) = answers.iter().find(|(ok, _)| !ok) {
            (false, by.clone()) // an explicit deny wins
        } else if let Some((_, by)) = answers.into_iter().next() {
            (true, by)
        } else {
            (false, DecidedBy::Default)
        };
        (self.decision(allowed, action), by)
    }

    fn decision(&self, allowed: bool, action: Action<'_>) -> Decision {
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny { disconnect: self.deny_disconnects && action.is_publish() }
        }
    }
}

/// Admitted by the look-up's `fail_open` ([`crate::PrincipalKind::Fallback`]).
#[inline]
fn is_fallback(p: &Principal) -> bool {
    p.kind == crate::PrincipalKind::Fallback
}

impl PolicyAuthorizer {
    /// [`Authorizer::authorize`]; `no_source_allows` says what a principal no source names
    /// gets (true: everything; false: nothing, for [`Authorizer::authorize_granted`]).
    fn decide(&self, principal: &Principal, client_id: &str, action: Action<'_>, no_source_allows: bool) -> Decision {
        if let Some(allowed) = crate::enroll::confine(principal, client_id, action) {
            return self.decision(allowed, action);
        }
        let user = match principal.kind {
            crate::PrincipalKind::Anonymous => None,
            _ => Some(&*principal.name),
        };
        // A fail-open client gets its fallback role only: the ACL file does not apply to it.
        let from_acl = self.acl.as_ref().filter(|_| !is_fallback(principal)).map(|a| {
            a.explain_with(user, client_id, principal.peer(), self.device_attrs(principal), action).map(|m| m.allowed)
        });
        let from_store = self.store.as_ref().map(|s| s.check(principal, client_id, action).map(|m| m.allowed));
        let from_scopes = principal.grants().map(|g| g.check_from(None, client_id, principal.peer(), action));
        let answers = [from_acl, from_store, from_scopes];
        let allowed = if answers.iter().all(Option::is_none) {
            no_source_allows // no source names this principal
        } else if answers.contains(&Some(Some(false))) {
            false // an explicit deny wins
        } else {
            answers.contains(&Some(Some(true)))
        };
        self.decision(allowed, action)
    }
}

impl Authorizer for PolicyAuthorizer {
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        self.decide(principal, client_id, action, true)
    }

    fn allows_are_cacheable(&self) -> bool {
        true
    }

    fn authorize_granted(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        self.decide(principal, client_id, action, false)
    }

    fn has_rules(&self) -> bool {
        self.acl.is_some() || self.store.is_some()
    }

    fn quotas(&self, principal: &Principal) -> crate::Quotas {
        self.quotas.as_ref().map(|s| s.quotas(principal)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{AuthorizeStr, Req};
    use mqtt_codec::{TopicFilter, TopicName};
    use std::sync::Arc;

    const PUB: Req = Req::Pub(QoS::AtLeastOnce, false);
    const SUB: Req = Req::Sub(QoS::AtLeastOnce);
    const RCV: Req = Req::Rcv;

    fn token(scopes: &[&str]) -> Principal {
        Principal::token("dev-001", vec![], scopes.iter().map(|s| Arc::from(*s)).collect())
    }

    #[test]
    fn scopes_grant_what_they_name_and_nothing_else() {
        let p = token(&["mqtt:pub:devices/dev-001/#", "mqtt:sub:commands/dev-001/#", "operator"]);
        let a = PolicyAuthorizer::new(None, true);
        assert!(a.authorize_str(&p, "dev-001", PUB, "devices/dev-001/temp").is_allowed());
        assert_eq!(a.authorize_str(&p, "dev-001", PUB, "devices/dev-002/temp"), Decision::Deny { disconnect: true });
        assert!(a.authorize_str(&p, "dev-001", SUB, "commands/dev-001/+").is_allowed());
        assert!(!a.authorize_str(&p, "dev-001", SUB, "commands/#").is_allowed(), "broader than granted");
        assert!(!a.authorize_str(&p, "dev-001", PUB, "commands/dev-001/x").is_allowed(), "sub scope is not pub");
        assert!(a.authorize_str(&p, "dev-001", RCV, "commands/dev-001/reboot").is_allowed());
        assert!(!a.authorize_str(&p, "dev-001", RCV, "$SYS/broker/uptime").is_allowed());
        assert_eq!(a.authorize_str(&p, "dev-001", SUB, "x"), Decision::Deny { disconnect: false });
    }

    #[test]
    fn a_token_without_mqtt_scopes_gets_nothing_and_bad_scopes_are_ignored() {
        let a = PolicyAuthorizer::new(None, false);
        let p = token(&["operator", "mqtt:pub:", "mqtt:pub:a/#/b", "mqtt:pub:x\ntopic write #"]);
        for t in ["a", "a/x/b", "x", "anything"] {
            assert!(!a.authorize_str(&p, "c", PUB, t).is_allowed(), "{t}");
        }
    }

    #[test]
    fn acl_and_scopes_are_a_union_and_deny_wins() {
        let acl = crate::acl::AclFile::parse("user dev-001\ntopic write extra/#\ntopic deny devices/dev-001/secret\n")
            .unwrap();
        let a = PolicyAuthorizer::new(Some(acl), true);
        let p = token(&["mqtt:pub:devices/dev-001/#"]);
        assert!(a.authorize_str(&p, "c", PUB, "extra/x").is_allowed(), "from the ACL");
        assert!(a.authorize_str(&p, "c", PUB, "devices/dev-001/t").is_allowed(), "from the scopes");
        assert!(!a.authorize_str(&p, "c", PUB, "devices/dev-001/secret").is_allowed(), "explicit deny wins");
        assert!(
            !a.authorize_str(&Principal::user("bob"), "c", PUB, "extra/x").is_allowed(),
            "default deny with an ACL"
        );
    }

    /// Issue 17 item 7: an identity provider's own scope grammar, mapped by configuration.
    #[test]
    fn scope_map_translates_prefixes_and_roles_and_drops_the_rest() {
        let native = ScopeMap::default();
        let m = native.map(&["mqtt:pub:a/#", "mqtt:sub:b/+", "mqtt:publish:sensors/#", "openid", "mqtt:pub:"]);
        assert_eq!(m.scopes, ["mqtt:pub:a/#", "mqtt:sub:b/+"]);
        assert!(m.roles.is_empty());
        assert_eq!(m.unmapped, 3, "mqtt:publish:…, openid and the bare prefix grant nothing");

        let idp = ScopeMap {
            publish: vec!["mqtt:publish:".into(), "iot/rw:".into()],
            subscribe: vec!["mqtt:subscribe:".into(), "iot/rw:".into()],
            roles: [("fleet.operator".to_string(), vec!["operator".to_string(), "viewer".to_string()])].into(),
        };
        let m = idp.map(&[
            "mqtt:publish:sensors/#",
            "mqtt:subscribe:commands/+",
            "iot/rw:shared/#",
            "fleet.operator",
            "mqtt:pub:x/#",
            "mqtt:publish:sensors/#",
        ]);
        assert_eq!(m.scopes, ["mqtt:pub:sensors/#", "mqtt:sub:commands/+", "mqtt:pub:shared/#", "mqtt:sub:shared/#"]);
        assert_eq!(m.roles, ["operator", "viewer"]);
        assert_eq!(m.unmapped, 1, "the native grammar is not in force once replaced");

        // The mapped scopes grant exactly what they name.
        let p = token(&m.scopes.iter().map(String::as_str).collect::<Vec<_>>());
        let a = PolicyAuthorizer::new(None, false);
        assert!(a.authorize_str(&p, "c", PUB, "sensors/t1").is_allowed());
        assert!(!a.authorize_str(&p, "c", PUB, "commands/x").is_allowed());
        assert!(a.authorize_str(&p, "c", SUB, "commands/x").is_allowed());
        assert!(!a.authorize_str(&p, "c", PUB, "x/1").is_allowed());

        // The longest prefix decides: `a:` and `a:b:` both listed.
        let nested =
            ScopeMap { publish: vec!["a:".into(), "a:b:".into()], subscribe: vec![], roles: Default::default() };
        assert_eq!(nested.map(&["a:b:t/#"]).scopes, ["mqtt:pub:t/#"]);
        // A mapped filter with a line break cannot smuggle in a rule.
        let p =
            token(&idp.map(&["mqtt:publish:x\ntopic write #"]).scopes.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!a.authorize_str(&p, "c", PUB, "anything").is_allowed());
    }

    /// Issue 17 item 5: a look-up fail_open client gets its fallback role and nothing else —
    /// not the ACL or store rules of the user whose name it claimed, not the rules for every
    /// authenticated client, not `%u` patterns with that name; nothing at all without rules.
    #[test]
    fn a_fallback_principal_gets_its_role_only() {
        use crate::store::*;
        let allow = |id: &str, action, topic: &str| Rule {
            id: id.into(),
            action,
            topic: topic.into(),
            max_qos: 2,
            retain: true,
            effect: Effect::Allow,
            priority: 0,
            source: Vec::new(),
        };
        let mut st = PolicyStore::default();
        st.roles.insert(
            "degraded".into(),
            Role { rules: vec![allow("s", RuleAction::Subscribe, "status/#")], ..Role::default() },
        );
        st.roles.insert(
            "dev".into(),
            Role { rules: vec![allow("d", RuleAction::Publish, "store/dev-001/#")], ..Role::default() },
        );
        st.roles.insert(
            "everyone".into(),
            Role {
                rules: vec![
                    allow("e", RuleAction::Publish, "everyone/#"),
                    allow("u", RuleAction::Publish, "by-user/%u/#"),
                ],
                ..Role::default()
            },
        );
        st.users.insert("dev-001".into(), User { roles: vec!["dev".into()], ..User::default() });
        st.groups.insert(ANYONE_AUTHENTICATED.into(), Group { roles: vec!["everyone".into()] });
        st.validate().unwrap();
        let acl = crate::acl::AclFile::parse(
            "topic read public/#\nuser dev-001\ntopic readwrite devices/dev-001/#\npattern write users/%u/#\n",
        )
        .unwrap();
        let a = PolicyAuthorizer::new(Some(acl), false).with_store(Arc::new(st.compile()));
        let real = Principal::user("dev-001");
        let fb = Principal::fallback("dev-001", "degraded");
        for (action, topic) in [
            (PUB, "devices/dev-001/t"),
            (PUB, "users/dev-001/x"),
            (PUB, "store/dev-001/x"),
            (PUB, "everyone/x"),
            (PUB, "by-user/dev-001/x"),
        ] {
            assert!(a.authorize_str(&real, "c", action, topic).is_allowed(), "control: the real dev-001 may {topic}");
            assert!(!a.authorize_str(&fb, "c", action, topic).is_allowed(), "fallback may not {topic}");
        }
        assert!(!a.authorize_str(&fb, "c", RCV, "public/x").is_allowed(), "not even the ACL's general lines");
        assert!(a.authorize_str(&fb, "c", SUB, "status/dev-001").is_allowed(), "its role");
        assert!(a.authorize_str(&fb, "c", RCV, "status/x").is_allowed());
        assert!(!a.authorize_granted_str(&fb, "c", PUB, "$SYS/x").is_allowed());
        // Without any source it gets nothing (never "no source names it: allow all").
        let none = PolicyAuthorizer::new(None, false);
        assert!(none.authorize_str(&real, "c", PUB, "x").is_allowed(), "control: no source allows all");
        assert!(!none.authorize_str(&fb, "c", PUB, "x").is_allowed());
        assert!(!none.authorize_str(&fb, "c", SUB, "#").is_allowed());
        // The ACL alone, as an authorizer: nothing.
        let only_acl =
            crate::acl::AclAuthorizer::new(crate::acl::AclFile::parse("topic readwrite #\n").unwrap(), false);
        assert!(!only_acl.authorize_str(&fb, "c", SUB, "a").is_allowed());
    }

    #[test]
    fn no_source_means_allow_all() {
        let a = PolicyAuthorizer::new(None, true);
        assert!(a.authorize_str(&Principal::user("ann"), "c", PUB, "$SYS/x").is_allowed());
        assert!(a.authorize_str(&Principal::anonymous(), "c", SUB, "#").is_allowed());
    }

    /// Trust lifecycle item 2 (`$` topics): with no source, `authorize_granted` grants nothing
    /// (a `$SYS` publish needs a rule); with rules, only what a rule grants.
    #[test]
    fn dollar_topics_need_an_explicit_grant_even_without_a_source() {
        let none = PolicyAuthorizer::new(None, true);
        assert!(!none.has_rules());
        assert_eq!(
            none.authorize_granted_str(&Principal::user("ann"), "c", PUB, "$SYS/broker/version"),
            Decision::Deny { disconnect: true },
            "per on_deny, like any denial"
        );
        assert!(!AllowAll.authorize_granted_str(&Principal::user("ann"), "c", PUB, "$SYS/x").is_allowed());
        assert!(!AllowAll.has_rules());
        let acl = crate::acl::AclFile::parse("user ann\ntopic write $SYS/custom/#\ntopic write #\n").unwrap();
        let a = PolicyAuthorizer::new(Some(acl), false);
        assert!(a.has_rules());
        assert!(a.authorize_granted_str(&Principal::user("ann"), "c", PUB, "$SYS/custom/x").is_allowed());
        assert!(!a.authorize_granted_str(&Principal::user("ann"), "c", PUB, "$SYS/broker/version").is_allowed());
        assert!(a.authorize_granted_str(&Principal::user("ann"), "c", PUB, "a/b").is_allowed());
        let p = token(&["mqtt:pub:$SYS/t"]);
        assert!(none.authorize_granted_str(&p, "c", PUB, "$SYS/t").is_allowed(), "a token scope is a grant");
    }

    #[test]
    fn store_acl_and_scopes_combine_and_deny_wins_across_sources() {
        use crate::store::*;
        let mut st = PolicyStore::default();
        let r = |id: &str, topic: &str, effect| Rule {
            id: id.into(),
            action: RuleAction::Publish,
            topic: topic.into(),
            max_qos: 2,
            retain: true,
            effect,
            priority: 0,
            source: Vec::new(),
        };
        st.roles.insert(
            "dev".into(),
            Role {
                rules: vec![r("a", "store/#", Effect::Allow), r("d", "extra/blocked", Effect::Deny)],
                ..Role::default()
            },
        );
        st.users.insert("dev-001".into(), User { roles: vec!["dev".into()], ..User::default() });
        let acl = crate::acl::AclFile::parse("user dev-001\ntopic write extra/#\n").unwrap();
        let a = PolicyAuthorizer::new(Some(acl), true).with_store(Arc::new(st.compile()));
        assert!(a.has_store());
        let p = token(&["mqtt:pub:devices/dev-001/#"]);
        assert!(a.authorize_str(&p, "c", PUB, "store/x").is_allowed(), "from the store");
        assert!(a.authorize_str(&p, "c", PUB, "extra/x").is_allowed(), "from the ACL");
        assert!(a.authorize_str(&p, "c", PUB, "devices/dev-001/x").is_allowed(), "from the scopes");
        assert!(!a.authorize_str(&p, "c", PUB, "extra/blocked").is_allowed(), "a store deny beats an ACL allow");
        assert_eq!(a.explain_str(&p, "c", PUB, "extra/blocked").1, DecidedBy::Store("dev/d".into()));
        assert_eq!(a.explain_str(&p, "c", PUB, "extra/x").1, DecidedBy::Acl(2));
        assert_eq!(a.explain_str(&p, "c", PUB, "nowhere").1, DecidedBy::Default);
        assert_eq!(a.explain_str(&p, "c", PUB, "nowhere").1.to_string(), "default-deny");
        let empty = PolicyAuthorizer::new(None, false).with_store(Arc::new(PolicyStore::default().compile()));
        assert!(!empty.has_store(), "an empty store is no source");
        assert_eq!(empty.explain_str(&Principal::user("x"), "c", PUB, "t"), (Decision::Allow, DecidedBy::NoSource));
    }

    // --- The typed seam: the codec's TopicName / TopicFilter / QoS, asked directly ----------

    fn name(t: &str) -> TopicName {
        TopicName::new(t).unwrap()
    }

    fn filter(f: &str) -> TopicFilter {
        TopicFilter::new(f).unwrap()
    }

    #[test]
    fn typed_actions_allow_and_deny() {
        let acl = crate::acl::AclFile::parse("user ann\ntopic readwrite a/#\ntopic deny a/secret\n").unwrap();
        let z = PolicyAuthorizer::new(Some(acl), true);
        let ann = Principal::user("ann");
        let (ax, secret, other) = (name("a/x"), name("a/secret"), name("b/x"));
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert!(z.authorize(&ann, "c", Action::publish(&ax, qos, false)).is_allowed(), "{qos:?}");
            assert!(z.authorize(&ann, "c", Action::publish(&ax, qos, true)).is_allowed(), "{qos:?}");
        }
        assert_eq!(
            z.authorize(&ann, "c", Action::publish(&secret, QoS::AtMostOnce, false)),
            Decision::Deny { disconnect: true },
            "a denied publish disconnects with on_deny = disconnect"
        );
        assert!(!z.authorize(&ann, "c", Action::publish(&other, QoS::AtMostOnce, false)).is_allowed());
        assert!(z.authorize(&ann, "c", Action::receive(&ax)).is_allowed());
        assert_eq!(z.authorize(&ann, "c", Action::receive(&secret)), Decision::Deny { disconnect: false });
        assert!(z.authorize(&ann, "c", Action::subscribe(&filter("a/+"), QoS::ExactlyOnce)).is_allowed());
        assert_eq!(
            z.authorize(&ann, "c", Action::subscribe(&filter("#"), QoS::AtMostOnce)),
            Decision::Deny { disconnect: false },
            "a refused subscription never disconnects"
        );
        // The action reports what it carries.
        let a = Action::publish(&ax, QoS::AtLeastOnce, true);
        assert_eq!((a.topic(), a.qos(), a.is_publish()), ("a/x", Some(QoS::AtLeastOnce), true));
        assert_eq!(Action::receive(&ax).qos(), None);
    }

    /// A shared subscription is decided on the filter after `$share/{group}/` [MQTT-4.8.2-1].
    #[test]
    fn shared_subscriptions_are_decided_on_their_filter() {
        let acl = crate::acl::AclFile::parse("user ann\ntopic read jobs/#\n").unwrap();
        let z = PolicyAuthorizer::new(Some(acl), false);
        let ann = Principal::user("ann");
        let shared = filter("$share/workers/jobs/+");
        assert_eq!(Action::subscribe(&shared, QoS::AtMostOnce).topic(), "jobs/+");
        assert!(z.authorize(&ann, "c", Action::subscribe(&shared, QoS::AtMostOnce)).is_allowed());
        let outside = filter("$share/workers/other/+");
        assert!(!z.authorize(&ann, "c", Action::subscribe(&outside, QoS::AtMostOnce)).is_allowed());
    }

    /// Policy-store rules cap the QoS (and retain) of publish and subscribe.
    #[test]
    fn typed_qos_caps_from_the_store() {
        use crate::store::*;
        let rule = |id: &str, action, topic: &str, max_qos, retain| Rule {
            id: id.into(),
            action,
            topic: topic.into(),
            max_qos,
            retain,
            effect: Effect::Allow,
            priority: 0,
            source: Vec::new(),
        };
        let mut st = PolicyStore::default();
        st.roles.insert(
            "dev".into(),
            Role {
                rules: vec![
                    rule("p", RuleAction::Publish, "t/#", 1, false),
                    rule("s", RuleAction::Subscribe, "t/#", 0, true),
                ],
                ..Role::default()
            },
        );
        st.users.insert("ann".into(), User { roles: vec!["dev".into()], ..User::default() });
        st.validate().unwrap();
        let z = PolicyAuthorizer::new(None, false).with_store(Arc::new(st.compile()));
        let ann = Principal::user("ann");
        let t = name("t/x");
        assert!(z.authorize(&ann, "c", Action::publish(&t, QoS::AtMostOnce, false)).is_allowed());
        assert!(z.authorize(&ann, "c", Action::publish(&t, QoS::AtLeastOnce, false)).is_allowed());
        assert!(!z.authorize(&ann, "c", Action::publish(&t, QoS::ExactlyOnce, false)).is_allowed(), "over max_qos");
        assert!(!z.authorize(&ann, "c", Action::publish(&t, QoS::AtMostOnce, true)).is_allowed(), "retain refused");
        let f = filter("t/+");
        assert!(z.authorize(&ann, "c", Action::subscribe(&f, QoS::AtMostOnce)).is_allowed());
        assert!(!z.authorize(&ann, "c", Action::subscribe(&f, QoS::AtLeastOnce)).is_allowed(), "over max_qos");
        assert!(z.authorize(&ann, "c", Action::receive(&t)).is_allowed(), "receive follows subscribe");
    }

    /// `$` topics: wildcards at the first level never match them [MQTT-4.7.2-1]; a client
    /// publish there needs an explicit grant even without any source (SPEC §10).
    #[test]
    fn typed_dollar_topics_and_wildcard_grants() {
        let acl =
            crate::acl::AclFile::parse("user ann\ntopic readwrite #\ntopic read +/status\ntopic read $SYS/broker/#\n")
                .unwrap();
        let z = PolicyAuthorizer::new(Some(acl), false);
        let ann = Principal::user("ann");
        let sys = name("$SYS/broker/uptime");
        let sys_other = name("$SYS/other");
        assert!(z.authorize(&ann, "c", Action::receive(&sys)).is_allowed(), "named explicitly");
        assert!(!z.authorize(&ann, "c", Action::receive(&sys_other)).is_allowed(), "`#` does not reach `$SYS`");
        assert!(!z.authorize(&ann, "c", Action::receive(&name("$x/status"))).is_allowed(), "nor does `+`");
        assert!(z.authorize(&ann, "c", Action::receive(&name("dev/status"))).is_allowed());
        assert!(z.authorize(&ann, "c", Action::subscribe(&filter("#"), QoS::AtMostOnce)).is_allowed());
        assert!(!z.authorize(&ann, "c", Action::subscribe(&filter("$SYS/#"), QoS::AtMostOnce)).is_allowed());
        assert!(z.authorize(&ann, "c", Action::subscribe(&filter("$SYS/broker/+"), QoS::AtMostOnce)).is_allowed());
        assert!(!z.authorize_granted(&ann, "c", Action::publish(&sys, QoS::AtMostOnce, false)).is_allowed());
        let none = PolicyAuthorizer::new(None, false);
        assert!(none.authorize(&ann, "c", Action::publish(&name("a"), QoS::AtMostOnce, false)).is_allowed());
        assert!(!none.authorize_granted(&ann, "c", Action::publish(&sys, QoS::AtMostOnce, false)).is_allowed());
    }

    /// CVE-2017-7650: `%u` / `%c` are substituted literally; a user name or client id holding
    /// `+`, `#` or `/` gets nothing from an allow pattern and everything refused by a deny one.
    #[test]
    fn typed_pattern_substitution_resists_injection() {
        let acl = crate::acl::AclFile::parse(
            "pattern readwrite users/%u/#\npattern write clients/%c/state\npattern deny locked/%c\n",
        )
        .unwrap();
        let z = PolicyAuthorizer::new(Some(acl), false);
        fn pubq(t: &TopicName) -> Action<'_> {
            Action::publish(t, QoS::AtMostOnce, false)
        }
        let mine = name("users/ann/x");
        assert!(z.authorize(&Principal::user("ann"), "c", pubq(&mine)).is_allowed());
        assert!(z.authorize(&Principal::user("ann"), "c1", pubq(&name("clients/c1/state"))).is_allowed());
        for evil in ["+", "#", "ann/x", "a/+", "+/#"] {
            let p = Principal::user(evil);
            assert!(!z.authorize(&p, "c", pubq(&mine)).is_allowed(), "user {evil:?}");
            assert!(!z.authorize(&p, "c", Action::subscribe(&filter("users/+/x"), QoS::AtMostOnce)).is_allowed());
            assert!(!z.authorize(&p, "c", Action::receive(&name("users/bob/x"))).is_allowed(), "user {evil:?}");
            // A client id with separators or wildcards: the %c allow gives nothing, and the
            // %c deny pattern, which cannot be applied safely, denies everything (fail closed).
            let ann = Principal::user("ann");
            assert!(!z.authorize(&ann, evil, pubq(&name("clients/x/state"))).is_allowed(), "client {evil:?}");
            assert!(!z.authorize(&ann, evil, pubq(&mine)).is_allowed(), "client {evil:?}: fail closed");
        }
        // Token scopes with wildcards grant exactly their filter, `+` one level, `#` the rest.
        let p = token(&["mqtt:pub:fleet/+/temp", "mqtt:sub:cmd/#"]);
        let none = PolicyAuthorizer::new(None, false);
        assert!(none.authorize(&p, "c", pubq(&name("fleet/d1/temp"))).is_allowed());
        assert!(!none.authorize(&p, "c", pubq(&name("fleet/d1/x/temp"))).is_allowed());
        assert!(none.authorize(&p, "c", Action::subscribe(&filter("cmd/+/x"), QoS::AtMostOnce)).is_allowed());
        assert!(none.authorize(&p, "c", Action::receive(&name("cmd"))).is_allowed(), "`#` matches its parent");
    }

    /// `%{attr:NAME}` in ACL-file patterns: the device registry (policy store, no rules of
    /// its own needed) gives the values; injection attempts and missing attributes never widen.
    #[test]
    fn acl_patterns_use_device_attributes() {
        use crate::devices::Device;
        let acl = crate::acl::AclFile::parse(
            "pattern readwrite devices/%{attr:site}/%u/#\npattern deny devices/%{attr:site}/locked\n",
        )
        .unwrap();
        let mut store = crate::store::PolicyStore::default();
        for (id, site) in [("dev-1", Some("berlin")), ("evil", Some("+")), ("bare", None)] {
            let mut d = Device::default();
            if let Some(s) = site {
                d.attributes.insert("site".into(), s.into());
            }
            store.devices.insert(id.into(), d);
        }
        store.validate().unwrap();
        let z = PolicyAuthorizer::new(Some(acl), false).with_store(Arc::new(store.compile()));
        assert!(!z.has_store(), "the registry alone is no authorization source");
        fn pubq(t: &TopicName) -> Action<'_> {
            Action::publish(t, QoS::AtMostOnce, false)
        }
        let dev = Principal::certificate("dev-1");
        assert!(z.authorize(&dev, "c", pubq(&name("devices/berlin/dev-1/t"))).is_allowed());
        assert!(!z.authorize(&dev, "c", pubq(&name("devices/paris/dev-1/t"))).is_allowed());
        assert!(!z.authorize(&dev, "c", pubq(&name("devices/berlin/locked"))).is_allowed());
        assert_eq!(z.explain(&dev, "c", pubq(&name("devices/berlin/dev-1/t"))).1, DecidedBy::Acl(1));
        let evil = Principal::certificate("evil");
        for t in ["devices/x/evil/t", "devices/berlin/evil/t"] {
            assert!(!z.authorize(&evil, "c", pubq(&name(t))).is_allowed(), "{t}");
        }
        assert!(!z.authorize(&evil, "c", Action::subscribe(&filter("devices/+/evil/#"), QoS::AtMostOnce)).is_allowed());
        // Unsafe value and a deny pattern using it: everything denied (fail closed).
        assert_eq!(z.explain(&evil, "c", pubq(&name("other"))).1, DecidedBy::Acl(2));
        let bare = Principal::certificate("bare");
        assert!(!z.authorize(&bare, "c", pubq(&name("devices/x/bare/t"))).is_allowed());
        assert_eq!(z.explain(&bare, "c", pubq(&name("other"))).1, DecidedBy::Default, "missing: deny does not apply");
        assert!(!z.authorize(&Principal::anonymous(), "c", pubq(&name("devices/berlin/anonymous/t"))).is_allowed());
    }

    #[test]
    fn scope_rules_are_typed_and_numbered() {
        use crate::acl::{Access, RuleScope};
        let rules =
            scope_rules(&["mqtt:pub:a/#", "role", "mqtt:sub:b/+", "mqtt:pub:a/#/b", "mqtt:pub: c ", "mqtt:pub: "]);
        let got: Vec<_> = rules.iter().map(|r| (r.line, r.scope.clone(), r.access, r.filter.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, RuleScope::Anonymous, Access::Write, "a/#"),
                (2, RuleScope::Anonymous, Access::Read, "b/+"),
                (3, RuleScope::Anonymous, Access::Write, "c"),
            ],
            "invalid filters and blank ones give no rule; surrounding spaces are not part of one"
        );
        let p = token(&["mqtt:pub: "]);
        let none = PolicyAuthorizer::new(None, false);
        let write = name("write");
        assert!(!none.authorize(&p, "c", Action::publish(&write, QoS::AtMostOnce, false)).is_allowed());
        assert!(!none.authorize(&p, "c", Action::receive(&write)).is_allowed());
    }
}
