//! The chain walked step by step for every method, with its refusals.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use jsonwebtoken::{Algorithm, EncodingKey};
use mqtt_codec::ReasonCode;
use serde_json::{json, Value};

use super::*;
use crate::authz::ScopeMap;
use crate::cert::{identity_from_der, IdentitySource};
use crate::jwt::{mint, AccessClaims, JwtSettings, KeySet, SigningKey};
use crate::password::{hash_password, hash_password_scram, PasswordFile};
use crate::scram::ScramClient;
use crate::trust::{CertChain, ClientGrants, Credential, CredentialSource};
use crate::PrincipalKind;

const NOW: u64 = 1_700_000_000;
const HS_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ISSUER: &str = "https://issuer.example";
const BUILTIN: &str = "https://warden.example";

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

/// alice (argon2id, "wonderland") and sam (SCRAM, "sesame").
fn passwords() -> Arc<PasswordFile> {
    static F: OnceLock<Arc<PasswordFile>> = OnceLock::new();
    F.get_or_init(|| {
        let text = format!("alice:{}\nsam:{}\n", hash_password(b"wonderland"), hash_password_scram(b"sesame"));
        Arc::new(PasswordFile::parse(&text).unwrap())
    })
    .clone()
}

/// The policy store's users: stella ("starlight"), and alice again ("other").
fn store_users() -> Arc<PasswordFile> {
    static F: OnceLock<Arc<PasswordFile>> = OnceLock::new();
    F.get_or_init(|| {
        let text = format!("stella:{}\nalice:{}\n", hash_password(b"starlight"), hash_password(b"other"));
        Arc::new(PasswordFile::parse(&text).unwrap())
    })
    .clone()
}

/// Bans and backoff, as sets of names.
#[derive(Default)]
struct Gate {
    banned_ids: Vec<&'static str>,
    banned_users: Vec<&'static str>,
    backing_off: Vec<&'static str>,
}

impl Admission for Gate {
    fn name_banned(&self, client_id: &str, username: Option<&str>, now: u64) -> bool {
        assert_eq!(now, NOW, "the chain passes its time on");
        self.banned_ids.contains(&client_id) || username.is_some_and(|u| self.banned_users.contains(&u))
    }
    fn backing_off(&self, username: &str) -> bool {
        self.backing_off.contains(&username)
    }
}

/// The built-in token service: an EdDSA key, a revocation set and a client registry.
struct Issuer {
    key: SigningKey,
    keys: Arc<KeySet>,
    revoked: HashSet<String>,
    clients: HashMap<String, ClientGrants>,
}

impl Issuer {
    fn new() -> Issuer {
        let key = SigningKey::generate();
        let keys = Arc::new(KeySet::from_jwks_json(&json!({ "keys": [key.jwk()] }).to_string()).unwrap());
        let grants = ClientGrants { scopes: vec!["mqtt:pub:devices/dev-001/#".into()], roles: vec!["sensor".into()] };
        Issuer { key, keys, revoked: HashSet::new(), clients: HashMap::from([("dev-001".to_owned(), grants)]) }
    }

    fn token(&self, f: impl FnOnce(&mut AccessClaims)) -> String {
        let mut c = AccessClaims {
            issuer: BUILTIN.into(),
            subject: "dev-001".into(),
            audience: None,
            client_id: "dev-001".into(),
            scope: "mqtt:pub:devices/dev-001/#".into(),
            roles: vec!["sensor".into()],
            issued_at: NOW - 10,
            expires_at: NOW + 600,
            jti: "jti-1".into(),
        };
        f(&mut c);
        mint(&c, &self.key)
    }
}

impl TokenIssuer for Issuer {
    fn keys(&self) -> Arc<KeySet> {
        self.keys.clone()
    }
    fn settings(&self) -> JwtSettings {
        JwtSettings { issuer: Some(BUILTIN.into()), leeway_secs: 0, ..JwtSettings::default() }
    }
    fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains(jti)
    }
    fn client(&self, id: &str) -> Option<ClientGrants> {
        self.clients.get(id).cloned()
    }
}

/// Everything a CONNECT's decision reads, owned by the test.
struct Fix {
    rules: Rules,
    passwords: Option<Arc<PasswordFile>>,
    store_users: Option<Arc<PasswordFile>>,
    disabled: HashSet<String>,
    device_certs: crate::devices::DeviceCerts,
    gate: Gate,
    issuer: Option<Issuer>,
    external: Option<ExternalIssuer>,
    jwks: Option<Arc<KeySet>>,
    listener: ListenerAuth,
}

impl Fix {
    /// The password file, no other source, anonymous access off.
    fn new() -> Fix {
        Fix {
            rules: Rules::default(),
            passwords: Some(passwords()),
            store_users: None,
            disabled: HashSet::new(),
            device_certs: Default::default(),
            gate: Gate::default(),
            issuer: None,
            external: None,
            jwks: None,
            listener: ListenerAuth::default(),
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            rules: &self.rules,
            passwords: self.passwords.clone(),
            store_users: self.store_users.clone(),
            disabled: Arc::new(self.disabled.clone()),
            device_certs: Arc::new(self.device_certs.clone()),
            admission: &self.gate,
            issuer: self.issuer.as_ref().map(|i| i as &(dyn TokenIssuer + Sync)),
            external: self.external.as_ref(),
            jwks: self.jwks.clone(),
            listener: self.listener,
        }
    }

    fn begin<'a>(&'a self, c: &'a Conn, cert: Option<ClientCert>) -> (Chain<'a>, Step) {
        Chain::begin(self.ctx(), c.view(), cert, peer(), NOW)
    }

    /// Begin, answering every hash request by running the hash (as the shell's pool does).
    fn run(&self, c: &Conn, cert: Option<ClientCert>) -> Step {
        let (mut chain, mut step) = self.begin(c, cert);
        while let Step::NeedHash(job) = step {
            step = chain.continue_with(Answer::Hash(HashAnswer::Verified(job.verify())));
        }
        step
    }

    /// An outside HS256 issuer (`[auth.jwt]` with a secret).
    fn with_hs256(mut self, rule: SubjectRule) -> Fix {
        let mut static_keys = KeySet::empty();
        static_keys.add_hs256_secret(HS_SECRET);
        self.external = Some(ExternalIssuer {
            settings: JwtSettings {
                issuer: Some(ISSUER.into()),
                audience: Some("warden".into()),
                leeway_secs: 30,
                typ: Some(vec!["at+jwt".into(), "JWT".into()]),
                max_lifetime_secs: Some(86_400),
            },
            static_keys,
            fetches_jwks: false,
            subject_rule: rule,
            scopes: ScopeMap::default(),
        });
        self
    }
}

/// A CONNECT.
#[derive(Clone, Default)]
struct Conn {
    v3: bool,
    client_id: String,
    username: Option<String>,
    password: Option<Vec<u8>>,
    method: Option<String>,
    data: Option<Vec<u8>>,
}

impl Conn {
    fn new(client_id: &str, username: Option<&str>, password: Option<&[u8]>) -> Conn {
        Conn {
            client_id: client_id.into(),
            username: username.map(Into::into),
            password: password.map(Into::into),
            ..Conn::default()
        }
    }

    fn anonymous(client_id: &str) -> Conn {
        Conn::new(client_id, None, None)
    }

    fn token(client_id: &str, username: Option<&str>, token: &str) -> Conn {
        Conn::new(client_id, username, Some(token.as_bytes()))
    }

    fn scram(client_id: &str, first: &[u8]) -> Conn {
        Conn { method: Some("SCRAM-SHA-256".into()), data: Some(first.to_vec()), ..Conn::anonymous(client_id) }
    }

    fn view(&self) -> ConnectView<'_> {
        ConnectView {
            v5: !self.v3,
            client_id: &self.client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            auth_method: self.method.as_deref(),
            auth_data: self.data.as_deref(),
        }
    }
}

#[track_caller]
fn done(step: Step) -> Authenticated {
    match step {
        Step::Done(a) => *a,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[track_caller]
fn refused(step: Step) -> Refusal {
    match step {
        Step::Refuse(r) => r,
        other => panic!("expected Refuse, got {other:?}"),
    }
}

#[track_caller]
fn hash_job(step: Step) -> HashJob {
    match step {
        Step::NeedHash(j) => j,
        other => panic!("expected NeedHash, got {other:?}"),
    }
}

#[track_caller]
fn lookup_request(step: Step) -> LookupRequest {
    match step {
        Step::NeedLookup(r) => r,
        other => panic!("expected NeedLookup, got {other:?}"),
    }
}

fn hs256(header: Value, claims: &Value) -> String {
    sign(header, claims, &EncodingKey::from_secret(HS_SECRET), Algorithm::HS256)
}

fn sign(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let msg = format!("{}.{}", b64(&header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn outside_claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "dev-001", "aud": "warden", "scope": "mqtt:pub:devices/dev-001/#",
        "iat": NOW - 10, "exp": NOW + 600, "jti": "out-1",
    })
}

fn with(mut c: Value, name: &str, v: Value) -> Value {
    c[name] = v;
    c
}

fn cert_with_cn(cn: &str) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Fleet");
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().to_vec()
}

/// What the TLS layer hands on for a verified certificate, its identity taken per `source`.
fn client_cert(der: &[u8], source: IdentitySource) -> ClientCert {
    ClientCert { identity: identity_from_der(der, source), cert: CertChain::from_ders(std::iter::once(der)) }
}

// ---- password file and policy-store users ------------------------------------------------

#[test]
fn password_file_user_step_by_step() {
    let f = Fix::new();
    let c = Conn::new("alice", Some("alice"), Some(b"wonderland"));
    let (mut chain, step) = f.begin(&c, None);
    assert!(chain.password_attempt());
    // The slow hash is the shell's to run, on its pool.
    let job = hash_job(step);
    assert!(job.verify());
    let a = done(chain.continue_with(Answer::Hash(HashAnswer::Verified(true))));
    assert_eq!((a.principal.kind, &*a.principal.name), (PrincipalKind::User, "alice"));
    assert_eq!(a.principal.source, CredentialSource::PasswordFile);
    assert_eq!(a.method, Method::Password);
    assert!(a.token.is_none() && a.scram_user.is_none() && a.auth_data.is_none());
    // Its verified password lifts the user name's backoff from this address.
    assert_eq!(a.backoff_cleared.as_deref(), Some("alice"));
}

#[test]
fn wrong_password_and_unknown_user_are_refused_alike() {
    let f = Fix::new();
    let wrong = Conn::new("c1", Some("alice"), Some(b"guess"));
    let unknown = Conn::new("c1", Some("mallory"), Some(b"guess"));
    let mut refusals = Vec::new();
    for c in [&wrong, &unknown] {
        let (mut chain, step) = f.begin(c, None);
        // The unknown user costs the same hash (a dummy one).
        let job = hash_job(step);
        assert!(!job.verify());
        let r = refused(chain.continue_with(Answer::Hash(HashAnswer::Verified(false))));
        assert_eq!(r.backoff_user.as_deref(), c.username.as_deref());
        refusals.push(Refusal { backoff_user: None, ..r });
    }
    assert_eq!(refusals[0], refusals[1]);
    let r = &refusals[0];
    assert_eq!((r.code, &r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, &Cause::BadCredentials));
    assert_eq!(r.method, Method::Password);
    assert!(r.guess, "a wrong password counts towards the address's ban");
}

#[test]
fn policy_store_users_come_after_the_password_file() {
    let mut f = Fix::new();
    f.store_users = Some(store_users());
    let a = done(f.run(&Conn::new("c", Some("stella"), Some(b"starlight")), None));
    assert_eq!((&*a.principal.name, a.principal.source), ("stella", CredentialSource::StoreUser));
    assert_eq!(a.method, Method::Password);
    // alice is in both: the password file decides.
    assert!(matches!(f.run(&Conn::new("c", Some("alice"), Some(b"other")), None), Step::Refuse(_)));
    let a = done(f.run(&Conn::new("c", Some("alice"), Some(b"wonderland")), None));
    assert_eq!(a.principal.source, CredentialSource::PasswordFile);
    // Only the store: its users, and unknown users against its dummy hash.
    f.passwords = None;
    let a = done(f.run(&Conn::new("c", Some("alice"), Some(b"other")), None));
    assert_eq!(a.principal.source, CredentialSource::StoreUser);
    let (_, step) = f.begin(&Conn::new("c", Some("nobody"), Some(b"x")), None);
    hash_job(step);
}

#[test]
fn no_password_source_and_half_credentials() {
    let mut f = Fix::new();
    f.passwords = None;
    // Credentials that nothing can check: refused, or ignored with anonymous access.
    let c = Conn::new("c", Some("alice"), Some(b"pw"));
    let r = refused(f.run(&c, None));
    assert_eq!((r.code, r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::BadCredentials));
    let user_only = Conn::new("c", Some("alice"), None);
    assert_eq!(refused(f.run(&user_only, None)).code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    f.rules.allow_anonymous = true;
    assert_eq!(done(f.run(&c, None)).principal.kind, PrincipalKind::Anonymous);
    assert_eq!(done(f.run(&user_only, None)).principal.kind, PrincipalKind::Anonymous);
    // With a password source a user name without password is refused even then.
    f.passwords = Some(passwords());
    let r = refused(f.run(&user_only, None));
    assert_eq!(r.code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    assert!(r.guess && r.backoff_user.is_none(), "no password: not an attempt at one");
    assert_eq!(refused(f.run(&Conn::new("c", None, Some(b"pw")), None)).code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
}

#[test]
fn hashing_busy_or_failed_is_not_a_failed_login() {
    let f = Fix::new();
    let c = Conn::new("c", Some("alice"), Some(b"wonderland"));
    let (mut chain, step) = f.begin(&c, None);
    hash_job(step);
    let r = refused(chain.continue_with(Answer::Hash(HashAnswer::Busy)));
    assert_eq!((r.code, &r.cause), (ReasonCode::SERVER_BUSY, &Cause::Busy(Busy::Hashing)));
    assert!(!r.guess && r.backoff_user.is_none());
    let (mut chain, _) = f.begin(&c, None);
    let r = refused(chain.continue_with(Answer::Hash(HashAnswer::Failed)));
    assert_eq!((r.code, &r.cause), (ReasonCode::SERVER_UNAVAILABLE, &Cause::HashFailed));
    assert!(!r.guess);
}

// ---- anonymous ----------------------------------------------------------------------------

#[test]
fn anonymous_allowed_or_refused() {
    let mut f = Fix::new();
    let c = Conn::anonymous("sensor-9");
    let r = refused(f.run(&c, None));
    assert_eq!((r.code, &r.cause, r.method), (ReasonCode::NOT_AUTHORIZED, &Cause::AnonymousRefused, Method::Anonymous));
    assert!(r.guess, "a CONNECT without credentials where anonymous is refused is a scanner");
    f.rules.allow_anonymous = true;
    let a = done(f.run(&c, None));
    assert_eq!((a.principal.kind, a.method), (PrincipalKind::Anonymous, Method::Anonymous));
    assert!(a.backoff_cleared.is_none());
    // Disabling the name "anonymous" does not touch the anonymous principal.
    f.disabled.insert("anonymous".into());
    done(f.run(&c, None));
}

// ---- bans and backoff ---------------------------------------------------------------------

#[test]
fn banned_client_id_or_user_name_is_refused_before_any_work() {
    let mut f = Fix::new();
    f.gate.banned_ids.push("bad-device");
    f.gate.banned_users.push("alice");
    for c in [Conn::new("bad-device", Some("bob"), Some(b"x")), Conn::new("c", Some("alice"), Some(b"wonderland"))] {
        let r = refused(f.begin(&c, None).1); // no hash asked for
        assert_eq!((r.code, &r.cause), (ReasonCode::BANNED, &Cause::Banned));
        assert!(!r.guess && r.backoff_user.is_none());
    }
    // A principal name banned is refused once it is known (a certificate naming it).
    f.gate.banned_users = vec!["dev-7"];
    let der = cert_with_cn("dev-7");
    let r = refused(f.run(&Conn::anonymous("c"), Some(client_cert(&der, IdentitySource::Cn))));
    assert_eq!((r.code, &r.cause, r.method), (ReasonCode::BANNED, &Cause::BannedPrincipal, Method::Certificate));
    assert!(!r.guess);
}

#[test]
fn a_user_name_backing_off_is_refused_before_hashing() {
    let mut f = Fix::new().with_hs256(SubjectRule::Off);
    f.gate.backing_off.push("alice");
    let r = refused(f.begin(&Conn::new("c", Some("alice"), Some(b"wonderland")), None).1);
    assert_eq!(
        (r.code, &r.cause, r.method),
        (ReasonCode::CONNECTION_RATE_EXCEEDED, &Cause::BackingOff, Method::Password)
    );
    assert!(r.guess, "counts towards the address's ban");
    assert!(r.backoff_user.is_none(), "does not extend the backoff itself");
    // Other user names are not affected.
    hash_job(f.begin(&Conn::new("c", Some("sam"), Some(b"x")), None).1);
    // An access token sent with the user name is no guess at its password.
    let tok = hs256(json!({"alg": "HS256", "typ": "JWT"}), &with(outside_claims(), "sub", json!("alice")));
    let c = Conn::token("c", Some("alice"), &tok);
    let (chain, step) = f.begin(&c, None);
    assert!(!chain.password_attempt());
    assert_eq!(done(step).method, Method::Token);
    // Nor is a password sent with a verified client certificate.
    let der = cert_with_cn("alice");
    let c = Conn::new("c", Some("alice"), Some(b"wonderland"));
    let (chain, step) = f.begin(&c, Some(client_cert(&der, IdentitySource::Cn)));
    assert!(!chain.password_attempt());
    assert_eq!(done(step).method, Method::Certificate);
}

// ---- SCRAM-SHA-256 (MQTT 5 enhanced authentication) ----------------------------------------

/// The exchange of [MQTT-4.12.0-1]: CONNECT (client-first) → AUTH 0x18 (server-first) → AUTH
/// 0x18 (client-final) → CONNACK with the server-final message.
fn scram(f: &Fix, user: &str, password: &[u8]) -> (Step, ScramClient) {
    let (mut client, first) = ScramClient::new(user, password);
    let c = Conn::scram("c", &first);
    let (mut chain, step) = f.begin(&c, None);
    let Step::NeedAuthData(challenge) = step else { panic!("expected NeedAuthData, got {step:?}") };
    assert_eq!(challenge.method, "SCRAM-SHA-256");
    let fin = client.client_final(&challenge.data).unwrap();
    let reply = AuthReply::Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        method: Some("SCRAM-SHA-256".into()),
        data: Some(fin),
    };
    (chain.continue_with(Answer::AuthData(reply)), client)
}

#[test]
fn scram_exchange_step_by_step() {
    let f = Fix::new();
    let (step, client) = scram(&f, "sam", b"sesame");
    let a = done(step);
    assert_eq!((&*a.principal.name, a.method), ("sam", Method::Scram));
    assert_eq!(a.scram_user.as_deref(), Some("sam"));
    client.verify_server_final(a.auth_data.as_deref().unwrap()).unwrap();
    // A wrong password and an unknown user run the same exchange and fail at the proof.
    for (user, pw) in [("sam", &b"wrong"[..]), ("nobody", b"sesame"), ("alice", b"wonderland")] {
        let r = refused(scram(&f, user, pw).0);
        assert_eq!(
            (r.code, &r.cause, r.method),
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, &Cause::BadCredentials, Method::Scram)
        );
        assert!(r.guess && r.backoff_user.is_none());
    }
}

#[test]
fn scram_refusals() {
    let mut f = Fix::new();
    let (_, first) = ScramClient::new("sam", b"sesame");
    let c = Conn::scram("c", &first);
    // Another method, a v3 client, or no password file: 0x8C.
    let other = Conn { method: Some("PLAIN".into()), ..c.clone() };
    let v3 = Conn { v3: true, ..c.clone() };
    for c in [&other, &v3] {
        let r = refused(f.begin(c, None).1);
        assert_eq!((r.code, &r.cause), (ReasonCode::BAD_AUTHENTICATION_METHOD, &Cause::BadMethod));
        assert!(!r.guess);
    }
    // A malformed client-first message: 0x86.
    let bad = Conn::scram("c", b"garbage");
    assert_eq!(refused(f.begin(&bad, None).1).code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    // The client's reply: the method may not change [MQTT-4.12.0-5], nor the reason code.
    let auth = |code, method: &str| AuthReply::Auth { reason_code: code, method: Some(method.into()), data: None };
    for (reply, code, cause) in [
        (auth(ReasonCode::CONTINUE_AUTHENTICATION, "PLAIN"), ReasonCode::PROTOCOL_ERROR, Cause::Exchange),
        (auth(ReasonCode::SUCCESS, "SCRAM-SHA-256"), ReasonCode::PROTOCOL_ERROR, Cause::Exchange),
        (AuthReply::Other, ReasonCode::PROTOCOL_ERROR, Cause::Exchange),
        (AuthReply::Malformed(ReasonCode::MALFORMED_PACKET), ReasonCode::MALFORMED_PACKET, Cause::Exchange),
        (AuthReply::Closed, ReasonCode::UNSPECIFIED_ERROR, Cause::Exchange),
        (AuthReply::TimedOut, ReasonCode::NOT_AUTHORIZED, Cause::TimedOut),
        (
            auth(ReasonCode::CONTINUE_AUTHENTICATION, "SCRAM-SHA-256"),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Cause::BadCredentials,
        ),
    ] {
        let (mut chain, step) = f.begin(&c, None);
        assert!(matches!(step, Step::NeedAuthData(_)));
        let r = refused(chain.continue_with(Answer::AuthData(reply.clone())));
        assert_eq!((r.code, r.cause), (code, cause), "{reply:?}");
    }
    f.passwords = None;
    assert_eq!(refused(f.begin(&c, None).1).code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[test]
fn reauthentication_proves_the_same_user_again() {
    let f = Fix::new();
    let ctx = f.ctx();
    let auth = |r: &mut Reauth, code, data: &[u8], user| r.step(code, Some("SCRAM-SHA-256"), Some(data), user, &ctx);
    let mut r = Reauth::default();
    let (mut client, first) = ScramClient::new("sam", b"sesame");
    let reply = auth(&mut r, ReasonCode::REAUTHENTICATE, &first, "sam").unwrap();
    assert_eq!(reply.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert!(!r.is_idle());
    let fin = client.client_final(&reply.data).unwrap();
    let done = auth(&mut r, ReasonCode::CONTINUE_AUTHENTICATION, &fin, "sam").unwrap();
    assert_eq!(done.reason_code, ReasonCode::SUCCESS);
    client.verify_server_final(&done.data).unwrap();
    assert!(r.is_idle());
    // Another identity: 0x87.
    let (_, other) = ScramClient::new("alice", b"wonderland");
    assert_eq!(
        auth(&mut Reauth::default(), ReasonCode::REAUTHENTICATE, &other, "sam"),
        Err(ReasonCode::NOT_AUTHORIZED)
    );
    // A wrong proof: 0x87.
    let mut r = Reauth::default();
    let (mut client, first) = ScramClient::new("sam", b"wrong");
    let reply = auth(&mut r, ReasonCode::REAUTHENTICATE, &first, "sam").unwrap();
    let fin = client.client_final(&reply.data).unwrap();
    assert_eq!(auth(&mut r, ReasonCode::CONTINUE_AUTHENTICATION, &fin, "sam"), Err(ReasonCode::NOT_AUTHORIZED));
    // Out of order, or another method [MQTT-4.12.1-1]: 0x82.
    assert_eq!(
        auth(&mut Reauth::default(), ReasonCode::CONTINUE_AUTHENTICATION, &first, "sam"),
        Err(ReasonCode::PROTOCOL_ERROR)
    );
    let step = Reauth::default().step(ReasonCode::REAUTHENTICATE, Some("PLAIN"), Some(&first), "sam", &ctx);
    assert_eq!(step, Err(ReasonCode::PROTOCOL_ERROR));
}

/// SPEC §10: a name disabled in the policy store is refused by SCRAM too (0x87, after the
/// proof, as the password path refuses it after the hash: a wrong password still reads 0x86),
/// and the refusal is not a guess.
#[test]
fn scram_refuses_a_disabled_user() {
    let mut f = Fix::new();
    f.disabled.insert("sam".into());
    let r = refused(scram(&f, "sam", b"sesame").0);
    assert_eq!((r.code, &r.cause, r.method), (ReasonCode::NOT_AUTHORIZED, &Cause::Disabled, Method::Scram));
    assert!(!r.guess && r.backoff_user.is_none(), "not a guess");
    let r = refused(scram(&f, "sam", b"wrong").0);
    assert_eq!((r.code, &r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, &Cause::BadCredentials));
    // Another user is untouched; enabled again, sam logs in.
    f.disabled = HashSet::from(["alice".to_owned()]);
    let a = done(scram(&f, "sam", b"sesame").0);
    assert_eq!((&*a.principal.name, a.principal.source), ("sam", CredentialSource::PasswordFile));
}

/// A user removed from the password file cannot log in with SCRAM: the exchange reads the file
/// in force when it begins, and fails at the proof like an unknown user's.
#[test]
fn scram_refuses_a_user_removed_from_the_password_file() {
    let mut f = Fix::new();
    let text = format!("alice:{}\n", hash_password(b"wonderland"));
    f.passwords = Some(Arc::new(PasswordFile::parse(&text).unwrap()));
    let r = refused(scram(&f, "sam", b"sesame").0);
    assert_eq!((r.code, &r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, &Cause::BadCredentials));
}

/// What a SCRAM-proved principal stands on, read again with the context of the moment: its
/// name not disabled, still in the password file. The shell asks after registering a new
/// connection, so that a change made while the exchange waited on the client is not missed.
#[test]
fn a_scram_principal_stands_only_while_enabled_and_in_the_file() {
    let mut f = Fix::new();
    let a = done(scram(&f, "sam", b"sesame").0);
    assert!(f.ctx().stands(&a.principal));
    f.disabled.insert("sam".into());
    assert!(!f.ctx().stands(&a.principal), "disabled meanwhile");
    f.disabled.clear();
    f.passwords = Some(Arc::new(PasswordFile::parse("").unwrap()));
    assert!(!f.ctx().stands(&a.principal), "removed meanwhile");
    f.passwords = None;
    assert!(!f.ctx().stands(&a.principal), "no password file any more");
    // The other sources: a store user stands while the store holds it; others by name only.
    let mut f = Fix::new();
    f.store_users = Some(store_users());
    let stella = Principal::user("stella").with_credential(CredentialSource::StoreUser, None);
    assert!(f.ctx().stands(&stella));
    f.store_users = None;
    assert!(!f.ctx().stands(&stella));
    let cert = Principal::certificate("stella");
    assert!(f.ctx().stands(&cert));
    f.disabled.insert("stella".into());
    assert!(!f.ctx().stands(&cert));
    assert!(f.ctx().stands(&Principal::anonymous()));
}

/// Re-authentication [MQTT-4.12.1-2] of a user disabled in the policy store or removed from
/// the password file since it connected fails (0x87: the shell ends the connection with that
/// DISCONNECT), whether the change comes before the exchange or between its two AUTH packets.
#[test]
fn reauthentication_of_a_disabled_or_removed_user_ends_the_connection() {
    let step =
        |r: &mut Reauth, f: &Fix, code, data: &[u8]| r.step(code, Some("SCRAM-SHA-256"), Some(data), "sam", &f.ctx());
    let mut disabled = Fix::new();
    disabled.disabled.insert("sam".into());
    let mut removed = Fix::new();
    removed.passwords = Some(Arc::new(PasswordFile::parse(&format!("alice:{}\n", hash_password(b"x"))).unwrap()));
    let enabled = Fix::new();
    for (name, changed) in [("disabled", &disabled), ("removed", &removed)] {
        // Changed before the exchange: refused at its first packet.
        let (_, first) = ScramClient::new("sam", b"sesame");
        let mut r = Reauth::default();
        assert_eq!(
            step(&mut r, changed, ReasonCode::REAUTHENTICATE, &first),
            Err(ReasonCode::NOT_AUTHORIZED),
            "{name}"
        );
        assert!(r.is_idle());
        // Changed between the two packets: the right proof is refused all the same.
        let (mut client, first) = ScramClient::new("sam", b"sesame");
        let mut r = Reauth::default();
        let reply = step(&mut r, &enabled, ReasonCode::REAUTHENTICATE, &first).unwrap();
        let fin = client.client_final(&reply.data).unwrap();
        assert_eq!(
            step(&mut r, changed, ReasonCode::CONTINUE_AUTHENTICATION, &fin),
            Err(ReasonCode::NOT_AUTHORIZED),
            "{name}"
        );
    }
}

// ---- client certificates ------------------------------------------------------------------

#[test]
fn client_certificate_identity_per_rule() {
    let f = Fix::new();
    let der = cert_with_cn("dev-42");
    let a = done(f.run(&Conn::anonymous("dev-42"), Some(client_cert(&der, IdentitySource::Cn))));
    assert_eq!((a.principal.kind, &*a.principal.name), (PrincipalKind::Certificate, "dev-42"));
    assert_eq!((a.principal.source, a.method), (CredentialSource::Certificate, Method::Certificate));
    assert!(matches!(a.principal.credential(), Some(Credential::Certificate(_))), "stays revocable by a CRL");
    // Another rule names the same certificate otherwise.
    let a = done(f.run(&Conn::anonymous("c"), Some(client_cert(&der, IdentitySource::Fingerprint))));
    assert_eq!(&*a.principal.name, crate::cert::sha256_fingerprint(&der));
    // No identity under the rule (no SAN), or an unacceptable one: 0x87, not a guess.
    for (der, source) in [(der.clone(), IdentitySource::SanDns), (cert_with_cn("dev/1"), IdentitySource::Cn)] {
        let cert = client_cert(&der, source);
        assert!(cert.identity.is_err());
        let r = refused(f.run(&Conn::anonymous("c"), Some(cert)));
        assert_eq!(
            (r.code, &r.cause, r.method),
            (ReasonCode::NOT_AUTHORIZED, &Cause::Certificate, Method::Certificate)
        );
        // A 0x87 to a CONNECT without any credentials counts as a guess, as it always has.
        assert!(r.guess && r.backoff_user.is_none());
        let r = refused(f.run(&Conn::new("c", Some("alice"), None), Some(client_cert(&der, source))));
        assert!(!r.guess, "with a user name it is a refusal of the certificate, not a guess");
    }
    // The user name and password are not consulted with a verified certificate.
    let c = Conn::new("c", Some("alice"), Some(b"wrong"));
    assert_eq!(&*done(f.run(&c, Some(client_cert(&der, IdentitySource::Cn)))).principal.name, "dev-42");
}

// ---- access tokens ------------------------------------------------------------------------

#[test]
fn outside_hs256_token_step_by_step() {
    let f = Fix::new().with_hs256(SubjectRule::Off);
    let tok = hs256(json!({"alg": "HS256", "typ": "at+jwt"}), &outside_claims());
    let c = Conn::token("dev-001", None, &tok);
    let (chain, step) = f.begin(&c, None);
    assert!(!chain.password_attempt());
    let a = done(step);
    assert_eq!((a.principal.kind, &*a.principal.name, a.method), (PrincipalKind::Token, "dev-001", Method::Token));
    assert_eq!(&*a.principal.scopes, &[Arc::from("mqtt:pub:devices/dev-001/#")]);
    // Accepted within the leeway, it lives as long as the leeway allows.
    assert_eq!(a.token, Some(TokenInfo { jti: Some("out-1".into()), expires_at: NOW + 600 + 30 }));
    let Some(Credential::Token(t)) = a.principal.credential() else { panic!("token credential") };
    assert!(t.oauth_client.is_none(), "not a client of the built-in service");
}

#[test]
fn outside_token_refusals() {
    let f = Fix::new().with_hs256(SubjectRule::Off);
    let h = json!({"alg": "HS256", "typ": "at+jwt"});
    let bad_sig = {
        let t = hs256(h.clone(), &outside_claims());
        format!("{}x", &t[..t.len() - 1])
    };
    let cases = [
        (
            "expired",
            hs256(h.clone(), &with(outside_claims(), "exp", json!(NOW - 31))),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "token expired",
        ),
        (
            "wrong issuer",
            hs256(h.clone(), &with(outside_claims(), "iss", json!("https://evil"))),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "wrong or missing issuer (iss)",
        ),
        (
            "wrong audience",
            hs256(h.clone(), &with(outside_claims(), "aud", json!("other"))),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "wrong or missing audience (aud)",
        ),
        ("bad signature", bad_sig, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "bad signature"),
        (
            "alg none",
            format!("{}.", hs256(json!({"alg": "none"}), &outside_claims()).rsplit_once('.').unwrap().0),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "unsigned token (alg: none) refused",
        ),
        // A genuine token refused on policy: 0x87.
        (
            "typ",
            hs256(json!({"alg": "HS256", "typ": "id+jwt"}), &outside_claims()),
            ReasonCode::NOT_AUTHORIZED,
            "token type (typ) not accepted",
        ),
        (
            "lifetime",
            hs256(h.clone(), &with(outside_claims(), "exp", json!(NOW + 90_000))),
            ReasonCode::NOT_AUTHORIZED,
            "token lifetime longer than the maximum",
        ),
    ];
    for (what, tok, code, reason) in cases {
        let r = refused(f.run(&Conn::token("dev-001", None, &tok), None));
        assert_eq!((r.code, r.cause, r.method), (code, Cause::Token(reason.into()), Method::Token), "{what}");
        assert_eq!(r.guess, code == ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{what}");
        assert!(r.backoff_user.is_none(), "{what}: a token is no guess at a password");
    }
    // Not a token (no token method would take it): the password methods decide.
    let c = Conn::new("c", Some("alice"), Some(b"not.a.jwt"));
    hash_job(f.begin(&c, None).1);
}

#[test]
fn token_subject_rules() {
    let tok = hs256(json!({"alg": "HS256", "typ": "JWT"}), &outside_claims());
    let f = Fix::new().with_hs256(SubjectRule::Username);
    done(f.run(&Conn::token("any", Some("dev-001"), &tok), None));
    let r = refused(f.run(&Conn::token("any", Some("dev-002"), &tok), None));
    assert_eq!((r.code, &r.cause), (ReasonCode::NOT_AUTHORIZED, &Cause::Subject));
    assert!(!r.guess);
    let f = Fix::new().with_hs256(SubjectRule::ClientId);
    done(f.run(&Conn::token("dev-001", None, &tok), None));
    assert_eq!(refused(f.run(&Conn::token("dev-002", None, &tok), None)).cause, Cause::Subject);
    // A subject that is no safe identity is refused whatever the rule.
    let f = Fix::new().with_hs256(SubjectRule::Off);
    let tok = hs256(json!({"alg": "HS256", "typ": "JWT"}), &with(outside_claims(), "sub", json!("a/b")));
    assert_eq!(refused(f.run(&Conn::token("c", None, &tok), None)).cause, Cause::Subject);
}

#[test]
fn rs256_token_from_a_jwks_url_asks_for_a_refresh() {
    let mut f = Fix::new();
    f.external = Some(ExternalIssuer {
        settings: JwtSettings { issuer: Some(ISSUER.into()), audience: None, typ: None, ..JwtSettings::default() },
        static_keys: KeySet::empty(),
        fetches_jwks: true,
        subject_rule: SubjectRule::Off,
        scopes: ScopeMap::default(),
    });
    let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "rsa-1", "n": crate::jwt::tests::RSA_N, "e": crate::jwt::tests::RSA_E}]});
    let keys = Arc::new(KeySet::from_jwks_json(&jwks.to_string()).unwrap());
    let key = EncodingKey::from_rsa_pem(crate::jwt::tests::RSA_PRIV_PEM.as_bytes()).unwrap();
    let tok = sign(json!({"alg": "RS256", "kid": "rsa-1"}), &outside_claims(), &key, Algorithm::RS256);
    let c = Conn::token("dev-001", None, &tok);
    // The key is not held yet: the shell fetches the JWKS, and the chain resumes.
    let (mut chain, step) = f.begin(&c, None);
    assert!(matches!(step, Step::NeedJwks), "{step:?}");
    let a = done(chain.continue_with(Answer::Jwks(Some(keys.clone()))));
    assert_eq!(&*a.principal.name, "dev-001");
    // No fresh keys (rate-limited, or the fetch failed): refused as an unknown key.
    let (mut chain, _) = f.begin(&c, None);
    let r = refused(chain.continue_with(Answer::Jwks(None)));
    assert_eq!((r.code, r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::Token("unknown key id (kid)".into())));
    // Once held, no refresh is asked for.
    f.jwks = Some(keys);
    done(f.begin(&c, None).1);
}

#[test]
fn builtin_tokens_with_revocation_and_the_client_registry() {
    let mut f = Fix::new();
    f.issuer = Some(Issuer::new());
    let issuer = f.issuer.as_ref().unwrap();
    let tok = issuer.token(|_| {});
    let a = done(f.run(&Conn::token("dev-001", None, &tok), None));
    assert_eq!((&*a.principal.name, a.method), ("dev-001", Method::Token));
    assert_eq!(&*a.principal.roles, &[Arc::from("sensor")]);
    assert_eq!(a.token, Some(TokenInfo { jti: Some("jti-1".into()), expires_at: NOW + 600 }), "no leeway");
    let Some(Credential::Token(t)) = a.principal.credential() else { panic!("token credential") };
    assert_eq!(t.oauth_client.as_deref(), Some("dev-001"));

    let cases = [
        ("expired", issuer.token(|c| c.expires_at = NOW - 1), "invalid token: token expired"),
        ("wrong issuer", issuer.token(|c| c.issuer = ISSUER.into()), "invalid token: wrong or missing issuer (iss)"),
        ("unknown client", issuer.token(|c| c.client_id = "gone".into()), "token's client is no longer registered"),
        (
            "narrowed",
            issuer.token(|c| c.scope = "mqtt:pub:#".into()),
            "token grants more than its client now has (client narrowed)",
        ),
        (
            "another key",
            mint(&AccessClaims { jti: "x".into(), ..sample_claims() }, &SigningKey::generate()),
            "invalid token: unknown key id (kid)",
        ),
    ];
    for (what, tok, reason) in cases {
        let r = refused(f.run(&Conn::token("dev-001", None, &tok), None));
        assert_eq!((r.code, r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, Cause::Token(reason.into())), "{what}");
    }
    // Revoked: refused from then on.
    f.issuer.as_mut().unwrap().revoked.insert("jti-1".into());
    let r = refused(f.run(&Conn::token("dev-001", None, &tok), None));
    assert_eq!(r.cause, Cause::Token("token has been revoked".into()));
    assert_eq!(tokens::verify_issued(&tok, f.issuer.as_ref().unwrap(), NOW), Err(IssuedRejected::Revoked));
}

fn sample_claims() -> AccessClaims {
    AccessClaims {
        issuer: BUILTIN.into(),
        subject: "dev-001".into(),
        audience: None,
        client_id: "dev-001".into(),
        scope: String::new(),
        roles: Vec::new(),
        issued_at: NOW,
        expires_at: NOW + 60,
        jti: "j".into(),
    }
}

#[test]
fn builtin_policy_refusal_speaks_for_the_token() {
    // The built-in service's key signed it, but its typ is refused: 0x87 even though the
    // outside issuer fails it for another reason.
    let mut f = Fix::new().with_hs256(SubjectRule::Off);
    let issuer = Issuer::new();
    let tok = issuer.token(|c| c.expires_at = NOW + 200_000);
    f.issuer = Some(issuer);
    let r = refused(f.run(&Conn::token("dev-001", None, &tok), None));
    assert_eq!(r.code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(r.cause, Cause::Token("invalid token: token lifetime longer than the maximum".into()));
}

// ---- the third-party look-up --------------------------------------------------------------

#[test]
fn lookup_decides_user_names_no_password_source_knows() {
    let mut f = Fix::new();
    f.rules.lookup = true;
    let c = Conn::new("c9", Some("remote"), Some(b"pw"));
    let (mut chain, step) = f.begin(&c, None);
    let req = lookup_request(step);
    assert_eq!(
        req,
        LookupRequest {
            client_id: "c9".into(),
            username: Some("remote".into()),
            password: Some(b"pw".to_vec()),
            peer: peer(),
            cert_identity: None
        }
    );
    assert!(!format!("{req:?}").contains("pw\""), "the password is redacted");
    let grant = LookupGrant {
        principal: "remote-user".into(),
        roles: vec!["ops".into()],
        scopes: vec!["mqtt:sub:x".into()],
        grants: Some(Arc::new(crate::acl::AclFile::parse("topic read x\n").unwrap())),
    };
    let a = done(chain.continue_with(Answer::Lookup(LookupAnswer::Allow(grant))));
    assert_eq!(
        (&*a.principal.name, a.principal.source, a.method),
        ("remote-user", CredentialSource::Lookup, Method::Lookup)
    );
    assert_eq!(&*a.principal.roles, &[Arc::from("ops")]);
    assert!(a.principal.grants().is_some());
    assert!(a.backoff_cleared.is_none(), "another principal's name: the user name's backoff stays");
    // A user the password file knows is checked there.
    hash_job(f.begin(&Conn::new("c", Some("alice"), Some(b"x")), None).1);
}

#[test]
fn lookup_refusals_and_fail_open() {
    let mut f = Fix::new();
    f.rules.lookup = true;
    let c = Conn::new("c9", Some("remote"), Some(b"pw"));
    let answer = |f: &Fix, c: &Conn, a: LookupAnswer| {
        let (mut chain, step) = f.begin(c, None);
        lookup_request(step);
        chain.continue_with(Answer::Lookup(a))
    };
    let r = refused(answer(&f, &c, LookupAnswer::Deny));
    assert_eq!((r.code, &r.cause), (ReasonCode::BAD_USER_NAME_OR_PASSWORD, &Cause::BadCredentials));
    assert!(r.guess && r.backoff_user.as_deref() == Some("remote"));
    let r = refused(answer(&f, &c, LookupAnswer::Busy));
    assert_eq!((r.code, &r.cause), (ReasonCode::SERVER_BUSY, &Cause::Busy(Busy::Lookup)));
    assert!(!r.guess);
    let r = refused(answer(&f, &c, LookupAnswer::Unavailable));
    assert_eq!((r.code, &r.cause), (ReasonCode::SERVER_UNAVAILABLE, &Cause::LookupUnavailable));
    assert!(!r.guess);
    // fail_open: the claimed name with the fallback role only; never when busy.
    f.rules.fallback_role = Some("guest".into());
    let a = done(answer(&f, &c, LookupAnswer::Unavailable));
    assert_eq!((a.principal.kind, &*a.principal.name, a.method), (PrincipalKind::Fallback, "remote", Method::Lookup));
    assert_eq!(&*a.principal.roles, &[Arc::from("guest")]);
    assert!(a.backoff_cleared.is_none(), "its password was not checked");
    assert_eq!(refused(answer(&f, &c, LookupAnswer::Busy)).code, ReasonCode::SERVER_BUSY);
    // A claimed name that is no safe identity is not admitted.
    let odd = Conn::new("c9", Some("a/b"), Some(b"pw"));
    assert_eq!(refused(answer(&f, &odd, LookupAnswer::Unavailable)).code, ReasonCode::SERVER_UNAVAILABLE);
}

#[test]
fn certificate_identity_through_the_lookup() {
    let mut f = Fix::new();
    f.rules.lookup = true;
    let der = cert_with_cn("dev-5");
    let c = Conn::anonymous("c");
    let (mut chain, step) = f.begin(&c, Some(client_cert(&der, IdentitySource::Cn)));
    let req = lookup_request(step);
    assert_eq!(req.cert_identity.as_deref(), Some("dev-5"));
    let grant = LookupGrant { principal: "ignored".into(), ..LookupGrant::default() };
    let a = done(chain.continue_with(Answer::Lookup(LookupAnswer::Allow(grant))));
    // The certificate identity stays the principal; the certificate stays revocable.
    assert_eq!((a.principal.kind, &*a.principal.name), (PrincipalKind::Certificate, "dev-5"));
    assert_eq!(a.principal.source, CredentialSource::Lookup);
    assert!(matches!(a.principal.credential(), Some(Credential::Certificate(_))));
}

// ---- disabled names and client-id rules -----------------------------------------------------

#[test]
fn a_disabled_name_is_refused_whichever_method_proves_it() {
    let mut f = Fix::new().with_hs256(SubjectRule::Off);
    f.disabled.insert("alice".into());
    f.disabled.insert("dev-001".into());
    let r = refused(f.run(&Conn::new("c", Some("alice"), Some(b"wonderland")), None));
    assert_eq!((r.code, &r.cause), (ReasonCode::NOT_AUTHORIZED, &Cause::Disabled));
    assert!(!r.guess && r.backoff_user.is_none(), "not a guess");
    let tok = hs256(json!({"alg": "HS256", "typ": "JWT"}), &outside_claims());
    assert_eq!(refused(f.run(&Conn::token("c", None, &tok), None)).cause, Cause::Disabled);
}

#[test]
fn client_id_rules() {
    let mut f = Fix::new().with_hs256(SubjectRule::Off);
    f.rules.allow_anonymous = true;
    let alice = |id: &str| Conn::new(id, Some("alice"), Some(b"wonderland"));
    // Off: any client id.
    done(f.run(&alice("whatever"), None));
    f.rules.client_id_rule = ClientIdRule::Exact;
    done(f.run(&alice("alice"), None));
    let r = refused(f.run(&alice("alice-1"), None));
    assert_eq!(
        (r.code, &r.cause, r.method),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, &Cause::ClientId, Method::Password)
    );
    assert!(!r.guess && r.backoff_user.is_none());
    // A token for another principal than the client id names.
    let tok = hs256(json!({"alg": "HS256", "typ": "JWT"}), &outside_claims());
    assert_eq!(refused(f.run(&Conn::token("dev-002", None, &tok), None)).cause, Cause::ClientId);
    done(f.run(&Conn::token("dev-001", None, &tok), None));
    f.rules.client_id_rule = ClientIdRule::Prefix;
    for ok in ["alice", "alice-1", "alice/x", "alice:2", "alice.y", "alice_z"] {
        done(f.run(&alice(ok), None));
    }
    for bad in ["alice1", "xalice", "alic"] {
        assert_eq!(refused(f.run(&alice(bad), None)).cause, Cause::ClientId, "{bad}");
    }
    // Anonymous clients have no name to match.
    done(f.run(&Conn::anonymous("anything"), None));
}

#[test]
fn reserved_principal_names() {
    let mut f = Fix::new();
    f.rules.allow_anonymous = true;
    f.rules.reserve_names = true;
    f.issuer = Some(Issuer::new());
    // Another principal's name as client id: anonymous, another user, an OAuth client's id.
    for id in ["alice", "sam", "dev-001"] {
        let r = refused(f.run(&Conn::anonymous(id), None));
        assert_eq!((r.code, &r.cause), (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, &Cause::ClientId), "{id}");
    }
    assert_eq!(refused(f.run(&Conn::new("sam", Some("alice"), Some(b"wonderland")), None)).cause, Cause::ClientId);
    // Its own name is its own.
    done(f.run(&Conn::new("alice", Some("alice"), Some(b"wonderland")), None));
    // A fail-open client only claimed its name: it is not that principal.
    f.rules.lookup = true;
    f.rules.fallback_role = Some("guest".into());
    let mut f2 = f;
    f2.passwords = None;
    f2.store_users = Some(store_users());
    let c = Conn::new("stella", Some("remote"), Some(b"x"));
    let (mut chain, step) = f2.begin(&c, None);
    lookup_request(step);
    let r = refused(chain.continue_with(Answer::Lookup(LookupAnswer::Unavailable)));
    assert_eq!(r.cause, Cause::ClientId);
    let c = Conn::new("stella2", Some("stella"), Some(b"x"));
    let (_, step) = f2.begin(&c, None);
    hash_job(step);
}

#[test]
fn an_answer_to_a_question_not_asked_is_refused() {
    let f = Fix::new();
    let c = Conn::new("c", Some("alice"), Some(b"wonderland"));
    let (mut chain, step) = f.begin(&c, None);
    hash_job(step);
    let r = refused(chain.continue_with(Answer::Jwks(None)));
    assert_eq!((r.code, r.cause), (ReasonCode::UNSPECIFIED_ERROR, Cause::Unexpected));
    // Nor is a question answered twice.
    let (mut chain, _) = f.begin(&c, None);
    done(chain.continue_with(Answer::Hash(HashAnswer::Verified(true))));
    assert_eq!(refused(chain.continue_with(Answer::Hash(HashAnswer::Verified(true)))).cause, Cause::Unexpected);
}

// ---- per-listener methods ------------------------------------------------------------------

/// A listener allowing only `methods` (names as `[[listener]] auth` gives them).
fn only(f: &mut Fix, methods: &[&str], anonymous: Option<bool>) {
    let set = methods.iter().map(|m| Method::from_name(m).expect("a method name")).collect();
    f.listener = ListenerAuth { methods: Some(set), allow_anonymous: anonymous };
}

#[track_caller]
fn not_allowed(step: Step, code: ReasonCode, method: Method) {
    let r = refused(step);
    assert_eq!((r.code, &r.cause, r.method), (code, &Cause::MethodNotAllowed(method), method));
    assert!(!r.guess && r.backoff_user.is_none(), "a method refused by the listener is no guess");
}

#[test]
fn method_names_and_sets() {
    for m in Method::ALL {
        assert_eq!(Method::from_name(m.as_str()), Some(m));
    }
    assert_eq!(Method::from_name("kerberos"), None);
    let s: Methods = [Method::Password, Method::Token].into_iter().collect();
    assert!(s.contains(Method::Password) && s.contains(Method::Token) && !s.contains(Method::Scram));
    assert!(!Methods::ALL.contains(Method::Anonymous), "anonymous is allow_anonymous's");
    assert_eq!(s.iter().collect::<Vec<_>>(), [Method::Password, Method::Token]);
    assert_eq!(Methods::ALL.iter().count(), 5);
}

#[test]
fn a_listener_refuses_valid_passwords_where_password_is_not_allowed() {
    let mut f = Fix::new();
    only(&mut f, &["scram"], None);
    let c = Conn::new("alice", Some("alice"), Some(b"wonderland"));
    let (chain, step) = f.begin(&c, None);
    assert!(!chain.password_attempt(), "nothing is hashed, so no backoff either");
    not_allowed(step, ReasonCode::NOT_AUTHORIZED, Method::Password);
    // ... a wrong password the same way (nothing is verified: no oracle).
    not_allowed(
        f.begin(&Conn::new("alice", Some("alice"), Some(b"nope")), None).1,
        ReasonCode::NOT_AUTHORIZED,
        Method::Password,
    );
    // SCRAM still works there.
    assert_eq!(done(scram(&f, "sam", b"sesame").0).method, Method::Scram);
    // On a listener allowing passwords, the same CONNECT is hashed and admitted.
    only(&mut f, &["password"], None);
    assert_eq!(done(f.run(&c, None)).method, Method::Password);
}

#[test]
fn scram_where_it_is_not_allowed_is_a_bad_authentication_method() {
    let mut f = Fix::new();
    only(&mut f, &["password"], None);
    let (_, first) = ScramClient::new("sam", b"sesame");
    // [MQTT-4.12.0-1]: a method the server does not support here: CONNACK 0x8C.
    not_allowed(f.begin(&Conn::scram("c", &first), None).1, ReasonCode::BAD_AUTHENTICATION_METHOD, Method::Scram);
}

#[test]
fn a_certificate_where_it_is_not_allowed() {
    let mut f = Fix::new();
    only(&mut f, &["password"], Some(true));
    let der = cert_with_cn("dev-7");
    // Alone: refused, even with anonymous access on the listener.
    not_allowed(
        f.begin(&Conn::anonymous("dev-7"), Some(client_cert(&der, IdentitySource::Cn))).1,
        ReasonCode::NOT_AUTHORIZED,
        Method::Certificate,
    );
    // With a password: the password decides (the certificate is no credential here).
    let c = Conn::new("alice", Some("alice"), Some(b"wonderland"));
    let a = done(f.run(&c, Some(client_cert(&der, IdentitySource::Cn))));
    assert_eq!((&*a.principal.name, a.method), ("alice", Method::Password));
    // Where certificates are allowed it proves the client.
    only(&mut f, &["certificate"], None);
    let a = done(f.begin(&Conn::anonymous("dev-7"), Some(client_cert(&der, IdentitySource::Cn))).1);
    assert_eq!((&*a.principal.name, a.method), ("dev-7", Method::Certificate));
    // ... and a password there is refused, certificate or not.
    not_allowed(f.begin(&c, None).1, ReasonCode::NOT_AUTHORIZED, Method::Password);
}

#[test]
fn a_token_where_tokens_are_not_allowed() {
    let mut f = Fix::new().with_hs256(SubjectRule::Off);
    only(&mut f, &["password"], None);
    let tok = hs256(json!({"alg": "HS256", "typ": "at+jwt"}), &outside_claims());
    not_allowed(f.begin(&Conn::token("dev-001", None, &tok), None).1, ReasonCode::NOT_AUTHORIZED, Method::Token);
    only(&mut f, &["token"], None);
    assert_eq!(done(f.begin(&Conn::token("dev-001", None, &tok), None).1).method, Method::Token);
}

#[test]
fn the_lookup_only_where_it_is_allowed() {
    let mut f = Fix::new();
    f.rules.lookup = true;
    let remote = Conn::new("c9", Some("remote"), Some(b"pw"));
    // Not allowed: an unknown user name is checked against the password file (and fails).
    only(&mut f, &["password"], None);
    hash_job(f.begin(&remote, None).1);
    // Allowed without passwords: every user name goes to the look-up, known ones too.
    only(&mut f, &["lookup"], None);
    lookup_request(f.begin(&remote, None).1);
    lookup_request(f.begin(&Conn::new("alice", Some("alice"), Some(b"wonderland")), None).1);
    // A certificate where only `certificate` is allowed proves on its own.
    only(&mut f, &["certificate"], None);
    let der = cert_with_cn("dev-8");
    let a = done(f.begin(&Conn::anonymous("dev-8"), Some(client_cert(&der, IdentitySource::Cn))).1);
    assert_eq!((&*a.principal.name, a.method), ("dev-8", Method::Certificate));
    // ... and through the look-up where both are.
    only(&mut f, &["certificate", "lookup"], None);
    lookup_request(f.begin(&Conn::anonymous("dev-8"), Some(client_cert(&der, IdentitySource::Cn))).1);
}

#[test]
fn anonymous_access_per_listener() {
    let mut f = Fix::new();
    f.rules.allow_anonymous = true;
    // The default chain: [auth] allow_anonymous.
    assert_eq!(done(f.begin(&Conn::anonymous("a"), None).1).principal.kind, PrincipalKind::Anonymous);
    // A listener that says no.
    f.listener.allow_anonymous = Some(false);
    let r = refused(f.begin(&Conn::anonymous("a"), None).1);
    assert_eq!((r.code, &r.cause), (ReasonCode::NOT_AUTHORIZED, &Cause::AnonymousRefused));
    // A listener that says yes while [auth] says no, with no method at all.
    f.rules.allow_anonymous = false;
    only(&mut f, &[], Some(true));
    assert_eq!(done(f.begin(&Conn::anonymous("a"), None).1).principal.kind, PrincipalKind::Anonymous);
    not_allowed(
        f.begin(&Conn::new("alice", Some("alice"), Some(b"wonderland")), None).1,
        ReasonCode::NOT_AUTHORIZED,
        Method::Password,
    );
}

#[test]
fn the_admitted_principal_carries_the_peer_address() {
    let f = Fix::new();
    let a = done(f.run(&Conn::new("alice", Some("alice"), Some(b"wonderland")), None));
    assert_eq!(a.principal.peer(), Some(peer().ip()));
}

// ---- the device registry ------------------------------------------------------------------

#[test]
fn the_device_registry_decides_client_certificates() {
    use crate::devices::{CertRefusal, CertStatus, Device, DeviceCert, DeviceCerts};
    let (der, other) = (cert_with_cn("dev-1"), cert_with_cn("dev-1"));
    let fp = crate::cert::sha256_fingerprint(&der);
    let registry = |status: CertStatus, id: &str| {
        let mut d = Device::default();
        d.certificates.insert(fp.clone(), DeviceCert { status, ..Default::default() });
        std::collections::BTreeMap::from([(id.to_string(), d)])
    };
    let c = Conn::new("dev-1", None, None);
    let run = |certs: DeviceCerts, der: &[u8]| {
        let mut f = Fix::new();
        f.device_certs = certs;
        f.run(&c, Some(client_cert(der, IdentitySource::Cn)))
    };
    // Registered and active: admitted, in either mode.
    for strict in [false, true] {
        let a = done(run(DeviceCerts::new(&registry(CertStatus::Active, "dev-1"), strict), &der));
        assert_eq!((a.principal.kind, &*a.principal.name), (PrincipalKind::Certificate, "dev-1"));
    }
    // Inactive or revoked: refused 0x87, not counted as a guess.
    for status in [CertStatus::Inactive, CertStatus::Revoked] {
        let r = refused(run(DeviceCerts::new(&registry(status, "dev-1"), false), &der));
        assert_eq!(
            (r.code, r.cause, r.guess),
            (ReasonCode::NOT_AUTHORIZED, Cause::DeviceCertificate(CertRefusal::NotActive(status)), false)
        );
    }
    // Registered to another device than its CN names.
    let r = refused(run(DeviceCerts::new(&registry(CertStatus::Active, "dev-2"), false), &der));
    assert_eq!(r.cause, Cause::DeviceCertificate(CertRefusal::OtherDevice));
    // Unregistered: accepted unless only registered certificates are.
    done(run(DeviceCerts::new(&registry(CertStatus::Active, "dev-1"), false), &other));
    let r = refused(run(DeviceCerts::new(&registry(CertStatus::Active, "dev-1"), true), &other));
    assert_eq!(r.cause, Cause::DeviceCertificate(CertRefusal::Unregistered));
    // Strict mode does not touch other methods: a password user is admitted.
    let mut f = Fix::new();
    f.device_certs = DeviceCerts::new(&Default::default(), true);
    let pw = Conn::new("alice", Some("alice"), Some(b"wonderland"));
    let (mut chain, step) = f.begin(&pw, None);
    assert!(hash_job(step).verify());
    done(chain.continue_with(Answer::Hash(HashAnswer::Verified(true))));
    // stands(): a certificate revoked while its CONNECT was decided no longer stands.
    let a = done(run(DeviceCerts::default(), &der));
    let mut f = Fix::new();
    assert!(f.ctx().stands(&a.principal));
    f.device_certs = DeviceCerts::new(&registry(CertStatus::Revoked, "dev-1"), false);
    assert!(!f.ctx().stands(&a.principal));
}
