use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::acl::tests::covers;
use crate::testutil::{act, qos, try_act, Req};
use mqtt_codec::QoS;

const PUB0: Req = Req::Pub(QoS::AtMostOnce, false);
const PUB2: Req = Req::Pub(QoS::ExactlyOnce, false);
const PUBR: Req = Req::Pub(QoS::AtMostOnce, true);
const SUB1: Req = Req::Sub(QoS::AtLeastOnce);
const RCV: Req = Req::Rcv;

fn rule(id: &str, action: RuleAction, topic: &str, effect: Effect, priority: i32) -> Rule {
    Rule { id: id.into(), action, topic: topic.into(), max_qos: 2, retain: true, effect, priority, source: vec![] }
}

fn allow(id: &str, action: RuleAction, topic: &str) -> Rule {
    rule(id, action, topic, Effect::Allow, 0)
}

fn store(roles: &[(&str, Vec<Rule>)], users: &[(&str, &[&str], &[&str])], groups: &[(&str, &[&str])]) -> PolicyStore {
    let mut s = PolicyStore::default();
    for (name, rules) in roles {
        s.roles.insert((*name).into(), Role { rules: rules.clone(), ..Role::default() });
    }
    for (name, roles) in groups {
        s.groups.insert((*name).into(), Group { roles: roles.iter().map(|r| r.to_string()).collect() });
    }
    for (name, roles, groups) in users {
        s.users.insert(
            (*name).into(),
            User {
                password_hash: None,
                groups: groups.iter().map(|r| r.to_string()).collect(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                disabled: false,
            },
        );
    }
    s.validate().expect("valid store");
    s
}

fn ok(c: &CompiledStore, p: &Principal, client: &str, a: Req, t: &str) -> Option<bool> {
    act(a, t, |a| c.check(p, client, a)).map(|m| m.allowed)
}

#[test]
fn priority_decides_and_deny_wins_at_equal_priority() {
    let s = store(
        &[(
            "r",
            vec![
                allow("all", RuleAction::Publish, "a/#"),
                rule("no-secret", RuleAction::Publish, "a/secret/#", Effect::Deny, 5),
                rule("but-this", RuleAction::Publish, "a/secret/ok", Effect::Allow, 10),
                rule("tie-allow", RuleAction::Publish, "a/tie", Effect::Allow, 3),
                rule("tie-deny", RuleAction::Publish, "a/tie", Effect::Deny, 3),
            ],
        )],
        &[("ann", &["r"], &[])],
        &[],
    );
    let c = s.compile();
    let ann = Principal::user("ann");
    assert_eq!(ok(&c, &ann, "c", PUB0, "a/x"), Some(true));
    assert_eq!(ok(&c, &ann, "c", PUB0, "a/secret/x"), Some(false));
    assert_eq!(ok(&c, &ann, "c", PUB0, "a/secret/ok"), Some(true), "higher priority allow");
    assert_eq!(ok(&c, &ann, "c", PUB0, "a/tie"), Some(false), "deny wins at equal priority");
    assert_eq!(ok(&c, &ann, "c", PUB0, "b"), None, "no rule: no answer");
    let m = act(PUB0, "a/secret/x", |a| c.check(&ann, "c", a)).unwrap();
    assert_eq!(c.rule(m.rule.unwrap()).unwrap().rule.id, "no-secret");
    assert_eq!(c.rule(m.rule.unwrap()).unwrap().to_string(), "role r rule no-secret");
}

#[test]
fn max_qos_and_retain_limit_allows() {
    let mut low = allow("low", RuleAction::Publish, "t/#");
    low.max_qos = 0;
    low.retain = false;
    let mut sub = allow("s", RuleAction::Subscribe, "t/#");
    sub.max_qos = 0;
    let s = store(&[("r", vec![low, sub])], &[("ann", &["r"], &[])], &[]);
    let c = s.compile();
    let ann = Principal::user("ann");
    assert_eq!(ok(&c, &ann, "c", PUB0, "t/x"), Some(true));
    assert_eq!(ok(&c, &ann, "c", PUB2, "t/x"), Some(false));
    assert_eq!(ok(&c, &ann, "c", PUBR, "t/x"), Some(false));
    assert_eq!(ok(&c, &ann, "c", Req::Sub(QoS::AtMostOnce), "t/+"), Some(true));
    assert_eq!(ok(&c, &ann, "c", SUB1, "t/+"), Some(false));
    assert_eq!(ok(&c, &ann, "c", RCV, "t/x"), Some(true), "receive falls back to subscribe rules");
}

#[test]
fn receive_rules_override_the_subscribe_fallback() {
    let s = store(
        &[(
            "r",
            vec![
                allow("s", RuleAction::Subscribe, "t/#"),
                rule("hide", RuleAction::Receive, "t/hidden", Effect::Deny, 0),
                allow("extra", RuleAction::Receive, "other"),
            ],
        )],
        &[("ann", &["r"], &[])],
        &[],
    );
    let c = s.compile();
    let ann = Principal::user("ann");
    assert_eq!(ok(&c, &ann, "c", RCV, "t/x"), Some(true));
    assert_eq!(ok(&c, &ann, "c", RCV, "t/hidden"), Some(false));
    assert_eq!(ok(&c, &ann, "c", RCV, "other"), Some(true));
    assert_eq!(ok(&c, &ann, "c", SUB1, "other"), None);
}

#[test]
fn subjects_groups_roles_and_disabled_users() {
    let mut s = store(
        &[
            ("own", vec![allow("own", RuleAction::Publish, "own/%u/#")]),
            ("grp", vec![allow("g", RuleAction::Publish, "grp/#")]),
            ("anon", vec![allow("a", RuleAction::Publish, "public/#")]),
            ("tok", vec![allow("t", RuleAction::Publish, "tok/%i/#")]),
        ],
        &[("ann", &[], &["staff"])],
        &[("staff", &["grp"]), (ANYONE_AUTHENTICATED, &["own"]), (ANONYMOUS, &["anon"])],
    );
    let c = s.compile();
    let ann = Principal::user("ann");
    let bob = Principal::user("bob");
    let anon = Principal::anonymous();
    assert_eq!(ok(&c, &ann, "c", PUB0, "grp/x"), Some(true), "group role");
    assert_eq!(ok(&c, &bob, "c", PUB0, "grp/x"), None);
    assert_eq!(ok(&c, &bob, "c", PUB0, "own/bob/x"), Some(true), "anyone-authenticated");
    assert_eq!(ok(&c, &bob, "c", PUB0, "own/ann/x"), None);
    assert_eq!(ok(&c, &anon, "c", PUB0, "own/anonymous/x"), None, "not for anonymous");
    assert_eq!(ok(&c, &anon, "c", PUB0, "public/x"), Some(true));
    assert_eq!(ok(&c, &bob, "c", PUB0, "public/x"), None, "anonymous group is for anonymous only");
    let cert = Principal::certificate("dev-1");
    assert_eq!(ok(&c, &cert, "c", PUB0, "own/dev-1/x"), None, "%u is a user name only");
    let tok = Principal::token("dev-2", vec![Arc::from("tok")], vec![]);
    assert_eq!(ok(&c, &tok, "c", PUB0, "tok/dev-2/x"), Some(true), "token role, %i");
    assert_eq!(ok(&c, &tok, "c", PUB0, "tok/dev-3/x"), None);
    s.users.get_mut("ann").unwrap().disabled = true;
    let c = s.compile();
    assert_eq!(ok(&c, &ann, "c", PUB0, "grp/x"), None, "a disabled user gets nothing");
    assert!(!s.password_entries().any(|(u, _)| u == "ann"));
    // The store's users as a password set: built from the entries, no text in between.
    let h = crate::password::hash_password(b"pw");
    s.users.insert("bob".into(), User { password_hash: Some(h.clone()), ..User::default() });
    s.users.get_mut("ann").unwrap().password_hash = Some(h);
    let file = s.password_file().unwrap();
    assert!(file.verify("bob", b"pw"));
    assert!(!file.contains("ann"), "a disabled user cannot log in");
}

#[test]
fn substitutions_are_literal_and_fail_closed() {
    let s = store(
        &[(
            "r",
            vec![
                allow("u", RuleAction::Publish, "u/%u/#"),
                allow("c", RuleAction::Publish, "c/%c"),
                allow("i", RuleAction::Publish, "i/x%i"),
                rule("d", RuleAction::Publish, "deny/%c", Effect::Deny, 0),
            ],
        )],
        &[],
        &[(ANYONE_AUTHENTICATED, &["r"])],
    );
    let c = s.compile();
    for name in ["#", "+", "a/b", "a\0"] {
        let p = Principal::user(name);
        for t in ["u/x/y", "u/a/b/z", "u/#", "u/a"] {
            // (`u/#` is no topic name: the codec refuses it, so it cannot be asked at all.)
            let got = try_act(PUB0, t, |a| c.check(&p, "ok", a).map(|m| m.allowed)).flatten();
            assert_ne!(got, Some(true), "user {name:?} topic {t}");
        }
        let cert = Principal::certificate(name);
        assert_ne!(ok(&c, &cert, "ok", PUB0, "i/xa/b"), Some(true));
    }
    let p = Principal::user("ann");
    assert_eq!(ok(&c, &p, "ok", PUB0, "c/ok"), Some(true));
    assert_eq!(ok(&c, &p, "ok", PUB0, "i/xann"), Some(true));
    // Client id "a/b": the deny rule using %c cannot be applied safely, so it denies all.
    assert_eq!(ok(&c, &p, "a/b", PUB0, "u/ann/x"), Some(false));
    assert_eq!(ok(&c, &p, "a/b", PUB0, "c/a/b"), Some(false));
}

#[test]
fn malformed_topics_are_denied_and_empty_store_has_no_opinion() {
    let s = store(&[("r", vec![allow("a", RuleAction::Publish, "#")])], &[("ann", &["r"], &[])], &[]);
    let c = s.compile();
    let ann = Principal::user("ann");
    // Malformed names and filters never reach a check: the codec refuses to build them
    // [MQTT-3.3.2-2], [MQTT-4.7.1-2]. The alias placeholder, the one empty name, is denied.
    assert!(try_act(PUB0, "a/+", |_| ()).is_none());
    assert!(try_act(SUB1, "a/#/b", |_| ()).is_none());
    let placeholder = mqtt_codec::TopicName::alias_placeholder();
    let publish = Action::publish(&placeholder, QoS::AtMostOnce, false);
    assert_eq!(c.check(&ann, "c", publish).map(|m| m.allowed), Some(false));
    let empty = PolicyStore::default().compile();
    assert!(!empty.is_configured());
    assert_eq!(empty.check(&ann, "c", publish).map(|m| m.allowed), None);
    assert_eq!(ok(&empty, &ann, "c", PUB0, "a/x"), None);
}

#[test]
fn validation_and_json() {
    let mut s = store(&[("r", vec![allow("a", RuleAction::Publish, "x")])], &[("ann", &["r"], &[])], &[]);
    let text = s.to_json();
    assert_eq!(PolicyStore::from_json(&text).unwrap(), s);
    assert!(PolicyStore::from_json("{").is_err());
    assert!(PolicyStore::from_json(r#"{"version":2}"#).unwrap_err().0.contains("version"));
    assert!(PolicyStore::from_json(r#"{"version":1,"bogus":1}"#).is_err());
    let bad = r#"{"version":1,"users":{"a":{"roles":["nope"]}}}"#;
    assert!(PolicyStore::from_json(bad).unwrap_err().0.contains("unknown role 'nope'"));
    let bad =
        r#"{"version":1,"roles":{"r":{"rules":[{"id":"x","action":"publish","topic":"a/#/b","effect":"allow"}]}}}"#;
    assert!(PolicyStore::from_json(bad).unwrap_err().0.contains("invalid topic filter"));
    let bad = r#"{"version":1,"users":{"a":{"password_hash":"plain"}}}"#;
    assert!(PolicyStore::from_json(bad).is_err());
    assert!(valid_name("user", "a:b").is_err());
    assert!(valid_name("user", "").is_err());
    assert!(valid_name("user", "a\nb").is_err());
    let mut dup = s.clone();
    dup.roles.get_mut("r").unwrap().rules.push(allow("a", RuleAction::Subscribe, "y"));
    assert!(dup.validate().unwrap_err().0.contains("duplicate rule id"));
    assert!(s.remove_role("r"));
    assert!(s.users["ann"].roles.is_empty());
    s.validate().unwrap();
    let u = User { password_hash: Some("$argon2id$secret".into()), ..User::default() };
    assert!(!format!("{u:?}").contains("secret"));
}

// --- Reference model -------------------------------------------------------------------------

fn substitute(f: &str, user: Option<&str>, client: &str, identity: Option<&str>) -> Option<String> {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    while let Some(ch) = chars.next() {
        let v = match (ch, chars.peek()) {
            ('%', Some('u')) => Some(user),
            ('%', Some('c')) => Some(Some(client)),
            ('%', Some('i')) => Some(identity),
            _ => None,
        };
        match v {
            Some(Some(v)) => {
                chars.next();
                out.push_str(v);
            }
            Some(None) => return None,
            None => out.push(ch),
        }
    }
    Some(out)
}

/// Rule by rule: the applicable rules, substituted textually, matched level by level.
/// (Asked only for topics the codec accepts: others cannot be asked.)
fn naive(s: &PolicyStore, p: &Principal, client: &str, action: Req, topic: &str) -> Option<bool> {
    if !s.has_rules() {
        return None;
    }
    let anonymous = p.kind == PrincipalKind::Anonymous;
    let mut roles: Vec<&String> = Vec::new();
    let subject = if anonymous { ANONYMOUS } else { ANYONE_AUTHENTICATED };
    roles.extend(s.groups.get(subject).into_iter().flat_map(|g| g.roles.iter()));
    if !anonymous {
        if let Some(u) = s.users.get(&*p.name).filter(|u| !u.disabled) {
            roles.extend(u.roles.iter());
            for g in &u.groups {
                roles.extend(s.groups[g].roles.iter());
            }
        }
        let tok: Vec<&String> = s.roles.keys().filter(|k| p.roles.iter().any(|r| &**r == k.as_str())).collect();
        roles.extend(tok);
    }
    let user = (p.kind == PrincipalKind::User).then_some(&*p.name);
    let identity = (!anonymous).then_some(&*p.name);
    let unsafe_ = |v: &str| v.contains(['/', '+', '#', '\0']);
    let q: Vec<&str> = topic.split('/').collect();
    let mut matched: Vec<&Rule> = Vec::new();
    for r in roles.iter().flat_map(|name| s.roles[*name].rules.iter()) {
        let uses_unsafe = [("%u", user), ("%c", Some(client)), ("%i", identity)]
            .iter()
            .any(|(var, v)| r.topic.contains(var) && v.is_some_and(unsafe_));
        if uses_unsafe {
            if r.effect == Effect::Deny {
                return Some(false);
            }
            continue;
        }
        let Some(f) = substitute(&r.topic, user, client, identity) else { continue };
        let levels: Vec<&str> = f.split('/').collect();
        if covers(&levels, &q) {
            matched.push(r);
        }
    }
    let pick = |a: RuleAction| -> Vec<&Rule> { matched.iter().copied().filter(|r| r.action == a).collect() };
    let (rules, qos, retain) = match action {
        Req::Pub(qos, retain) => (pick(RuleAction::Publish), qos as u8, retain),
        Req::Sub(qos) => (pick(RuleAction::Subscribe), qos as u8, false),
        Req::Rcv => {
            let r = pick(RuleAction::Receive);
            (if r.is_empty() { pick(RuleAction::Subscribe) } else { r }, 0, false)
        }
    };
    let top = rules.iter().map(|r| r.priority).max()?;
    let at_top: Vec<&&Rule> = rules.iter().filter(|r| r.priority == top).collect();
    if at_top.iter().any(|r| r.effect == Effect::Deny) {
        return Some(false);
    }
    Some(at_top.iter().any(|r| qos <= r.max_qos && (!retain || r.retain)))
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "$s", ""]).prop_map(String::from),
        2 => Just("+".to_string()),
        2 => prop::sample::select(vec!["%u", "%c", "%i", "x%u", "%u%c"]).prop_map(String::from),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    (prop::collection::vec(level(), 0..4), any::<bool>()).prop_map(|(mut v, hash)| {
        if hash || v.is_empty() || v == [""] {
            v.push("#".into());
        }
        v.join("/")
    })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    let action = prop::sample::select(vec![RuleAction::Publish, RuleAction::Subscribe, RuleAction::Receive]);
    let effect = prop::sample::select(vec![Effect::Allow, Effect::Allow, Effect::Deny]);
    (action, filter(), 0u8..3, any::<bool>(), effect, -1i32..2).prop_map(
        |(action, topic, max_qos, retain, effect, priority)| Rule {
            id: String::new(),
            action,
            topic,
            max_qos,
            retain,
            effect,
            priority,
            source: Vec::new(),
        },
    )
}

fn arb_store() -> impl Strategy<Value = PolicyStore> {
    let roles = prop::collection::vec(prop::collection::vec(arb_rule(), 0..4), 3);
    let pick = || prop::collection::vec(prop::sample::select(vec!["r0", "r1", "r2"]), 0..3);
    let groups = prop::collection::vec(pick(), 3);
    let users = prop::collection::vec(
        (pick(), prop::collection::vec(prop::sample::select(vec!["g", ANYONE_AUTHENTICATED]), 0..2), any::<bool>()),
        3,
    );
    (roles, groups, users).prop_map(|(roles, groups, users)| {
        let mut s = PolicyStore::default();
        for (i, mut rules) in roles.into_iter().enumerate() {
            for (j, r) in rules.iter_mut().enumerate() {
                r.id = format!("x{j}");
            }
            s.roles.insert(format!("r{i}"), Role { rules, ..Role::default() });
        }
        let names = ["g", ANYONE_AUTHENTICATED, ANONYMOUS];
        for (n, roles) in names.iter().zip(groups) {
            s.groups.insert((*n).into(), Group { roles: roles.into_iter().map(String::from).collect() });
        }
        let unames = ["u", "a+", "v"];
        for (n, (roles, groups, disabled)) in unames.iter().zip(users) {
            let u = User {
                password_hash: None,
                roles: roles.into_iter().map(String::from).collect(),
                groups: groups.into_iter().map(String::from).collect(),
                disabled,
            };
            s.users.insert((*n).into(), u);
        }
        s
    })
}

fn arb_principal() -> impl Strategy<Value = Principal> {
    prop::sample::select(vec![0usize, 1, 2, 3, 4, 5, 6]).prop_map(|i| match i {
        0 => Principal::user("u"),
        1 => Principal::user("a+"),
        2 => Principal::user("v"),
        3 => Principal::user("x/y"),
        4 => Principal::certificate("u"),
        5 => Principal::token("t", vec![Arc::from("r1")], vec![]),
        _ => Principal::anonymous(),
    })
}

fn request() -> impl Strategy<Value = (String, Req, String)> {
    let client = prop::sample::select(vec!["c", "u", "#", "c/d"]).prop_map(String::from);
    let action = (0u8..5, 0u8..3, any::<bool>()).prop_map(|(a, q, retain)| match a {
        0 | 1 => Req::Pub(qos(q), retain),
        2 | 3 => Req::Sub(qos(q)),
        _ => Req::Rcv,
    });
    let topic = prop::collection::vec(
        prop::sample::select(vec!["a", "b", "$s", "", "u", "c", "xu", "uc", "t", "+", "#", "%u"]),
        1..5,
    )
    .prop_map(|v| v.join("/"));
    (client, action, topic)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_store_agrees_with_naive_evaluator(
        s in arb_store(),
        reqs in prop::collection::vec((arb_principal(), request()), 1..24),
    ) {
        prop_assert!(s.validate().is_ok());
        let c = s.compile();
        for (p, (client, action, topic)) in reqs {
            // A topic the codec refuses cannot be asked.
            let Some(got) = try_act(action, &topic, |a| c.check(&p, &client, a).map(|m| m.allowed)) else {
                continue;
            };
            let want = naive(&s, &p, &client, action, &topic);
            prop_assert_eq!(got, want, "{} {:?} {:?} {:?}\n{}", p, client, action, topic, s.to_json());
        }
    }
}

/// Issue 17: a role's quota overrides reach the principals its rules reach — through the
/// user's roles and groups, the roles a token carries, `anyone-authenticated` and `anonymous` —
/// the largest value among them applying; a fail-open client gets its role's only, and a
/// disabled user none.
#[test]
fn quotas_follow_roles_and_the_largest_applies() {
    let mut s = store(
        &[("small", vec![]), ("big", vec![]), ("base", vec![]), ("anon", vec![])],
        &[("gw", &["small"], &["gateways"]), ("dev", &[], &[])],
        &[("gateways", &["big"]), (ANYONE_AUTHENTICATED, &["base"]), (ANONYMOUS, &["anon"])],
    );
    let q = |sessions: u64, bytes: Option<u64>| Quotas {
        max_sessions: Some(sessions),
        max_queued_bytes: bytes,
        ..Quotas::default()
    };
    s.roles.get_mut("small").unwrap().quotas = q(5, Some(1000));
    s.roles.get_mut("big").unwrap().quotas = q(50, None);
    s.roles.get_mut("base").unwrap().quotas = q(2, None);
    s.roles.get_mut("anon").unwrap().quotas = q(1, Some(10));
    let c = s.compile();
    assert!(!c.is_configured(), "quotas alone are no authorization source");
    assert_eq!(c.quotas(&Principal::user("gw")), q(50, Some(1000)), "largest of small, big (group) and base");
    assert_eq!(c.quotas(&Principal::user("dev")), q(2, None), "anyone-authenticated");
    assert_eq!(c.quotas(&Principal::user("unknown")), q(2, None));
    assert_eq!(c.quotas(&Principal::anonymous()), q(1, Some(10)));
    assert_eq!(c.quotas(&Principal::token("t", vec![Arc::from("small")], vec![])), q(5, Some(1000)));
    assert_eq!(c.quotas(&Principal::fallback("gw", "small")), q(5, Some(1000)), "its role only, not gw's");
    s.users.get_mut("gw").unwrap().disabled = true;
    assert_eq!(s.compile().quotas(&Principal::user("gw")), q(2, None), "a disabled user's roles give nothing");
}

fn from(net: &[&str], r: Rule) -> Rule {
    Rule { source: net.iter().map(|n| n.parse().unwrap()).collect(), ..r }
}

#[test]
fn source_conditions_apply_only_from_their_networks() {
    let s = store(
        &[(
            "plant",
            vec![
                from(&["10.0.0.0/8", "::1/128"], allow("lan", RuleAction::Publish, "plant/#")),
                allow("public", RuleAction::Publish, "plant/public"),
                from(&["10.9.0.0/16"], rule("quarantine", RuleAction::Publish, "plant/#", Effect::Deny, 0)),
                from(&["127.0.0.2"], rule("own", RuleAction::Subscribe, "c/%c/#", Effect::Allow, 0)),
                from(&["10.9.0.0/16"], rule("bad-ids", RuleAction::Subscribe, "x/%c", Effect::Deny, 0)),
            ],
        )],
        &[("u", &["plant"], &[])],
        &[],
    );
    let c = s.compile();
    let u = |ip: &str| Principal::user("u").with_peer(ip.parse().unwrap());
    assert_eq!(ok(&c, &u("10.1.2.3"), "c1", PUB0, "plant/a"), Some(true));
    assert_eq!(ok(&c, &u("::1"), "c1", PUB0, "plant/a"), Some(true));
    assert_eq!(ok(&c, &u("192.0.2.1"), "c1", PUB0, "plant/a"), None, "outside: as if the rule were not there");
    assert_eq!(ok(&c, &Principal::user("u"), "c1", PUB0, "plant/a"), None, "no address known");
    assert_eq!(ok(&c, &u("192.0.2.1"), "c1", PUB0, "plant/public"), Some(true));
    // A conditional deny, from its network only.
    let m = act(PUB0, "plant/public", |a| c.check(&u("10.9.3.3"), "c1", a)).unwrap();
    assert_eq!((m.allowed, c.rule(m.rule.unwrap()).unwrap().rule.id.as_str()), (false, "quarantine"));
    assert_eq!(ok(&c, &u("127.0.0.2"), "c1", SUB1, "c/c1/#"), Some(true));
    assert_eq!(ok(&c, &u("127.0.0.1"), "c1", SUB1, "c/c1/#"), None);
    // The fail-closed deny of an unsafe client id applies only from its network.
    assert_eq!(ok(&c, &u("10.9.3.3"), "a/b", PUB0, "plant/public"), Some(false));
    assert_eq!(ok(&c, &u("192.0.2.1"), "a/b", PUB0, "plant/public"), Some(true));
}

#[test]
fn source_conditions_in_json() {
    let text = r#"{"version":1,"roles":{"r":{"rules":[{"id":"a","action":"publish","topic":"x/#","effect":"allow","source":["10.0.0.0/8","::1/128"]}]}}}"#;
    let s = PolicyStore::from_json(text).unwrap();
    assert_eq!(s.roles["r"].rules[0].source.len(), 2);
    assert!(s.to_json().contains("\"10.0.0.0/8\""));
    // Without a condition nothing is written (the format stays as it was).
    let plain = store(&[("r", vec![allow("a", RuleAction::Publish, "x")])], &[], &[]);
    assert!(!plain.to_json().contains("source"));
    for bad in ["10.0.0.0/33", "10.0.0.1/8", "host.example"] {
        let e = PolicyStore::from_json(&text.replace("10.0.0.0/8", bad)).unwrap_err();
        assert!(e.0.contains(bad), "{bad}: {e}");
    }
}

// --- Device registry ------------------------------------------------------------------------

fn device(kind: Option<&str>, attrs: &[(&str, &str)]) -> Device {
    Device {
        kind: kind.map(Into::into),
        owner: Some("acme".into()),
        attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        certificates: Default::default(),
        disabled: false,
    }
}

fn with_devices(mut s: PolicyStore, devices: &[(&str, Device)]) -> PolicyStore {
    for (id, d) in devices {
        s.devices.insert((*id).into(), d.clone());
    }
    s.validate().expect("valid store");
    s
}

#[test]
fn device_attributes_substitute_literally() {
    let s = store(
        &[(
            "fleet",
            vec![
                allow("site", RuleAction::Publish, "devices/%{attr:site}/%i/#"),
                allow("sub", RuleAction::Subscribe, "cmd/%{attr:type}-%{attr:owner}/#"),
                allow("id", RuleAction::Publish, "by-id/%{attr:id}"),
            ],
        )],
        &[],
        &[(ANYONE_AUTHENTICATED, &["fleet"])],
    );
    let s = with_devices(
        s,
        &[
            ("dev-1", device(Some("sensor"), &[("site", "berlin")])),
            ("evil-1", device(Some("sensor"), &[("site", "#")])),
            ("evil-2", device(Some("a/b"), &[("site", "+")])),
            ("evil-3", device(None, &[("site", "")])),
            ("evil-4", device(None, &[("site", "a/b")])),
        ],
    );
    let c = s.compile();
    let dev = Principal::certificate("dev-1");
    assert_eq!(ok(&c, &dev, "dev-1", PUB0, "devices/berlin/dev-1/temp"), Some(true));
    assert_eq!(ok(&c, &dev, "dev-1", PUB0, "devices/paris/dev-1/temp"), None, "another site");
    assert_eq!(ok(&c, &dev, "dev-1", PUB0, "devices/berlin/dev-2/temp"), None, "another device");
    assert_eq!(ok(&c, &dev, "dev-1", SUB1, "cmd/sensor-acme/#"), Some(true));
    assert_eq!(ok(&c, &dev, "dev-1", SUB1, "cmd/#"), None, "a narrower rule never covers a wider filter");
    assert_eq!(ok(&c, &dev, "dev-1", PUB0, "by-id/dev-1"), Some(true));
    // The same name by any method is the same device (a user, a token subject).
    assert_eq!(ok(&c, &Principal::user("dev-1"), "x", PUB0, "devices/berlin/dev-1/a"), Some(true));
    // Not a device: attribute rules match nothing; anonymous and fail-open clients neither.
    assert_eq!(ok(&c, &Principal::certificate("dev-9"), "c", PUB0, "devices/berlin/dev-9/t"), None);
    assert_eq!(ok(&c, &Principal::certificate("dev-9"), "c", PUB0, "by-id/dev-9"), None);
    assert_eq!(ok(&c, &Principal::fallback("dev-1", "r"), "c", PUB0, "by-id/dev-1"), None);
    // Injection: `#`, `+`, `/` or an empty value never widens a rule.
    for (id, topics) in [
        ("evil-1", &["devices/x/evil-1/t", "devices/a/evil-1/b"][..]),
        ("evil-2", &["devices/x/evil-2/t"][..]),
        ("evil-3", &["devices//evil-3/t", "devices/x/evil-3/t"][..]),
        ("evil-4", &["devices/a/b/evil-4/t", "devices/a/evil-4/t"][..]),
    ] {
        let p = Principal::certificate(id);
        for t in topics {
            assert_ne!(ok(&c, &p, id, PUB0, t), Some(true), "{id} {t}");
        }
        for f in ["devices/#", "devices/+/#", &format!("devices/+/{id}/#")] {
            assert_ne!(ok(&c, &p, id, SUB1, f), Some(true), "{id} {f}");
        }
    }
    let evil2 = Principal::certificate("evil-2");
    for f in ["cmd/a/b-acme/#", "cmd/#", "cmd/+/#"] {
        assert_ne!(ok(&c, &evil2, "evil-2", SUB1, f), Some(true), "{f}");
    }
    // A missing attribute: no match (evil-3 has no type).
    assert_eq!(ok(&c, &Principal::certificate("evil-3"), "c", SUB1, "cmd/-acme/#"), None);
}

#[test]
fn deny_rules_with_unsafe_attributes_fail_closed() {
    let s = store(
        &[(
            "fleet",
            vec![
                allow("all", RuleAction::Publish, "open/#"),
                rule("d", RuleAction::Publish, "open/%{attr:site}", Effect::Deny, 0),
            ],
        )],
        &[],
        &[(ANYONE_AUTHENTICATED, &["fleet"])],
    );
    let s = with_devices(
        s,
        &[
            ("ok", device(None, &[("site", "s1")])),
            ("bad", device(None, &[("site", "a/b")])),
            ("empty", device(None, &[("site", "")])),
            ("none", device(None, &[])),
        ],
    );
    let c = s.compile();
    let p = |n| Principal::certificate(n);
    assert_eq!(ok(&c, &p("ok"), "c", PUB0, "open/x"), Some(true));
    assert_eq!(ok(&c, &p("ok"), "c", PUB0, "open/s1"), Some(false), "the deny applies");
    assert_eq!(ok(&c, &p("bad"), "c", PUB0, "open/x"), Some(false), "unsafe value: denied everything");
    assert_eq!(ok(&c, &p("empty"), "c", PUB0, "open/x"), Some(false), "empty value: denied everything");
    assert_eq!(ok(&c, &p("none"), "c", PUB0, "open/x"), Some(true), "missing: the deny does not apply");
    assert_eq!(ok(&c, &p("stranger"), "c", PUB0, "open/x"), Some(true), "no device: the deny does not apply");
}

#[test]
fn devices_in_json_and_validation() {
    // A file written before the registry existed still loads, and one without devices is
    // written without the key.
    let old = r#"{"version":1,"users":{},"groups":{},"roles":{}}"#;
    let s = PolicyStore::from_json(old).unwrap();
    assert!(s.devices.is_empty());
    assert!(!s.to_json().contains("devices"));
    let fp = "ab".repeat(32);
    let text = format!(
        r#"{{"version":1,"devices":{{"dev-1":{{"type":"sensor","owner":"acme","attributes":{{"site":"berlin"}},
            "certificates":{{"{fp}":{{"status":"revoked"}}}}}}}}}}"#
    );
    let s = PolicyStore::from_json(&text).unwrap();
    assert_eq!(s.devices["dev-1"].certificates[&fp].status, crate::devices::CertStatus::Revoked);
    assert_eq!(PolicyStore::from_json(&s.to_json()).unwrap(), s);
    // One certificate, two devices: refused.
    let mut two = s.clone();
    two.devices.insert("dev-2".into(), s.devices["dev-1"].clone());
    assert!(two.validate().unwrap_err().0.contains("registered to both"));
    let bad = text.replace("\"status\":\"revoked\"", "\"status\":\"lost\"");
    assert!(PolicyStore::from_json(&bad).is_err());
    let bad = text.replace("dev-1", "dev/1");
    assert!(PolicyStore::from_json(&bad).is_err());
}

#[test]
fn attribute_templates_parse_only_well_formed_names() {
    // `%{attr:...}` with a bad name or no closing brace is literal text.
    let s = store(
        &[(
            "r",
            vec![allow("a", RuleAction::Publish, "x/%{attr:si te}"), allow("b", RuleAction::Publish, "y/%{attr:site")],
        )],
        &[],
        &[(ANYONE_AUTHENTICATED, &["r"])],
    );
    let c = with_devices(s, &[("d", device(None, &[("site", "s")]))]).compile();
    let d = Principal::certificate("d");
    assert_eq!(ok(&c, &d, "c", PUB0, "x/%{attr:si te}"), Some(true));
    assert_eq!(ok(&c, &d, "c", PUB0, "y/%{attr:site"), Some(true));
    assert_eq!(ok(&c, &d, "c", PUB0, "y/s"), None);
}
