//! The audit keys: one 32-byte secret, from `TELBASE_AUDIT_KEY_FILE` (a 0600 file holding it
//! in base64) or `TELBASE_AUDIT_KEY` (the base64 itself), never from the database. From it,
//! HKDF-SHA256 derives three keys with separate labels: the chain key (HMAC-SHA256 of every
//! record and of the chain head), the fingerprint key (keyed hashes of secret values in
//! details) and the Ed25519 seed that signs retention checkpoints. The key id is derived from
//! the Ed25519 public key, so an operator can pin it elsewhere (`telbase audit verify` prints
//! it), and each record names the key that sealed it.
//!
//! Why a key of its own rather than one derived from the master keys of the secrets store:
//! master keys rotate and retire on a schedule, but the chain must verify for its whole
//! retention with the key that sealed it; and an auditor may be given the audit key without
//! being able to decrypt stored secrets.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use secrecy::ExposeSecret as _;
use zeroize::Zeroizing;

use super::AuditError;
use super::details::Fingerprint;

/// The derived audit keys. No `Debug` output shows key material.
pub struct AuditKeys {
    chain: ring::hmac::Key,
    fingerprint: ring::hmac::Key,
    signing: Ed25519KeyPair,
    public: Vec<u8>,
    id: String,
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeys").field("id", &self.id).finish()
    }
}

fn derive(secret: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"telbase/audit/v1").extract(secret);
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&[label], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

impl AuditKeys {
    /// Derives the keys from the 32-byte audit secret.
    pub fn from_secret(secret: &[u8; 32]) -> AuditKeys {
        let chain = derive(secret, b"chain");
        let fingerprint = derive(secret, b"fingerprint");
        let seed = derive(secret, b"checkpoint-ed25519");
        let signing = Ed25519KeyPair::from_seed_unchecked(&seed[..])
            .expect("any 32 bytes are an Ed25519 seed");
        let public = signing.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let id = format!("audit-{}", super::chain::hex(&digest.as_ref()[..8]));
        AuditKeys {
            chain: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &chain[..]),
            fingerprint: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &fingerprint[..]),
            signing,
            public,
            id,
        }
    }

    /// A key from its base64 text; `at` names where it came from for errors.
    pub fn parse(text: &str, at: &str) -> Result<AuditKeys, AuditError> {
        let bad = |why: &str| AuditError::BadKey {
            at: at.to_owned(),
            why: why.to_owned(),
        };
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| bad("not base64 (expected 32 random bytes in base64)"))?,
        );
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad("the key must be exactly 32 bytes"))?,
        );
        Ok(AuditKeys::from_secret(&secret))
    }

    /// From `TELBASE_AUDIT_KEY_FILE` or `TELBASE_AUDIT_KEY` (both set is an error);
    /// [`AuditError::NoKey`] when neither is.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<AuditKeys, AuditError> {
        let file = var("TELBASE_AUDIT_KEY_FILE").filter(|v| !v.is_empty());
        let value = var("TELBASE_AUDIT_KEY")
            .map(Zeroizing::new)
            .filter(|v| !v.is_empty());
        match (file, value) {
            (Some(_), Some(_)) => Err(AuditError::BadKey {
                at: "TELBASE_AUDIT_KEY_FILE and TELBASE_AUDIT_KEY".into(),
                why: "both are set; set only one".into(),
            }),
            (Some(path), None) => AuditKeys::read_file(Path::new(&path)),
            (None, Some(v)) => AuditKeys::parse(&v, "TELBASE_AUDIT_KEY"),
            (None, None) => Err(AuditError::NoKey),
        }
    }

    /// Reads a key file, refusing one that other users can read.
    pub fn read_file(path: &Path) -> Result<AuditKeys, AuditError> {
        let shown = path.display().to_string();
        let io = |error| AuditError::Io {
            path: shown.clone(),
            error,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuditError::Permissions { path: shown, mode });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        AuditKeys::parse(&text, &shown)
    }

    /// A new random secret, base64 (for `telbase audit keygen`).
    pub fn generate() -> Result<Zeroizing<String>, AuditError> {
        use ring::rand::SecureRandom as _;
        let mut secret = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(&mut secret[..])
            .map_err(|_| AuditError::BadKey {
                at: "the system random number generator".into(),
                why: "failed".into(),
            })?;
        Ok(Zeroizing::new(B64.encode(&secret[..])))
    }

    /// `audit-<16 hex>`: names the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The checkpoint verification key (Ed25519 public key), base64.
    pub fn public_key(&self) -> String {
        B64.encode(&self.public)
    }

    pub(super) fn mac(&self, message: &[u8]) -> ring::hmac::Tag {
        ring::hmac::sign(&self.chain, message)
    }

    /// Constant-time check of a hex MAC over `message`.
    pub(super) fn mac_ok(&self, message: &[u8], hex_mac: &str) -> bool {
        match super::chain::unhex(hex_mac) {
            Some(tag) => ring::hmac::verify(&self.chain, message, &tag).is_ok(),
            None => false,
        }
    }

    pub(super) fn sign(&self, message: &[u8]) -> String {
        B64.encode(self.signing.sign(message).as_ref())
    }

    pub(super) fn signature_ok(&self, message: &[u8], signature: &str) -> bool {
        match B64.decode(signature) {
            Ok(sig) => UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(message, &sig)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// The keyed hash of a secret value for details.
    pub fn fingerprint(&self, purpose: &str, value: &secrecy::SecretString) -> Fingerprint {
        let mut ctx = ring::hmac::Context::with_key(&self.fingerprint);
        ctx.update(&(purpose.len() as u64).to_be_bytes());
        ctx.update(purpose.as_bytes());
        ctx.update(value.expose_secret().as_bytes());
        Fingerprint(format!(
            "hmac-sha256:{}",
            super::chain::hex(ctx.sign().as_ref())
        ))
    }
}
