//! Enrollment by claim: the service behind `$warden/enroll/<client id>/request`
//! ([`warden_policy::enroll`] has the pure part: topics, confinement, claims, bodies).
//!
//! A request is worked on in its own task (at most `[enroll] max_pending` at once; more are
//! refused `rate_limited`): who may ask is decided from the policy store as it is now (a claim
//! certificate of an active claim for a new device, or a device's own active certificate for a
//! new certificate of its own: rotation); the pre-provisioning hook, if configured, approves or
//! refuses (fail closed); the CA signs the request's key with the device id as CN; the device
//! and its certificate are registered through the admin path (saved, applied live, shared with
//! a cluster's other nodes, audited); and the answer is queued for the requesting client alone
//! on `.../accepted` or `.../rejected`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use mqtt_codec::{Properties, QoS, ReasonCode, TopicName};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use warden_core::service::{ServiceRequest, Services};
use warden_core::{Broker, Message};
use warden_http::admin::audit::{AuditRecord, RESULT_REFUSED};
use warden_http::admin::{AdminBackend, AdminError};
use warden_policy::devices::{CertStatus, Device, DeviceCert, MAX_CERTIFICATES};
use warden_policy::enroll::{self as pure, Answer, Issued, Reason, Refusal, Request};
use warden_policy::trust::Credential;
use warden_policy::Principal;

use crate::admin::backend::Backend;
use crate::config::EnrollConfig;
use crate::logsafe::Escaped;
use crate::pki::{CsrError, LoadedCa};

/// The enrollment service.
pub struct Enroll {
    cfg: EnrollConfig,
    ca_dir: PathBuf,
    backend: Arc<Backend>,
    broker: Arc<Broker>,
    pending: Arc<Semaphore>,
    hook: Option<ureq::Agent>,
    /// Itself, for the tasks a request spawns.
    me: std::sync::Weak<Enroll>,
    /// Held while the CA directory's records (issued.json, revoked.json, ca.crl) are written.
    files: Arc<parking_lot::Mutex<()>>,
}

/// How long a CRL written after a revocation is valid (as `warden cert revoke`'s default:
/// re-sign it with `warden cert crl` before then).
const CRL_DAYS: u32 = 30;

/// What asks: a claim (a new device) or a device (a new certificate of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asker {
    /// A claim certificate of this claim.
    Claim(String),
    /// A one-time token `id` of this claim (consumed by the registration).
    Token { claim: String, id: String },
    /// The device's own registered certificate.
    Device,
}

impl Asker {
    fn claim(&self) -> Option<&str> {
        match self {
            Asker::Claim(c) | Asker::Token { claim: c, .. } => Some(c),
            Asker::Device => None,
        }
    }
}

/// What the pre-provisioning hook is sent (JSON).
#[derive(Debug, Serialize)]
struct HookRequest<'a> {
    device_id: &'a str,
    client_id: &'a str,
    /// The claim it enrolls with (`None`: a registered device renewing its certificate).
    claim: Option<&'a str>,
    rotation: bool,
    /// The address the request came from.
    peer: Option<String>,
    /// SHA-256 of the request's public key (SubjectPublicKeyInfo DER), hex.
    public_key_sha256: String,
    /// What the device sent as `context`.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a serde_json::Value>,
}

/// What the hook answers (HTTP 200).
#[derive(Debug, Default, Deserialize)]
struct HookAnswer {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

/// Largest hook answer read.
const MAX_HOOK_ANSWER: u64 = 64 * 1024;

impl Enroll {
    /// The service for `cfg` (checks that its CA can sign now).
    pub fn new(cfg: &EnrollConfig, data_dir: &std::path::Path, backend: Arc<Backend>) -> crate::Result<Arc<Enroll>> {
        let ca_dir = cfg.ca_dir(data_dir);
        LoadedCa::load(&ca_dir).map_err(|e| crate::Error::Setting(format!("[enroll] CA: {e:#}")))?;
        let hook = cfg.hook_url.as_ref().map(|url| {
            if crate::auth::lookup::plain_http_off_loopback(url) {
                warn!(url = %crate::auth::lookup::redacted_url(url), "[enroll] hook_url uses plain http");
            }
            ureq::AgentBuilder::new()
                .redirects(0)
                .timeout(cfg.hook_timeout)
                .try_proxy_from_env(false)
                .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
                .build()
        });
        let broker = backend.broker.clone();
        let policy = backend.policy.clone();
        let enroll = Arc::new_cyclic(|me| Enroll {
            cfg: cfg.clone(),
            ca_dir,
            backend,
            broker,
            pending: Arc::new(Semaphore::new(cfg.max_pending)),
            hook,
            me: me.clone(),
            files: Default::default(),
        });
        let weak = Arc::downgrade(&enroll);
        policy.on_revoked(Arc::new(move |fps: &[String]| {
            if let Some(e) = weak.upgrade() {
                e.revoked(fps);
            }
        }));
        Ok(enroll)
    }

    /// Certificates this CA issued that the registry revoked: into the CA's CRL
    /// (`<ca_dir>/revoked.json` and `ca.crl`, as `warden cert revoke` writes them).
    fn revoked(&self, fingerprints: &[String]) {
        let _files = self.files.lock();
        let result = LoadedCa::load(&self.ca_dir)
            .and_then(|ca| crate::pki::revoke_fingerprints(&self.ca_dir, &ca, fingerprints, CRL_DAYS));
        match result {
            Ok(serials) if serials.is_empty() => {}
            Ok(serials) => {
                info!(target: "warden::enroll", serials = ?serials, crl = %self.ca_dir.join(crate::pki::CRL_FILE).display(),
                "enrollment: revoked certificates written into the CA's CRL")
            }
            Err(e) => warn!(error = %format!("{e:#}"), "enrollment: the CA's CRL could not be written"),
        }
    }

    /// Enroll `device_id` for `principal` with `body` (a [`Request`]).
    pub async fn enroll(&self, principal: &Principal, client_id: &str, body: &[u8]) -> Answer {
        let answer = match self.try_enroll(principal, client_id, body).await {
            Ok(issued) => Answer::Accepted(issued),
            Err(r) => Answer::Rejected(r),
        };
        self.record(principal, client_id, &answer);
        answer
    }

    async fn try_enroll(&self, principal: &Principal, device_id: &str, body: &[u8]) -> Result<Issued, Refusal> {
        let req = Request::parse(body)?;
        if req.device_id.as_deref().is_some_and(|d| d != device_id) {
            return Err(Refusal::new(Reason::IdNotAllowed, "device_id differs from the client id"));
        }
        pure::valid_device_id(device_id).map_err(|m| Refusal::new(Reason::IdNotAllowed, m))?;
        let asker = self.asker(principal, device_id)?;
        self.issue(asker, principal.peer(), device_id, req).await
    }

    /// Enroll with a one-time token (HTTP `POST /enroll`): the device id is the token's, or
    /// the body's `device_id`. `peer` is where the request came from.
    pub async fn enroll_with_token(&self, token: &str, body: &[u8], peer: std::net::IpAddr) -> Answer {
        let result = async {
            let req = Request::parse(body)?;
            let (asker, device_id) = self.token_asker(token, req.device_id.as_deref())?;
            let issued = self.issue(asker, Some(peer), &device_id, req).await;
            Ok::<_, Refusal>((device_id, issued))
        }
        .await;
        let (target, answer) = match result {
            Ok((id, Ok(issued))) => (id, Answer::Accepted(issued)),
            Ok((id, Err(r))) => (id, Answer::Rejected(r)),
            Err(r) => ("-".to_owned(), Answer::Rejected(r)),
        };
        let actor = match pure::split_token(token) {
            Some((id, _)) => format!("token:{id}"),
            None => "token:-".to_owned(),
        };
        self.record_as(&actor, &peer.to_string(), &target, &answer);
        answer
    }

    /// The claim and id a token stands for, and the device id it enrolls.
    fn token_asker(&self, token: &str, asked: Option<&str>) -> Result<(Asker, String), Refusal> {
        let unauthorized =
            || Refusal::new(Reason::Unauthorized, "the enrollment token is unknown, used, expired or wrong");
        let (id, secret) = pure::split_token(token).ok_or_else(unauthorized)?;
        let store = self.backend.policy.store();
        let (claim_name, claim, t) =
            store.claims.iter().find_map(|(n, c)| c.tokens.get(id).map(|t| (n, c, t))).ok_or_else(unauthorized)?;
        if !t.matches(secret) || t.expires_at <= crate::clock::unix_now() {
            return Err(unauthorized());
        }
        let device_id = match (&t.device_id, asked) {
            (Some(bound), Some(a)) if bound != a => {
                return Err(Refusal::new(Reason::IdNotAllowed, format!("this token enrolls '{bound}' only")))
            }
            (Some(bound), _) => bound.clone(),
            (None, Some(a)) => a.to_owned(),
            (None, None) => return Err(Refusal::new(Reason::Malformed, "device_id is missing")),
        };
        pure::valid_device_id(&device_id).map_err(|m| Refusal::new(Reason::IdNotAllowed, m))?;
        claim.may_enroll(&device_id)?;
        if store.devices.get(&device_id).is_some_and(|d| !d.certificates.is_empty()) {
            return Err(Refusal::new(Reason::AlreadyRegistered, format!("device '{device_id}' is registered already")));
        }
        Ok((Asker::Token { claim: claim_name.clone(), id: id.to_owned() }, device_id))
    }

    /// Check the request's key, ask the hook, sign, register.
    async fn issue(
        &self,
        asker: Asker,
        peer: Option<std::net::IpAddr>,
        device_id: &str,
        req: Request,
    ) -> Result<Issued, Refusal> {
        // The key, checked before the hook is asked (a malformed request costs it nothing).
        let csr = req.csr;
        let key = tokio::task::spawn_blocking(move || crate::pki::CsrKey::from_request(csr.as_bytes()))
            .await
            .map_err(|_| internal("checking the request"))?
            .map_err(csr_refusal)?;
        let extra = match &self.hook {
            Some(agent) => {
                let spki = key.spki_sha256().to_owned();
                Some(self.ask_hook(agent, peer, device_id, &asker, spki, req.context.as_ref()).await?)
            }
            None => None,
        };
        let (ca_dir, days, id) = (self.ca_dir.clone(), self.cfg.certificate_days, device_id.to_owned());
        let files = self.files.clone();
        let signed = tokio::task::spawn_blocking(move || {
            let ca = LoadedCa::load(&ca_dir).map_err(|e| CsrError::Internal(format!("loading the CA: {e:#}")))?;
            let signed = ca.sign_csr(&key, &id, days)?;
            // Recorded before it is handed out, so that a revocation can always find it.
            let _files = files.lock();
            crate::pki::record_enrolled(&ca_dir, &ca, &signed, &id)
                .map_err(|e| CsrError::Internal(format!("recording it in issued.json: {e:#}")))?;
            Ok((signed, ca.pem().to_owned()))
        })
        .await
        .map_err(|_| internal("signing"))?;
        let (signed, ca_pem) = signed.map_err(csr_refusal)?;
        self.register(&asker, device_id, &signed, extra)?;
        Ok(Issued {
            device_id: device_id.to_owned(),
            certificate: signed.pem,
            ca: ca_pem,
            fingerprint: signed.fingerprint,
            not_after: signed.not_after,
            serial: signed.serial,
        })
    }

    /// Who asks, from the store as it is now.
    fn asker(&self, principal: &Principal, device_id: &str) -> Result<Asker, Refusal> {
        let store = self.backend.policy.store();
        let fp = match principal.credential() {
            Some(Credential::Certificate(chain)) => chain.fingerprint.as_deref().map(str::to_owned),
            _ => None,
        };
        if principal.is_claim() {
            let claim = fp.as_deref().and_then(|fp| {
                store
                    .claims
                    .iter()
                    .find(|(_, c)| c.certificates.get(fp).is_some_and(|c| c.status == CertStatus::Active))
            });
            let Some((name, claim)) = claim else {
                return Err(Refusal::new(Reason::IdNotAllowed, "the claim certificate is no longer active"));
            };
            claim.may_enroll(device_id)?;
            if store.devices.get(device_id).is_some_and(|d| !d.certificates.is_empty()) {
                return Err(Refusal::new(
                    Reason::AlreadyRegistered,
                    format!("device '{device_id}' is registered already: it renews with its own certificate"),
                ));
            }
            return Ok(Asker::Claim(name.clone()));
        }
        let own = principal.kind == warden_policy::PrincipalKind::Certificate
            && &*principal.name == device_id
            && fp.as_deref().is_some_and(|fp| {
                store
                    .devices
                    .get(device_id)
                    .and_then(|d| d.certificates.get(fp))
                    .is_some_and(|c| c.status == CertStatus::Active)
            });
        if own {
            Ok(Asker::Device)
        } else {
            Err(Refusal::new(
                Reason::IdNotAllowed,
                "only a claim certificate, or the device's own registered certificate, may enroll",
            ))
        }
    }

    async fn ask_hook(
        &self,
        agent: &ureq::Agent,
        peer: Option<std::net::IpAddr>,
        device_id: &str,
        asker: &Asker,
        public_key_sha256: String,
        context: Option<&serde_json::Value>,
    ) -> Result<HookAnswer, Refusal> {
        let Some(url) = self.cfg.hook_url.clone() else { return Ok(HookAnswer::default()) };
        let claim = asker.claim();
        let body = serde_json::to_vec(&HookRequest {
            device_id,
            client_id: device_id,
            claim,
            rotation: *asker == Asker::Device,
            peer: peer.map(|p| p.to_string()),
            public_key_sha256,
            context,
        })
        .map_err(|_| internal("encoding the hook request"))?;
        let agent = agent.clone();
        let answer = tokio::task::spawn_blocking(move || -> Result<HookAnswer, String> {
            let resp = match agent.post(&url).set("Content-Type", "application/json").send_bytes(&body) {
                Ok(r) => r,
                Err(ureq::Error::Status(code, _)) => return Err(format!("HTTP {code}")),
                Err(e) => return Err(e.kind().to_string()),
            };
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(resp.into_reader(), MAX_HOOK_ANSWER), &mut text)
                .map_err(|e| format!("reading the answer: {e}"))?;
            serde_json::from_str::<HookAnswer>(&text).map_err(|e| format!("unusable answer: {e}"))
        })
        .await
        .map_err(|_| internal("asking the hook"))?;
        match answer {
            Err(why) => {
                warn!(device_id, reason = %Escaped(&why), "enrollment: the pre-provisioning hook is unavailable; refused");
                Err(Refusal::new(
                    Reason::HookUnavailable,
                    "the pre-provisioning service could not be asked; try again later",
                ))
            }
            Ok(a) if !a.allow => {
                let why = a.reason.unwrap_or_else(|| "refused by the pre-provisioning service".to_owned());
                let why: String = why.chars().filter(|c| !c.is_control()).take(256).collect();
                Err(Refusal::new(Reason::Refused, why))
            }
            Ok(a) => Ok(a),
        }
    }

    /// Register the device (new) or its new certificate (rotation), all or nothing.
    fn register(
        &self,
        asker: &Asker,
        device_id: &str,
        signed: &crate::pki::SignedCsr,
        extra: Option<HookAnswer>,
    ) -> Result<(), Refusal> {
        let cert = DeviceCert {
            status: CertStatus::Active,
            subject: Some(format!("CN={device_id}")),
            not_after: Some(signed.not_after),
        };
        let mut refusal = None;
        let result = self.backend.update_policy(&mut |s| {
            match asker {
                Asker::Claim(name) | Asker::Token { claim: name, .. } => {
                    // Checked again under the store's lock: two requests for one id, or a
                    // claim changed meanwhile, cannot both pass.
                    let Some(claim) = s.claims.get_mut(name) else {
                        refusal = Some(Refusal::new(Reason::IdNotAllowed, "the claim was removed"));
                        return Err(AdminError::conflict("claim removed"));
                    };
                    if let Asker::Token { id, .. } = asker {
                        // One-time: it goes with this registration, or the registration fails.
                        if claim.tokens.remove(id).is_none() {
                            refusal =
                                Some(Refusal::new(Reason::Unauthorized, "the enrollment token was used meanwhile"));
                            return Err(AdminError::conflict("token used"));
                        }
                    }
                    if let Err(r) = claim.may_enroll(device_id) {
                        refusal = Some(r);
                        return Err(AdminError::conflict("claim exhausted"));
                    }
                    claim.enrolled += 1;
                    let template = claim.clone();
                    let d = s.devices.entry(device_id.to_owned()).or_insert_with(Device::default);
                    if !d.certificates.is_empty() {
                        refusal = Some(Refusal::new(Reason::AlreadyRegistered, "registered meanwhile"));
                        return Err(AdminError::conflict("registered meanwhile"));
                    }
                    // What the operator pre-registered wins over the claim's template, which
                    // wins over the hook's answer only where the hook says nothing.
                    let hook = extra.as_ref();
                    d.kind = d.kind.take().or(hook.and_then(|h| h.kind.clone())).or(template.kind);
                    d.owner = d.owner.take().or(hook.and_then(|h| h.owner.clone())).or(template.owner);
                    for (k, v) in
                        template.attributes.into_iter().chain(hook.map(|h| h.attributes.clone()).unwrap_or_default())
                    {
                        d.attributes.entry(k).or_insert(v);
                    }
                    d.certificates.insert(signed.fingerprint.clone(), cert.clone());
                }
                Asker::Device => {
                    let Some(d) = s.devices.get_mut(device_id) else {
                        refusal = Some(Refusal::new(Reason::IdNotAllowed, "the device was removed"));
                        return Err(AdminError::conflict("device removed"));
                    };
                    if d.certificates.len() >= MAX_CERTIFICATES {
                        // Make room: the inactive certificate that expires first goes (a
                        // revoked one stays: it must never become acceptable again).
                        let oldest = d
                            .certificates
                            .iter()
                            .filter(|(_, c)| c.status == CertStatus::Inactive)
                            .min_by_key(|(_, c)| c.not_after.unwrap_or(0))
                            .map(|(fp, _)| fp.clone());
                        match oldest {
                            Some(fp) => {
                                d.certificates.remove(&fp);
                            }
                            None => {
                                refusal = Some(Refusal::new(
                                    Reason::IdNotAllowed,
                                    format!(
                                        "the device holds {MAX_CERTIFICATES} certificates: an operator must remove one"
                                    ),
                                ));
                                return Err(AdminError::conflict("too many certificates"));
                            }
                        }
                    }
                    d.certificates.insert(signed.fingerprint.clone(), cert.clone());
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(refusal.unwrap_or_else(|| {
                warn!(device_id, error = %e, "enrollment: the device could not be registered");
                Refusal::new(Reason::Internal, "the device could not be registered (see the broker's log)")
            })),
        }
    }

    /// The audit trail's record of a request, and a log line.
    fn record(&self, principal: &Principal, client_id: &str, answer: &Answer) {
        let peer = principal.peer().map_or_else(|| "-".to_owned(), |p| p.to_string());
        let actor = if principal.is_claim() {
            format!("claim:{}", principal.name)
        } else {
            format!("device:{}", principal.name)
        };
        self.record_as(&actor, &peer, client_id, answer);
    }

    fn record_as(&self, actor: &str, peer: &str, client_id: &str, answer: &Answer) {
        let mut r = AuditRecord::now(actor, peer, "device.enroll", client_id);
        match answer {
            Answer::Accepted(i) => {
                info!(target: "warden::enroll", device_id = %i.device_id, fingerprint = %i.fingerprint, actor = %Escaped(actor), peer, "enrollment: certificate issued");
                r.detail =
                    serde_json::json!({"fingerprint": i.fingerprint, "serial": i.serial, "not_after": i.not_after});
            }
            Answer::Rejected(why) => {
                info!(target: "warden::enroll", client_id = %Escaped(client_id), reason = why.reason.as_str(), message = %Escaped(&why.message), actor = %Escaped(actor), peer, "enrollment: refused");
                r.result = RESULT_REFUSED.to_owned();
                r.error = Some(format!("{}: {}", why.reason.as_str(), why.message));
            }
        }
        self.backend.audit(&r);
    }

    /// Queue `answer` for `client_id` on its answer topic.
    fn deliver(&self, client_id: &str, answer: &Answer, correlation: Option<Bytes>) {
        let last = match answer {
            Answer::Accepted(_) => pure::ACCEPTED,
            Answer::Rejected(_) => pure::REJECTED,
        };
        let Ok(topic) = TopicName::new(&pure::answer_topic(client_id, last)) else { return };
        let payload = serde_json::to_vec(answer).unwrap_or_default();
        let properties = correlation.map(|c| {
            Box::new(Properties {
                correlation_data: Some(c),
                content_type: Some("application/json".into()),
                ..Default::default()
            })
        });
        let msg = Message {
            topic,
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties,
            expires_at: None,
            origin: None,
            persisted: Default::default(),
        };
        if !self.broker.replay_to(client_id, Arc::new(msg)) {
            info!(target: "warden::enroll", client_id = %Escaped(client_id),
                "enrollment: answer not delivered (the client is gone or not subscribed to its answer topic)");
        }
    }
}

fn internal(what: &str) -> Refusal {
    warn!("enrollment: {what} failed");
    Refusal::new(Reason::Internal, format!("{what} failed (see the broker's log)"))
}

fn csr_refusal(e: CsrError) -> Refusal {
    match e {
        CsrError::Malformed(m) => Refusal::new(Reason::Malformed, m),
        CsrError::WeakKey(m) => Refusal::new(Reason::WeakKey, m),
        CsrError::Internal(m) => {
            warn!(error = %m, "enrollment: signing failed");
            Refusal::new(Reason::Internal, "the certificate could not be signed (see the broker's log)")
        }
    }
}

impl Services for Enroll {
    fn request(&self, req: ServiceRequest) -> ReasonCode {
        if pure::request_client_id(req.topic.as_str()) != Some(&*req.client_id) {
            return ReasonCode::TOPIC_NAME_INVALID;
        }
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            let answer = Answer::Rejected(Refusal::new(Reason::RateLimited, "too many enrollments at once; try again"));
            self.record(&req.principal, &req.client_id, &answer);
            self.deliver(&req.client_id, &answer, req.correlation_data);
            return ReasonCode::QUOTA_EXCEEDED;
        };
        let Some(me) = self.me.upgrade() else {
            return ReasonCode::TOPIC_NAME_INVALID;
        };
        tokio::spawn(async move {
            let answer = me.enroll(&req.principal, &req.client_id, &req.payload).await;
            me.deliver(&req.client_id, &answer, req.correlation_data);
            drop(permit);
        });
        ReasonCode::SUCCESS
    }
}

/// `POST /enroll` on the HTTP listener: a device with a one-time enrollment token
/// (`Authorization: Bearer <token>`) sends a [`Request`] and gets its certificate ([`Issued`],
/// 200) or why not ([`Refusal`]: 400 malformed or weak key, 401 a bad token, 403 an id it may
/// not enroll or the hook's refusal, 409 already registered, 429 too many at once, 503 the
/// hook unavailable). A bad token counts as a failed authentication of the address (the
/// per-address ban applies, as on MQTT and the token service).
pub fn router(enroll: Arc<Enroll>, guard: Option<Arc<dyn warden_http::FailureGuard>>) -> axum::Router {
    axum::Router::new().route("/enroll", axum::routing::post(post_enroll)).with_state((enroll, guard))
}

type EnrollState = axum::extract::State<(Arc<Enroll>, Option<Arc<dyn warden_http::FailureGuard>>)>;

async fn post_enroll(
    axum::extract::State((enroll, guard)): EnrollState,
    peer: Option<axum::extract::Extension<warden_http::PeerAddr>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let ip = peer.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |axum::extract::Extension(p)| p.0.ip());
    let json = |status: StatusCode, v: &Answer| (status, axum::Json(v)).into_response();
    if let Some(g) = &guard {
        if let Err(t) = g.check(ip, None) {
            let (warden_http::Throttled::Banned { retry_after } | warden_http::Throttled::BackingOff { retry_after }) =
                t;
            let a = Answer::Rejected(Refusal::new(Reason::RateLimited, "too many failed attempts from this address"));
            let mut r = json(StatusCode::TOO_MANY_REQUESTS, &a);
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = token else {
        let a = Answer::Rejected(Refusal::new(
            Reason::Unauthorized,
            "an enrollment token is required (Authorization: Bearer)",
        ));
        let mut r = json(StatusCode::UNAUTHORIZED, &a);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    let Ok(permit) = enroll.pending.clone().try_acquire_owned() else {
        let a = Answer::Rejected(Refusal::new(Reason::RateLimited, "too many enrollments at once; try again"));
        return json(StatusCode::TOO_MANY_REQUESTS, &a);
    };
    let answer = enroll.enroll_with_token(token, &body, ip).await;
    drop(permit);
    let status = match &answer {
        Answer::Accepted(_) => StatusCode::OK,
        Answer::Rejected(r) => match r.reason {
            Reason::Malformed | Reason::WeakKey => StatusCode::BAD_REQUEST,
            Reason::Unauthorized => {
                if let Some(g) = &guard {
                    g.failed(ip, None);
                }
                StatusCode::UNAUTHORIZED
            }
            Reason::IdNotAllowed | Reason::Refused | Reason::ClaimExhausted => StatusCode::FORBIDDEN,
            Reason::AlreadyRegistered => StatusCode::CONFLICT,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::HookUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        },
    };
    let mut r = json(status, &answer);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}
