//! Mosquitto `acl_file` authorization: an operator's existing file works as it is.
//!
//! # Syntax (Mosquitto's `mosquitto.conf(5)`, `acl_file`)
//! - `user <name>`: the `topic` lines that follow apply to that user (the rest of the line,
//!   trimmed, is the name, so it may contain spaces). Several blocks for one user add up.
//! - `topic [read|write|readwrite|deny] <filter>`: access defaults to `readwrite`; the rest of
//!   the line after the access keyword is the filter (it may contain spaces, and then the access
//!   keyword is required). **`topic` lines before the first `user` line apply to anonymous
//!   clients only** (clients without a user name), not to everyone: that is what Mosquitto
//!   documents ("The first set of topics are applied to anonymous clients") and does
//!   (`security_default.c`: rules stored under a NULL user name, matched only when the client
//!   has no user name).
//! - `pattern [read|write|readwrite|deny] <filter>`: applies to every client, anonymous or not,
//!   even after a `user` line; `%u` is replaced by the user name and `%c` by the client id
//!   (anywhere in a level, left to right, like Mosquitto). A pattern using `%u` never applies to
//!   anonymous clients (Mosquitto skips it).
//! - Warden's extension, a **source condition** (AWS `aws:SourceIp` style): `topic read
//!   source=10.0.0.0/8,::1/128 sensors/#` (also on `pattern` lines; the access keyword is then
//!   required, and the comma-separated networks come right after it). Such a rule applies only
//!   to a client whose address — the PROXY-protocol address when a header gave one — is in one
//!   of the networks ([`crate::cidr`]); to other clients, and where the address is not known,
//!   it is as if the line were not there (an allow grants nothing, a deny denies nothing).
//!   A filter that itself starts with `source=` cannot be written after an access keyword.
//! - A line whose first non-blank character is `#` is a comment; blank lines are ignored.
//!   Keywords are case-sensitive. Tokens are separated by spaces or tabs (Mosquitto: spaces).
//!
//! # Semantics
//! - `read` allows SUBSCRIBE and delivery (receive); `write` allows PUBLISH; `deny` denies all.
//! - PUBLISH and receive: the topic name must match a rule's filter (MQTT wildcard semantics).
//! - SUBSCRIBE: the requested filter is allowed only when a `read` rule's filter *covers* it,
//!   i.e. every topic name the requested filter matches is matched by the rule (`sensors/#`
//!   covers `sensors/+/temp`; `sensors/+/temp` does not cover `sensors/#`). A deny rule refuses
//!   the subscription only when it covers the whole requested filter; a deny on part of it is
//!   applied at delivery. (Mosquitto itself accepts every subscription and filters only at
//!   delivery; Warden answers the SUBSCRIBE too, per SPEC §6.)
//! - `$` topics: `+` or `#` in the first level of a rule never match a first level starting with
//!   `$` (so `#` does not grant `$SYS/...`; `$SYS/#` does).
//! - Deny wins: if any applicable deny rule matches, the answer is deny, whatever allows match.
//!   This differs from Mosquitto in one corner: Mosquitto stops at the user's own `topic` rules
//!   when one of them allows, before looking at `pattern deny` lines; here a matching
//!   `pattern deny` wins over a `topic` allow too (SPEC §6: an explicit deny wins over any allow).
//! - Injection safety (CVE-2017-7650): a value substituted for `%u` or `%c` is literal. A value
//!   containing `/`, `+`, `#` or U+0000 is *unsafe*: allow patterns using it do not apply to that
//!   client at all, and deny patterns using it deny that client everything (fail closed). So a
//!   user named `#` gets nothing from `pattern readwrite users/%u/#`, and client id `a/b` does not
//!   get `c/a/b` from `pattern write c/%c`. (Mosquitto refuses only `+` and `#`.)
//! - Warden's extension, **device attributes**: `%{attr:NAME}` in a `pattern` line is the
//!   attribute `NAME` of the device the client is ([`crate::devices`]), with the same safety
//!   (an empty value is unsafe too); a missing attribute, or a client that is no device, makes
//!   the pattern match nothing.
//! - No rule matching means no answer (`None`): the caller denies by default.
//!
//! # Cost
//! Rules are compiled into one topic trie per user (plus one for anonymous clients and one for
//! patterns, whose `%u` / `%c` levels are matched in place, without building strings), so a
//! check walks the levels of the topic in two tries and never looks at other users' rules.
//! Rules with a source condition are compiled into tries of their own, one set per distinct
//! list of networks; a check walks those only for the lists its client's address is in (a few
//! integer comparisons per network, no allocation).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use std::net::IpAddr;

use mqtt_codec::TopicFilter;

use crate::cidr::{any_contains, Cidr};
use crate::{Action, Authorizer, Decision, Principal, PrincipalKind};

/// A line of an ACL file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AclError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The access a `topic` or `pattern` line grants (or `deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Subscribe and receive.
    Read,
    /// Publish.
    Write,
    /// Both.
    ReadWrite,
    /// Explicitly denied (wins over any allow).
    Deny,
}

impl Access {
    fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    /// The keyword as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
            Access::Deny => "deny",
        }
    }

    #[cfg(test)]
    fn grants(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Access::Read | Access::ReadWrite, Need::Read) | (Access::Write | Access::ReadWrite, Need::Write)
        )
    }
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleScope {
    /// A `topic` line before any `user` line: anonymous clients only.
    Anonymous,
    /// A `topic` line after `user <name>`.
    User(String),
    /// A `pattern` line: every client, with `%u` / `%c` substituted.
    Pattern,
}

/// One `topic` or `pattern` rule: a line of a file as parsed, or a rule built directly (token
/// scopes, a look-up answer); kept for explanations and audit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// 1-based line number in the file (for rules not read from a file: their position).
    pub line: usize,
    /// Who it applies to.
    pub scope: RuleScope,
    /// What it grants.
    pub access: Access,
    /// The filter as written (for patterns, before substitution), validated by the codec.
    pub filter: TopicFilter,
    /// `source=…`: the networks the client's address must be in for the rule to apply; empty:
    /// any address.
    pub source: Box<[Cidr]>,
}

impl AclRule {
    /// A rule at position `line` (1-based), for any source address.
    pub fn new(line: usize, scope: RuleScope, access: Access, filter: TopicFilter) -> Self {
        AclRule { line, scope, access, filter, source: Box::default() }
    }

    /// This rule, applying only to clients whose address is in one of `nets` (none: any).
    #[must_use]
    pub fn with_source(mut self, nets: impl Into<Box<[Cidr]>>) -> Self {
        self.source = nets.into();
        self
    }
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kw = if self.scope == RuleScope::Pattern { "pattern" } else { "topic" };
        write!(f, "line {}: {kw} {}", self.line, self.access.as_str())?;
        if !self.source.is_empty() {
            let nets: Vec<String> = self.source.iter().map(Cidr::to_string).collect();
            write!(f, " source={}", nets.join(","))?;
        }
        write!(f, " {}", self.filter)?;
        if let RuleScope::User(u) = &self.scope {
            write!(f, " (user {u})")?;
        }
        Ok(())
    }
}

/// The rule that decides a check: see [`AclFile::explain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclMatch {
    /// Allowed (`false`: an explicit deny).
    pub allowed: bool,
    /// Line of the deciding rule (the first such line when several match).
    pub line: usize,
}

/// Which access bit a check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Write,
}

/// Lines of the rules that end at a trie node (the smallest line of each kind).
#[derive(Debug, Clone, Copy, Default)]
struct AclMarks {
    deny: Option<usize>,
    read: Option<usize>,
    write: Option<usize>,
}

fn min_line(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl TrieMarks for AclMarks {
    fn merge(&mut self, o: &AclMarks) {
        self.deny = min_line(self.deny, o.deny);
        self.read = min_line(self.read, o.read);
        self.write = min_line(self.write, o.write);
    }
}

impl AclMarks {
    fn of(access: Access, line: usize) -> AclMarks {
        let mut m = AclMarks::default();
        m.add(access, line);
        m
    }

    fn add(&mut self, access: Access, line: usize) {
        let l = Some(line);
        match access {
            Access::Deny => self.deny = min_line(self.deny, l),
            Access::Read => self.read = min_line(self.read, l),
            Access::Write => self.write = min_line(self.write, l),
            Access::ReadWrite => {
                self.read = min_line(self.read, l);
                self.write = min_line(self.write, l);
            }
        }
    }

    fn verdict(&self, need: Need) -> Option<AclMatch> {
        if let Some(line) = self.deny {
            return Some(AclMatch { allowed: false, line });
        }
        let allow = match need {
            Need::Read => self.read,
            Need::Write => self.write,
        };
        allow.map(|line| AclMatch { allowed: true, line })
    }
}

/// The hasher of the tries' level maps and of the per-user maps: FxHash (rustc's), a multiply
/// and a rotate per 8 bytes, instead of std's keyed SipHash-1-3, which was a third of a check.
///
/// Not keyed, hence not flooding-resistant for maps an attacker fills; these maps are filled
/// only from configuration (ACL file, policy store, a token's scopes, a look-up service's
/// answer) and clients only look names up in them. A lookup costs at most the probe sequence of
/// one hash, bounded by the map's load whatever the key, so a crafted topic level cannot make it
/// slower than a lookup of a present key.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, mut bytes: &[u8]) {
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            self.add(u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        if let Some((chunk, rest)) = bytes.split_first_chunk::<4>() {
            self.add(u64::from(u32::from_le_bytes(*chunk)));
            bytes = rest;
        }
        for &b in bytes {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A map keyed by names, looked up on the hot path (see [`FxHasher`]).
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Most levels split on the stack by [`with_levels`]; deeper topics use a `Vec`.
const STACK_LEVELS: usize = 16;

/// Call `f` with the levels of `topic` (split on `/`), without allocating for topics of up to
/// 16 levels: a check used to allocate a `Vec` for them every time.
#[inline]
pub(crate) fn with_levels<R>(topic: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let mut buf = [""; STACK_LEVELS];
    let mut n = 0;
    let mut start = 0;
    // A byte loop ('/' is ASCII, so every cut is a char boundary): cheaper than `split('/')`'s
    // searcher on topics of a few short levels.
    for (i, &b) in topic.as_bytes().iter().enumerate() {
        if b == b'/' {
            if n == STACK_LEVELS - 1 {
                return f(&topic.split('/').collect::<Vec<_>>());
            }
            buf[n] = &topic[start..i];
            n += 1;
            start = i + 1;
        }
    }
    buf[n] = &topic[start..];
    f(&buf[..=n])
}

/// A piece of a pattern level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Lit(Box<str>),
    /// `%u`.
    User,
    /// `%c`.
    Client,
    /// `%i` (policy store only).
    Identity,
    /// `%{attr:NAME}`: an attribute of the device the principal is (crate::devices).
    Attr(Box<str>),
}

/// The device attributes a rule uses (`%{attr:NAME}`).
pub(crate) type AttrNames = Box<[Box<str>]>;

/// How a device attribute begins in a pattern level, after its `%`.
const ATTR_OPEN: &str = "{attr:";

/// Which substitutions a trie understands in its rules' levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    /// No substitution: every level is literal (ACL `topic` lines).
    Literal,
    /// `%u` and `%c` (ACL `pattern` lines, Mosquitto's syntax).
    Pattern,
    /// `%u`, `%c` and `%i` (policy-store rules).
    Store,
}

/// A pattern level containing `%u`, `%c` (or, in the store, `%i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// The substitution values of one check; `None` when absent or unsafe (then templates using
/// them match nothing).
#[derive(Clone, Copy, Default)]
pub(crate) struct Vals<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) client: Option<&'a str>,
    pub(crate) identity: Option<&'a str>,
    /// The attributes of the device the principal is (`None`: it is no device).
    pub(crate) attrs: Option<&'a crate::devices::DeviceAttrs>,
}

impl Template {
    /// Split a level into literal text and `%u` / `%c` / `%i` (Mosquitto's left-to-right
    /// scan); `None` when the level has none of the substitutions `syntax` knows.
    pub(crate) fn parse(level: &str, syntax: Syntax) -> Option<Template> {
        if syntax == Syntax::Literal {
            return None;
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = level;
        while let Some(ch) = rest.chars().next() {
            let after = &rest[ch.len_utf8()..];
            let var = match (ch, after.chars().next()) {
                ('%', Some('u')) => Some((Part::User, 1)),
                ('%', Some('c')) => Some((Part::Client, 1)),
                ('%', Some('i')) if syntax == Syntax::Store => Some((Part::Identity, 1)),
                // `%{attr:NAME}`: a device attribute (crate::devices).
                ('%', Some('{')) => after.strip_prefix(ATTR_OPEN).and_then(|a| {
                    let end = a.find('}')?;
                    let name = &a[..end];
                    crate::devices::valid_attribute_name(name)
                        .ok()
                        .map(|_| (Part::Attr(name.into()), ATTR_OPEN.len() + end + 1))
                }),
                _ => None,
            };
            match var {
                Some((v, len)) => {
                    rest = &after[len..];
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                    }
                    parts.push(v);
                }
                None => {
                    lit.push(ch);
                    rest = after;
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
        parts.iter().any(|p| !matches!(p, Part::Lit(_))).then_some(Template { parts })
    }

    /// The device attributes a whole filter uses (`%{attr:NAME}`).
    pub(crate) fn attrs(filter: &str, syntax: Syntax) -> AttrNames {
        let mut names: Vec<Box<str>> = Vec::new();
        for t in filter.split('/').filter_map(|l| Template::parse(l, syntax)) {
            for p in t.parts {
                if let Part::Attr(n) = p {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        names.into()
    }

    /// The substitutions a whole filter uses: (`%u`, `%c`, `%i`).
    pub(crate) fn uses(filter: &str, syntax: Syntax) -> (bool, bool, bool) {
        let mut uses = (false, false, false);
        for t in filter.split('/').filter_map(|l| Template::parse(l, syntax)) {
            for p in t.parts {
                match p {
                    Part::User => uses.0 = true,
                    Part::Client => uses.1 = true,
                    Part::Identity => uses.2 = true,
                    Part::Lit(_) | Part::Attr(_) => {}
                }
            }
        }
        uses
    }

    /// Does this level, with the values substituted, equal `level` exactly?
    fn matches(&self, mut level: &str, vals: Vals<'_>) -> bool {
        for p in &self.parts {
            let s: &str = match p {
                Part::Lit(s) => s,
                Part::User => match vals.user {
                    Some(u) => u,
                    None => return false,
                },
                Part::Client => match vals.client {
                    Some(c) => c,
                    None => return false,
                },
                Part::Identity => match vals.identity {
                    Some(i) => i,
                    None => return false,
                },
                Part::Attr(n) => match vals.attrs.and_then(|a| a.safe(n)) {
                    Some(v) => v,
                    None => return false,
                },
            };
            match level.strip_prefix(s) {
                Some(rest) => level = rest,
                None => return false,
            }
        }
        level.is_empty()
    }
}

/// What a trie node records of the rules ending at it; merged along a check, so the order
/// in which matching nodes are visited must not matter (`merge` is commutative and
/// associative).
pub(crate) trait TrieMarks: Default + fmt::Debug {
    /// Add what `other` records.
    fn merge(&mut self, other: &Self);
}

/// A topic trie node: rules ending here, children by level. Shared by the ACL file and the
/// policy store ([`crate::store`]); `M` is what a rule leaves at the node it ends at.
#[derive(Debug, Default)]
pub(crate) struct Node<M> {
    /// Rules whose filter ends exactly at this node.
    marks: M,
    /// Rules `<path>/#` (`#` is always the last level).
    hash: Option<M>,
    plus: Option<Box<Node<M>>>,
    literal: FxMap<Box<str>, Node<M>>,
    /// Levels with substitutions (`%u`, `%c`, `%i`, `%{attr:NAME}`), when the syntax has them.
    templated: Vec<(Template, Node<M>)>,
}

impl<M: TrieMarks> Node<M> {
    /// Record `mark` for the rule whose filter is `levels`.
    pub(crate) fn insert(&mut self, levels: &[&str], mark: &M, syntax: Syntax) {
        let Some((first, rest)) = levels.split_first() else {
            self.marks.merge(mark);
            return;
        };
        let child = match *first {
            "#" => {
                self.hash.get_or_insert_with(M::default).merge(mark);
                return;
            }
            "+" => self.plus.get_or_insert_with(Box::default),
            lvl => match Template::parse(lvl, syntax) {
                Some(t) => match self.templated.iter().position(|(u, _)| *u == t) {
                    Some(i) => &mut self.templated[i].1,
                    None => {
                        self.templated.push((t, Node::default()));
                        &mut self.templated.last_mut().expect("just pushed").1
                    }
                },
                None => self.literal.entry(lvl.into()).or_default(),
            },
        };
        child.insert(rest, mark, syntax);
    }

    /// Merge into `acc` the marks of every rule whose filter covers `req` (a topic name or a
    /// filter, split into levels). `depth` is the level index of `req[0]`; `dollar` tells
    /// whether the first level of the whole request starts with `$`.
    pub(crate) fn collect(&self, req: &[&str], depth: usize, dollar: bool, vals: Vals<'_>, acc: &mut M) {
        let top = depth == 0;
        // A rule `<path>/#` covers everything below (and at) this node, except that a `#` as the
        // rule's first level does not match `$` topics.
        if let Some(h) = &self.hash {
            if !(top && dollar) {
                acc.merge(h);
            }
        }
        let Some((lvl, rest)) = req.split_first() else {
            acc.merge(&self.marks);
            return;
        };
        if *lvl == "#" {
            // Only a rule `#` at this point covers a requested `#` (handled above), except that a
            // requested `#` at the first level matches one or more levels, not starting with `$`:
            // exactly what a rule `+/#` matches.
            if top {
                if let Some(h) = self.plus.as_ref().and_then(|p| p.hash.as_ref()) {
                    acc.merge(h);
                }
            }
            return;
        }
        if let Some(p) = &self.plus {
            if !(top && dollar) {
                p.collect(rest, depth + 1, dollar, vals, acc);
            }
        }
        if *lvl == "+" {
            // A requested `+` is covered only by a rule `+` (or `#`), not by any literal.
            return;
        }
        if let Some(c) = self.literal.get(*lvl) {
            c.collect(rest, depth + 1, dollar, vals, acc);
        }
        for (t, c) in &self.templated {
            if t.matches(lvl, vals) {
                c.collect(rest, depth + 1, dollar, vals, acc);
            }
        }
    }
}

/// A compiled ACL file: one trie per user, one for anonymous clients, one for patterns; the
/// same again for each distinct `source=` list.
#[derive(Debug, Default)]
pub struct AclFile {
    rules: Vec<AclRule>,
    /// The rules for any source address.
    any: AclTries,
    /// The rules with a source condition, by their list of networks.
    by_source: Vec<(Box<[Cidr]>, AclTries)>,
    /// Some pattern uses a device attribute (`%{attr:NAME}`).
    uses_attrs: bool,
}

/// The tries of rules that apply to the same addresses.
#[derive(Debug, Default)]
struct AclTries {
    users: FxMap<Box<str>, Node<AclMarks>>,
    anonymous: Node<AclMarks>,
    patterns: Node<AclMarks>,
    /// Deny patterns using substitutions, in file order: (line, uses `%u`, uses `%c`, the
    /// device attributes it uses). One that applies to a client whose value is unsafe denies
    /// it everything.
    deny_patterns: Vec<(usize, bool, bool, AttrNames)>,
}

/// A substitution value is safe when it cannot add levels or wildcards (CVE-2017-7650).
pub(crate) fn safe_value(v: &str) -> bool {
    // Bytes, not chars: these are ASCII, which never occurs inside a multi-byte UTF-8 sequence,
    // and a byte loop is several times faster than `contains([..])` on short names.
    !v.bytes().any(|b| matches!(b, b'/' | b'+' | b'#' | 0))
}

impl AclFile {
    /// Compile rules built directly (token scopes, a look-up answer's rules), in `line`
    /// order: the same compilation [`AclFile::parse`] gives a file's lines.
    pub fn from_rules(rules: impl IntoIterator<Item = AclRule>) -> AclFile {
        let mut rules: Vec<AclRule> = rules.into_iter().collect();
        // `rule_at` finds a rule by binary search on its line.
        rules.sort_by_key(|r| r.line);
        let mut acl = AclFile::default();
        for r in rules {
            acl.add(r);
        }
        acl
    }

    /// Parse and compile an ACL file in Mosquitto's syntax (see the module docs).
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut rules = Vec::new();
        let mut user: Option<String> = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            match parse_line(i + 1, raw, user.as_deref())? {
                Line::Skip => {}
                Line::User(u) => user = Some(u.to_owned()),
                Line::Rule(r) => rules.push(r),
            }
        }
        Ok(AclFile::from_rules(rules))
    }

    fn add(&mut self, rule: AclRule) {
        if rule.scope == RuleScope::Pattern && !Template::attrs(rule.filter.as_str(), Syntax::Pattern).is_empty() {
            self.uses_attrs = true;
        }
        let tries = if rule.source.is_empty() {
            &mut self.any
        } else {
            match self.by_source.iter().position(|(nets, _)| *nets == rule.source) {
                Some(i) => &mut self.by_source[i].1,
                None => {
                    self.by_source.push((rule.source.clone(), AclTries::default()));
                    &mut self.by_source.last_mut().expect("just pushed").1
                }
            }
        };
        tries.add(&rule);
        self.rules.push(rule);
    }

    /// The tries that apply to a client at `peer`: those for any address, and those whose
    /// networks hold it.
    fn tries(&self, peer: Option<IpAddr>) -> impl Iterator<Item = &AclTries> + '_ {
        let conditional = self
            .by_source
            .iter()
            .filter(move |(nets, _)| peer.is_some_and(|ip| any_contains(nets, ip)))
            .map(|(_, t)| t);
        std::iter::once(&self.any).chain(conditional)
    }

    /// True when some pattern uses a device attribute (`%{attr:NAME}`): only then are a
    /// client's attributes looked up.
    pub fn uses_attrs(&self) -> bool {
        self.uses_attrs
    }

    /// True when some rule has a `source=` condition.
    pub fn has_source_conditions(&self) -> bool {
        !self.by_source.is_empty()
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[AclRule] {
        &self.rules
    }

    /// The rule at `line`, if that line is a `topic` or `pattern` line.
    pub fn rule_at(&self, line: usize) -> Option<&AclRule> {
        self.rules.binary_search_by_key(&line, |r| r.line).ok().map(|i| &self.rules[i])
    }

    /// Mosquitto semantics: is `user` (`None` for anonymous) with `client_id` allowed to do
    /// `action` (on its topic name for publish / receive, its filter for subscribe)?
    /// `Some(true)`: allowed; `Some(false)`: explicitly denied; `None`: no rule matches (the
    /// caller denies by default).
    /// Rules with a `source=` condition do not apply (the address is not known): see
    /// [`AclFile::check_from`].
    pub fn check(&self, user: Option<&str>, client_id: &str, action: Action<'_>) -> Option<bool> {
        self.explain_from(user, client_id, None, action).map(|m| m.allowed)
    }

    /// [`AclFile::check`] for a client connected from `peer`: rules with a `source=`
    /// condition apply when `peer` is in one of their networks.
    pub fn check_from(
        &self,
        user: Option<&str>,
        client_id: &str,
        peer: Option<IpAddr>,
        action: Action<'_>,
    ) -> Option<bool> {
        self.explain_from(user, client_id, peer, action).map(|m| m.allowed)
    }

    /// Like [`AclFile::check`], also naming the deciding rule's line. The empty topic-alias
    /// placeholder (never authorized by the broker, which resolves it first) is denied with
    /// line 0.
    pub fn explain(&self, user: Option<&str>, client_id: &str, action: Action<'_>) -> Option<AclMatch> {
        self.explain_from(user, client_id, None, action)
    }

    /// [`AclFile::explain`] for a client connected from `peer` (see [`AclFile::check_from`]).
    pub fn explain_from(
        &self,
        user: Option<&str>,
        client_id: &str,
        peer: Option<IpAddr>,
        action: Action<'_>,
    ) -> Option<AclMatch> {
        self.explain_with(user, client_id, peer, None, action)
    }

    /// [`AclFile::explain_from`] for a client that is a device of the registry with `attrs`
    /// (`%{attr:NAME}` in patterns; `None`: no device, patterns using attributes match
    /// nothing).
    pub fn explain_with(
        &self,
        user: Option<&str>,
        client_id: &str,
        peer: Option<IpAddr>,
        attrs: Option<&crate::devices::DeviceAttrs>,
        action: Action<'_>,
    ) -> Option<AclMatch> {
        let need = if action.is_publish() { Need::Write } else { Need::Read };
        // The codec validated the name or filter; only the alias placeholder can be empty.
        let topic = action.topic();
        if topic.is_empty() {
            return Some(AclMatch { allowed: false, line: 0 });
        }

        // Fail closed: a deny pattern that cannot be substituted safely denies everything.
        // (A pattern using `%u` does not apply to anonymous clients at all; one using a
        // missing attribute applies to no one.)
        let user_unsafe = user.is_some_and(|u| !safe_value(u));
        let client_unsafe = !safe_value(client_id);
        if user_unsafe || client_unsafe || attrs.is_some() {
            let attr_unsafe = |names: &[Box<str>]| attrs.is_some_and(|a| names.iter().any(|n| a.is_unsafe(n)));
            let fail_closed = self
                .tries(peer)
                .flat_map(|t| t.deny_patterns.iter())
                .filter(|(_, u, c, a)| {
                    !(*u && user.is_none()) && ((*u && user_unsafe) || (*c && client_unsafe) || attr_unsafe(a))
                })
                .min_by_key(|(line, _, _, _)| *line);
            if let Some((line, _, _, _)) = fail_closed {
                return Some(AclMatch { allowed: false, line: *line });
            }
        }

        let dollar = topic.starts_with('$');
        let mut acc = AclMarks::default();
        let none = Vals::default();
        let vals = Vals {
            user: user.filter(|_| !user_unsafe),
            client: Some(client_id).filter(|_| !client_unsafe),
            identity: None,
            attrs,
        };
        with_levels(topic, |req| {
            for tries in self.tries(peer) {
                let own = match user {
                    None => Some(&tries.anonymous),
                    Some(u) => tries.users.get(u),
                };
                if let Some(t) = own {
                    t.collect(req, 0, dollar, none, &mut acc);
                }
                tries.patterns.collect(req, 0, dollar, vals, &mut acc);
            }
        });
        acc.verdict(need)
    }
}

impl AclTries {
    fn add(&mut self, rule: &AclRule) {
        let levels: Vec<&str> = rule.filter.as_str().split('/').collect();
        let mark = AclMarks::of(rule.access, rule.line);
        match &rule.scope {
            RuleScope::Anonymous => self.anonymous.insert(&levels, &mark, Syntax::Literal),
            RuleScope::User(u) => {
                self.users.entry(u.as_str().into()).or_default().insert(&levels, &mark, Syntax::Literal)
            }
            RuleScope::Pattern => {
                self.patterns.insert(&levels, &mark, Syntax::Pattern);
                let (uses_user, uses_client, _) = Template::uses(rule.filter.as_str(), Syntax::Pattern);
                let attrs = Template::attrs(rule.filter.as_str(), Syntax::Pattern);
                if rule.access == Access::Deny && (uses_user || uses_client || !attrs.is_empty()) {
                    self.deny_patterns.push((rule.line, uses_user, uses_client, attrs));
                }
            }
        }
    }
}

/// The source condition's keyword on a `topic` or `pattern` line.
const SOURCE_PREFIX: &str = "source=";

/// What one line of an ACL file is.
enum Line<'a> {
    /// Blank or a comment.
    Skip,
    /// `user <name>`.
    User(&'a str),
    /// A `topic` or `pattern` rule.
    Rule(AclRule),
}

/// Parse line `line` (1-based) of an ACL file, `user` being the name of the `user` block it is
/// in (if any).
fn parse_line<'a>(line: usize, raw: &'a str, user: Option<&str>) -> Result<Line<'a>, AclError> {
    let err = |reason: &str| AclError { line, reason: reason.to_string() };
    let l = trim_ascii(raw);
    if l.is_empty() || l.starts_with('#') {
        return Ok(Line::Skip);
    }
    let (directive, rest) = split_token(l);
    match directive {
        "user" => {
            if rest.is_empty() {
                return Err(err("missing user name after 'user'"));
            }
            if rest.contains('\0') {
                return Err(err("user name contains U+0000"));
            }
            Ok(Line::User(rest))
        }
        "topic" | "pattern" => {
            if rest.is_empty() {
                return Err(err(&format!("missing topic filter after '{directive}'")));
            }
            let (first, tail) = split_token(rest);
            if first.starts_with(SOURCE_PREFIX) {
                return Err(err(&format!(
                    "an access keyword (read, write, readwrite or deny) must come before '{SOURCE_PREFIX}'"
                )));
            }
            let (access, filter) = if tail.is_empty() {
                (Access::ReadWrite, first)
            } else {
                match Access::parse(first) {
                    Some(a) => (a, tail),
                    None => {
                        return Err(err(&format!("invalid access '{first}' (expected read, write, readwrite or deny)")))
                    }
                }
            };
            let (source, filter) = match filter.strip_prefix(SOURCE_PREFIX) {
                None => (Vec::new(), filter),
                Some(after) => {
                    let (list, filter) = split_token(after);
                    if filter.is_empty() {
                        return Err(err(&format!("missing topic filter after '{SOURCE_PREFIX}{list}'")));
                    }
                    let mut nets = Vec::new();
                    for n in list.split(',') {
                        nets.push(n.parse::<Cidr>().map_err(|e| err(&format!("{SOURCE_PREFIX}: {e}")))?);
                    }
                    (nets, filter)
                }
            };
            let filter = TopicFilter::new(filter).map_err(|r| err(&format!("invalid topic filter '{filter}': {r}")))?;
            let scope = match (directive, user) {
                ("pattern", _) => RuleScope::Pattern,
                (_, Some(u)) => RuleScope::User(u.to_owned()),
                (_, None) => RuleScope::Anonymous,
            };
            Ok(Line::Rule(AclRule { line, scope, access, filter, source: source.into() }))
        }
        other => Err(err(&format!("unknown directive '{other}'"))),
    }
}

impl AclRule {
    /// Parse one `topic` or `pattern` line on its own (a look-up service's answer carries such
    /// lines): a `topic` line is the principal's own ([`RuleScope::Anonymous`], checked with
    /// no user name), a `pattern` line a pattern. The rule is numbered `line`; an error names
    /// that line too. A `user` line, a blank line or a comment is refused.
    pub fn parse_line(line: usize, text: &str) -> Result<AclRule, AclError> {
        match parse_line(line, text, None)? {
            Line::Rule(r) => Ok(r),
            Line::User(_) | Line::Skip => {
                Err(AclError { line, reason: "expected a 'topic' or 'pattern' line".to_string() })
            }
        }
    }
}

/// First whitespace-separated token and the trimmed rest of the line.
fn split_token(s: &str) -> (&str, &str) {
    match s.split_once([' ', '\t']) {
        Some((a, b)) => (a, trim_ascii(b)),
        None => (s, ""),
    }
}

/// Trim ASCII whitespace only (like Mosquitto's `isspace`), so that user names differing in
/// other white space stay distinct.
fn trim_ascii(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// An [`Authorizer`] over an [`AclFile`]: what no rule allows is denied.
///
/// The ACL user name is the principal's name (user name, certificate identity or token
/// subject), like Mosquitto with `use_identity_as_username`; anonymous principals are `None`.
#[derive(Debug)]
pub struct AclAuthorizer {
    acl: AclFile,
    deny_disconnects: bool,
}

impl AclAuthorizer {
    /// `deny_disconnects`: a denied PUBLISH disconnects the client (`on_deny = disconnect`)
    /// rather than being acknowledged and dropped. Denied subscriptions and deliveries never
    /// disconnect.
    pub fn new(acl: AclFile, deny_disconnects: bool) -> Self {
        AclAuthorizer { acl, deny_disconnects }
    }

    /// The compiled file.
    pub fn acl(&self) -> &AclFile {
        &self.acl
    }
}

impl Authorizer for AclAuthorizer {
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        if let Some(allowed) = crate::enroll::confine(principal, client_id, action) {
            return if allowed {
                Decision::Allow
            } else {
                Decision::Deny { disconnect: self.deny_disconnects && action.is_publish() }
            };
        }
        let user = match principal.kind {
            PrincipalKind::Anonymous => None,
            // A fail-open client: the file's rules are not for it (only its fallback role is).
            PrincipalKind::Fallback => {
                return Decision::Deny { disconnect: self.deny_disconnects && action.is_publish() }
            }
            _ => Some(&*principal.name),
        };
        match self.acl.check_from(user, client_id, principal.peer(), action) {
            Some(true) => Decision::Allow,
            _ => Decision::Deny { disconnect: self.deny_disconnects && action.is_publish() },
        }
    }

    /// Every allow of an ACL file is a rule's grant.
    fn authorize_granted(&self, principal: &Principal, client_id: &str, action: Action<'_>) -> Decision {
        self.authorize(principal, client_id, action)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::{act, qos, try_act, AclStr, AuthorizeStr, Req};
    use mqtt_codec::{QoS, TopicName};
    use proptest::prelude::*;

    const PUB: Req = Req::Pub(QoS::AtMostOnce, false);
    const SUB: Req = Req::Sub(QoS::AtMostOnce);
    const RCV: Req = Req::Rcv;

    fn acl(text: &str) -> AclFile {
        AclFile::parse(text).unwrap()
    }

    // --- Parsing ---------------------------------------------------------------------------

    #[test]
    fn levels_are_split_without_allocating_and_deep_topics_still_work() {
        for t in ["a", "", "/", "a//b/", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r"] {
            let want: Vec<&str> = t.split('/').collect();
            with_levels(t, |got| assert_eq!(got, &want[..], "{t}"));
        }
        let deep = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join("/");
        let a = acl("user u\ntopic write 0/1/#\ntopic deny 0/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/#\n");
        assert_eq!(a.check_str(Some("u"), "c", PUB, "0/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16"), Some(true));
        assert_eq!(a.check_str(Some("u"), "c", PUB, &deep), Some(false));
    }

    #[test]
    fn fx_hasher_is_deterministic_and_spreads_short_names() {
        use std::hash::BuildHasher;
        let b = BuildHasherDefault::<FxHasher>::default();
        assert_eq!(b.hash_one("sensors"), b.hash_one("sensors"));
        let hashes: std::collections::HashSet<u64> = (0..10_000).map(|i| b.hash_one(format!("user{i}"))).collect();
        assert_eq!(hashes.len(), 10_000);
        assert_ne!(b.hash_one("ab"), b.hash_one("ba"));
    }

    #[test]
    fn parses_mosquitto_example() {
        // Mosquitto's aclfile.example, verbatim.
        let a = acl("# This affects access control for clients with no username.\n\
                     topic read $SYS/#\n\
                     \n\
                     # This only affects clients with username \"roger\".\n\
                     user roger\n\
                     topic foo/bar\n\
                     \n\
                     # This affects all clients.\n\
                     pattern write $SYS/broker/connection/%c/state\n");
        assert_eq!(a.rules().len(), 3);
        assert_eq!(
            a.rules()[1],
            AclRule {
                line: 6,
                scope: RuleScope::User("roger".into()),
                access: Access::ReadWrite,
                filter: TopicFilter::new("foo/bar").unwrap(),
                source: Box::default(),
            }
        );
        assert_eq!(a.rule_at(9).unwrap().scope, RuleScope::Pattern);
        assert_eq!(a.check_str(None, "c", SUB, "$SYS/broker/uptime"), Some(true));
        assert_eq!(a.check_str(Some("roger"), "c", PUB, "foo/bar"), Some(true));
        assert_eq!(a.check_str(Some("roger"), "c", RCV, "foo/bar"), Some(true));
        assert_eq!(a.check_str(Some("roger"), "br1", PUB, "$SYS/broker/connection/br1/state"), Some(true));
        assert_eq!(a.check_str(Some("roger"), "br1", PUB, "$SYS/broker/connection/br2/state"), None);
    }

    #[test]
    fn from_rules_compiles_what_parse_compiles() {
        let f = |t: &str| TopicFilter::new(t).unwrap();
        // Given out of order: numbered rules are sorted, so `rule_at` finds them.
        let rules = vec![
            AclRule::new(5, RuleScope::User("ann".into()), Access::Deny, f("a/secret")),
            AclRule::new(1, RuleScope::Anonymous, Access::Read, f("pub/#")),
            AclRule::new(4, RuleScope::User("ann".into()), Access::ReadWrite, f("a/#")),
            AclRule::new(2, RuleScope::Pattern, Access::Write, f("c/%c/+")),
        ];
        let built = AclFile::from_rules(rules);
        let parsed = acl("topic read pub/#\npattern write c/%c/+\nuser ann\ntopic a/#\ntopic deny a/secret\n");
        assert_eq!(built.rules(), parsed.rules());
        assert_eq!(built.rule_at(5).unwrap().access, Access::Deny);
        for (user, client, req, topic) in [
            (None, "c", SUB, "pub/+"),
            (Some("ann"), "c", PUB, "a/x"),
            (Some("ann"), "c", PUB, "a/secret"),
            (Some("ann"), "d1", PUB, "c/d1/x"),
            (Some("bob"), "c", PUB, "a/x"),
        ] {
            assert_eq!(
                built.explain_str(user, client, req, topic),
                parsed.explain_str(user, client, req, topic),
                "{user:?} {req:?} {topic}"
            );
        }
        assert_eq!(built.check_str(Some("ann"), "c", PUB, "a/secret"), Some(false));
        assert_eq!(AclFile::from_rules([]).check_str(Some("u"), "c", PUB, "a"), None);
    }

    #[test]
    fn a_single_rule_line_parses_on_its_own() {
        let r = AclRule::parse_line(7, "topic read x/#").unwrap();
        assert_eq!((r.line, r.scope, r.access, r.filter.as_str()), (7, RuleScope::Anonymous, Access::Read, "x/#"));
        let p = AclRule::parse_line(1, "pattern write dev/%c/#").unwrap();
        assert_eq!((p.scope, p.access), (RuleScope::Pattern, Access::Write));
        assert_eq!(AclRule::parse_line(1, "topic x").unwrap().access, Access::ReadWrite);
        for (bad, reason) in [
            ("user bob", "expected a 'topic' or 'pattern' line"),
            ("", "expected a 'topic' or 'pattern' line"),
            ("# comment", "expected a 'topic' or 'pattern' line"),
            ("topic read a/#/b", "'#' must be the last"),
            ("topic a+", "whole topic level"),
            ("topic read a\0", "U+0000"),
            ("frob x", "unknown directive"),
        ] {
            let e = AclRule::parse_line(3, bad).unwrap_err();
            assert_eq!(e.line, 3, "{bad:?}");
            assert!(e.reason.contains(reason), "{bad:?}: {e}");
        }
    }

    #[test]
    fn source_conditions() {
        let a = acl("user u\n\
                     topic readwrite source=10.0.0.0/8,::1/128 plant/#\n\
                     topic write plant/public\n\
                     topic deny source=10.9.0.0/16 plant/#\n\
                     pattern read source=127.0.0.2 c/%c/#\n");
        assert!(a.has_source_conditions());
        let at = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let pub_ = |peer, topic: &str| act(PUB, topic, |x| a.check_from(Some("u"), "c1", peer, x));
        // In a network of the condition: the rule applies (IPv4, IPv6, IPv4-mapped).
        assert_eq!(pub_(at("10.1.2.3"), "plant/a"), Some(true));
        assert_eq!(pub_(at("::1"), "plant/a"), Some(true));
        assert_eq!(pub_(at("::ffff:10.1.2.3"), "plant/a"), Some(true));
        // Outside, or unknown: as if the line were not there.
        assert_eq!(pub_(at("192.0.2.1"), "plant/a"), None);
        assert_eq!(pub_(None, "plant/a"), None);
        assert_eq!(a.check_str(Some("u"), "c1", PUB, "plant/a"), None, "check without an address");
        assert_eq!(pub_(at("192.0.2.1"), "plant/public"), Some(true), "an unconditional rule applies anywhere");
        // A conditional deny applies only from its networks, and wins there.
        assert_eq!(pub_(at("10.9.1.1"), "plant/public"), Some(false));
        assert_eq!(act(PUB, "plant/a", |x| a.explain_from(Some("u"), "c1", at("10.9.1.1"), x)).unwrap().line, 4);
        // Patterns too.
        let sub = |peer| act(SUB, "c/c1/x", |x| a.check_from(Some("u"), "c1", peer, x));
        assert_eq!((sub(at("127.0.0.2")), sub(at("127.0.0.1"))), (Some(true), None));
        assert_eq!(
            a.rule_at(2).unwrap().to_string(),
            "line 2: topic readwrite source=10.0.0.0/8,::1/128 plant/# (user u)"
        );
        // Through the authorizer: the principal's address.
        let z = AclAuthorizer::new(a, true);
        let p = Principal::user("u");
        assert!(!z
            .authorize_str(&p.clone().with_peer("192.0.2.1".parse().unwrap()), "c1", PUB, "plant/a")
            .is_allowed());
        assert!(z.authorize_str(&p.with_peer("10.0.0.1".parse().unwrap()), "c1", PUB, "plant/a").is_allowed());
    }

    #[test]
    fn source_condition_errors() {
        for (text, reason) in [
            ("topic read source=10.0.0.0/33 a", "prefix length"),
            ("topic read source=10.0.0.1/8 a", "host bits"),
            ("topic read source=lb.example a", "is not a network"),
            ("topic read source=10.0.0.0/8, a", "is not a network"),
            ("topic read source=10.0.0.0/8", "missing topic filter"),
            ("topic source=10.0.0.0/8 a", "access keyword"),
            ("pattern source=10.0.0.0/8 a/%c", "access keyword"),
        ] {
            let e = AclFile::parse(&format!("user u\n{text}\n")).unwrap_err();
            assert_eq!(e.line, 2, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
    }

    #[test]
    fn parse_errors_carry_line_numbers() {
        let cases = [
            ("topic a\nfrobnicate x\n", 2, "unknown directive"),
            ("\n\ntopic\n", 3, "missing topic"),
            ("pattern   \n", 1, "missing topic"),
            ("topic readonly a/b\n", 1, "invalid access"),
            ("topic foo bar\n", 1, "invalid access"), // a filter with a space needs the keyword
            ("topic read a/#/b\n", 1, "'#' must be the last"),
            ("topic a/b#\n", 1, "whole topic level"),
            ("pattern write x/%u+\n", 1, "whole topic level"),
            ("user\n", 1, "missing user name"),
            ("topic a\nuser   \t\n", 2, "missing user name"),
            ("Topic a\n", 1, "unknown directive"), // keywords are case-sensitive, like Mosquitto
        ];
        for (text, line, reason) in cases {
            let e = AclFile::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("line {line}: ")));
        }
    }

    #[test]
    fn parse_details() {
        // Comments (also indented), blank lines, tabs, filters with spaces, names with spaces.
        let a = acl("  # indented comment\n\ttopic\tread\ta b/c\nuser John Smith \ntopic write x y\n");
        assert_eq!(a.rules()[0].filter.as_str(), "a b/c");
        assert_eq!(a.rules()[0].scope, RuleScope::Anonymous);
        assert_eq!(a.rules()[1].scope, RuleScope::User("John Smith".into()));
        assert_eq!(a.rules()[1].filter.as_str(), "x y");
        assert_eq!(a.check_str(Some("John Smith"), "c", PUB, "x y"), Some(true));
        // A byte-order mark is ignored; non-ASCII white space is part of a name.
        let b = acl("\u{feff}user bob\u{a0}\ntopic x\n");
        assert_eq!(b.check_str(Some("bob\u{a0}"), "c", PUB, "x"), Some(true));
        assert_eq!(b.check_str(Some("bob"), "c", PUB, "x"), None);
        // An empty file has no rules: nothing is allowed.
        assert_eq!(acl("").check_str(Some("u"), "c", PUB, "a"), None);
    }

    // --- Who rules apply to ----------------------------------------------------------------

    #[test]
    fn topics_before_any_user_line_apply_to_anonymous_only() {
        // mosquitto.conf(5): "The first set of topics are applied to anonymous clients".
        let a = acl("topic readwrite public/#\nuser alice\ntopic readwrite alice/#\n");
        assert_eq!(a.check_str(None, "c", PUB, "public/x"), Some(true));
        assert_eq!(a.check_str(Some("alice"), "c", PUB, "public/x"), None);
        assert_eq!(a.check_str(Some("bob"), "c", PUB, "public/x"), None);
        assert_eq!(a.check_str(Some("alice"), "c", PUB, "alice/x"), Some(true));
        assert_eq!(a.check_str(None, "c", PUB, "alice/x"), None);
        assert_eq!(a.check_str(Some("bob"), "c", PUB, "alice/x"), None);
    }

    #[test]
    fn repeated_user_blocks_add_up() {
        let a = acl("user u\ntopic a\nuser v\ntopic b\nuser u\ntopic c\n");
        assert_eq!(a.check_str(Some("u"), "c", PUB, "a"), Some(true));
        assert_eq!(a.check_str(Some("u"), "c", PUB, "c"), Some(true));
        assert_eq!(a.check_str(Some("u"), "c", PUB, "b"), None);
    }

    #[test]
    fn patterns_apply_to_everyone_even_after_user_lines() {
        // mosquitto.conf(5): "Pattern ACLs apply to all users even if the user keyword has
        // previously been given."
        let a = acl("user alice\ntopic x\npattern readwrite clients/%c/#\npattern readwrite users/%u/#\n");
        assert_eq!(a.check_str(Some("bob"), "b1", PUB, "clients/b1/t"), Some(true));
        assert_eq!(a.check_str(None, "anon1", PUB, "clients/anon1/t"), Some(true));
        assert_eq!(a.check_str(Some("bob"), "b1", PUB, "users/bob/t"), Some(true));
        assert_eq!(a.check_str(Some("bob"), "b1", PUB, "users/alice/t"), None);
        // A pattern with %u never applies to anonymous clients (Mosquitto skips it).
        assert_eq!(a.check_str(None, "anon1", PUB, "users/anonymous/t"), None);
        assert_eq!(a.check_str(None, "anon1", PUB, "users//t"), None);
    }

    #[test]
    fn substitution_inside_a_level_and_both_variables() {
        let a = acl("pattern write dev-%u/%c-x/%u%c\n");
        assert_eq!(a.check_str(Some("u"), "c", PUB, "dev-u/c-x/uc"), Some(true));
        assert_eq!(a.check_str(Some("u"), "c", PUB, "dev-u/c-x/cu"), None);
        assert_eq!(a.check_str(Some("u"), "d", PUB, "dev-u/c-x/uc"), None);
        // `%` followed by anything else is literal.
        let a = acl("pattern write a/%x/%%c\n");
        assert_eq!(a.check_str(None, "c", PUB, "a/%x/%c"), Some(true));
        // `%u` in a `topic` line is not substituted.
        let a = acl("user u\ntopic write a/%u\n");
        assert_eq!(a.check_str(Some("u"), "c", PUB, "a/%u"), Some(true));
        assert_eq!(a.check_str(Some("u"), "c", PUB, "a/u"), None);
    }

    // --- Actions ---------------------------------------------------------------------------

    #[test]
    fn read_is_subscribe_and_receive_write_is_publish() {
        let a = acl("user u\ntopic read r\ntopic write w\ntopic readwrite rw\ntopic rw2\n");
        let u = Some("u");
        for (t, r, w) in [("r", true, false), ("w", false, true), ("rw", true, true), ("rw2", true, true)] {
            let some = |b: bool| b.then_some(true);
            assert_eq!(a.check_str(u, "c", SUB, t), some(r), "{t}");
            assert_eq!(a.check_str(u, "c", RCV, t), some(r), "{t}");
            assert_eq!(a.check_str(u, "c", PUB, t), some(w), "{t}");
        }
        assert_eq!(a.check_str(u, "c", Req::Pub(QoS::ExactlyOnce, true), "w"), Some(true));
        assert_eq!(a.check_str(u, "c", Req::Sub(QoS::ExactlyOnce), "r"), Some(true));
    }

    #[test]
    fn subscribe_needs_a_rule_covering_the_whole_filter() {
        let a = acl("user u\ntopic read sensors/#\ntopic read room/+/temp\n");
        let u = Some("u");
        assert_eq!(a.check_str(u, "c", SUB, "sensors/+/temp"), Some(true));
        assert_eq!(a.check_str(u, "c", SUB, "sensors/#"), Some(true));
        assert_eq!(a.check_str(u, "c", SUB, "sensors"), Some(true)); // `a/#` matches `a`
        assert_eq!(a.check_str(u, "c", SUB, "room/1/temp"), Some(true));
        assert_eq!(a.check_str(u, "c", SUB, "room/+/temp"), Some(true));
        assert_eq!(a.check_str(u, "c", SUB, "room/#"), None);
        assert_eq!(a.check_str(u, "c", SUB, "room/+/#"), None);
        assert_eq!(a.check_str(u, "c", SUB, "room/+/+"), None);
        assert_eq!(a.check_str(u, "c", SUB, "+/1/temp"), None);
        assert_eq!(a.check_str(u, "c", SUB, "#"), None);
        // A requested `#` matches one or more levels, so `+/#` covers it (and `+` does not).
        assert_eq!(acl("user u\ntopic read +/#\n").check_str(u, "c", SUB, "#"), Some(true));
        assert_eq!(acl("user u\ntopic read +\n").check_str(u, "c", SUB, "#"), None);
        // Receive checks topic names with ordinary matching.
        assert_eq!(a.check_str(u, "c", RCV, "room/1/temp"), Some(true));
        assert_eq!(a.check_str(u, "c", RCV, "room/1/hum"), None);
        // `sensors/+/temp` does not allow subscribing to `sensors/#`.
        let b = acl("user u\ntopic read sensors/+/temp\n");
        assert_eq!(b.check_str(u, "c", SUB, "sensors/#"), None);
        assert_eq!(b.check_str(u, "c", SUB, "sensors/+/temp"), Some(true));
    }

    #[test]
    fn dollar_topics_need_explicit_rules() {
        // SPEC §6 / MQTT 4.7.2: wildcards in the first level do not match `$` topics.
        let a = acl("user u\ntopic readwrite #\ntopic read +/x\n");
        let u = Some("u");
        assert_eq!(a.check_str(u, "c", PUB, "a/b"), Some(true));
        assert_eq!(a.check_str(u, "c", PUB, "$SYS/broker/uptime"), None);
        assert_eq!(a.check_str(u, "c", RCV, "$SYS/x"), None);
        assert_eq!(a.check_str(u, "c", SUB, "$SYS/#"), None);
        assert_eq!(a.check_str(u, "c", SUB, "#"), Some(true)); // `#` subscribes to non-`$` topics only
        assert_eq!(a.check_str(u, "c", SUB, "+/x"), Some(true));
        // `$` deeper than the first level is an ordinary character.
        assert_eq!(a.check_str(u, "c", PUB, "a/$b"), Some(true));
        let b = acl("user u\ntopic read $SYS/#\n");
        assert_eq!(b.check_str(u, "c", RCV, "$SYS/broker/uptime"), Some(true));
        assert_eq!(b.check_str(u, "c", SUB, "$SYS/broker/+"), Some(true));
        assert_eq!(b.check_str(u, "c", SUB, "#"), None);
    }

    #[test]
    fn deny_wins_over_allow() {
        // mosquitto.conf(5): "deny" topics are handled before topics that grant access.
        let a = acl("user u\ntopic readwrite a/#\ntopic deny a/secret\ntopic deny a/private/#\n");
        let u = Some("u");
        assert_eq!(a.check_str(u, "c", PUB, "a/x"), Some(true));
        assert_eq!(a.check_str(u, "c", PUB, "a/secret"), Some(false));
        assert_eq!(a.check_str(u, "c", RCV, "a/secret"), Some(false));
        assert_eq!(a.check_str(u, "c", SUB, "a/secret"), Some(false));
        assert_eq!(a.check_str(u, "c", SUB, "a/private/+"), Some(false));
        // A deny covering only part of a subscription is enforced at delivery.
        assert_eq!(a.check_str(u, "c", SUB, "a/#"), Some(true));
        assert_eq!(a.check_str(u, "c", RCV, "a/private/p"), Some(false));
        // Deny rules written after or before the allow: same result (order-independent).
        let b = acl("user u\ntopic deny a/secret\ntopic readwrite a/#\n");
        assert_eq!(b.check_str(u, "c", PUB, "a/secret"), Some(false));
        // A deny pattern wins over a user's own topic allow (SPEC §6; Mosquitto would allow).
        let c = acl("user u\ntopic readwrite a/#\npattern deny a/%u\n");
        assert_eq!(c.check_str(u, "c", PUB, "a/u"), Some(false));
        assert_eq!(c.check_str(u, "c", PUB, "a/v"), Some(true));
        // Explanations name the deciding rule.
        assert_eq!(a.explain_str(u, "c", PUB, "a/secret"), Some(AclMatch { allowed: false, line: 3 }));
        assert_eq!(a.explain_str(u, "c", PUB, "a/x"), Some(AclMatch { allowed: true, line: 2 }));
    }

    #[test]
    fn deny_covers_every_action_but_a_non_matching_access_does_not_allow() {
        let a = acl("user u\ntopic read a\n");
        assert_eq!(a.check_str(Some("u"), "c", PUB, "a"), None); // read does not allow publish
        let b = acl("user u\ntopic deny a\ntopic write a\n");
        assert_eq!(b.check_str(Some("u"), "c", RCV, "a"), Some(false));
    }

    #[test]
    fn malformed_topics_are_denied() {
        // Malformed names and filters never reach a check: the codec refuses to build them
        // [MQTT-4.7.3-1], [MQTT-4.7.3-2], [MQTT-3.3.2-2], [MQTT-4.7.1-2/3].
        let a = acl("user u\ntopic readwrite #\n");
        let u = Some("u");
        for t in ["", "a/+", "a/#", "a\0b"] {
            assert_eq!(try_act(PUB, t, |x| a.check(u, "c", x)), None, "{t:?}");
            assert_eq!(try_act(RCV, t, |x| a.check(u, "c", x)), None, "{t:?}");
        }
        for f in ["", "a/#/b", "a+", "a\0"] {
            assert_eq!(try_act(SUB, f, |x| a.check(u, "c", x)), None, "{f:?}");
        }
        // The one empty name that exists, a topic alias's placeholder, is denied.
        let empty = TopicName::alias_placeholder();
        assert_eq!(
            a.explain(u, "c", Action::publish(&empty, QoS::AtMostOnce, false)),
            Some(AclMatch { allowed: false, line: 0 })
        );
        assert_eq!(a.check(u, "c", Action::receive(&empty)), Some(false));
    }

    // --- Injection (CVE-2017-7650) ---------------------------------------------------------

    #[test]
    fn wildcard_user_names_cannot_widen_patterns() {
        let a = acl("pattern readwrite users/%u/#\n");
        for evil in ["+", "#", "alice/..", "a\0", "+/+"] {
            assert_eq!(a.check_str(Some(evil), "c", PUB, "users/alice/x"), None, "{evil:?}");
            assert_eq!(a.check_str(Some(evil), "c", SUB, "users/alice/#"), None, "{evil:?}");
            assert_eq!(a.check_str(Some(evil), "c", RCV, "users/alice/x"), None, "{evil:?}");
        }
        // A user literally named like a level still only gets its own level.
        assert_eq!(a.check_str(Some("alice"), "c", PUB, "users/alice/x"), Some(true));
        assert_eq!(a.check_str(Some("alice"), "c", SUB, "users/+/x"), None);
    }

    #[test]
    fn client_ids_with_separators_cannot_widen_patterns() {
        let a = acl("pattern write c/%c\npattern read r/%c/#\n");
        assert_eq!(a.check_str(None, "a/b", PUB, "c/a/b"), None);
        assert_eq!(a.check_str(None, "#", PUB, "c/x"), None);
        assert_eq!(a.check_str(None, "+", RCV, "r/x/y"), None);
        assert_eq!(a.check_str(None, "ab", PUB, "c/ab"), Some(true));
    }

    #[test]
    fn unsafe_values_make_deny_patterns_deny_everything() {
        // Fail closed: a deny pattern that cannot be substituted safely denies that client.
        let a = acl("user a/b\ntopic readwrite open/#\npattern deny secret/%u\npattern deny cid/%c\n");
        assert_eq!(a.explain_str(Some("a/b"), "ok", PUB, "open/x"), Some(AclMatch { allowed: false, line: 3 }));
        assert_eq!(a.check_str(Some("ok"), "#", PUB, "open/x"), Some(false));
        // Safe values: the deny patterns apply literally, the rest is unaffected.
        let b = acl("user ok\ntopic readwrite open/#\npattern deny open/%u\n");
        assert_eq!(b.check_str(Some("ok"), "c", PUB, "open/x"), Some(true));
        assert_eq!(b.check_str(Some("ok"), "c", PUB, "open/ok"), Some(false));
        // A %c-only deny pattern does not care about an unsafe user name (and vice versa).
        let c = acl("user +\ntopic readwrite open/#\npattern deny cid/%c\n");
        assert_eq!(c.check_str(Some("+"), "c", PUB, "open/x"), Some(true));
        // A deny pattern using %u does not apply to anonymous clients, whatever their client id.
        let d = acl("topic readwrite open/#\npattern deny %u/%c\n");
        assert_eq!(d.check_str(None, "a/b", PUB, "open/x"), Some(true));
        assert_eq!(d.check_str(Some("u"), "a/b", PUB, "open/x"), Some(false));
    }

    // --- Authorizer ------------------------------------------------------------------------

    #[test]
    fn authorizer_denies_by_default_and_disconnects_only_publishers() {
        let a = acl("topic read pub/#\nuser alice\ntopic readwrite alice/#\n");
        let z = AclAuthorizer::new(a, true);
        let alice = Principal::user("alice");
        assert_eq!(z.authorize_str(&alice, "c", PUB, "alice/x"), Decision::Allow);
        assert_eq!(z.authorize_str(&alice, "c", PUB, "other"), Decision::Deny { disconnect: true });
        assert_eq!(z.authorize_str(&alice, "c", SUB, "other"), Decision::Deny { disconnect: false });
        assert_eq!(z.authorize_str(&alice, "c", RCV, "other"), Decision::Deny { disconnect: false });
        assert_eq!(z.authorize_str(&Principal::anonymous(), "c", SUB, "pub/#"), Decision::Allow);
        // The anonymous principal's name "anonymous" is not a user name.
        assert!(!z.authorize_str(&Principal::anonymous(), "c", PUB, "alice/x").is_allowed());
        assert_eq!(z.authorize_str(&Principal::certificate("alice"), "c", PUB, "alice/x"), Decision::Allow);
        let z = AclAuthorizer::new(acl("user alice\ntopic read x\n"), false);
        assert_eq!(z.authorize_str(&alice, "c", PUB, "x"), Decision::Deny { disconnect: false });
        assert_eq!(z.acl().rules().len(), 1);
    }

    // --- Reference model -------------------------------------------------------------------

    /// Does rule filter `r` cover requested `q` (a name or a filter)? Straight level-by-level.
    pub(crate) fn covers(r: &[&str], q: &[&str]) -> bool {
        let dollar = q.first().is_some_and(|l| l.starts_with('$'));
        let mut i = 0;
        loop {
            match (r.get(i), q.get(i)) {
                (Some(&"#"), _) => return !(i == 0 && dollar),
                (None, None) => return true,
                (None, Some(_)) => return false,
                (Some(_), None) => return false,
                (Some(&"+"), Some(&"#")) if i == 0 => return r.get(1) == Some(&"#"),
                (Some(_), Some(&"#")) => return false,
                (Some(&"+"), Some(_)) => {
                    if i == 0 && dollar {
                        return false;
                    }
                }
                (Some(a), Some(b)) => {
                    if a != b {
                        return false;
                    }
                }
            }
            i += 1;
        }
    }

    /// Textual substitution (Mosquitto's loop).
    fn substitute(f: &str, user: Option<&str>, client: &str) -> String {
        let mut out = String::new();
        let mut chars = f.chars().peekable();
        while let Some(ch) = chars.next() {
            match (ch, chars.peek(), user) {
                ('%', Some('c'), _) => {
                    chars.next();
                    out.push_str(client);
                }
                ('%', Some('u'), Some(u)) => {
                    chars.next();
                    out.push_str(u);
                }
                _ => out.push(ch),
            }
        }
        out
    }

    /// Rule-by-rule evaluation over the rule list.
    /// (Asked only for topics the codec accepts: others cannot be asked.)
    fn naive(acl: &AclFile, user: Option<&str>, client: &str, action: Req, topic: &str) -> Option<bool> {
        let need = if matches!(action, Req::Pub(..)) { Need::Write } else { Need::Read };
        let q: Vec<&str> = topic.split('/').collect();
        let (mut deny, mut allow) = (false, false);
        for r in acl.rules() {
            let filter = match &r.scope {
                RuleScope::Anonymous if user.is_none() => r.filter.to_string(),
                RuleScope::User(u) if Some(u.as_str()) == user => r.filter.to_string(),
                RuleScope::Pattern => {
                    let uses_u =
                        substitute(r.filter.as_str(), Some("\u{1}"), "") != substitute(r.filter.as_str(), Some(""), "");
                    let uses_c =
                        substitute(r.filter.as_str(), Some(""), "\u{1}") != substitute(r.filter.as_str(), Some(""), "");
                    if uses_u && user.is_none() {
                        continue;
                    }
                    let unsafe_ = (uses_u && !safe_value(user.unwrap_or(""))) || (uses_c && !safe_value(client));
                    if unsafe_ {
                        deny |= r.access == Access::Deny;
                        continue;
                    }
                    substitute(r.filter.as_str(), user, client)
                }
                _ => continue,
            };
            let levels: Vec<&str> = filter.split('/').collect();
            if covers(&levels, &q) {
                deny |= r.access == Access::Deny;
                allow |= r.access.grants(need);
            }
        }
        if deny {
            Some(false)
        } else if allow {
            Some(true)
        } else {
            None
        }
    }

    #[test]
    fn covers_agrees_with_enumeration() {
        // `covers(r, q)` iff every topic name matched by q is matched by r, over a universe of
        // names that includes a literal absent from all filters.
        let lv = ["a", "$s", "", "+", "#"];
        let mut filters: Vec<Vec<&str>> = Vec::new();
        for n in 1..=3 {
            let mut idx = vec![0usize; n];
            loop {
                let f: Vec<&str> = idx.iter().map(|&i| lv[i]).collect();
                if TopicFilter::new(&f.join("/")).is_ok() {
                    filters.push(f);
                }
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < lv.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        let names: Vec<Vec<&str>> = {
            let nl = ["a", "$s", "", "q"];
            let mut out = Vec::new();
            for n in 1..=4 {
                let mut idx = vec![0usize; n];
                loop {
                    out.push(idx.iter().map(|&i| nl[i]).collect());
                    let mut k = 0;
                    while k < n {
                        idx[k] += 1;
                        if idx[k] < nl.len() {
                            break;
                        }
                        idx[k] = 0;
                        k += 1;
                    }
                    if k == n {
                        break;
                    }
                }
            }
            out
        };
        for r in &filters {
            for q in &filters {
                let by_enum = names.iter().filter(|t| covers(q, t)).all(|t| covers(r, t));
                assert_eq!(covers(r, q), by_enum, "rule {r:?} request {q:?}");
            }
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec!["a", "b", "$s", ""]).prop_map(String::from),
            2 => Just("+".to_string()),
            2 => prop::sample::select(vec!["%u", "%c", "x%u", "%u%c"]).prop_map(String::from),
        ]
    }

    /// Mostly valid filters (`#` only last); now and then an invalid one, which must make the
    /// whole file a parse error.
    fn filter() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => (prop::collection::vec(level(), 0..4), any::<bool>()).prop_map(|(mut v, hash)| {
                if hash || v.is_empty() {
                    v.push("#".into());
                }
                v.join("/")
            }),
            1 => prop::sample::select(vec!["a/#/b", "#/a", "a+", "b/x#"]).prop_map(String::from),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        let access = prop::sample::select(vec!["", "read ", "write ", "readwrite ", "deny "]);
        prop_oneof![
            3 => (access.clone(), filter()).prop_map(|(a, f)| format!("topic {a}{f}")),
            2 => (access, filter()).prop_map(|(a, f)| format!("pattern {a}{f}")),
            1 => prop::sample::select(vec!["user u", "user v", "user a", "user +"]).prop_map(String::from),
        ]
    }

    fn request() -> impl Strategy<Value = (Option<String>, String, u8, String)> {
        let user = prop::sample::select(vec![None, Some("u"), Some("v"), Some("a"), Some("+"), Some("a/b"), Some("")])
            .prop_map(|u| u.map(String::from));
        let client = prop::sample::select(vec!["c", "a", "u", "#", "c/d", "x"]).prop_map(String::from);
        let topic = prop::collection::vec(
            prop::sample::select(vec!["a", "b", "$s", "", "u", "c", "xu", "uc", "+", "#", "%u", "x"]),
            1..5,
        )
        .prop_map(|v| v.join("/"));
        (user, client, 0u8..3, topic)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn compiled_check_agrees_with_naive_evaluator(
            lines in prop::collection::vec(line(), 0..12),
            reqs in prop::collection::vec(request(), 1..24),
        ) {
            let text = lines.join("\n");
            let Ok(acl) = AclFile::parse(&text) else {
                // Only invalid filters are generated as errors; they must be rejected.
                let has_bad_filter = lines.iter().any(|l| {
                    let f = l.rsplit(' ').next().unwrap();
                    (l.starts_with("topic") || l.starts_with("pattern")) && TopicFilter::new(f).is_err()
                });
                prop_assert!(has_bad_filter);
                return Ok(());
            };
            for (user, client, a, topic) in reqs {
                let action = match a { 0 => Req::Pub(qos(a), false), 1 => Req::Sub(qos(a)), _ => RCV };
                // A topic the codec refuses cannot be asked.
                let Some(got) = try_act(action, &topic, |x| acl.check(user.as_deref(), &client, x)) else {
                    continue;
                };
                let want = naive(&acl, user.as_deref(), &client, action, &topic);
                prop_assert_eq!(got, want, "{:?} {:?} {:?} {:?}\n{}", user, client, action, topic, text);
            }
        }
    }
}
