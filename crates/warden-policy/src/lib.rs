//! Warden's security decisions, kept pure: no tokio, no filesystem, no network, no clock.
//!
//! # Layout
//! - [`principal`]: who a connection is (`Principal`), the identity every session is bound to.
//! - [`password`]: password files (argon2id, Mosquitto `$6$`/`$7$`), hashing and verification.
//! - [`jwt`]: JSON Web Tokens: verification against a key set, minting for the token service.
//! - [`authn`]: who a CONNECT is: authentication and admission as one pausing state machine
//!   (bans, backoff, method order, anonymous access, tokens, look-up, SCRAM, client-id rules);
//!   the shell performs only the I/O it asks for.
//! - [`cidr`]: IPv4/IPv6 networks: `proxy_trusted`, and rules' `source` conditions.
//! - [`authz`]: the one question every publish / subscribe / delivery asks: "is this allowed?".
//! - [`quota`]: per-role quota overrides (policy store roles).
//! - [`scram`]: SCRAM-SHA-256 (RFC 5802 / RFC 7677) server state machine for MQTT 5 AUTH.
//! - [`acl`]: Mosquitto `acl_file` rules (`user`, `topic`, `pattern`), compiled to per-user tries.
//! - [`store`]: the policy store (users, groups, roles, prioritized rules), compiled into the
//!   same tries; managed live through the admin API.
//! - [`trust`]: the trust lifecycle: which credential a principal holds ([`trust::Credential`])
//!   and whether a [`trust::TrustEvent`] (revocation, removal, narrowing) ends its standing.

pub mod acl;
pub mod authn;
pub mod authz;
pub mod cert;
pub mod cidr;
pub mod devices;
pub mod enroll;
pub mod jwt;
pub mod password;
pub mod principal;
pub mod quota;
pub mod scram;
pub mod store;
pub mod trust;
pub mod watch;

pub use authz::{Action, AllowAll, Authorizer, DecidedBy, Decision, PolicyAuthorizer};
pub use principal::{Principal, PrincipalKind};
pub use quota::Quotas;

/// Test helpers: requests written as text, parsed by the codec before they are asked (a
/// topic the codec refuses can never reach an authorizer).
#[cfg(test)]
pub(crate) mod testutil {
    use mqtt_codec::{QoS, TopicFilter, TopicName};

    use crate::acl::{AclFile, AclMatch};
    use crate::{Action, Authorizer, DecidedBy, Decision, PolicyAuthorizer, Principal};

    /// An action before its topic is parsed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Req {
        /// Publish at this QoS, with this retain flag.
        Pub(QoS, bool),
        /// Subscribe with this maximum QoS.
        Sub(QoS),
        /// Receive.
        Rcv,
    }

    /// QoS from its number (test input is always 0..=2).
    pub(crate) fn qos(q: u8) -> QoS {
        QoS::from_u8(q).expect("QoS 0, 1 or 2")
    }

    /// `f` with the typed action for `req` on `topic`; `None` when the codec refuses `topic`
    /// (a name for publish / receive, a filter for subscribe).
    pub(crate) fn try_act<R>(req: Req, topic: &str, f: impl FnOnce(Action<'_>) -> R) -> Option<R> {
        Some(match req {
            Req::Pub(qos, retain) => f(Action::publish(&TopicName::new(topic).ok()?, qos, retain)),
            Req::Sub(qos) => f(Action::subscribe(&TopicFilter::new(topic).ok()?, qos)),
            Req::Rcv => f(Action::receive(&TopicName::new(topic).ok()?)),
        })
    }

    /// [`try_act`] for a topic the test knows is valid.
    pub(crate) fn act<R>(req: Req, topic: &str, f: impl FnOnce(Action<'_>) -> R) -> R {
        try_act(req, topic, f).unwrap_or_else(|| panic!("not a valid topic for {req:?}: {topic:?}"))
    }

    /// ACL checks with text requests.
    pub(crate) trait AclStr {
        fn check_str(&self, user: Option<&str>, client: &str, req: Req, topic: &str) -> Option<bool>;
        fn explain_str(&self, user: Option<&str>, client: &str, req: Req, topic: &str) -> Option<AclMatch>;
    }

    impl AclStr for AclFile {
        fn check_str(&self, user: Option<&str>, client: &str, req: Req, topic: &str) -> Option<bool> {
            act(req, topic, |a| self.check(user, client, a))
        }
        fn explain_str(&self, user: Option<&str>, client: &str, req: Req, topic: &str) -> Option<AclMatch> {
            act(req, topic, |a| self.explain(user, client, a))
        }
    }

    /// Authorizer questions with text requests.
    pub(crate) trait AuthorizeStr: Authorizer {
        fn authorize_str(&self, p: &Principal, client: &str, req: Req, topic: &str) -> Decision {
            act(req, topic, |a| self.authorize(p, client, a))
        }
        fn authorize_granted_str(&self, p: &Principal, client: &str, req: Req, topic: &str) -> Decision {
            act(req, topic, |a| self.authorize_granted(p, client, a))
        }
    }

    impl<A: Authorizer + ?Sized> AuthorizeStr for A {}

    impl PolicyAuthorizer {
        /// [`PolicyAuthorizer::explain`] with a text request.
        pub(crate) fn explain_str(&self, p: &Principal, client: &str, req: Req, topic: &str) -> (Decision, DecidedBy) {
            act(req, topic, |a| self.explain(p, client, a))
        }
    }
}
