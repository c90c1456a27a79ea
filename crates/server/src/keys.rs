//! The Ed25519 key that signs JWT access tokens (and, derived from it, the session-cookie MAC
//! key): `access-token.key` in the data directory (mode 0600), or `GRANTLINE_ACCESS_TOKEN_KEY`
//! (base64 of the 32-byte seed). Instances sharing one database must share this key.

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

pub const FILE: &str = "access-token.key";
pub const ENV: &str = "GRANTLINE_ACCESS_TOKEN_KEY";

pub(crate) fn parse(text: &str) -> Result<SigningKey> {
    let bytes = STANDARD
        .decode(text.trim())
        .context("access-token key is not base64")?;
    let seed: [u8; 32] = match bytes.try_into() {
        Ok(s) => s,
        Err(_) => bail!("access-token key must be 32 bytes"),
    };
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the key from the environment or the data directory, creating the file on first use
/// — only while `in_use` is false: a ledger that already has an access-token key (recorded
/// when it was introduced) needs that one, and a new one would retire it for every instance
/// (tokens signed with it would stop verifying once it left the JWKS).
pub fn load_or_create(data_dir: &Path, in_use: bool) -> Result<SigningKey> {
    if let Ok(v) = std::env::var(ENV) {
        return parse(&v).with_context(|| format!("${ENV}"));
    }
    let path = data_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    bail!(
                        "{} is readable by others (mode {:o}); run chmod 600",
                        path.display(),
                        mode & 0o777
                    );
                }
            }
            return parse(&text).with_context(|| path.display().to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    }
    if in_use {
        bail!(
            "no access-token key here ({} or ${ENV}), but the ledger already has one in use: copy access-token.key from the data directory that made it (instances sharing a database share it; docs/operations.md, \"Keys\")",
            path.display()
        );
    }
    grantline_store::private_dir(data_dir)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{}", STANDARD.encode(seed))?;
    f.sync_all()?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A key for MACs (session cookies, CSRF tokens), derived so it never equals the signing key.
pub fn mac_key(signing: &SigningKey) -> [u8; 32] {
    blake3::derive_key("grantline 2026 session and csrf mac", signing.as_bytes())
}

/// The key that signs identity assertions to upstream MCP servers, derived from the
/// access-token key so instances sharing that key share it, and never equal to it: an
/// assertion can never pass for an access token by its signature.
pub fn identity_key(signing: &SigningKey) -> SigningKey {
    SigningKey::from_bytes(&blake3::derive_key(
        "grantline 2026 upstream identity assertion",
        signing.as_bytes(),
    ))
}
