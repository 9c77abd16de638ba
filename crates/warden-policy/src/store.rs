//! The policy store: users, groups, roles and ordered rules, managed live through the admin
//! API (like Mosquitto's dynamic-security plugin), compiled into the same topic tries as the
//! ACL file ([`crate::acl`]) so a check walks the levels of the topic once per trie.
//!
//! # Model
//! - A **role** is an ordered list of **rules**: `{id, action, topic, max_qos, retain, effect,
//!   priority}`; `action` is `publish`, `subscribe` or `receive`; `effect` is `allow` or `deny`.
//! - A **group** has roles; a **user** has a password hash (argon2id), groups, roles and a
//!   `disabled` flag. A user's rules are those of its roles and of its groups' roles.
//! - Two group names are built in subjects: [`ANYONE_AUTHENTICATED`] applies to every
//!   authenticated principal (user, certificate, token), [`ANONYMOUS`] to anonymous clients.
//! - A store user's rules apply to any non-anonymous principal with that name (like the ACL
//!   file's `user` blocks); a disabled user gets none. A token's `roles` claim names roles
//!   directly.
//!
//! # Evaluation (one source; see [`crate::authz`] for how sources combine)
//! 1. Collect the principal's rules whose action is the one asked and whose topic filter
//!    matches the topic (publish, receive) or covers the whole requested filter (subscribe),
//!    with `$`-topics needing an explicit first level, exactly like the ACL file.
//! 2. The highest `priority` among them decides. At that priority a `deny` wins; otherwise the
//!    request is allowed when one of the `allow` rules at that priority permits its QoS
//!    (`qos <= max_qos`) and, for a retained publish, `retain = true`; else it is denied.
//! 3. No matching rule: no answer (the caller denies by default).
//! 4. `receive` (delivery) is decided by `receive` rules when one matches; without one, by the
//!    `subscribe` rules applied to the topic name: a client receives what it may subscribe to,
//!    so removing a subscribe permission stops live deliveries at once.
//!
//! # Source conditions
//! A rule may carry `source: ["10.0.0.0/8", "::1/128"]` (AWS `aws:SourceIp` style): it then
//! applies only to a client whose address — the PROXY-protocol address when a header gave one
//! ([`Principal::peer`]) — is in one of the networks; to other clients, and where the address
//! is not known, it is as if the rule were not there. Such rules are compiled into tries of
//! their own per distinct list of networks, walked only for a client in one of them.
//!
//! # Substitution
//! `%u` (the user name of a user principal), `%c` (the client id) and `%i` (the identity of any
//! non-anonymous principal: user name, certificate identity, token subject) are literal: a
//! value containing `/`, `+`, `#` or U+0000 never satisfies an allow rule using it, and a deny
//! rule using it denies that client everything (fail closed), as in [`crate::acl`].
//! `%{attr:NAME}` is an attribute of the device the principal is ([`crate::devices`]): the
//! same rules, plus an empty value counts as unsafe and a missing one matches nothing.
//!
//! # Devices
//! `devices` is the device registry ([`crate::devices`]): attributes and certificates by
//! fingerprint, by device id.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use mqtt_codec::TopicFilter;

use crate::acl::{safe_value, with_levels, FxMap, Node, Syntax, Template, TrieMarks, Vals};
use crate::cidr::{any_contains, Cidr};
use crate::devices::{Device, DeviceAttrs, DeviceCerts};
use crate::{Action, Principal, PrincipalKind, Quotas};

/// The group whose roles apply to every authenticated principal.
pub const ANYONE_AUTHENTICATED: &str = "anyone-authenticated";
/// The group whose roles apply to anonymous clients.
pub const ANONYMOUS: &str = "anonymous";
/// Version of the persisted format.
pub const FORMAT_VERSION: u32 = 1;

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a filter (the rule must cover the whole requested filter).
    Subscribe,
    /// Delivery of a message to the client.
    Receive,
}

impl RuleAction {
    fn index(self) -> usize {
        match self {
            RuleAction::Publish => 0,
            RuleAction::Subscribe => 1,
            RuleAction::Receive => 2,
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Publish => "publish",
            RuleAction::Subscribe => "subscribe",
            RuleAction::Receive => "receive",
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Grants.
    Allow,
    /// Refuses (wins over allows of the same priority).
    Deny,
}

fn default_qos() -> u8 {
    2
}

fn default_true() -> bool {
    true
}

/// One rule of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique within its role.
    pub id: String,
    /// What it is about.
    pub action: RuleAction,
    /// Topic filter; may use `%u`, `%c`, `%i`.
    pub topic: String,
    /// Highest QoS allowed (publish, subscribe); 2 by default.
    #[serde(default = "default_qos")]
    pub max_qos: u8,
    /// Whether a retained publish is allowed; true by default.
    #[serde(default = "default_true")]
    pub retain: bool,
    /// Allow or deny.
    pub effect: Effect,
    /// Higher decides first; 0 by default.
    #[serde(default)]
    pub priority: i32,
    /// The networks the client's address must be in for the rule to apply (`["10.0.0.0/8"]`);
    /// empty (the default): any address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<Cidr>,
}

/// A role: ordered rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// The rules, in order.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Per-principal quotas for the principals holding this role, instead of the broker's
    /// `[limits]` defaults (the largest value among a principal's roles applies; see
    /// [`crate::quota`]).
    #[serde(default, skip_serializing_if = "Quotas::is_empty")]
    pub quotas: Quotas,
}

/// A group of users sharing roles.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A user of the store.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// argon2id PHC string (any format [`crate::password::verify_hash`] accepts); none: the
    /// user cannot log in with a password (its rules still apply to e.g. a certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Role names.
    #[serde(default)]
    pub roles: Vec<String>,
    /// A disabled user cannot log in and gets no rules.
    #[serde(default)]
    pub disabled: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<redacted>"))
            .field("groups", &self.groups)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// The whole store, as persisted (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyStore {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Groups by name ([`ANYONE_AUTHENTICATED`], [`ANONYMOUS`] are subjects too).
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    /// Roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
    /// The device registry: devices by id ([`crate::devices`]). Absent in files written
    /// before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, Device>,
    /// Enrollment claims by name ([`crate::enroll`]): the claim certificates devices enroll
    /// with, and the template of the devices they enroll.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, crate::enroll::Claim>,
    /// The behaviour watch's rules ([`crate::watch`]); absent: the default rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<crate::watch::WatchPolicy>,
}

impl Default for PolicyStore {
    fn default() -> Self {
        PolicyStore {
            version: FORMAT_VERSION,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            roles: BTreeMap::new(),
            devices: BTreeMap::new(),
            claims: BTreeMap::new(),
            watch: None,
        }
    }
}

/// Why a store (or a change to it) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError(s.into()))
}

/// Names of users, groups, roles and rule ids: 1..=256 bytes, no control characters, no `:`
/// (the password-file separator).
pub fn valid_name(kind: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > 256 {
        return err(format!("{kind} name must be 1 to 256 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == ':') {
        return err(format!("{kind} name must not contain ':' or control characters"));
    }
    Ok(())
}

impl Rule {
    /// Check the rule on its own.
    pub fn validate(&self) -> Result<(), StoreError> {
        valid_name("rule", &self.id)?;
        TopicFilter::new(&self.topic)
            .map_err(|r| StoreError(format!("rule '{}': invalid topic filter: {r}", self.id)))?;
        if self.max_qos > 2 {
            return err(format!("rule '{}': max_qos must be 0, 1 or 2", self.id));
        }
        Ok(())
    }
}

impl PolicyStore {
    /// Parse the persisted JSON and validate it.
    pub fn from_json(text: &str) -> Result<PolicyStore, StoreError> {
        let store: PolicyStore = serde_json::from_str(text).map_err(|e| StoreError(e.to_string()))?;
        if store.version != FORMAT_VERSION {
            return err(format!("unsupported version {} (expected {FORMAT_VERSION})", store.version));
        }
        store.validate()?;
        Ok(store)
    }

    /// The persisted JSON (pretty, stable key order).
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Every name valid, every reference resolved, rule ids unique per role, hashes valid.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (name, role) in &self.roles {
            valid_name("role", name)?;
            let mut ids = std::collections::HashSet::new();
            for r in &role.rules {
                r.validate().map_err(|e| StoreError(format!("role '{name}': {e}")))?;
                if !ids.insert(r.id.as_str()) {
                    return err(format!("role '{name}': duplicate rule id '{}'", r.id));
                }
            }
        }
        let role_ref = |owner: String, r: &String| {
            if self.roles.contains_key(r) {
                Ok(())
            } else {
                err(format!("{owner}: unknown role '{r}'"))
            }
        };
        for (name, g) in &self.groups {
            valid_name("group", name)?;
            for r in &g.roles {
                role_ref(format!("group '{name}'"), r)?;
            }
        }
        for (name, u) in &self.users {
            valid_name("user", name)?;
            for r in &u.roles {
                role_ref(format!("user '{name}'"), r)?;
            }
            for g in &u.groups {
                if !self.groups.contains_key(g) {
                    return err(format!("user '{name}': unknown group '{g}'"));
                }
            }
            if let Some(h) = &u.password_hash {
                if !crate::password::is_valid_hash(h) {
                    return err(format!("user '{name}': password_hash is not a valid hash"));
                }
            }
        }
        let mut owners: HashMap<&str, &str> = HashMap::new();
        for (id, d) in &self.devices {
            d.validate(id)?;
            for fp in d.certificates.keys() {
                if let Some(other) = owners.insert(fp, id) {
                    return err(format!("certificate {fp} is registered to both device '{other}' and '{id}'"));
                }
            }
        }
        let mut claim_of: HashMap<&str, &str> = HashMap::new();
        for (name, c) in &self.claims {
            c.validate(name)?;
            for fp in c.certificates.keys() {
                if let Some(device) = owners.get(fp.as_str()) {
                    return err(format!("certificate {fp} is both device '{device}''s and claim '{name}''s"));
                }
                if let Some(other) = claim_of.insert(fp, name) {
                    return err(format!("certificate {fp} belongs to both claim '{other}' and '{name}'"));
                }
            }
        }
        if let Some(w) = &self.watch {
            w.validate()?;
        }
        Ok(())
    }

    /// The registry's certificates, for authentication and trust events (`strict`:
    /// `registered_certificates_only`).
    pub fn device_certs(&self, strict: bool) -> DeviceCerts {
        DeviceCerts::new(&self.devices, strict).with_claims(&self.claims)
    }

    /// Remove a role and every reference to it. False when it did not exist.
    pub fn remove_role(&mut self, name: &str) -> bool {
        if self.roles.remove(name).is_none() {
            return false;
        }
        for g in self.groups.values_mut() {
            g.roles.retain(|r| r != name);
        }
        for u in self.users.values_mut() {
            u.roles.retain(|r| r != name);
        }
        true
    }

    /// Remove a group and every membership. False when it did not exist.
    pub fn remove_group(&mut self, name: &str) -> bool {
        if self.groups.remove(name).is_none() {
            return false;
        }
        for u in self.users.values_mut() {
            u.groups.retain(|g| g != name);
        }
        true
    }

    /// True when some role has a rule (then the store is an authorization source).
    pub fn has_rules(&self) -> bool {
        self.roles.values().any(|r| !r.rules.is_empty())
    }

    /// The enabled users with a password, as `(user, hash)` pairs.
    pub fn password_entries(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.users
            .iter()
            .filter(|(_, u)| !u.disabled)
            .filter_map(|(n, u)| Some((n.as_str(), u.password_hash.as_deref()?)))
    }

    /// The enabled users with a password as a [`crate::password::PasswordFile`]: store users
    /// authenticate exactly like password-file users (same hashing, same refusal, same dummy
    /// work for unknown users).
    pub fn password_file(&self) -> Result<crate::password::PasswordFile, crate::password::PasswordFileError> {
        crate::password::PasswordFile::from_entries(self.password_entries())
    }

    /// Compile into tries (the store must be valid: see [`PolicyStore::validate`]).
    pub fn compile(&self) -> CompiledStore {
        let mut c = CompiledStore { configured: self.has_rules(), ..CompiledStore::default() };
        for (id, d) in &self.devices {
            c.devices.insert(id.as_str().into(), DeviceAttrs::of(id, d));
        }
        let mut role_rules: HashMap<&str, Vec<u32>> = HashMap::new();
        for (name, role) in &self.roles {
            let ids = role_rules.entry(name).or_default();
            for r in &role.rules {
                c.uses_attrs |= !Template::attrs(&r.topic, Syntax::Store).is_empty();
                ids.push(c.rules.len() as u32);
                c.rules.push(CompiledRule { role: name.clone(), rule: r.clone() });
            }
        }
        let build = |c: &CompiledStore, roles: &mut dyn Iterator<Item = &String>| {
            let mut t = RuleTrie::default();
            let mut seen = std::collections::HashSet::new();
            for role in roles {
                if !seen.insert(role.as_str()) {
                    continue;
                }
                for &i in role_rules.get(role.as_str()).into_iter().flatten() {
                    t.add(i, &c.rules[i as usize].rule);
                }
            }
            t
        };
        let quotas = |roles: &mut dyn Iterator<Item = &String>| {
            let mut q = Quotas::default();
            for r in roles.filter_map(|r| self.roles.get(r)) {
                q.raise(&r.quotas);
            }
            q
        };
        for (name, u) in &self.users {
            if u.disabled {
                continue;
            }
            let group_roles = || u.groups.iter().filter_map(|g| self.groups.get(g)).flat_map(|g| g.roles.iter());
            let t = build(&c, &mut u.roles.iter().chain(group_roles()));
            c.users.insert(name.as_str().into(), t);
            let q = quotas(&mut u.roles.iter().chain(group_roles()));
            if !q.is_empty() {
                c.user_quotas.insert(name.as_str().into(), q);
            }
        }
        for (name, role) in &self.roles {
            let t = build(&c, &mut std::iter::once(name));
            c.roles.insert(name.as_str().into(), t);
            if !role.quotas.is_empty() {
                c.role_quotas.insert(name.as_str().into(), role.quotas);
            }
        }
        if let Some(g) = self.groups.get(ANYONE_AUTHENTICATED) {
            c.authenticated = build(&c, &mut g.roles.iter());
            c.authenticated_quotas = quotas(&mut g.roles.iter());
        }
        if let Some(g) = self.groups.get(ANONYMOUS) {
            c.anonymous = build(&c, &mut g.roles.iter());
            c.anonymous_quotas = quotas(&mut g.roles.iter());
        }
        c
    }
}

/// A rule with the role it belongs to.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Role name.
    pub role: String,
    /// The rule.
    pub rule: Rule,
}

impl fmt::Display for CompiledRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "role {} rule {}", self.role, self.rule.id)
    }
}

/// The top priority level of the rules matching one action at a node (or along a check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    priority: i32,
    /// Smallest index of a deny rule at this priority.
    deny: Option<u32>,
    /// Highest max QoS of the allow rules (and the smallest index with it).
    allow: Option<(u8, u32)>,
    /// The same over allow rules that permit retain.
    allow_retain: Option<(u8, u32)>,
}

fn best_allow(a: Option<(u8, u32)>, b: Option<(u8, u32)>) -> Option<(u8, u32)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 != y.0 { x.max(y) } else { (x.0, x.1.min(y.1)) }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn merge_level(a: &mut Option<Level>, b: &Option<Level>) {
    let Some(b) = b else { return };
    match a {
        None => *a = Some(*b),
        Some(x) if b.priority > x.priority => *x = *b,
        Some(x) if b.priority == x.priority => {
            x.deny = match (x.deny, b.deny) {
                (Some(p), Some(q)) => Some(p.min(q)),
                (p, None) => p,
                (None, q) => q,
            };
            x.allow = best_allow(x.allow, b.allow);
            x.allow_retain = best_allow(x.allow_retain, b.allow_retain);
        }
        Some(_) => {}
    }
}

/// Per action (publish, subscribe, receive): the deciding level of the rules seen.
#[derive(Debug, Clone, Default)]
struct StoreMarks([Option<Level>; 3]);

impl TrieMarks for StoreMarks {
    fn merge(&mut self, o: &StoreMarks) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            merge_level(a, b);
        }
    }
}

impl StoreMarks {
    fn of(index: u32, r: &Rule) -> StoreMarks {
        let mut m = StoreMarks::default();
        let (deny, allow, allow_retain) = match r.effect {
            Effect::Deny => (Some(index), None, None),
            Effect::Allow => (None, Some((r.max_qos, index)), r.retain.then_some((r.max_qos, index))),
        };
        m.0[r.action.index()] = Some(Level { priority: r.priority, deny, allow, allow_retain });
        m
    }
}

/// The rules of one subject, compiled: a trie (and one per distinct `source` list), plus the
/// deny rules that use substitutions (index, uses `%u`, `%c`, `%i`, the `source` list's
/// position in `by_source` if any, the device attributes used) for the fail-closed check.
#[derive(Debug, Default)]
struct RuleTrie {
    trie: Node<StoreMarks>,
    by_source: Vec<(Box<[Cidr]>, Node<StoreMarks>)>,
    templated_denies: Vec<TemplatedDeny>,
}

/// A deny rule using substitutions: its index, whether it uses `%u`, `%c`, `%i`, the
/// position of its `source` list in [`RuleTrie::by_source`] (none: any address), and the
/// device attributes (`%{attr:NAME}`) it uses.
type TemplatedDeny = (u32, (bool, bool, bool), Option<usize>, crate::acl::AttrNames);

impl RuleTrie {
    fn add(&mut self, index: u32, r: &Rule) {
        let levels: Vec<&str> = r.topic.split('/').collect();
        let (trie, group) = if r.source.is_empty() {
            (&mut self.trie, None)
        } else {
            let i = match self.by_source.iter().position(|(nets, _)| **nets == *r.source) {
                Some(i) => i,
                None => {
                    self.by_source.push((r.source.clone().into(), Node::default()));
                    self.by_source.len() - 1
                }
            };
            (&mut self.by_source[i].1, Some(i))
        };
        trie.insert(&levels, &StoreMarks::of(index, r), Syntax::Store);
        let uses = Template::uses(&r.topic, Syntax::Store);
        let attrs = Template::attrs(&r.topic, Syntax::Store);
        if r.effect == Effect::Deny && (uses.0 || uses.1 || uses.2 || !attrs.is_empty()) {
            self.templated_denies.push((index, uses, group, attrs));
        }
    }

    /// True when the `source` list at `group` (none: unconditional) holds `peer`.
    #[inline]
    fn applies(&self, group: Option<usize>, peer: Option<std::net::IpAddr>) -> bool {
        match group {
            None => true,
            Some(i) => peer.is_some_and(|ip| any_contains(&self.by_source[i].0, ip)),
        }
    }
}

/// The decision of the store on one request: allowed or not, and the deciding rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMatch {
    /// Allowed (`false`: a deny rule, or a QoS / retain beyond what the allow rules permit).
    pub allowed: bool,
    /// Index of the deciding rule ([`CompiledStore::rule`]); `None` for a malformed topic.
    pub rule: Option<u32>,
}

/// A compiled store: one trie per enabled user, per role (for token roles), for
/// [`ANYONE_AUTHENTICATED`] and for [`ANONYMOUS`].
#[derive(Debug, Default)]
pub struct CompiledStore {
    configured: bool,
    /// Some rule uses a device attribute (`%{attr:NAME}`).
    uses_attrs: bool,
    rules: Vec<CompiledRule>,
    users: FxMap<Box<str>, RuleTrie>,
    roles: FxMap<Box<str>, RuleTrie>,
    authenticated: RuleTrie,
    anonymous: RuleTrie,
    /// Quota overrides, merged like the rules: per user (its roles and groups' roles), per
    /// role, for every authenticated client and for anonymous clients. Only non-empty ones.
    user_quotas: FxMap<Box<str>, Quotas>,
    role_quotas: FxMap<Box<str>, Quotas>,
    authenticated_quotas: Quotas,
    anonymous_quotas: Quotas,
    /// The device registry's attributes, by device id (`%{attr:NAME}`).
    devices: FxMap<Box<str>, DeviceAttrs>,
}

impl CompiledStore {
    /// The attributes of the device `principal` is: a verified, non-anonymous principal whose
    /// name is a device id of the registry (`None`: it is no device; `%{attr:NAME}` then
    /// matches nothing). A fail-open client only claimed its name: it is no device.
    pub fn device_attrs(&self, principal: &Principal) -> Option<&DeviceAttrs> {
        if self.devices.is_empty() || matches!(principal.kind, PrincipalKind::Anonymous | PrincipalKind::Fallback) {
            return None;
        }
        self.devices.get(&*principal.name)
    }

    /// True when some rule uses a device attribute (`%{attr:NAME}`).
    pub fn uses_attrs(&self) -> bool {
        self.uses_attrs
    }

    /// True when the store has at least one rule (it is then an authorization source).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// The rule at `index` (from a [`StoreMatch`]).
    pub fn rule(&self, index: u32) -> Option<&CompiledRule> {
        self.rules.get(index as usize)
    }

    /// The quota overrides that apply to `principal`: from the same roles as its rules (its
    /// user's roles and groups, the roles it carries, the `$authenticated` or `$anonymous`
    /// group), the largest value of each quota among them. Empty: the broker's defaults.
    pub fn quotas(&self, principal: &Principal) -> Quotas {
        let anonymous = principal.kind == PrincipalKind::Anonymous;
        let fallback = principal.kind == PrincipalKind::Fallback;
        let mut q = if anonymous {
            self.anonymous_quotas
        } else if fallback {
            Quotas::default()
        } else {
            self.authenticated_quotas
        };
        if !anonymous && !fallback {
            if let Some(u) = self.user_quotas.get(&*principal.name) {
                q.raise(u);
            }
        }
        if !anonymous {
            for r in principal.roles.iter().filter_map(|r| self.role_quotas.get(&**r)) {
                q.raise(r);
            }
        }
        q
    }

    /// The tries that apply to `principal`. A fail-open client ([`PrincipalKind::Fallback`])
    /// gets its roles only: not the rules of the user whose name it claimed, nor those for
    /// every authenticated client.
    fn tries<'a>(&'a self, principal: &'a Principal) -> impl Iterator<Item = &'a RuleTrie> + 'a {
        let anonymous = principal.kind == PrincipalKind::Anonymous;
        let fallback = principal.kind == PrincipalKind::Fallback;
        let subject = if anonymous { Some(&self.anonymous) } else { (!fallback).then_some(&self.authenticated) };
        let user = (!anonymous && !fallback).then(|| self.users.get(&*principal.name)).flatten();
        let roles = principal.roles.iter().filter_map(move |r| if anonymous { None } else { self.roles.get(&**r) });
        subject.into_iter().chain(user).chain(roles)
    }

    /// Decide `action` (on its topic name or filter) for `principal` with `client_id`
    /// (module docs). `None`: no rule of the store matches.
    pub fn check(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Option<StoreMatch> {
        if !self.configured {
            return None;
        }
        // The codec validated the name or filter; only the alias placeholder can be empty.
        let topic = action.topic();
        if topic.is_empty() {
            return Some(StoreMatch { allowed: false, rule: None });
        }
        let (user, identity) = match principal.kind {
            // A claimed, unverified name substitutes nowhere.
            PrincipalKind::Anonymous | PrincipalKind::Fallback => (None, None),
            PrincipalKind::User => (Some(&*principal.name), Some(&*principal.name)),
            _ => (None, Some(&*principal.name)),
        };
        let unsafe_ = |v: Option<&str>| v.is_some_and(|v| !safe_value(v));
        let bad = (unsafe_(user), !safe_value(client_id), unsafe_(identity));
        let peer = principal.peer();
        let attrs = if self.uses_attrs { self.device_attrs(principal) } else { None };
        if bad.0 || bad.1 || bad.2 || attrs.is_some() {
            let attr_unsafe = |names: &[Box<str>]| attrs.is_some_and(|a| names.iter().any(|n| a.is_unsafe(n)));
            for t in self.tries(principal) {
                let hit = t.templated_denies.iter().find(|(_, u, g, a)| {
                    ((u.0 && bad.0) || (u.1 && bad.1) || (u.2 && bad.2) || attr_unsafe(a)) && t.applies(*g, peer)
                });
                if let Some((i, _, _, _)) = hit {
                    return Some(StoreMatch { allowed: false, rule: Some(*i) });
                }
            }
        }
        let vals = Vals {
            user: user.filter(|v| safe_value(v)),
            client: Some(client_id).filter(|v| safe_value(v)),
            identity: identity.filter(|v| safe_value(v)),
            attrs,
        };
        let dollar = topic.starts_with('$');
        let mut acc = StoreMarks::default();
        with_levels(topic, |req| {
            for t in self.tries(principal) {
                t.trie.collect(req, 0, dollar, vals, &mut acc);
                for (i, (_, trie)) in t.by_source.iter().enumerate() {
                    if t.applies(Some(i), peer) {
                        trie.collect(req, 0, dollar, vals, &mut acc);
                    }
                }
            }
        });
        let (level, qos, retain) = match action {
            Action::Publish { qos, retain, .. } => (acc.0[0], qos as u8, retain),
            Action::Subscribe { qos, .. } => (acc.0[1], qos as u8, false),
            Action::Receive { .. } => (acc.0[2].or(acc.0[1]), 0, false),
        };
        let level = level?;
        if let Some(d) = level.deny {
            return Some(StoreMatch { allowed: false, rule: Some(d) });
        }
        let limit = if retain { level.allow_retain } else { level.allow };
        match limit {
            Some((max, i)) if qos <= max => Some(StoreMatch { allowed: true, rule: Some(i) }),
            _ => Some(StoreMatch { allowed: false, rule: level.allow.map(|a| a.1) }),
        }
    }
}

#[cfg(test)]
mod tests;
