//! Unwrapping age's X25519 recipient stanzas with aws-lc's X25519, for every place Telbase
//! opens a sealed value.
//!
//! This module owns one small piece of the age format: turning an `X25519` stanza into the
//! file key (c2sp.org/age, "X25519 recipient stanza"). Everything else (header parsing, the
//! header MAC, the payload stream, HKDF and ChaCha20-Poly1305) stays in the `age` crates; we
//! call age-core's own `hkdf` and `aead_decrypt`, so only the Diffie-Hellman is swapped.
//!
//! Why by hand: the `age` crate's identity uses curve25519-dalek's portable Montgomery
//! ladder and recomputes the identity's public key (a second scalar multiplication) on every
//! stanza. `telbase exec` opens every sealed variable of a process at start, so that cost is
//! paid per variable before the command can start (the secrets issue's speed target). aws-lc,
//! already compiled in for the GitHub App's JWTs, has an assembly X25519 about twice as fast
//! here, and the public key is computed once per identity. Tests check every stanza this
//! opens against the `age` crate's own identity, the Go `age` interop tests run through it,
//! and the failure cases (a low-order share, a wrong key, a malformed stanza) are covered.

use age::{DecryptError, Identity};
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use age_core::primitives::{aead_decrypt, hkdf};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use base64::Engine as _;
use secrecy::ExposeSecret as _;
use zeroize::Zeroizing;

const TAG: &str = "X25519";
const LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const SHARE_BYTES: usize = 32;
const WRAPPED_BYTES: usize = FILE_KEY_BYTES + 16;

/// One X25519 identity, ready to unwrap: the private key in aws-lc and its public key.
/// Neither `Debug` nor `Display`: nothing here is ever printed.
pub struct Unwrapper {
    private: PrivateKey,
    public: [u8; 32],
}

impl Unwrapper {
    /// Prepares `identity`, or `None` if aws-lc refuses the key (it accepts every 32-byte
    /// X25519 key; the fallback keeps the `age` crate's path for anything unexpected).
    fn new(identity: &age::x25519::Identity) -> Option<Unwrapper> {
        // The identity's bytes are only reachable through its bech32 text.
        let text = identity.to_string();
        let (_, bytes) = bech32::decode(text.expose_secret()).ok()?;
        let bytes = Zeroizing::new(bytes);
        let private = PrivateKey::from_private_key(&X25519, &bytes).ok()?;
        let public: [u8; 32] = private
            .compute_public_key()
            .ok()?
            .as_ref()
            .try_into()
            .ok()?;
        Some(Unwrapper { private, public })
    }
}

impl Identity for Unwrapper {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, DecryptError>> {
        if stanza.tag != TAG {
            return None;
        }
        // Canonical form only, as the `age` crate enforces: one argument, 43 characters of
        // unpadded base64 for 32 bytes, and a 32-byte body.
        let share = match &stanza.args[..] {
            [arg] if arg.len() == 43 => {
                match base64::engine::general_purpose::STANDARD_NO_PAD.decode(arg) {
                    Ok(share) if share.len() == SHARE_BYTES => share,
                    _ => return Some(Err(DecryptError::InvalidHeader)),
                }
            }
            _ => return Some(Err(DecryptError::InvalidHeader)),
        };
        if stanza.body.len() != WRAPPED_BYTES {
            return Some(Err(DecryptError::InvalidHeader));
        }
        // aws-lc refuses a shared secret of all zeros (a low-order share), which the format
        // requires refusing too.
        let key = agreement::agree(
            &self.private,
            UnparsedPublicKey::new(&X25519, &share),
            (),
            |shared| {
                let mut salt = [0u8; 64];
                salt[..32].copy_from_slice(&share);
                salt[32..].copy_from_slice(&self.public);
                Ok(Zeroizing::new(hkdf(&salt, LABEL, shared)))
            },
        );
        let Ok(key) = key else {
            return Some(Err(DecryptError::InvalidHeader));
        };
        // Failing to decrypt is not an error: the stanza may be for another recipient.
        aead_decrypt(&key, FILE_KEY_BYTES, &stanza.body)
            .ok()
            .map(|plain| {
                let plain = Zeroizing::new(plain);
                Ok(FileKey::init_with_mut(|k| k.copy_from_slice(&plain)))
            })
    }
}

/// The identities to open values with, prepared once: each one as an [`Unwrapper`], or as
/// the `age` crate's own identity if aws-lc refused it.
pub struct Keys<'a> {
    prepared: Vec<Prepared<'a>>,
}

enum Prepared<'a> {
    Fast(Unwrapper),
    Age(&'a age::x25519::Identity),
}

impl<'a> Keys<'a> {
    pub fn new(identities: &'a [age::x25519::Identity]) -> Keys<'a> {
        Keys {
            prepared: identities
                .iter()
                .map(|i| Unwrapper::new(i).map_or(Prepared::Age(i), Prepared::Fast))
                .collect(),
        }
    }

    /// The identities in the form `age::Decryptor::decrypt` takes.
    pub fn as_age(&self) -> impl Iterator<Item = &dyn Identity> {
        self.prepared.iter().map(|p| match p {
            Prepared::Fast(u) => u as &dyn Identity,
            Prepared::Age(i) => *i as &dyn Identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::Recipient as _;
    use std::collections::HashSet;

    fn stanzas(recipient: &age::x25519::Recipient) -> (Vec<Stanza>, FileKey) {
        use ring::rand::SecureRandom as _;
        let file_key = FileKey::init_with_mut(|k| ring::rand::SystemRandom::new().fill(k).unwrap());
        let (wrapped, _) = recipient.wrap_file_key(&file_key).unwrap();
        (wrapped, file_key)
    }

    #[test]
    fn unwraps_what_age_wraps_and_agrees_with_age_on_every_stanza() {
        let mut seen = HashSet::new();
        for _ in 0..64 {
            let id = age::x25519::Identity::generate();
            let other = age::x25519::Identity::generate();
            let fast = Unwrapper::new(&id).expect("aws-lc takes every X25519 key");
            assert_eq!(
                fast.public,
                *bech32::decode(&id.to_public().to_string()).unwrap().1,
                "the public key matches age's"
            );
            let (mine, file_key) = stanzas(&id.to_public());
            let ours = fast.unwrap_stanza(&mine[0]).unwrap().unwrap();
            let theirs = id.unwrap_stanza(&mine[0]).unwrap().unwrap();
            assert_eq!(ours.expose_secret(), file_key.expose_secret());
            assert_eq!(ours.expose_secret(), theirs.expose_secret());
            seen.insert(*file_key.expose_secret());
            // Another key's stanza is not ours, for both implementations alike.
            let (others, _) = stanzas(&other.to_public());
            assert!(fast.unwrap_stanza(&others[0]).is_none());
            assert!(id.unwrap_stanza(&others[0]).is_none());
        }
        assert_eq!(
            seen.len(),
            64,
            "file keys are random, so the test saw 64 cases"
        );
    }

    #[test]
    fn malformed_and_low_order_stanzas_are_header_errors_like_age_says() {
        let id = age::x25519::Identity::generate();
        let fast = Unwrapper::new(&id).unwrap();
        let (good, _) = stanzas(&id.to_public());
        let good = &good[0];
        let variant = |args: Vec<String>, body: Vec<u8>| Stanza {
            tag: TAG.into(),
            args,
            body,
        };
        let zero_share = base64::engine::general_purpose::STANDARD_NO_PAD.encode([0u8; 32]);
        let cases = [
            variant(vec![], good.body.clone()),
            variant(vec![good.args[0].clone(), "x".into()], good.body.clone()),
            variant(vec![format!("{}A", good.args[0])], good.body.clone()),
            variant(vec![good.args[0][..42].into()], good.body.clone()),
            variant(vec![good.args[0].clone()], good.body[..31].to_vec()),
            // The all-zero point: the shared secret would be zero.
            variant(vec![zero_share], good.body.clone()),
        ];
        for (n, stanza) in cases.iter().enumerate() {
            for (who, got) in [
                ("ours", fast.unwrap_stanza(stanza)),
                ("age's", id.unwrap_stanza(stanza)),
            ] {
                assert!(
                    matches!(got, Some(Err(DecryptError::InvalidHeader))),
                    "case {n}, {who}: expected InvalidHeader"
                );
            }
        }
        // A damaged body is a stanza for someone else: no error, no key.
        let mut body = good.body.clone();
        body[0] ^= 1;
        assert!(
            fast.unwrap_stanza(&variant(vec![good.args[0].clone()], body))
                .is_none()
        );
        // Other tags are not ours.
        let scrypt = Stanza {
            tag: "scrypt".into(),
            args: good.args.clone(),
            body: good.body.clone(),
        };
        assert!(fast.unwrap_stanza(&scrypt).is_none());
    }
}
