//! `/admin/devices`: the device registry of the policy store ([`warden_policy::devices`]).
//!
//! A device is a principal name (certificate identity, user name or token subject) with a
//! type, an owner, free attributes (`%{attr:NAME}` in rules) and its certificates by SHA-256
//! fingerprint with a status. Every change is validated with the whole store, persisted and
//! applied at once by the backend: a certificate made `inactive` or `revoked` ends its live
//! connections (v5 DISCONNECT 0x87) and is refused at its next CONNECT. Each change is written
//! to the audit trail (`device.create`, `device.update`, `device.delete`, `device.cert.add`,
//! `device.cert.status`, `device.cert.remove`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use warden_policy::devices::{cert_from_pem, normalize_fingerprint, CertStatus, Device, DeviceCert};

use super::audit::AdminActor;
use super::{body_field, done, edit, parse, AdminError, ApiResult, Change, St};

/// A device as the API shows it.
#[derive(Serialize)]
struct DeviceView {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    attributes: BTreeMap<String, String>,
    certificates: Vec<CertView>,
    disabled: bool,
    /// Whether a policy-store user of the device's name has a password (its password
    /// credential).
    password: bool,
}

#[derive(Serialize)]
pub(super) struct CertView {
    fingerprint: String,
    status: CertStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_after: Option<u64>,
}

pub(super) fn cert_view(fp: &str, c: &DeviceCert) -> CertView {
    CertView { fingerprint: fp.to_owned(), status: c.status, subject: c.subject.clone(), not_after: c.not_after }
}

fn device_view(p: &warden_policy::store::PolicyStore, id: &str, d: &Device) -> DeviceView {
    DeviceView {
        disabled: d.disabled,
        password: p.users.get(id).is_some_and(|u| u.password_hash.is_some()),
        id: id.to_owned(),
        kind: d.kind.clone(),
        owner: d.owner.clone(),
        attributes: d.attributes.clone(),
        certificates: d.certificates.iter().map(|(fp, c)| cert_view(fp, c)).collect(),
    }
}

/// A certificate to register: its PEM, or its fingerprint (hex, any case, `:` allowed).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCert {
    pem: Option<String>,
    fingerprint: Option<String>,
    #[serde(default)]
    status: Option<CertStatus>,
}

impl NewCert {
    /// The registry's key and entry for it.
    pub(super) fn resolve(&self) -> ApiResult<(String, DeviceCert)> {
        let (fp, mut cert) = match (&self.pem, &self.fingerprint) {
            (Some(pem), None) => cert_from_pem(pem)?,
            (None, Some(f)) => {
                let fp = normalize_fingerprint(f).ok_or_else(|| {
                    AdminError::bad_request("fingerprint must be a SHA-256 fingerprint: 64 hex digits (':' allowed)")
                })?;
                (fp, DeviceCert::default())
            }
            _ => return Err(AdminError::bad_request("give exactly one of 'pem' and 'fingerprint'")),
        };
        cert.status = self.status.unwrap_or_default();
        Ok((fp, cert))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    certificates: Vec<NewCert>,
}

/// A change of a device: fields given are set (an empty `type` or `owner` clears it;
/// `attributes` replaces them all), absent ones are kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    owner: Option<String>,
    attributes: Option<BTreeMap<String, String>>,
    disabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertPatch {
    status: CertStatus,
}

fn no_device(id: &str) -> AdminError {
    AdminError::not_found(format!("no device '{id}'"))
}

/// The device `id` of the store being edited.
fn device_mut<'a>(p: &'a mut warden_policy::store::PolicyStore, id: &str) -> ApiResult<&'a mut Device> {
    p.devices.get_mut(id).ok_or_else(|| no_device(id))
}

/// Add `fp` to device `id`, refusing one already registered (to it or to another device).
fn add_cert(p: &mut warden_policy::store::PolicyStore, id: &str, fp: &str, cert: &DeviceCert) -> ApiResult<()> {
    device_mut(p, id)?;
    if let Some(other) = p.devices.iter().find(|(_, d)| d.certificates.contains_key(fp)).map(|(o, _)| o.clone()) {
        return Err(AdminError::conflict(format!("certificate {fp} is already registered to device '{other}'")));
    }
    device_mut(p, id)?.certificates.insert(fp.to_owned(), cert.clone());
    Ok(())
}

fn empty_is_none(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

pub(super) async fn list_devices(State(st): St) -> ApiResult<Response> {
    let p = st.backend.policy();
    Ok(Json(p.devices.iter().map(|(id, d)| device_view(&p, id, d)).collect::<Vec<_>>()).into_response())
}

pub(super) async fn get_device(State(st): St, Path(id): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let d = p.devices.get(&id).ok_or_else(|| no_device(&id))?;
    Ok(Json(device_view(&p, &id, d)).into_response())
}

pub(super) async fn create_device(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.create", body_field(&body, "id"));
    let answer = (|| {
        let n: NewDevice = parse(&body)?;
        c.set("type", &n.kind);
        c.set("owner", &n.owner);
        c.set("attributes", &n.attributes);
        let certs = n.certificates.iter().map(NewCert::resolve).collect::<ApiResult<Vec<_>>>()?;
        c.set("certificates", certs.iter().map(|(fp, x)| cert_view(fp, x)).collect::<Vec<_>>());
        let device = Device {
            kind: n.kind.as_deref().and_then(empty_is_none),
            owner: n.owner.as_deref().and_then(empty_is_none),
            attributes: n.attributes.clone(),
            certificates: BTreeMap::new(),
            disabled: false,
        };
        device.validate(&n.id)?;
        edit(&st, |p| {
            if p.devices.contains_key(&n.id) {
                return Err(AdminError::conflict(format!("device '{}' exists", n.id)));
            }
            p.devices.insert(n.id.clone(), device.clone());
            for (fp, cert) in &certs {
                add_cert(p, &n.id, fp, cert)?;
            }
            Ok(())
        })?;
        Ok::<_, AdminError>((StatusCode::CREATED, Json(serde_json::json!({ "ok": true, "id": n.id }))).into_response())
    })();
    c.done(answer)
}

pub(super) async fn update_device(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.update", id.clone());
    let answer = (|| {
        let patch: DevicePatch = parse(&body)?;
        let mut previous = serde_json::Map::new();
        edit(&st, |p| {
            let d = device_mut(p, &id)?;
            previous.clear();
            if let Some(k) = &patch.kind {
                previous.insert("type".into(), serde_json::json!(d.kind));
                d.kind = empty_is_none(k);
            }
            if let Some(o) = &patch.owner {
                previous.insert("owner".into(), serde_json::json!(d.owner));
                d.owner = empty_is_none(o);
            }
            if let Some(attrs) = &patch.attributes {
                previous.insert("attributes".into(), serde_json::json!(d.attributes));
                d.attributes = attrs.clone();
            }
            if let Some(off) = patch.disabled {
                previous.insert("disabled".into(), serde_json::json!(d.disabled));
                d.disabled = off;
            }
            Ok(())
        })?;
        if let Some(k) = &patch.kind {
            c.set("type", k);
        }
        if let Some(o) = &patch.owner {
            c.set("owner", o);
        }
        if let Some(attrs) = &patch.attributes {
            c.set("attributes", attrs);
        }
        if let Some(off) = patch.disabled {
            c.set("disabled", off);
        }
        if !previous.is_empty() {
            c.set("previous", previous);
        }
        Ok::<_, AdminError>(done())
    })();
    c.done(answer)
}

pub(super) async fn delete_device(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.delete", id.clone());
    let mut removed = None;
    let answer = edit(&st, |p| {
        let d = p.devices.get(&id).ok_or_else(|| no_device(&id))?;
        // A revoked certificate stays in the registry, so that it stays refused (without
        // `registered_certificates_only` an unregistered one is accepted).
        if d.certificates.values().any(|c| c.status == CertStatus::Revoked) {
            return Err(AdminError::conflict(format!(
                "device '{id}' holds revoked certificates: they stay registered so that they stay refused"
            )));
        }
        removed = p.devices.remove(&id);
        Ok(())
    })
    .map(|()| done());
    if let (Ok(_), Some(d)) = (&answer, removed) {
        c.set("certificates", d.certificates.keys().collect::<Vec<_>>());
    }
    c.done(answer)
}

pub(super) async fn list_certs(State(st): St, Path(id): Path<String>) -> ApiResult<Response> {
    let p = st.backend.policy();
    let d = p.devices.get(&id).ok_or_else(|| no_device(&id))?;
    Ok(Json(d.certificates.iter().map(|(fp, c)| cert_view(fp, c)).collect::<Vec<_>>()).into_response())
}

pub(super) async fn add_cert_route(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.cert.add", id.clone());
    let answer = (|| {
        let n: NewCert = parse(&body)?;
        let (fp, cert) = n.resolve()?;
        c.set("fingerprint", &fp);
        c.set("status", cert.status);
        edit(&st, |p| add_cert(p, &id, &fp, &cert))?;
        Ok::<_, AdminError>(
            (StatusCode::CREATED, Json(serde_json::json!({ "ok": true, "fingerprint": fp }))).into_response(),
        )
    })();
    c.done(answer)
}

/// The fingerprint in a path, normalized (400 when it is none).
pub(super) fn path_fingerprint(f: &str) -> ApiResult<String> {
    normalize_fingerprint(f).ok_or_else(|| AdminError::bad_request("not a SHA-256 fingerprint (64 hex digits)"))
}

pub(super) async fn set_cert_status(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((id, fp)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.cert.status", id.clone());
    let answer = (|| {
        let fp = path_fingerprint(&fp)?;
        c.set("fingerprint", &fp);
        let patch: CertPatch = parse(&body)?;
        c.set("status", patch.status);
        let mut previous = None;
        edit(&st, |p| {
            let cert = device_mut(p, &id)?
                .certificates
                .get_mut(&fp)
                .ok_or_else(|| AdminError::not_found(format!("device '{id}' has no certificate {fp}")))?;
            if cert.status == CertStatus::Revoked && patch.status != CertStatus::Revoked {
                return Err(AdminError::conflict("a revoked certificate cannot be made active or inactive again"));
            }
            previous = Some(cert.status);
            cert.status = patch.status;
            Ok(())
        })?;
        if let Some(p) = previous {
            c.set("previous", p);
        }
        Ok::<_, AdminError>(done())
    })();
    c.done(answer)
}

pub(super) async fn remove_cert(
    State(st): St,
    Extension(a): Extension<AdminActor>,
    Path((id, fp)): Path<(String, String)>,
) -> ApiResult<Response> {
    let mut c = Change::new(&st, a, "device.cert.remove", id.clone());
    let answer = (|| {
        let fp = path_fingerprint(&fp)?;
        c.set("fingerprint", &fp);
        edit(&st, |p| {
            let certs = &mut device_mut(p, &id)?.certificates;
            match certs.get(&fp) {
                None => Err(AdminError::not_found(format!("device '{id}' has no certificate {fp}"))),
                // Kept so that it stays refused (see delete_device).
                Some(c) if c.status == CertStatus::Revoked => {
                    Err(AdminError::conflict("a revoked certificate stays registered so that it stays refused"))
                }
                Some(_) => {
                    certs.remove(&fp);
                    Ok(())
                }
            }
        })?;
        Ok::<_, AdminError>(done())
    })();
    c.done(answer)
}
