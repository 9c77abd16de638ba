//! The authorization seam: one place where every publish, subscribe and delivery asks
//! "is this allowed?". The policy sources (ACL file, policy store, token scopes) plug in here.

use crate::Principal;

/// What a client is trying to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name (with this QoS and retain flag).
    Publish {
        /// Requested QoS.
        qos: u8,
        /// Retain flag.
        retain: bool,
    },
    /// Subscribe to a topic filter (with this maximum QoS).
    Subscribe {
        /// Requested maximum QoS.
        qos: u8,
    },
    /// Receive a message published on a topic name (checked at delivery time).
    Receive,
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
    /// Decide `action` on `topic` (a topic name for publish/receive, a filter for subscribe).
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action, topic: &str) -> Decision;
}

/// No authorization source configured: everything is allowed (Mosquitto's behaviour, SPEC §6);
/// the broker logs a warning at start when it runs with this.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _: &Principal, _: &str, _: Action, _: &str) -> Decision {
        Decision::Allow
    }
}

/// The rule lines that `mqtt:` scopes stand for: `mqtt:pub:<filter>` → `topic write <filter>`,
/// `mqtt:sub:<filter>` → `topic read <filter>`. Other scopes (role names) and scopes with an
/// invalid filter give no line; one rule per line, so a filter with a newline cannot smuggle in
/// another directive.
pub fn scope_rule_lines<S: AsRef<str>>(scopes: &[S]) -> String {
    let mut text = String::new();
    for s in scopes {
        let s = s.as_ref();
        let (access, filter) = if let Some(f) = s.strip_prefix("mqtt:pub:") {
            ("write", f)
        } else if let Some(f) = s.strip_prefix("mqtt:sub:") {
            ("read", f)
        } else {
            continue;
        };
        let line = format!("topic {access} {filter}\n");
        if filter.is_empty() || filter.contains(['\n', '\r']) || crate::acl::AclFile::parse(&line).is_err() {
            continue;
        }
        text.push_str(&line);
    }
    text
}

/// Compile token scopes into rules (see [`scope_rule_lines`]): `mqtt:pub:<filter>` allows
/// publishing to what the filter matches, `mqtt:sub:<filter>` allows subscribing within the
/// filter and receiving what it matches.
pub fn compile_scopes(scopes: &[std::sync::Arc<str>]) -> crate::acl::AclFile {
    // Every line was checked on its own; the whole cannot fail.
    crate::acl::AclFile::parse(&scope_rule_lines(scopes)).unwrap_or_default()
}

/// The broker's policy: the ACL file (if configured) and each token principal's scopes.
/// A principal's permissions are the union of the grants of every source that names it; an
/// explicit deny wins (SPEC §6). With no source at all for a principal (no ACL file, not a
/// token principal), everything is allowed, as in Mosquitto without an ACL.
#[derive(Debug)]
pub struct PolicyAuthorizer {
    acl: Option<crate::acl::AclFile>,
    deny_disconnects: bool,
}

impl PolicyAuthorizer {
    /// `deny_disconnects`: a denied PUBLISH disconnects (`on_deny = "disconnect"`) instead of
    /// being acknowledged and dropped.
    pub fn new(acl: Option<crate::acl::AclFile>, deny_disconnects: bool) -> Self {
        PolicyAuthorizer { acl, deny_disconnects }
    }

    /// True when an ACL file is in force.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }
}

impl Authorizer for PolicyAuthorizer {
    fn authorize(&self, principal: &Principal, client_id: &str, action: Action, topic: &str) -> Decision {
        let user = match principal.kind {
            crate::PrincipalKind::Anonymous => None,
            _ => Some(&*principal.name),
        };
        let from_acl = self.acl.as_ref().map(|a| a.check(user, client_id, action, topic));
        let from_scopes = principal.grants.as_ref().map(|g| g.check(None, client_id, action, topic));
        let answers = [from_acl, from_scopes];
        let allowed = if answers.iter().all(Option::is_none) {
            true // no source names this principal
        } else if answers.contains(&Some(Some(false))) {
            false // an explicit deny wins
        } else {
            answers.contains(&Some(Some(true)))
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny { disconnect: self.deny_disconnects && matches!(action, Action::Publish { .. }) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const PUB: Action = Action::Publish { qos: 1, retain: false };
    const SUB: Action = Action::Subscribe { qos: 1 };

    fn token(scopes: &[&str]) -> Principal {
        Principal::token("dev-001", vec![], scopes.iter().map(|s| Arc::from(*s)).collect())
    }

    #[test]
    fn scopes_grant_what_they_name_and_nothing_else() {
        let p = token(&["mqtt:pub:devices/dev-001/#", "mqtt:sub:commands/dev-001/#", "operator"]);
        let a = PolicyAuthorizer::new(None, true);
        assert!(a.authorize(&p, "dev-001", PUB, "devices/dev-001/temp").is_allowed());
        assert_eq!(a.authorize(&p, "dev-001", PUB, "devices/dev-002/temp"), Decision::Deny { disconnect: true });
        assert!(a.authorize(&p, "dev-001", SUB, "commands/dev-001/+").is_allowed());
        assert!(!a.authorize(&p, "dev-001", SUB, "commands/#").is_allowed(), "broader than granted");
        assert!(!a.authorize(&p, "dev-001", PUB, "commands/dev-001/x").is_allowed(), "sub scope is not pub");
        assert!(a.authorize(&p, "dev-001", Action::Receive, "commands/dev-001/reboot").is_allowed());
        assert!(!a.authorize(&p, "dev-001", Action::Receive, "$SYS/broker/uptime").is_allowed());
        assert_eq!(a.authorize(&p, "dev-001", SUB, "x"), Decision::Deny { disconnect: false });
    }

    #[test]
    fn a_token_without_mqtt_scopes_gets_nothing_and_bad_scopes_are_ignored() {
        let a = PolicyAuthorizer::new(None, false);
        let p = token(&["operator", "mqtt:pub:", "mqtt:pub:a/#/b", "mqtt:pub:x\ntopic write #"]);
        for t in ["a", "a/x/b", "x", "anything"] {
            assert!(!a.authorize(&p, "c", PUB, t).is_allowed(), "{t}");
        }
    }

    #[test]
    fn acl_and_scopes_are_a_union_and_deny_wins() {
        let acl = crate::acl::AclFile::parse("user dev-001\ntopic write extra/#\ntopic deny devices/dev-001/secret\n")
            .unwrap();
        let a = PolicyAuthorizer::new(Some(acl), true);
        let p = token(&["mqtt:pub:devices/dev-001/#"]);
        assert!(a.authorize(&p, "c", PUB, "extra/x").is_allowed(), "from the ACL");
        assert!(a.authorize(&p, "c", PUB, "devices/dev-001/t").is_allowed(), "from the scopes");
        assert!(!a.authorize(&p, "c", PUB, "devices/dev-001/secret").is_allowed(), "explicit deny wins");
        assert!(!a.authorize(&Principal::user("bob"), "c", PUB, "extra/x").is_allowed(), "default deny with an ACL");
    }

    #[test]
    fn no_source_means_allow_all() {
        let a = PolicyAuthorizer::new(None, true);
        assert!(a.authorize(&Principal::user("ann"), "c", PUB, "$SYS/x").is_allowed());
        assert!(a.authorize(&Principal::anonymous(), "c", SUB, "#").is_allowed());
    }
}
