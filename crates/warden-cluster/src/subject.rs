//! MQTT topics and filters as NATS subjects: a total, reversible encoding.
//!
//! NATS subjects are `.`-separated tokens; `*` and `>` are its wildcards, and whitespace or
//! control characters would break its text protocol. MQTT topic levels may hold any of those.
//! So every level is encoded byte by byte: `A`–`Z`, `a`–`z`, `0`–`9`, `_` and `-` stay as they
//! are, every other byte (`.`, `*`, `>`, `$`, `~`, space, control, every byte of a non-ASCII
//! character) becomes `~` and two upper-case hex digits, and an empty level becomes `~` alone.
//! No encoded level can be a NATS wildcard or contain a separator, and decoding is exact.
//!
//! Every subject starts with the cluster's prefix and a kind (`m` messages, `r` retained), then
//! a space: `t` for ordinary topics, `d` for topics that start with `$` (so that a `+` or `#`
//! at the first level, which MQTT does not let match a `$` topic [MQTT-4.7.2-1], never matches
//! them in NATS either). So no topic can ever name an internal NATS subject (`$JS.…`,
//! `_INBOX.…`, `$SYS.…`): they do not start with the prefix.
//!
//! A topic whose subject would be longer than [`MAX_SUBJECT`] goes to the kind's `l` subject
//! (messages: `{prefix}.m.l`, which every node receives and matches against its own
//! subscriptions; retained: `{prefix}.r.l.{sha-256 of the topic}`), so no topic is ever lost to
//! the limit of NATS's control line.

use sha2::{Digest, Sha256};

/// The longest subject sent to NATS (its default control line is 4 KiB).
pub const MAX_SUBJECT: usize = 2048;

/// The kind of subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Messages to route, QoS 0 (core NATS only).
    Message,
    /// Messages to route, QoS 1 and 2: also kept by the JetStream messages stream, whose
    /// quorum acknowledgement the PUBACK / PUBREC waits for.
    Durable,
    /// Retained messages.
    Retained,
}

impl Kind {
    fn token(self) -> &'static str {
        match self {
            Kind::Message => "m",
            Kind::Durable => "q",
            Kind::Retained => "r",
        }
    }
}

/// Whether `prefix` may start the cluster's subjects: one NATS token of `A-Za-z0-9_-`,
/// 1 to 64 bytes.
pub fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len()) && prefix.bytes().all(plain)
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Append the encoding of one topic level.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    for &b in level.as_bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

fn space(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        "d"
    } else {
        "t"
    }
}

/// The subject of a (valid) topic name.
pub fn topic_subject(prefix: &str, kind: Kind, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 5 + topic.len() + topic.len() / 2);
    out.push_str(prefix);
    out.push('.');
    out.push_str(kind.token());
    out.push('.');
    out.push_str(space(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    if out.len() <= MAX_SUBJECT {
        return out;
    }
    long_subject(prefix, kind, topic)
}

/// The subject of a topic too long for [`topic_subject`]'s form.
fn long_subject(prefix: &str, kind: Kind, topic: &str) -> String {
    match kind {
        Kind::Message => format!("{prefix}.m.l"),
        Kind::Durable => format!("{prefix}.q.l"),
        Kind::Retained => {
            let digest = Sha256::digest(topic.as_bytes());
            let mut hex = String::with_capacity(64);
            for b in digest {
                hex.push(char::from(HEX[usize::from(b >> 4)]));
                hex.push(char::from(HEX[usize::from(b & 15)]));
            }
            format!("{prefix}.r.l.{hex}")
        }
    }
}

/// The subject every node listens on for messages whose topic is too long for its own.
pub fn long_messages(prefix: &str) -> String {
    format!("{prefix}.m.l")
}

/// [`long_messages`] for QoS 1 and 2 messages ([`Kind::Durable`]).
pub fn long_durable(prefix: &str) -> String {
    format!("{prefix}.q.l")
}

/// The subject pattern covering every QoS 1 and 2 message (the messages stream's).
pub fn all_durable(prefix: &str) -> String {
    format!("{prefix}.q.>")
}

/// The subject pattern covering every retained message.
pub fn all_retained(prefix: &str) -> String {
    format!("{prefix}.r.>")
}

/// The topic a subject made by [`topic_subject`] names (`None`: not one of ours, or the
/// long form, which names no topic).
pub fn subject_topic(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let rest = rest.strip_prefix("m.").or_else(|| rest.strip_prefix("q.")).or_else(|| rest.strip_prefix("r."))?;
    let (sp, levels) = rest.split_once('.')?;
    if sp != "t" && sp != "d" {
        return None;
    }
    let mut out = Vec::new();
    for (i, tok) in levels.split('.').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if tok == "~" {
            continue;
        }
        let b = tok.as_bytes();
        let mut k = 0;
        while k < b.len() {
            if b[k] == b'~' {
                let h = std::str::from_utf8(b.get(k + 1..k + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                k += 3;
            } else if plain(b[k]) {
                out.push(b[k]);
                k += 1;
            } else {
                return None;
            }
        }
    }
    let topic = String::from_utf8(out).ok()?;
    (space(&topic) == sp).then_some(topic)
}

/// The subject patterns that together match, in NATS, every subject of a topic a (valid,
/// non-shared) MQTT filter matches: `+` becomes `*`; a trailing `#` becomes `>` and, since
/// `#` also matches its parent level [MQTT-4.7.1-2], the parent is a pattern of its own; a
/// filter starting with a wildcard only covers the `t` space [MQTT-4.7.2-1]. A filter whose
/// pattern would be too long is covered by its whole space (the node's own subscriptions
/// then decide, as for every message it receives).
pub fn filter_patterns(prefix: &str, filter: &str) -> Vec<String> {
    filter_patterns_of(prefix, Kind::Message, filter)
}

/// [`filter_patterns`] in the subject space of `kind`.
pub fn filter_patterns_of(prefix: &str, kind: Kind, filter: &str) -> Vec<String> {
    let k = kind.token();
    let levels: Vec<&str> = filter.split('/').collect();
    let first = levels.first().copied().unwrap_or("");
    let sp = if first == "+" || first == "#" { "t" } else { space(first) };
    let mut base = format!("{prefix}.{k}.{sp}");
    let hash = levels.last() == Some(&"#");
    let body = if hash { &levels[..levels.len() - 1] } else { &levels[..] };
    for level in body {
        base.push('.');
        if *level == "+" {
            base.push('*');
        } else {
            push_level(&mut base, level);
        }
    }
    if base.len() + 2 > MAX_SUBJECT {
        return vec![format!("{prefix}.{k}.{sp}.>")];
    }
    if !hash {
        return vec![base];
    }
    if body.is_empty() {
        // `#` alone: every topic of the space (none is empty).
        return vec![format!("{base}.>")];
    }
    vec![format!("{base}.>"), base]
}

/// The NATS queue group of MQTT shared group `group` on `filter` (the same name on every
/// node; NATS gives each message to one member of a queue group).
pub fn queue_name(group: &str, filter: &str) -> String {
    let mut h = Sha256::new();
    h.update(group.as_bytes());
    h.update([0]);
    h.update(filter.as_bytes());
    let d = h.finalize();
    let mut out = String::with_capacity(33);
    out.push('g');
    for b in &d[..16] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NATS's own subject matching (tokens, `*` one token, `>` one or more at the end).
    fn nats_match(pattern: &str, subject: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, tok) in p.iter().enumerate() {
            match *tok {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if i < s.len() && s[i] == t => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    /// MQTT's matching [MQTT-4.7].
    fn mqtt_match(filter: &str, topic: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
            return false;
        }
        for (i, lv) in f.iter().enumerate() {
            match *lv {
                "#" => return true,
                "+" if i < t.len() => {}
                l if i < t.len() && t[i] == l => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    fn matches_any(prefix: &str, filter: &str, topic: &str) -> bool {
        let subject = topic_subject(prefix, Kind::Message, topic);
        filter_patterns(prefix, filter).iter().any(|p| nats_match(p, &subject))
    }

    #[test]
    fn levels_are_encoded_so_no_wildcard_or_separator_reaches_nats() {
        assert_eq!(topic_subject("w", Kind::Message, "a/b-c_d/9"), "w.m.t.a.b-c_d.9");
        assert_eq!(topic_subject("w", Kind::Message, "a.b/*/>"), "w.m.t.a~2Eb.~2A.~3E");
        assert_eq!(topic_subject("w", Kind::Message, "/x//"), "w.m.t.~.x.~.~");
        assert_eq!(topic_subject("w", Kind::Message, "sp ace\r\n"), "w.m.t.sp~20ace~0D~0A");
        assert_eq!(topic_subject("w", Kind::Message, "~"), "w.m.t.~7E");
        assert_eq!(topic_subject("w", Kind::Message, "é"), "w.m.t.~C3~A9");
        assert_eq!(topic_subject("w", Kind::Retained, "$SYS/x"), "w.r.d.~24SYS.x");
        // QoS 1 and 2 in their own space (the messages stream's), same encoding.
        assert_eq!(topic_subject("w", Kind::Durable, "a/b"), "w.q.t.a.b");
        assert_eq!(subject_topic("w", "w.q.t.a.b").as_deref(), Some("a/b"));
        assert_eq!(filter_patterns_of("w", Kind::Durable, "a/#"), ["w.q.t.a.>", "w.q.t.a"]);
        assert_eq!(topic_subject("w", Kind::Durable, &"y/".repeat(1500)), long_durable("w"));
    }

    #[test]
    fn dollar_topics_live_apart_from_first_level_wildcards() {
        // [MQTT-4.7.2-1]: `#` and `+/…` do not match `$…` topics; neither do their patterns.
        assert!(!matches_any("w", "#", "$SYS/broker/uptime"));
        assert!(!matches_any("w", "+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches_any("w", "$SYS/#", "$SYS/broker/uptime"));
        assert!(matches_any("w", "$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    #[test]
    fn hash_matches_its_parent_level() {
        // [MQTT-4.7.1-2]: "sport/tennis/#" matches "sport/tennis".
        assert!(matches_any("w", "sport/tennis/#", "sport/tennis"));
        assert!(matches_any("w", "sport/tennis/#", "sport/tennis/player1/score"));
        assert!(!matches_any("w", "sport/tennis/#", "sport/tennisx"));
        assert_eq!(filter_patterns("w", "a/#"), vec!["w.m.t.a.>".to_owned(), "w.m.t.a".to_owned()]);
        assert_eq!(filter_patterns("w", "#"), vec!["w.m.t.>".to_owned()]);
    }

    #[test]
    fn a_wildcard_in_a_topic_level_is_a_literal() {
        // A topic level "+" or "*" (not valid in a PUBLISH, but never trusted) stays literal.
        assert!(!matches_any("w", "a/x", "a/*"));
        assert_eq!(filter_patterns("w", "a/+/c"), vec!["w.m.t.a.*.c".to_owned()]);
    }

    #[test]
    fn long_topics_use_the_long_subject() {
        let topic = "x/".repeat(1500);
        assert_eq!(topic_subject("w", Kind::Message, &topic), "w.m.l");
        let r = topic_subject("w", Kind::Retained, &topic);
        assert!(r.starts_with("w.r.l.") && r.len() == 6 + 64, "{r}");
        assert_ne!(r, topic_subject("w", Kind::Retained, &"y/".repeat(1500)));
        assert_eq!(subject_topic("w", "w.m.l"), None);
        // A filter too long for a pattern covers its whole space.
        assert_eq!(filter_patterns("w", &"+/".repeat(1100)), vec!["w.m.t.>".to_owned()]);
    }

    #[test]
    fn prefixes_are_one_plain_token() {
        assert!(valid_prefix("warden"));
        assert!(valid_prefix("w-1_x"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a.b"));
        assert!(!valid_prefix("$JS"));
        assert!(!valid_prefix("*"));
        assert!(!valid_prefix(&"a".repeat(65)));
    }

    #[test]
    fn queue_names_differ_by_group_and_filter() {
        assert_eq!(queue_name("g", "a/#"), queue_name("g", "a/#"));
        assert_ne!(queue_name("g", "a/#"), queue_name("h", "a/#"));
        assert_ne!(queue_name("g", "a/#"), queue_name("g", "a/+"));
        assert_ne!(queue_name("g/a", "b"), queue_name("g", "a/b"));
        assert!(queue_name("g", "x").bytes().all(plain));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,3}",
            "[ -~]{1,4}".prop_filter("no separators or wildcards", |s| !s.contains(['/', '+', '#'])),
            "\\PC{1,2}".prop_filter("no separators or wildcards", |s| !s.contains(['/', '+', '#', '\0'])),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter_from(t: &str, mask: u8, hash: bool) -> String {
        let mut levels: Vec<String> = t.split('/').map(str::to_owned).collect();
        for (i, l) in levels.iter_mut().enumerate() {
            if mask & (1 << (i % 8)) != 0 {
                *l = "+".into();
            }
        }
        if hash {
            let cut = usize::from(mask) % levels.len();
            levels.truncate(cut);
            levels.push("#".into());
        }
        levels.join("/")
    }

    proptest! {
        /// Every subject is plain NATS: tokens of safe bytes, no wildcard, no empty token.
        #[test]
        fn subjects_are_safe(t in topic()) {
            let s = topic_subject("w", Kind::Message, &t);
            prop_assert!(s.len() <= MAX_SUBJECT);
            for tok in s.split('.') {
                prop_assert!(!tok.is_empty());
                prop_assert!(tok != "*" && tok != ">");
                prop_assert!(tok.bytes().all(|b| plain(b) || b == b'~'));
            }
        }

        /// Decoding gives the topic back.
        #[test]
        fn encoding_is_reversible(t in topic()) {
            prop_assert_eq!(subject_topic("w", &topic_subject("w", Kind::Message, &t)), Some(t.clone()));
            prop_assert_eq!(subject_topic("w", &topic_subject("w", Kind::Retained, &t)), Some(t));
        }

        /// Distinct topics have distinct subjects.
        #[test]
        fn encoding_is_injective(a in topic(), b in topic()) {
            prop_assume!(a != b);
            prop_assert_ne!(topic_subject("w", Kind::Message, &a), topic_subject("w", Kind::Message, &b));
        }

        /// A filter's patterns match a topic's subject exactly when MQTT's filter matches the topic.
        #[test]
        fn patterns_match_as_mqtt_does(t in topic(), other in topic(), mask in any::<u8>(), hash in any::<bool>()) {
            let f = filter_from(&t, mask, hash);
            prop_assert_eq!(matches_any("w", &f, &t), mqtt_match(&f, &t), "filter {:?} topic {:?}", f, t);
            prop_assert_eq!(matches_any("w", &f, &other), mqtt_match(&f, &other), "filter {:?} topic {:?}", f, other);
        }
    }
}
