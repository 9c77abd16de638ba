//! Topic names and topic filters (§4.7), validated when parsed. They are distinct types so that
//! a filter can never be used where a name is expected.

use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid topic name or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic [MQTT-4.7.3-1].
    #[error("empty topic")]
    Empty,
    /// Longer than 65,535 bytes.
    #[error("topic longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000 [MQTT-4.7.3-2].
    #[error("topic contains U+0000")]
    Nul,
    /// A wildcard in a topic name [MQTT-3.3.2-2].
    #[error("wildcard in a topic name")]
    WildcardInName,
    /// `#` followed by more levels [MQTT-4.7.1-2].
    #[error("'#' must be the last level of a topic filter")]
    HashNotLast,
    /// `+` or `#` sharing a level with other characters [MQTT-4.7.1-2/3].
    #[error("wildcards '+' and '#' must occupy a whole topic level")]
    PartialWildcard,
    /// `$share/` without a valid share name or filter [MQTT-4.8.2-1/2].
    #[error("invalid shared subscription")]
    BadShare,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > u16::MAX as usize {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic name: what a PUBLISH is sent to. No wildcards, no U+0000, 1..=65535 bytes.
/// The one exception is the empty name of an MQTT 5 PUBLISH that uses a topic alias, which only
/// the codec can build ([`TopicName::is_empty`]) and the broker resolves before use.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validate a topic name.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        // Every PUBLISH passes here: one scan for the three forbidden bytes (all ASCII, so
        // bytes suffice), the exact error only when one is found.
        if s.as_bytes().iter().any(|&b| matches!(b, 0 | b'+' | b'#')) || s.is_empty() || s.len() > u16::MAX as usize {
            check_common(s)?;
            return Err(TopicError::WildcardInName);
        }
        Ok(TopicName(Arc::from(s)))
    }

    /// The empty name sent in a v5 PUBLISH whose topic is carried by a Topic Alias.
    pub fn alias_placeholder() -> Self {
        TopicName(Arc::from(""))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True only for the placeholder of a PUBLISH that relies on a topic alias.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many levels the name has (one more than its `/` separators).
    pub fn level_count(&self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// Topic levels, split on `/`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.0.split('/')
    }

    /// True for names starting with `$` (not matched by wildcards at the first level).
    pub fn is_dollar(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A topic filter: what a SUBSCRIBE names. `+` matches one level, `#` the rest; a shared
/// subscription `$share/{group}/{filter}` is a filter too.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

fn check_filter_levels(s: &str) -> Result<(), TopicError> {
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level == "#" && levels.peek().is_some() {
            return Err(TopicError::HashNotLast);
        }
        if level.len() > 1 && level.contains(['+', '#']) {
            return Err(TopicError::PartialWildcard);
        }
    }
    Ok(())
}

impl TopicFilter {
    /// Validate a topic filter (including `$share/{group}/{filter}`).
    pub fn new(s: &str) -> Result<Self, TopicError> {
        check_common(s)?;
        if let Some(rest) = s.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            check_filter_levels(filter)?;
        } else if s == "$share" {
            return Err(TopicError::BadShare);
        } else {
            check_filter_levels(s)?;
        }
        Ok(TopicFilter(Arc::from(s)))
    }

    /// The whole filter as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For `$share/{group}/{filter}`: the group and the filter.
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix("$share/").and_then(|r| r.split_once('/'))
    }

    /// The filter that is matched against topic names (the part after `$share/{group}/`).
    pub fn match_filter(&self) -> &str {
        self.shared().map_or(&self.0, |(_, f)| f)
    }

    /// True when the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.match_filter().contains(['+', '#'])
    }

    /// Reference matcher (§4.7): does this filter match `topic`? Wildcards at the first level
    /// do not match topics starting with `$` [MQTT-4.7.2-1].
    pub fn matches(&self, topic: &str) -> bool {
        filter_matches(self.match_filter(), topic)
    }
}

/// Does the (non-shared) filter string match the topic name? Reference implementation used by
/// tests; the broker uses a trie with the same semantics.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(TopicName::new("a/b").is_ok());
        assert!(TopicName::new("/").is_ok());
        assert_eq!(TopicName::new(""), Err(TopicError::Empty)); // [MQTT-4.7.3-1]
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName)); // [MQTT-3.3.2-2]
        assert_eq!(TopicName::new("a#"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::Nul)); // [MQTT-4.7.3-2]
                                                                  // U+0000 is reported before a wildcard, wherever each is.
        assert_eq!(TopicName::new("a/+\0"), Err(TopicError::Nul));
        assert_eq!(TopicName::new(&"a".repeat(65_536)), Err(TopicError::TooLong));
        assert!(TopicName::new(&"a".repeat(65_535)).is_ok());
        assert!(TopicName::new("é/ü/\u{1F600}").is_ok());
        assert_eq!(TopicName::new("a/b/c").unwrap().level_count(), 3);
        assert_eq!(TopicName::new("/").unwrap().level_count(), 2);
        assert_eq!(TopicName::new("a").unwrap().level_count(), 1);
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "a/+/b", "+/+", "/", "$SYS/#", "$share/g/a/#", "$share/g/#"] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        // [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.8.2-1], [MQTT-4.8.2-2]
        for bad in ["a#", "a/#/b", "#/a", "a+", "a/+b", "", "$share/", "$share/g", "$share//a", "$share/g+/a", "$share"]
        {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
        assert_eq!(TopicFilter::new("$share/g/a/+").unwrap().shared(), Some(("g", "a/+")));
        // The two misplaced-wildcard errors are told apart (ACL files report which).
        assert_eq!(TopicFilter::new("a/#/b"), Err(TopicError::HashNotLast)); // [MQTT-4.7.1-2]
        assert_eq!(TopicFilter::new("a/b#"), Err(TopicError::PartialWildcard)); // [MQTT-4.7.1-2]
        assert_eq!(TopicFilter::new("a/+b"), Err(TopicError::PartialWildcard)); // [MQTT-4.7.1-3]
    }

    #[test]
    fn matching() {
        let m = filter_matches;
        assert!(m("a/b", "a/b"));
        assert!(m("a/+", "a/b"));
        assert!(!m("a/+", "a/b/c"));
        assert!(m("a/#", "a")); // [MQTT-4.7.1-2]: "#" also matches the parent level
        assert!(m("a/#", "a/b/c"));
        assert!(m("+/+", "/x"));
        assert!(m("+", ""));
        assert!(!m("+", "a/b"));
        assert!(m("#", "a/b"));
        assert!(!m("#", "$SYS/x")); // [MQTT-4.7.2-1]
        assert!(!m("+/x", "$SYS/x"));
        assert!(m("$SYS/#", "$SYS/x"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
    }
}
