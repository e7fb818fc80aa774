//! `reseal`: every sealed value in a config opened with the caller's identity and sealed
//! again to the current recipients, rewritten in place in one edit, for adding or removing a
//! person in one commit.
//!
//! Everything is resealed, always. Whether a value is already sealed to exactly the current
//! recipients cannot be told without guessing: an age header lists one X25519 stanza per
//! recipient, but a stanza carries only an ephemeral share and a wrapped key, never the
//! recipient it is for, so only the count could be compared. All values are opened before any
//! is written; one that cannot be opened stops the whole reseal with its location and nothing
//! changes. Plaintexts live in zeroizing buffers for the moment between opening and sealing.

use crate::config::edit::{Document, EditError, display_path};

use super::{OpenError, SealError, open, seal};

/// The rewritten file and how many values were resealed.
#[derive(Debug)]
pub struct Resealed {
    pub text: String,
    pub count: usize,
}

/// Why a reseal stopped (nothing is written in any of these cases).
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("line {line} (`{path}`): cannot open the sealed value: {reason}")]
    Open {
        line: u32,
        path: String,
        reason: OpenError,
    },
    #[error("cannot seal again: {0}")]
    Seal(#[from] SealError),
    #[error(transparent)]
    Edit(#[from] EditError),
}

/// Reseals every `sealed:` value in `src` to `recipients`, opening each with `identities`.
/// Returns the new text (verified by the editor) and the number of values.
pub fn reseal(
    src: &str,
    identities: &[age::x25519::Identity],
    recipients: &[age::x25519::Recipient],
) -> Result<Resealed, ResealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipients.into());
    }
    let doc = Document::parse(src)?;
    let values = doc.sealed_values();
    let mut replacements = Vec::with_capacity(values.len());
    for v in &values {
        let plain = open(v.text.as_bytes(), identities).map_err(|reason| ResealError::Open {
            line: v.line,
            path: display_path(&v.path),
            reason,
        })?;
        let mut armored = Vec::new();
        seal(&plain, recipients, &mut armored)?;
        drop(plain);
        // Armored output is ASCII by construction.
        let armored = String::from_utf8(armored)
            .map_err(|_| SealError::Io(std::io::Error::other("armor is not text")))?;
        replacements.push((v.path.clone(), armored));
    }
    if replacements.is_empty() {
        return Ok(Resealed {
            text: src.to_owned(),
            count: 0,
        });
    }
    let text = doc.replace_sealed(&replacements)?;
    Ok(Resealed {
        text,
        count: replacements.len(),
    })
}
