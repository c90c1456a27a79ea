//! Client authentication at the token, revocation and introspection endpoints:
//! `none` (public clients, PKCE), `client_secret_post` and `client_secret_basic`.

use crate::OAuthError;
use grantline_ledger::{AuthMethod, secret_digest};
use grantline_state::{Client, State};
use subtle::ConstantTimeEq;

/// What a request presented to identify its client. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented {
    pub client_id: String,
    pub secret: Option<String>,
    /// How the secret came: HTTP Basic or the form body.
    pub via: AuthMethod,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .field("via", &self.via)
            .finish()
    }
}

/// Whether `secret` hashes to `digest`, in constant time.
pub fn secret_matches(secret: &str, digest: &str) -> bool {
    secret_digest(secret.as_bytes())
        .as_bytes()
        .ct_eq(digest.as_bytes())
        .into()
}

/// Authenticates the client: it must exist and be enabled; a confidential client must present
/// its secret the way it registered to (Basic or form); a public client must not present one.
pub fn authenticate<'s>(state: &'s State, p: &Presented) -> Result<&'s Client, OAuthError> {
    let client = state
        .clients
        .get(&p.client_id)
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    if client.disabled {
        return Err(OAuthError::invalid_client("client is disabled"));
    }
    if client.expired {
        return Err(OAuthError::invalid_client(
            "client registration expired; register again",
        ));
    }
    match (&client.secret_digest, &p.secret) {
        (None, None) => Ok(client),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "public client must not present a secret",
        )),
        (Some(_), None) => Err(OAuthError::invalid_client("client authentication required")),
        (Some(d), Some(s)) => {
            if !secret_matches(s, d) {
                return Err(OAuthError::invalid_client("client authentication failed"));
            }
            // The method it registered, and no other (RFC 7591 §2): a secret meant for the
            // Authorization header does not belong in form bodies and their logs, and back.
            if p.via != client.auth_method {
                return Err(OAuthError::invalid_client(format!(
                    "this client authenticates with {}",
                    match client.auth_method {
                        AuthMethod::ClientSecretBasic => "HTTP Basic (client_secret_basic)",
                        AuthMethod::ClientSecretPost =>
                            "client_secret in the form (client_secret_post)",
                        AuthMethod::None => "no secret (none)",
                    }
                )));
            }
            Ok(client)
        }
    }
}
