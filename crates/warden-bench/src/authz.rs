//! `warden-bench authz`: the cost of one authorization decision (`Authorizer::authorize`, the
//! call the broker makes for every PUBLISH, SUBSCRIBE and delivery) against policies of 10,
//! 1,000 and 10,000 rules, for topics of 3 to 8 levels. No broker, no network: the policy is
//! built in memory by the generators below and each case is a tight loop over one decision.
//!
//! Sources (each measured alone, then all three at once):
//! - `acl`: a Mosquitto-syntax ACL file of exactly N `topic`/`pattern` lines: N/50 (at least 2)
//!   `pattern` lines with `%u`/`%c` (one with a first-level `+`), the rest in `user` blocks of
//!   10 lines (`#` and `+` filters, `deny` lines) for users `user0`, `user1`, ...
//! - `store`: a policy store of exactly N rules in N/10 roles of 10 rules (publish, subscribe,
//!   receive; allow and deny; priorities; max QoS; a `%u` rule), N/10 users each with its own
//!   role and one of N/100 groups of 4 roles, and role0 given to `anyone-authenticated`.
//! - `scopes`: a token principal with N scopes (`mqtt:pub:` / `mqtt:sub:` filters of N/2 users).
//! - `all`: the ACL, the store and a token principal with the scopes, together.
//!
//! The principal asked about is `user{U/2}` (U = N/10): a user in the middle of the population.
//! Cases: `publish-allow`, `publish-deny` (an explicit deny rule; for scopes alone, which have
//! no deny, a topic no scope grants), `subscribe` (a filter with a `+` covered by a `read`
//! rule) and `receive`. Each decision is checked against its expected answer before it is
//! timed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mqtt_codec::{QoS, TopicFilter, TopicName};
use serde::Serialize;
use warden_policy::acl::{Access, AclFile, AclRule, RuleScope};
use warden_policy::store::{Effect, Group, PolicyStore, Role, Rule, RuleAction, User, ANYONE_AUTHENTICATED};
use warden_policy::{Action, Authorizer, PolicyAuthorizer, Principal};

/// `authz` parameters.
pub(crate) struct Params {
    /// Policy sizes (rules per source).
    pub sizes: Vec<usize>,
    /// Topic depths (3..=8).
    pub levels: Vec<usize>,
    /// Length of one timed batch.
    pub batch: Duration,
    /// Timed batches per case (the median is reported).
    pub batches: usize,
    /// Sources to measure (`acl`, `store`, `scopes`, `all`).
    pub sources: Vec<String>,
}

/// One JSON line per case.
#[derive(Serialize, Debug)]
pub(crate) struct CaseResult {
    pub bench: &'static str,
    pub source: String,
    pub rules: usize,
    pub case: &'static str,
    pub levels: usize,
    pub topic: String,
    pub decision: &'static str,
    /// Median of the batches, ns per decision.
    pub ns_per_op: f64,
    /// Fastest batch, ns per decision.
    pub ns_min: f64,
    pub iterations: u64,
    /// Time to build and compile the policy of this source and size (from rules, no text), ms.
    pub build_ms: f64,
}

/// Levels after `site{s}/user{u}/<third>`: topics are cut to the depth asked.
const TAIL: [&str; 5] = ["a", "b", "c", "d", "e"];

/// Most topic levels a case can have.
pub(crate) const MAX_LEVELS: usize = 3 + TAIL.len();

/// Users in a population of `n` rules (the principal asked about is the middle one).
pub(crate) fn population(n: usize) -> usize {
    (n / 10).max(1)
}

/// The principal's user name for policies of `n` rules.
pub(crate) fn subject(n: usize) -> String {
    format!("user{}", population(n) / 2)
}

fn site(u: usize) -> usize {
    u % 100
}

/// Number of `pattern` lines in the generated ACL of `n` rules.
pub(crate) fn acl_patterns(n: usize) -> usize {
    (n / 50).max(2).min(n)
}

/// The rules of a Mosquitto ACL file of exactly `n` rule lines (module docs), numbered by the
/// lines [`acl_text`] writes them on.
pub(crate) fn acl_rules(n: usize) -> Result<Vec<AclRule>> {
    let mut rules = Vec::with_capacity(n);
    // Line 1 is the header comment.
    let mut line = 1;
    let mut push = |line: usize, scope: RuleScope, access: Access, filter: String| -> Result<()> {
        rules.push(AclRule::new(line, scope, access, TopicFilter::new(&filter)?));
        Ok(())
    };
    let patterns = acl_patterns(n);
    for k in 0..patterns {
        let (access, filter) = match k {
            0 => (Access::ReadWrite, "users/%u/#".to_string()),
            1 => (Access::Deny, "users/%u/secret/#".to_string()),
            2 => (Access::Write, "devices/%c/+/state".to_string()),
            3 => (Access::Read, "+/%c/status/#".to_string()),
            k => (Access::Read, format!("fleet{k}/%u/+/cmd/#")),
        };
        line += 1;
        push(line, RuleScope::Pattern, access, filter)?;
    }
    let mut left = n - patterns;
    let mut u = 0;
    while left > 0 {
        let s_ = site(u);
        let block = [
            (Access::Write, format!("site{s_}/user{u}/#")),
            (Access::Deny, format!("site{s_}/user{u}/locked/#")),
            (Access::Read, format!("site{s_}/+/dev1/#")),
            (Access::Read, format!("site{s_}/user{u}/+/a/+/c/#")),
            (Access::Deny, format!("site{s_}/user{u}/dev1/hidden/#")),
            (Access::ReadWrite, format!("site{s_}/user{u}/dev2/a/b/c/d/e")),
            (Access::ReadWrite, format!("site{s_}/user{u}/dev3/+/b/+/d")),
            (Access::Write, format!("site{s_}/user{u}/dev4/+/+/+")),
            (Access::Read, format!("site{s_}/user{u}/dev5/#")),
            (Access::ReadWrite, format!("site{s_}/user{u}/dev6/a/b")),
        ];
        // A blank line, then `user user{u}`.
        line += 2;
        for (access, filter) in block.into_iter().take(left) {
            line += 1;
            push(line, RuleScope::User(format!("user{u}")), access, filter)?;
        }
        left -= left.min(10);
        u += 1;
    }
    Ok(rules)
}

/// [`acl_rules`] written as a Mosquitto ACL file (`--print-acl`, for Mosquitto to read).
pub(crate) fn acl_text(n: usize) -> Result<String> {
    let mut s = String::from("# generated by warden-bench authz\n");
    let mut user: Option<String> = None;
    for r in acl_rules(n)? {
        let keyword = match &r.scope {
            RuleScope::User(u) => {
                if user.as_ref() != Some(u) {
                    s.push_str(&format!("\nuser {u}\n"));
                    user = Some(u.clone());
                }
                "topic"
            }
            RuleScope::Pattern => "pattern",
            // The generator makes no anonymous rules.
            RuleScope::Anonymous => "topic",
        };
        s.push_str(&format!("{keyword} {} {}\n", r.access.as_str(), r.filter));
    }
    Ok(s)
}

fn rule(id: &str, action: RuleAction, topic: String, effect: Effect, priority: i32, max_qos: u8) -> Rule {
    Rule { id: id.into(), action, topic, max_qos, retain: true, effect, priority, source: vec![] }
}

/// A policy store of exactly `n` rules (module docs); `n` must be at least 1.
pub(crate) fn store(n: usize) -> PolicyStore {
    use Effect::{Allow, Deny};
    use RuleAction::{Publish, Receive, Subscribe};
    let mut st = PolicyStore::default();
    let roles = n.div_ceil(10).max(1);
    let mut left = n;
    for r in 0..roles {
        let s = site(r);
        let all = [
            rule("pub", Publish, format!("site{s}/user{r}/#"), Allow, 0, 1),
            rule("no-locked", Publish, format!("site{s}/user{r}/locked/#"), Deny, 10, 2),
            rule("sub-dev1", Subscribe, format!("site{s}/+/dev1/#"), Allow, 0, 2),
            rule("no-hidden", Receive, format!("site{s}/+/dev1/hidden/#"), Deny, 0, 2),
            rule("sub-deep", Subscribe, format!("site{s}/user{r}/+/a/+/c/#"), Allow, 0, 1),
            rule("own", Publish, "users/%u/#".to_string(), Allow, 0, 2),
            rule("dev2", Publish, format!("site{s}/user{r}/dev2/a/b/c/d/e"), Allow, 1, 0),
            rule("dev3", Subscribe, format!("site{s}/user{r}/dev3/+/b/+/d"), Allow, 0, 2),
            rule("dev4-deny", Subscribe, format!("site{s}/user{r}/dev4/#"), Deny, 5, 2),
            rule("dev5", Receive, format!("site{s}/user{r}/dev5/#"), Allow, 0, 2),
        ];
        let take = left.min(all.len());
        st.roles.insert(format!("role{r}"), Role { rules: all.into_iter().take(take).collect(), ..Role::default() });
        left -= take;
    }
    let groups = (roles / 10).max(1);
    for g in 0..groups {
        let members = (0..4).map(|k| 10 * g + k).filter(|&r| r < roles).map(|r| format!("role{r}")).collect();
        st.groups.insert(format!("grp{g}"), Group { roles: members });
    }
    st.groups.insert(ANYONE_AUTHENTICATED.into(), Group { roles: vec!["role0".into()] });
    for u in 0..roles {
        st.users.insert(
            format!("user{u}"),
            User { roles: vec![format!("role{u}")], groups: vec![format!("grp{}", u % groups)], ..User::default() },
        );
    }
    st
}

/// `n` token scopes: `mqtt:pub:site{s}/user{k}/#` and `mqtt:sub:site{s}/user{k}/dev1/#` for
/// k = 0, 1, ...
pub(crate) fn scopes(n: usize) -> Vec<Arc<str>> {
    (0..n)
        .map(|i| {
            let k = i / 2;
            let s = site(k);
            if i % 2 == 0 { format!("mqtt:pub:site{s}/user{k}/#") } else { format!("mqtt:sub:site{s}/user{k}/dev1/#") }
                .into()
        })
        .collect()
}

/// What a case asks (QoS 1 for publish and subscribe); its topic is parsed once, before the
/// timing (see [`with_action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Publish, QoS 1, not retained.
    Publish,
    /// Subscribe, QoS 1.
    Subscribe,
    /// Receive.
    Receive,
}

/// `f` with the typed action for `op` on `topic` (parsed by the codec here, once).
pub(crate) fn with_action<R>(op: Op, topic: &str, f: impl FnOnce(Action<'_>) -> R) -> Result<R> {
    Ok(match op {
        Op::Publish => f(Action::publish(&TopicName::new(topic)?, QoS::AtLeastOnce, false)),
        Op::Subscribe => f(Action::subscribe(&TopicFilter::new(topic)?, QoS::AtLeastOnce)),
        Op::Receive => f(Action::receive(&TopicName::new(topic)?)),
    })
}

/// The cases: (name, operation, topic of `levels` levels, expected allowed) for the subject of
/// policies of `n` rules. `scopes_only`: the deny case uses a topic no scope grants.
pub(crate) fn cases(n: usize, levels: usize, scopes_only: bool) -> Vec<(&'static str, Op, String, bool)> {
    let u = population(n) / 2;
    let s = site(u);
    let topic = |third: &str, tail: &[&str]| {
        let mut t = format!("site{s}/user{u}/{third}");
        for l in tail.iter().take(levels.saturating_sub(3)) {
            t.push('/');
            t.push_str(l);
        }
        t
    };
    let deny = topic("locked", &TAIL);
    let deny = if scopes_only { deny.replacen(&format!("/user{u}/"), "/intruder/", 1) } else { deny };
    vec![
        ("publish-allow", Op::Publish, topic("dev0", &TAIL), true),
        ("publish-deny", Op::Publish, deny, false),
        ("subscribe", Op::Subscribe, topic("dev1", &["+", "b", "c", "d", "e"]), true),
        ("receive", Op::Receive, topic("dev1", &TAIL), true),
    ]
}

/// A built source: the authorizer, the principal and how long building took.
pub(crate) struct Built {
    pub authorizer: PolicyAuthorizer,
    pub principal: Principal,
    pub build: Duration,
}

/// Build `source` (`acl`, `store`, `scopes`, `all`) with `n` rules.
pub(crate) fn build(source: &str, n: usize) -> Result<Built> {
    let name = subject(n);
    let t0 = Instant::now();
    let (authorizer, principal) = match source {
        "acl" => (PolicyAuthorizer::new(Some(AclFile::from_rules(acl_rules(n)?)), true), Principal::user(&name)),
        "store" => {
            let st = store(n);
            st.validate()?;
            (PolicyAuthorizer::new(None, true).with_store(Arc::new(st.compile())), Principal::user(&name))
        }
        "scopes" => (PolicyAuthorizer::new(None, true), Principal::token(&name, vec![], scopes(n))),
        "all" => {
            let st = store(n);
            st.validate()?;
            let a = PolicyAuthorizer::new(Some(AclFile::from_rules(acl_rules(n)?)), true)
                .with_store(Arc::new(st.compile()));
            (a, Principal::token(&name, vec![], scopes(n)))
        }
        other => bail!("unknown source {other:?} (acl, store, scopes, all)"),
    };
    Ok(Built { authorizer, principal, build: t0.elapsed() })
}

/// Time one decision: a warm-up batch, then `batches` batches of about `batch` each (chunks of
/// 256 calls until the batch time is up); (median ns, fastest batch ns, iterations).
fn time(f: &mut dyn FnMut() -> bool, batch: Duration, batches: usize) -> (f64, f64, u64) {
    const CHUNK: u64 = 256;
    let mut one = || {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < batch {
            for _ in 0..CHUNK {
                black_box(f());
            }
            n += CHUNK;
        }
        (t.elapsed().as_nanos() as f64 / n as f64, n)
    };
    one();
    let mut per_op = Vec::with_capacity(batches);
    let mut total = 0;
    for _ in 0..batches.max(1) {
        let (ns, n) = one();
        per_op.push(ns);
        total += n;
    }
    per_op.sort_by(f64::total_cmp);
    (per_op[per_op.len() / 2], per_op[0], total)
}

/// Run every case; print one JSON line each (as they finish).
pub(crate) fn run(p: &Params) -> Result<()> {
    for &n in &p.sizes {
        if n == 0 {
            bail!("--rules must be positive");
        }
        for source in &p.sources {
            let built = build(source, n)?;
            let client_id = format!("c-{}", subject(n));
            for &levels in &p.levels {
                if !(3..=MAX_LEVELS).contains(&levels) {
                    bail!("--levels must be within 3..={MAX_LEVELS}");
                }
                for (case, op, topic, expect) in cases(n, levels, source == "scopes") {
                    let (a, pr, cid) = (&built.authorizer, &built.principal, client_id.as_str());
                    let timed = with_action(op, &topic, |action| {
                        let got = a.authorize(pr, cid, action).is_allowed();
                        if got != expect {
                            return Err(anyhow::anyhow!(
                                "{source} {n} {case} {topic}: expected allowed={expect}, got {got}"
                            ));
                        }
                        let mut f = || a.authorize(black_box(pr), black_box(cid), black_box(action)).is_allowed();
                        Ok(time(&mut f, p.batch, p.batches))
                    });
                    let (ns, min, iterations) = timed??;
                    let line = CaseResult {
                        bench: "authz",
                        source: source.clone(),
                        rules: n,
                        case,
                        levels,
                        topic: topic.clone(),
                        decision: if expect { "allow" } else { "deny" },
                        ns_per_op: (ns * 10.0).round() / 10.0,
                        ns_min: (min * 10.0).round() / 10.0,
                        iterations,
                        build_ms: (built.build.as_secs_f64() * 1e5).round() / 100.0,
                    };
                    println!("{}", serde_json::to_string(&line)?);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_lines(text: &str) -> usize {
        text.lines().filter(|l| l.starts_with("topic ") || l.starts_with("pattern ")).count()
    }

    #[test]
    fn acl_has_exactly_n_rules_and_parses() {
        for n in [1, 2, 3, 10, 11, 999, 1000, 10_000] {
            let text = acl_text(n).unwrap();
            assert_eq!(rule_lines(&text), n, "n={n}");
            let acl = AclFile::parse(&text).unwrap();
            assert_eq!(acl.rules().len(), n);
            // The rules built directly are the file's, line for line.
            assert_eq!(acl.rules(), AclFile::from_rules(acl_rules(n).unwrap()).rules(), "n={n}");
        }
        let text = acl_text(10_000).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("pattern ")).count(), 200);
        assert_eq!(text.lines().filter(|l| l.starts_with("user ")).count(), 980);
        assert!(text.contains("topic deny ") && text.contains("%c") && text.contains("/+/") && text.contains("/#"));
    }

    #[test]
    fn store_has_exactly_n_rules_and_validates() {
        for n in [1, 10, 15, 1000, 10_000] {
            let st = store(n);
            st.validate().unwrap();
            assert_eq!(st.roles.values().map(|r| r.rules.len()).sum::<usize>(), n, "n={n}");
            assert!(st.users.contains_key(&subject(n)));
        }
        let st = store(10_000);
        assert_eq!((st.users.len(), st.roles.len(), st.groups.len()), (1000, 1000, 101));
    }

    #[test]
    fn scopes_are_n_and_all_valid() {
        let s = scopes(1000);
        assert_eq!(s.len(), 1000);
        let rules = warden_policy::authz::scope_rules(&s);
        assert_eq!(rules.len(), 1000);
    }

    #[test]
    fn cases_have_the_depth_asked() {
        for levels in 3..=MAX_LEVELS {
            for scopes_only in [false, true] {
                for (name, _, topic, _) in cases(10_000, levels, scopes_only) {
                    assert_eq!(topic.split('/').count(), levels, "{name} {topic}");
                }
            }
        }
    }

    #[test]
    fn every_source_gives_the_expected_decisions() {
        for n in [10, 1000, 10_000] {
            for source in ["acl", "store", "scopes", "all"] {
                let b = build(source, n).unwrap();
                let cid = format!("c-{}", subject(n));
                for levels in 3..=MAX_LEVELS {
                    for (name, op, topic, expect) in cases(n, levels, source == "scopes") {
                        let got = with_action(op, &topic, |a| b.authorizer.authorize(&b.principal, &cid, a)).unwrap();
                        let got = got.is_allowed();
                        assert_eq!(got, expect, "{source} n={n} {name} {topic}");
                    }
                }
            }
        }
    }
}
