//! MQTT 5 re-authentication (§4.12.1) of a SCRAM-authenticated connection: AUTH 0x19
//! (client-first) → AUTH 0x18 (server-first) → AUTH 0x18 (client-final) → AUTH 0x00
//! (server-final). The same user must prove itself again, and must still stand where the
//! chain would admit it now ([`Context::stands`]: not disabled in the policy store, still in
//! the password file); a failure disconnects with 0x87, a broken exchange with 0x82.

use mqtt_codec::ReasonCode;

use super::Context;
use crate::scram::{ScramServer, MECHANISM};
use crate::trust::CredentialSource;
use crate::Principal;

/// Where a connection's re-authentication stands.
#[derive(Debug, Default)]
pub enum Reauth {
    /// No exchange under way.
    #[default]
    Idle,
    /// The server-first-message was sent. Boxed: a connection holds it only between two AUTH
    /// packets.
    AwaitFinal(Box<ScramServer>),
}

/// The AUTH packet to send back: its reason code and Authentication Data (the method is
/// SCRAM-SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReauthReply {
    /// 0x18 Continue authentication, or 0x00 Success.
    pub reason_code: ReasonCode,
    /// The Authentication Data.
    pub data: Vec<u8>,
}

impl Reauth {
    /// True when no exchange is under way.
    pub fn is_idle(&self) -> bool {
        matches!(self, Reauth::Idle)
    }

    /// One AUTH packet from the client of `user`. `ctx`: what authentication reads now (the
    /// password file and the disabled names in force; take it fresh for every packet). `Err`:
    /// the DISCONNECT reason code.
    pub fn step(
        &mut self,
        reason_code: ReasonCode,
        method: Option<&str>,
        data: Option<&[u8]>,
        user: &str,
        ctx: &Context<'_>,
    ) -> Result<ReauthReply, ReasonCode> {
        // The method may not change [MQTT-4.12.1-1].
        if method != Some(MECHANISM) {
            return Err(ReasonCode::PROTOCOL_ERROR);
        }
        // A user disabled in the policy store or removed from the password file since it
        // connected is refused at once, whatever it proves (its connection is normally ended
        // by the trust change already; this holds when the change and the AUTH cross).
        let principal = Principal::user(user).with_credential(CredentialSource::PasswordFile, None);
        if !ctx.stands(&principal) {
            *self = Reauth::Idle;
            return Err(ReasonCode::NOT_AUTHORIZED);
        }
        let data = data.unwrap_or_default();
        match (std::mem::take(self), reason_code) {
            (Reauth::Idle, ReasonCode::REAUTHENTICATE) => {
                let first = ScramServer::client_first(data).map_err(|_| ReasonCode::NOT_AUTHORIZED)?;
                if first.username != user {
                    return Err(ReasonCode::NOT_AUTHORIZED); // the identity may not change
                }
                let creds = ctx.passwords.as_ref().and_then(|f| f.scram_credentials(&first.username));
                let (server, server_first) = ScramServer::server_first(first, creds.as_ref());
                *self = Reauth::AwaitFinal(Box::new(server));
                Ok(ReauthReply { reason_code: ReasonCode::CONTINUE_AUTHENTICATION, data: server_first })
            }
            (Reauth::AwaitFinal(server), ReasonCode::CONTINUE_AUTHENTICATION) => {
                let (_, server_final) = server.client_final(data).map_err(|_| ReasonCode::NOT_AUTHORIZED)?;
                Ok(ReauthReply { reason_code: ReasonCode::SUCCESS, data: server_final })
            }
            _ => Err(ReasonCode::PROTOCOL_ERROR),
        }
    }
}
