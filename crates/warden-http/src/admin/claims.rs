//! `/admin/claims`: enrollment claims of the policy store ([`warden_policy::enroll`]).
//!
//! A claim is the certificate (or certificates) a batch of devices is shipped with, good only
//! to ask the broker for a certificate of their own over `$warden/enroll/<id>/request`, and
//! the template of the devices it enrolls (type, owner, attributes, an id prefix, a limit). A
//! claim certificate made `inactive` or `revoked` ends its live connections at once. Each
//! change is written to the audit trail (`claim.create`, `claim.delete`, `claim.cert.add`,
//! `claim.cert.status`, `claim.token.create`, `claim.token.delete`).
//!
//! A claim may also hand out one-time enrollment tokens (for `POST /enroll` over HTTP): the
//! token is shown once, in the answer that makes it; the store keeps the SHA-256 of its secret.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use warden_policy::devices::{CertStatus, DeviceCert};
use warden_policy::enroll::Claim;

use super::audit::AdminActor;
use super::devices::{cert_view, path_fingerprint, CertView, NewCert};
use super::{body_field, done, edit, parse, AdminError, ApiResult, Change, St};

/// A claim as the API shows it.
#[derive(Serialize)]
struct ClaimView {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    attributes: BTreeMap<String, String>,
    id_prefix: Option<String>,
    max_devices: Option<u64>,
    enrolled: u64,
    certificates: Vec<CertView>,
    /// Unused one-time tokens (never their secret).
    tokens: Vec<TokenView>,
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    device_id: Option<String>,
    expires_at: u64,
}

fn claim_view(name: &str, c: &Claim) -> ClaimView {
    ClaimView {
        name: name.to_owned(),
        kind: c.kind.clone(),
        owner: c.owner.clone(),
        attributes: c.attributes.clone(),
        id_prefix: c.id_prefix.clone(),
        max_devices: c.max_devices,
        enrolled: c.enrolled,
        certificates: c.certificates.iter().map(|(fp, x)| cert_view(fp, x)).collect(),
        tokens: c
            .tokens
            .iter()
            .map(|(id, t)| TokenView { id: id.clone(), device_id: t.device_id.clone(), expires_at: t.expires_at })
            .collect(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClaim {
    name: String,
    #[serde(default)]
    certificates: Vec<NewCert>,
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    id_prefix: Option<String>,
    max_devices: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertPatch {
    status: CertStatus,
}

fn no_claim(name: &str) -> AdminError {
    AdminError::not_found(format!("no claim '{name}'"))
}

fn claim_mut<'a>(p: &'a mut warden_policy::store::PolicyStore, name: &str) -> ApiResult<&'a mut Claim> {
    p.claims.get_mut(name).ok_or_else(|| no_claim(name))
}

pub(super) async fn list_claims(State(st): St) -> ApiResult<Response> {
    let p = st.backend.policy();
    Ok(Json(p.claims.iter().map(|(n, c)| claim_view(n, c)).collect::<Vec<_>>()).into_response())
}

pub(super) async fn get_claim(State(st): St, Path(name): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let c = p.claims.get(&name).ok_or_else(|| no_claim(&name))?;
    Ok(Json(claim_view(&name, c)).into_response())
}

pub(super) async fn create_claim(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.create", body_field(&body, "name"));
    let answer = (|| {
        let n: NewClaim = parse(&body)?;
        let certs = n.certificates.iter().map(NewCert::resolve).collect::<ApiResult<Vec<_>>>()?;
        c.set("certificates", certs.iter().map(|(fp, x)| cert_view(fp, x)).collect::<Vec<_>>());
        c.set("type", &n.kind);
        c.set("owner", &n.owner);
        c.set("attributes", &n.attributes);
        c.set("id_prefix", &n.id_prefix);
        c.set("max_devices", n.max_devices);
        let claim = Claim {
            certificates: certs.into_iter().collect(),
            kind: n.kind.filter(|k| !k.is_empty()),
            owner: n.owner.filter(|o| !o.is_empty()),
            attributes: n.attributes,
            id_prefix: n.id_prefix.filter(|p| !p.is_empty()),
            max_devices: n.max_devices,
            enrolled: 0,
            tokens: BTreeMap::new(),
        };
        claim.validate(&n.name)?;
        edit(&st, |p| {
            if p.claims.contains_key(&n.name) {
                return Err(AdminError::conflict(format!("claim '{}' exists", n.name)));
            }
            p.claims.insert(n.name.clone(), claim.clone());
            Ok(())
        })?;
        Ok::<_, AdminError>(
            (StatusCode::CREATED, Json(serde_json::json!({ "ok": true, "name": n.name }))).into_response(),
        )
    })();
    c.done(answer)
}

pub(super) async fn delete_claim(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.delete", name.clone());
    let mut removed = None;
    let answer = edit(&st, |p| {
        let claim = p.claims.get(&name).ok_or_else(|| no_claim(&name))?;
        // As for devices: a revoked certificate stays registered, so that it stays refused
        // (without `registered_certificates_only` an unregistered one is accepted, as the
        // ordinary client certificate it then is).
        if claim.certificates.values().any(|c| c.status == CertStatus::Revoked) {
            return Err(AdminError::conflict(format!(
                "claim '{name}' holds revoked certificates: they stay registered so that they stay refused"
            )));
        }
        removed = p.claims.remove(&name);
        Ok(())
    })
    .map(|()| done());
    if let (Ok(_), Some(claim)) = (&answer, removed) {
        c.set("certificates", claim.certificates.keys().collect::<Vec<_>>());
        c.set("enrolled", claim.enrolled);
    }
    c.done(answer)
}

pub(super) async fn add_claim_cert(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.cert.add", name.clone());
    let answer = (|| {
        let n: NewCert = parse(&body)?;
        let (fp, cert): (String, DeviceCert) = n.resolve()?;
        c.set("fingerprint", &fp);
        c.set("status", cert.status);
        edit(&st, |p| {
            let claim = claim_mut(p, &name)?;
            if claim.certificates.contains_key(&fp) {
                return Err(AdminError::conflict(format!("claim '{name}' has certificate {fp} already")));
            }
            claim.certificates.insert(fp.clone(), cert.clone());
            Ok(())
        })?;
        Ok::<_, AdminError>(
            (StatusCode::CREATED, Json(serde_json::json!({ "ok": true, "fingerprint": fp }))).into_response(),
        )
    })();
    c.done(answer)
}

pub(super) async fn set_claim_cert_status(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((name, fp)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.cert.status", name.clone());
    let answer = (|| {
        let fp = path_fingerprint(&fp)?;
        c.set("fingerprint", &fp);
        let patch: CertPatch = parse(&body)?;
        c.set("status", patch.status);
        edit(&st, |p| {
            let cert = claim_mut(p, &name)?
                .certificates
                .get_mut(&fp)
                .ok_or_else(|| AdminError::not_found(format!("claim '{name}' has no certificate {fp}")))?;
            if cert.status == CertStatus::Revoked && patch.status != CertStatus::Revoked {
                return Err(AdminError::conflict("a revoked certificate cannot be made active or inactive again"));
            }
            cert.status = patch.status;
            Ok(())
        })?;
        Ok::<_, AdminError>(done())
    })();
    c.done(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// The only device id it may enroll.
    device_id: Option<String>,
    /// Lifetime in seconds (default 7 days, at most 30).
    ttl: Option<u64>,
}

/// Default lifetime of an enrollment token.
const DEFAULT_TOKEN_TTL: u64 = 7 * 24 * 3600;

pub(super) async fn create_token(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.token.create", name.clone());
    let answer = (|| {
        let n: NewToken = if body.is_empty() { NewToken { device_id: None, ttl: None } } else { parse(&body)? };
        let ttl = n.ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl == 0 || ttl > warden_policy::enroll::MAX_TOKEN_TTL_SECS {
            return Err(AdminError::bad_request("ttl must be 1 second to 30 days"));
        }
        if let Some(d) = &n.device_id {
            warden_policy::enroll::valid_device_id(d).map_err(AdminError::bad_request)?;
        }
        let expires_at = super::audit::unix_now().saturating_add(ttl);
        let (id, token, stored) = warden_policy::enroll::new_token(n.device_id.clone(), expires_at);
        c.set("id", &id);
        c.set("device_id", &n.device_id);
        c.set("expires_at", expires_at);
        edit(&st, |p| {
            let claim = claim_mut(p, &name)?;
            let now = super::audit::unix_now();
            claim.tokens.retain(|_, t| t.expires_at > now); // the expired ones go
            claim.tokens.insert(id.clone(), stored.clone());
            Ok(())
        })?;
        Ok::<_, AdminError>(
            (StatusCode::CREATED, Json(serde_json::json!({ "id": id, "token": token, "expires_at": expires_at })))
                .into_response(),
        )
    })();
    c.done(answer)
}

pub(super) async fn delete_token(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "claim.token.delete", name.clone());
    c.set("id", &id);
    let answer = edit(&st, |p| {
        claim_mut(p, &name)?
            .tokens
            .remove(&id)
            .map(|_| ())
            .ok_or_else(|| AdminError::not_found(format!("claim '{name}' has no token '{id}'")))
    })
    .map(|()| done());
    c.done(answer)
}
