//! SOPS files: the real Flux vectors (written by `sops` 3.9.0), tampering of every kind,
//! the env-file rules, a property test over random damage, and an app whose `env_file`
//! plans without a key and applies to Vercel as sensitive variables.
//!
//! No `sops` binary is packaged for this machine's registries, so the other files here are
//! written by `encrypt` below: a separate, minimal SOPS encryptor written from the SOPS
//! format (it shares no code with the decryptor under test). The Flux vector remains the
//! proof of interoperability with real SOPS output.

mod common;

use std::path::{Path, PathBuf};

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::{AeadInPlace as _, KeyInit as _};
use base64::Engine as _;
use proptest::prelude::*;
use secrecy::ExposeSecret as _;
use sha2::Digest as _;
use telbase::secrets::sops::{self, Format, SopsError, SopsFile};

type Gcm = aes_gcm::AesGcm<aes_gcm::aes::Aes256, U32>;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/test-vectors/sops")
}

fn flux_identity() -> Vec<age::x25519::Identity> {
    let text = std::fs::read_to_string(vectors().join("flux-age.key.txt")).unwrap();
    telbase::secrets::parse_identities(&text).unwrap()
}

fn flux_text() -> String {
    std::fs::read_to_string(vectors().join("flux-age.sops.yaml")).unwrap()
}

fn open_text(text: &str, format: Format) -> Result<sops::Opened, SopsError> {
    SopsFile::parse(text, format)?.decrypt(&flux_identity())
}

// ---------------------------------------------------------------------------------------
// A minimal SOPS encryptor (default rule: keys ending in `_unencrypted` stay clear).

struct Options {
    format: Format,
    mac_only_encrypted: bool,
    lastmodified: &'static str,
    /// SOPS value types other than `str`, by key (values given as SOPS encrypts them).
    types: &'static [(&'static str, &'static str)],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Yaml,
            mac_only_encrypted: false,
            lastmodified: "2026-11-29T12:00:00Z",
            types: &[],
        }
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Writes a flat map of string values as SOPS does: each value `ENC[…]` under the data key
/// with its key path as additional data, the MAC over the values in order (only encrypted
/// ones, after SOPS's fixed prefix, with `mac_only_encrypted`), the data key sealed to each
/// recipient as armored age.
fn encrypt(body: &[(&str, &str)], recipients: &[age::x25519::Recipient], o: &Options) -> String {
    let mut key = [0u8; 32];
    use ring::rand::SecureRandom as _;
    let rng = ring::rand::SystemRandom::new();
    rng.fill(&mut key).unwrap();
    let cipher = Gcm::new(GenericArray::from_slice(&key));
    let b64 = base64::engine::general_purpose::STANDARD;
    let enc = |plain: &[u8], aad: &str, kind: &str| {
        let mut iv = [0u8; 32];
        rng.fill(&mut iv).unwrap();
        let mut buf = plain.to_vec();
        let tag = cipher
            .encrypt_in_place_detached(GenericArray::from_slice(&iv), aad.as_bytes(), &mut buf)
            .unwrap();
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            b64.encode(&buf),
            b64.encode(iv),
            b64.encode(tag)
        )
    };
    let mut hash = sha2::Sha512::new();
    if o.mac_only_encrypted {
        hash.update([
            0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47,
            0xbe, 0x0b, 0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81,
            0x76, 0xf2, 0x7d, 0x69,
        ]);
    }
    // (parent, key, stored): a key `p.k` is `k` inside the map `p`.
    let mut values: Vec<(Option<String>, String, String)> = Vec::new();
    for (k, v) in body {
        let (parent, key) = match k.split_once('.') {
            Some((p, k)) => (Some(p.to_owned()), k.to_owned()),
            None => (None, k.to_string()),
        };
        let clear = k.split('.').any(|p| p.ends_with("_unencrypted"));
        let kind = o
            .types
            .iter()
            .find(|(n, _)| n == k)
            .map_or("str", |(_, t)| t);
        if !clear || !o.mac_only_encrypted {
            // SOPS hashes booleans as Python spells them.
            hash.update(match (kind, *v) {
                ("bool", "true") => "True",
                ("bool", "false") => "False",
                _ => v,
            });
        }
        let stored = if clear || v.is_empty() {
            v.to_string()
        } else {
            enc(v.as_bytes(), &(k.replace('.', ":") + ":"), kind)
        };
        values.push((parent, key, stored));
    }
    let mac = enc(
        hex_upper(&hash.finalize()).as_bytes(),
        o.lastmodified,
        "str",
    );
    let stanzas: Vec<(String, String)> = recipients
        .iter()
        .map(|r| {
            let mut armor = Vec::new();
            telbase::secrets::seal(&key, std::slice::from_ref(r), &mut armor).unwrap();
            (r.to_string(), String::from_utf8(armor).unwrap())
        })
        .collect();
    match o.format {
        Format::Json => {
            let mut out = String::from("{\n");
            let q = |s: &str| serde_json::Value::from(s).to_string();
            let mut open: Option<&str> = None;
            for (parent, k, v) in &values {
                if open.is_some() && open != parent.as_deref() {
                    out.push_str("\t},\n");
                    open = None;
                }
                match parent {
                    Some(p) if open.is_none() => {
                        out.push_str(&format!("\t{}: {{\n\t\t{}: {}", q(p), q(k), q(v)));
                        open = Some(p);
                    }
                    Some(_) => out.push_str(&format!(",\n\t\t{}: {}", q(k), q(v))),
                    None => out.push_str(&format!("\t{}: {},\n", q(k), q(v))),
                }
                if open.is_some() && values.last().map(|l| &l.1) == Some(k) {
                    out.push_str("\n\t},\n");
                    open = None;
                }
            }
            let age: Vec<_> = stanzas
                .iter()
                .map(|(r, e)| serde_json::json!({"recipient": r, "enc": e}))
                .collect();
            let mut sops = serde_json::json!({
                "kms": null, "age": age, "lastmodified": o.lastmodified, "mac": mac,
                "unencrypted_suffix": "_unencrypted", "version": "3.9.0",
            });
            if o.mac_only_encrypted {
                sops["mac_only_encrypted"] = true.into();
            }
            out.push_str(&format!(
                "\t\"sops\": {}\n}}\n",
                serde_json::to_string_pretty(&sops).unwrap()
            ));
            out
        }
        Format::Yaml => {
            let mut out = String::new();
            let mut open: Option<&str> = None;
            for (parent, k, v) in &values {
                let v = serde_json::Value::from(v.as_str());
                match parent {
                    Some(p) => {
                        if open != Some(p.as_str()) {
                            out.push_str(&format!("{p}:\n"));
                            open = Some(p);
                        }
                        out.push_str(&format!("  {k}: {v}\n"));
                    }
                    None => {
                        open = None;
                        out.push_str(&format!("{k}: {v}\n"));
                    }
                }
            }
            out.push_str("sops:\n  kms: []\n  age:\n");
            for (r, e) in &stanzas {
                out.push_str(&format!("    - recipient: {r}\n      enc: |\n"));
                for line in e.lines() {
                    out.push_str(&format!("        {line}\n"));
                }
            }
            out.push_str(&format!(
                "  lastmodified: \"{}\"\n  mac: {mac}\n  unencrypted_suffix: _unencrypted\n  version: 3.9.0\n",
                o.lastmodified
            ));
            if o.mac_only_encrypted {
                out.push_str("  mac_only_encrypted: true\n");
            }
            out
        }
    }
}

fn env_of(text: &str, format: Format, ids: &[age::x25519::Identity]) -> Vec<(String, String)> {
    SopsFile::parse(text, format)
        .unwrap()
        .open_env(ids)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.expose_secret().to_owned()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The `ENC[…]` text of the line whose key is `key` (YAML files written above).
fn enc_of<'a>(text: &'a str, key: &str) -> &'a str {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key}: ")))
        .unwrap();
    let start = line.find("ENC[").unwrap();
    &line[start..line.rfind(']').unwrap() + 1]
}

fn field(enc: &str, name: &str) -> String {
    let start = enc.find(&format!("{name}:")).unwrap() + name.len() + 1;
    let rest = &enc[start..];
    rest[..rest.find([',', ']']).unwrap()].to_owned()
}

/// `enc` with one base64 field's decoded bytes changed by `f`.
fn with_field(enc: &str, name: &str, f: impl Fn(&mut Vec<u8>)) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let old = field(enc, name);
    let mut bytes = b64.decode(&old).unwrap();
    f(&mut bytes);
    enc.replacen(
        &format!("{name}:{old}"),
        &format!("{name}:{}", b64.encode(bytes)),
        1,
    )
}

// ---------------------------------------------------------------------------------------
// The real SOPS vectors.

#[test]
fn flux_vector_opens_to_the_documented_plaintext() {
    let opened = open_text(&flux_text(), Format::Yaml).expect("the Flux file opens");
    let get = |p: &[&str]| opened.get(p).map(|v| v.expose_secret().to_owned());
    assert_eq!(get(&["apiVersion"]).as_deref(), Some("v1"));
    assert_eq!(get(&["kind"]).as_deref(), Some("Secret"));
    assert_eq!(get(&["metadata", "name"]).as_deref(), Some("age"));
    assert_eq!(get(&["stringData", "key"]).as_deref(), Some("value"));
    assert_eq!(opened.len(), 4, "exactly the documented four values");

    // As an env file it is a Kubernetes Secret: its stringData is the environment.
    let path = vectors().join("flux-age.sops.yaml");
    let env = sops::open_env_file(&path, &flux_identity()).unwrap();
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].0, "key");
    assert_eq!(env[0].1.expose_secret(), "value");
    let one = sops::open_env_key(&path, &flux_identity(), "key").unwrap();
    assert_eq!(one.expose_secret(), "value");
    let missing = sops::open_env_key(&path, &flux_identity(), "nope").unwrap_err();
    assert!(matches!(missing, SopsError::NoSuchKey { .. }), "{missing}");

    // Without a key, the structure is still readable (what plans use).
    let file = SopsFile::read(&path).unwrap();
    assert_eq!(
        file.recipients(),
        ["age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"]
    );
    let keys = file.env_keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "key");
    assert!(keys[0].stored.starts_with("ENC[AES256_GCM,data:mHeXsmQ="));
}

#[test]
fn flux_tampered_cleartext_fails_with_the_mac_error() {
    let text =
        std::fs::read_to_string(vectors().join("flux-age.tampered-cleartext.sops.yaml")).unwrap();
    let err = open_text(&text, Format::Yaml).unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch), "{err}");
    assert!(err.to_string().contains("MAC does not match"));
    let err = sops::open_env_file(
        &vectors().join("flux-age.tampered-cleartext.sops.yaml"),
        &flux_identity(),
    )
    .unwrap_err();
    assert!(matches!(err, SopsError::MacMismatch), "{err}");
}

#[test]
fn flux_vector_tampered_in_every_other_way_fails_closed() {
    let text = flux_text();
    let value = "ENC[AES256_GCM,data:mHeXsmQ=,iv:vUMpILz3xchORqkzDFvgwENY7EqIHHGJdEF6C8xqbFE=,tag:IroV7hykADvD0IUaq6kikA==,type:str]";
    assert!(text.contains(value));
    let check = |tampered: String, want: fn(&SopsError) -> bool, what: &str| {
        assert_ne!(tampered, text, "{what}: the tamper changed nothing");
        let err = open_text(&tampered, Format::Yaml).unwrap_err();
        assert!(want(&err), "{what}: {err}");
        assert!(!err.to_string().contains("value\""), "{what}: {err}");
    };
    let value_auth =
        |e: &SopsError| matches!(e, SopsError::ValueAuth { path } if path == "stringData.key");
    check(
        text.replace(value, &with_field(value, "iv", |b| b[0] ^= 1)),
        value_auth,
        "IV changed",
    );
    check(
        text.replace(value, &with_field(value, "data", |b| b[2] ^= 0x40)),
        value_auth,
        "data bit flipped",
    );
    check(
        text.replace(value, &with_field(value, "tag", |b| b[15] ^= 0x01)),
        value_auth,
        "tag bit flipped",
    );
    check(
        text.replace("2024-11-12T13:33:42Z", "2024-11-12T13:33:43Z"),
        |e| matches!(e, SopsError::MacUnreadable),
        "lastmodified changed",
    );
    let mac_line = text.lines().find(|l| l.contains("mac: ENC[")).unwrap();
    let mac = &mac_line[mac_line.find("ENC[").unwrap()..];
    check(
        text.replace(mac, &with_field(mac, "data", |b| b[0] ^= 1)),
        |e| matches!(e, SopsError::MacUnreadable),
        "MAC changed",
    );
    // The value moved under another key: its additional data no longer matches.
    check(
        text.replace("stringData:\n  key:", "stringData:\n  other:"),
        |e| matches!(e, SopsError::ValueAuth { .. }),
        "key renamed",
    );
    // A clear value removed: the MAC no longer covers the same values.
    check(
        text.replace("kind: Secret\n", ""),
        |e| matches!(e, SopsError::MacMismatch),
        "key removed",
    );
    // The rule itself changed so that a clear value must now be encrypted.
    check(
        text.replace(
            "encrypted_regex: ^(data|stringData)$",
            "encrypted_regex: ^(data|stringData|kind)$",
        ),
        |e| matches!(e, SopsError::Malformed { path, .. } if path == "kind"),
        "encrypted_regex widened",
    );
    // Claiming mac_only_encrypted changes what is hashed (and the prefix): mismatch.
    check(
        text.replace(
            "  version: 3.9.0",
            "  version: 3.9.0\n  mac_only_encrypted: true",
        ),
        |e| matches!(e, SopsError::MacMismatch),
        "mac_only_encrypted added",
    );
}

#[test]
fn a_wrong_identity_names_the_recipients_the_file_was_sealed_to() {
    let wrong = telbase::secrets::generate();
    let err = SopsFile::parse(&flux_text(), Format::Yaml)
        .unwrap()
        .decrypt(&[wrong])
        .unwrap_err();
    assert!(matches!(err, SopsError::NoMatchingIdentity { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"),
        "{err}"
    );
    // A damaged stanza is a different problem from a wrong key.
    let damaged = flux_text().replace(
        "YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+",
        "*WdlLWVuY3J5cHRpb24ub3JnL3YxCi0+",
    );
    let err = open_text(&damaged, Format::Yaml).unwrap_err();
    assert!(matches!(err, SopsError::DataKey { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------
// Files written by the encryptor above.

#[test]
fn yaml_and_json_flat_files_open_in_order() {
    let id = telbase::secrets::generate();
    let other = telbase::secrets::generate();
    let body = [
        ("DATABASE_URL", "postgres://app:s3cret@db/app"),
        ("API_KEY", "k-123"),
        ("EMPTY", ""),
        ("UNICODE", "pässwörd ✓"),
    ];
    for format in [Format::Yaml, Format::Json] {
        let text = encrypt(
            &body,
            &[other.to_public(), id.to_public()],
            &Options {
                format,
                ..Options::default()
            },
        );
        assert!(!text.contains("s3cret"));
        assert_eq!(
            env_of(&text, format, std::slice::from_ref(&id)),
            pairs(&body)
        );
        // Either recipient opens it.
        assert_eq!(
            env_of(&text, format, std::slice::from_ref(&other)),
            pairs(&body)
        );
    }
}

#[test]
fn typed_values_open_as_sops_types_them() {
    let id = telbase::secrets::generate();
    let o = Options {
        types: &[
            ("PORT", "int"),
            ("DEBUG", "bool"),
            ("RATIO", "float"),
            ("RAW", "bytes"),
        ],
        ..Options::default()
    };
    let body = [
        ("PORT", "8080"),
        ("DEBUG", "false"),
        ("RATIO", "0.25"),
        ("RAW", "raw bytes"),
    ];
    let text = encrypt(&body, &[id.to_public()], &o);
    assert!(text.contains("type:int]") && text.contains("type:bool]"));
    assert_eq!(
        env_of(&text, Format::Yaml, std::slice::from_ref(&id)),
        pairs(&body)
    );
    // A bool whose MAC was computed as `false` (not SOPS's `False`) does not verify: the
    // MAC spelling is part of the format.
    let wrong = Options {
        types: &[("DEBUG", "str")],
        ..Options::default()
    };
    let text = encrypt(&[("DEBUG", "false")], &[id.to_public()], &wrong);
    // The first `type:str` is DEBUG's (the body comes before the metadata).
    let retyped = text.replacen("type:str]", "type:bool]", 1);
    let got = SopsFile::parse(&retyped, Format::Yaml)
        .unwrap()
        .open_env(std::slice::from_ref(&id));
    assert!(matches!(got, Err(SopsError::MacMismatch)), "{got:?}");
}

#[test]
fn clear_values_count_in_the_mac_unless_mac_only_encrypted() {
    let id = telbase::secrets::generate();
    let body = [("TOKEN", "t0k3n"), ("REGION_unencrypted", "eu-west-1")];
    for mac_only_encrypted in [false, true] {
        let o = Options {
            mac_only_encrypted,
            ..Options::default()
        };
        let text = encrypt(&body, &[id.to_public()], &o);
        assert!(text.contains("REGION_unencrypted: \"eu-west-1\""));
        assert_eq!(
            env_of(&text, Format::Yaml, std::slice::from_ref(&id)),
            pairs(&body)
        );
        let changed = text.replace("eu-west-1", "eu-west-2");
        let got = SopsFile::parse(&changed, Format::Yaml)
            .unwrap()
            .open_env(std::slice::from_ref(&id));
        if mac_only_encrypted {
            // SOPS's own semantics: clear values are not covered in this mode.
            assert_eq!(got.unwrap()[1].1.expose_secret(), "eu-west-2");
        } else {
            assert!(matches!(got, Err(SopsError::MacMismatch)), "{got:?}");
        }
    }
}

#[test]
fn own_tamper_cases_each_fail_with_their_own_error() {
    let id = telbase::secrets::generate();
    let ids = std::slice::from_ref(&id);
    let body = [
        ("A", "alpha-secret"),
        ("B", "bravo-secret"),
        ("C", "charlie"),
    ];
    let text = encrypt(&body, &[id.to_public()], &Options::default());
    let open = |t: &str| SopsFile::parse(t, Format::Yaml).unwrap().open_env(ids);
    assert!(open(&text).is_ok());
    let (a, b) = (enc_of(&text, "A").to_owned(), enc_of(&text, "B").to_owned());

    // Two values swapped: each now sits under the wrong key path.
    let swapped = text.replace(&a, "@A@").replace(&b, &a).replace("@A@", &b);
    let err = open(&swapped).unwrap_err();
    assert!(
        matches!(&err, SopsError::ValueAuth { path } if path == "A"),
        "{err}"
    );

    // Two whole entries swapped (keys with their values): every value authenticates, but the
    // MAC covers the order.
    let line_a = text.lines().find(|l| l.starts_with("A: ")).unwrap();
    let line_b = text.lines().find(|l| l.starts_with("B: ")).unwrap();
    let reordered = text
        .replace(line_a, "@A@")
        .replace(line_b, line_a)
        .replace("@A@", line_b);
    assert!(matches!(open(&reordered), Err(SopsError::MacMismatch)));

    // A key removed.
    let line_c = text.lines().find(|l| l.starts_with("C: ")).unwrap();
    let removed = text.replace(&format!("{line_c}\n"), "");
    assert!(matches!(open(&removed), Err(SopsError::MacMismatch)));

    // A key added in the clear.
    let added = format!("D: injected\n{text}");
    assert!(matches!(open(&added), Err(SopsError::Malformed { .. })));
    // SOPS's MAC covers values, not key names, and an empty string adds nothing to it: an
    // added empty entry is not detectable, by SOPS or by Telbase (documented). It can only
    // ever add an empty variable, never change a value.
    let added_empty = format!("D: \"\"\n{text}");
    let env = open(&added_empty).unwrap();
    assert_eq!(env[0].0, "D");
    assert_eq!(env[0].1.expose_secret(), "");
    assert_eq!(env[1].1.expose_secret(), "alpha-secret");

    // An encrypted value replaced by an empty string (which SOPS leaves unencrypted).
    let emptied = text.replace(&format!("\"{a}\""), "\"\"");
    assert!(matches!(open(&emptied), Err(SopsError::MacMismatch)));

    // IV, data, tag.
    for (name, what) in [("iv", "IV"), ("data", "data"), ("tag", "tag")] {
        let t = text.replace(&b, &with_field(&b, name, |x| x[0] ^= 0x80));
        let err = open(&t).unwrap_err();
        assert!(
            matches!(&err, SopsError::ValueAuth { path } if path == "B"),
            "{what}: {err}"
        );
    }
    // A truncated IV is malformed, not a failed authentication.
    let t = text.replace(&b, &with_field(&b, "iv", |x| x.truncate(12)));
    assert!(matches!(open(&t), Err(SopsError::Malformed { .. })));

    // The MAC's own type must be str, as SOPS compares it as a string.
    let t = text.replacen("type:str]\n  unencrypted", "type:bytes]\n  unencrypted", 1);
    assert_ne!(t, text);
    assert!(matches!(open(&t), Err(SopsError::Malformed { path, .. }) if path == "sops.mac"));

    // The type changed from str to bool: the value decrypts but is not a boolean.
    let t = text.replace(&b, &b.replace("type:str", "type:bool"));
    assert!(matches!(open(&t), Err(SopsError::Malformed { .. })));

    // lastmodified moved by a second; a fractional second is the same time to SOPS (Go's
    // RFC 3339 formatting drops it), so that one still opens.
    let t = text.replace("12:00:00Z", "12:00:01Z");
    assert!(matches!(open(&t), Err(SopsError::MacUnreadable)));
    let t = text.replace("12:00:00Z", "12:00:00.000Z");
    assert!(open(&t).is_ok());
    let t = text.replace("\"2026-11-29T12:00:00Z\"", "yesterday");
    assert!(matches!(open(&t), Err(SopsError::BadMetadata(_))));

    // The sops metadata gone entirely, or the age list emptied.
    let cut = &text[..text.find("sops:").unwrap()];
    assert!(matches!(
        SopsFile::parse(cut, Format::Yaml),
        Err(SopsError::NotSops)
    ));

    // No plaintext in any message.
    for t in [&swapped, &reordered, &removed, &emptied] {
        let msg = open(t).unwrap_err().to_string();
        assert!(!msg.contains("secret") && !msg.contains("charlie"), "{msg}");
    }
}

#[test]
fn env_shape_rules_and_their_errors() {
    let id = telbase::secrets::generate();
    let rid = [id.to_public()];
    let parse = |t: &str| SopsFile::parse(t, Format::Yaml).unwrap();
    let text = encrypt(&[("lower_ok", "x"), ("X1", "y")], &rid, &Options::default());
    assert_eq!(parse(&text).env_keys().unwrap().len(), 2);

    let text = encrypt(&[("1BAD", "x")], &rid, &Options::default());
    let err = parse(&text).env_keys().unwrap_err();
    assert!(matches!(err, SopsError::BadEnvName { .. }), "{err}");
    assert!(err.to_string().contains("`1BAD`"));

    // A nested map in a flat file: named, with the rule.
    let text = encrypt(&[("A", "x")], &rid, &Options::default());
    let nested = format!("NESTED:\n  inner: 1\n{text}");
    let err = parse(&nested).env_keys().unwrap_err();
    assert!(matches!(err, SopsError::NotEnvShape { .. }), "{err}");
    assert!(err.to_string().contains("`NESTED` is a map"), "{err}");
    let null = format!("NOTHING: null\n{text}");
    assert!(matches!(
        parse(&null).env_keys(),
        Err(SopsError::NotEnvShape { .. })
    ));

    // A Kubernetes object that is not a Secret.
    let cm = flux_text().replace("kind: Secret", "kind: ConfigMap");
    let err = parse(&cm).env_keys().unwrap_err();
    assert!(err.to_string().contains("not a Kubernetes Secret"), "{err}");

    // Formats SOPS has and Telbase does not read; files without age keys.
    assert!(matches!(
        Format::of_path(Path::new("x.env")),
        Err(SopsError::Unsupported(_))
    ));
    let pgp_only = "A: ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\nsops:\n  pgp:\n    - fp: ABC\n  lastmodified: \"2024-01-01T00:00:00Z\"\n  mac: x\n";
    let err = SopsFile::parse(pgp_only, Format::Yaml).unwrap_err();
    assert!(
        matches!(&err, SopsError::NoAgeRecipients { others } if others == "pgp"),
        "{err}"
    );
    let shamir = flux_text().replace(
        "  kms: []",
        "  key_groups:\n    - age: []\n    - age: []\n  kms: []",
    );
    assert!(matches!(
        SopsFile::parse(&shamir, Format::Yaml),
        Err(SopsError::Unsupported(_))
    ));
    let comments = flux_text().replace(
        "  version: 3.9.0",
        "  version: 3.9.0\n  encrypted_comment_regex: sops",
    );
    assert!(matches!(
        SopsFile::parse(&comments, Format::Yaml),
        Err(SopsError::Unsupported(_))
    ));
    let two_rules = flux_text().replace(
        "  version: 3.9.0",
        "  version: 3.9.0\n  unencrypted_suffix: _x",
    );
    assert!(matches!(
        SopsFile::parse(&two_rules, Format::Yaml),
        Err(SopsError::BadMetadata(_))
    ));
    assert!(matches!(
        SopsFile::parse("a: 1\n", Format::Yaml),
        Err(SopsError::NotSops)
    ));
    assert!(matches!(
        SopsFile::parse("[1, 2]", Format::Json),
        Err(SopsError::NotSops)
    ));
}

#[test]
fn kubernetes_secrets_read_string_data_then_base64_data() {
    let id = telbase::secrets::generate();
    let b64 = base64::engine::general_purpose::STANDARD;
    let token = b64.encode("tok-en ✓");
    let body = [
        ("apiVersion_unencrypted", "v1"),
        ("kind", "Secret"),
        ("metadata.name", "api"),
        ("stringData.USER", "admin"),
        ("data.TOKEN", token.as_str()),
    ];
    for format in [Format::Yaml, Format::Json] {
        let o = Options {
            format,
            ..Options::default()
        };
        let text = encrypt(&body, &[id.to_public()], &o);
        let file = SopsFile::parse(&text, format).unwrap();
        let names: Vec<String> = file
            .env_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["USER", "TOKEN"], "stringData first, then data");
        assert_eq!(
            env_of(&text, format, std::slice::from_ref(&id)),
            pairs(&[("USER", "admin"), ("TOKEN", "tok-en ✓")])
        );
        // `data` that is not base64 is refused when opened, naming the key only.
        let bad = encrypt(
            &[("kind", "Secret"), ("data.TOKEN", "not base64!")],
            &[id.to_public()],
            &o,
        );
        let err = SopsFile::parse(&bad, format)
            .unwrap()
            .open_env(std::slice::from_ref(&id))
            .unwrap_err();
        assert!(
            err.to_string().contains("data.TOKEN") && !err.to_string().contains("not base64!"),
            "{err}"
        );
    }
}

#[test]
fn hostile_inputs_are_refused_without_panicking() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    assert!(SopsFile::parse(&deep, Format::Json).is_err());
    let deep_yaml = format!("a: {}1{}\n", "[".repeat(200), "]".repeat(200));
    assert!(SopsFile::parse(&deep_yaml, Format::Yaml).is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    assert!(SopsFile::parse(bomb, Format::Yaml).is_err());
    let dup = "{\"a\": 1, \"a\": 2, \"sops\": {}}";
    assert!(matches!(
        SopsFile::parse(dup, Format::Json),
        Err(SopsError::Syntax { .. })
    ));
    let big = "a".repeat(sops::MAX_SOPS_BYTES as usize + 1);
    assert!(matches!(
        SopsFile::parse(&big, Format::Yaml),
        Err(SopsError::TooLarge)
    ));
    let dir = tempfile::tempdir().unwrap();
    let err = SopsFile::read(&dir.path().join("missing.sops.yaml")).unwrap_err();
    assert!(matches!(err, SopsError::Io { .. }), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random damage to a valid file (a byte replaced, removed or inserted, anywhere) never
    /// panics, and never opens to values other than the original ones.
    #[test]
    fn random_mutations_never_panic_and_never_change_a_value(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
        json in any::<bool>(),
    ) {
        let (id, text) = &*FIXTURE;
        let format = if json { Format::Json } else { Format::Yaml };
        let original = if json { &text.1 } else { &text.0 };
        let mut bytes = original.as_bytes().to_vec();
        for (at, op, b) in &edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = *b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, *b),
            }
        }
        let Ok(s) = std::str::from_utf8(&bytes) else { return Ok(()); };
        if let Ok(file) = SopsFile::parse(s, format)
            && let Ok(env) = file.open_env(std::slice::from_ref(id))
        {
            prop_assert_eq!(env.len(), FIXTURE_BODY.len());
            for ((name, value), (want_name, want_value)) in env.iter().zip(FIXTURE_BODY) {
                prop_assert_eq!(value.expose_secret(), want_value);
                // SOPS's MAC does not cover key names: a key SOPS left in the clear can be
                // renamed (to another name with the suffix, else it would have to be
                // encrypted) without detection. Encrypted values are bound to their names.
                prop_assert!(
                    name == want_name
                        || (name.ends_with("_unencrypted") && want_name.ends_with("_unencrypted")),
                    "{} became {}", want_name, name
                );
            }
        }
    }
}

const FIXTURE_BODY: [(&str, &str); 3] = [
    ("DATABASE_URL", "postgres://u:p@h/db"),
    ("FLAG", "1"),
    ("NAME_unencrypted", "clear"),
];

static FIXTURE: std::sync::LazyLock<(age::x25519::Identity, (String, String))> =
    std::sync::LazyLock::new(|| {
        let id = telbase::secrets::generate();
        let r = [id.to_public()];
        let yaml = encrypt(&FIXTURE_BODY, &r, &Options::default());
        let json = encrypt(
            &FIXTURE_BODY,
            &r,
            &Options {
                format: Format::Json,
                ..Options::default()
            },
        );
        (id, (yaml, json))
    });

// ---------------------------------------------------------------------------------------
// `apps.<name>.env_file`: validation, plans without a key, apply to Vercel.

const APP_CONFIG: &str = r#"version: 1
project: shop
environments:
  production:
    branch: main
apps:
  web:
    framework: nextjs
    env:
      SITE: shop
    env_file: secrets/app.sops.yaml
  admin:
    framework: nextjs
    env_file: secrets/app.sops.yaml
"#;

const SECRET_TOKEN: &str = "tok_live_8f3a91c2d4e5";
const SECRET_URL: &str = "postgres://shop:Pa55w0rd-x7@db.internal/shop";

fn write_env_file(dir: &Path, id: &age::x25519::Identity, token: &str) {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let text = encrypt(
        &[("API_TOKEN", token), ("DATABASE_URL", SECRET_URL)],
        &[id.to_public()],
        &Options::default(),
    );
    std::fs::write(dir.join("secrets/app.sops.yaml"), text).unwrap();
}

#[test]
fn validate_reads_env_files_without_a_key_and_points_at_the_line() {
    use telbase::config::{Code, check_str_in};
    let dir = tempfile::tempdir().unwrap();
    let id = telbase::secrets::generate();

    // Missing file: E0215 on the env_file line (line 11 of APP_CONFIG).
    let checked = check_str_in(APP_CONFIG, dir.path());
    assert!(!checked.is_valid());
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.code == Code::E0215)
        .expect("a diagnostic for the missing file");
    assert_eq!(d.pos.line, 11, "{d:?}");
    assert!(d.message.contains("secrets/app.sops.yaml"), "{}", d.message);

    write_env_file(dir.path(), &id, SECRET_TOKEN);
    let checked = check_str_in(APP_CONFIG, dir.path());
    assert!(checked.is_valid(), "{:?}", checked.diagnostics);

    // A key also under `env:` names both.
    let clash = APP_CONFIG.replace(
        "      SITE: shop",
        "      SITE: shop\n      API_TOKEN: plain",
    );
    let checked = check_str_in(&clash, dir.path());
    let d = checked
        .diagnostics
        .iter()
        .find(|d| d.code == Code::E0211)
        .expect("a clash diagnostic");
    assert!(
        d.message.contains("API_TOKEN")
            && d.message.contains("env_file")
            && d.message.contains("env:"),
        "{}",
        d.message
    );
    assert_eq!(d.pos.line, 11, "points at the API_TOKEN key under env:");

    // A reserved name, a nested value, a plain YAML file: each refused with its reason.
    let cases: [(&str, String, &str); 3] = [
        (
            "reserved",
            encrypt(
                &[("VERCEL_URL", "x")],
                &[id.to_public()],
                &Options::default(),
            ),
            "VERCEL_URL",
        ),
        (
            "nested",
            format!(
                "NESTED:\n  a: 1\n{}",
                encrypt(&[("A", "x")], &[id.to_public()], &Options::default())
            ),
            "is a map",
        ),
        (
            "plain",
            "API_TOKEN: not encrypted\n".to_owned(),
            "not a SOPS file",
        ),
    ];
    for (what, text, want) in cases {
        std::fs::write(dir.path().join("secrets/app.sops.yaml"), text).unwrap();
        let checked = check_str_in(APP_CONFIG, dir.path());
        assert!(!checked.is_valid(), "{what}");
        assert!(
            checked.diagnostics.iter().any(|d| d.message.contains(want)),
            "{what}: {:?}",
            checked.diagnostics
        );
    }
}

/// Forwards every request to `upstream` and keeps each request's method, path and body, to
/// see exactly what reached the (emulated) provider.
async fn capturing_proxy(
    upstream: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let client = reqwest::Client::new();
    let log = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (client, log, upstream) = (client.clone(), log.clone(), upstream.clone());
            async move {
                let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                log.lock()
                    .unwrap()
                    .push(format!("{method} {pq} {}", String::from_utf8_lossy(&body)));
                let mut req = client
                    .request(method.as_str().parse().unwrap(), format!("{upstream}{pq}"))
                    .body(body.to_vec());
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        req = req.header(k.as_str(), v.as_bytes());
                    }
                }
                match req.send().await {
                    Ok(resp) => {
                        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                        let mut out = HeaderMap::new();
                        for (k, v) in resp.headers() {
                            if let (Ok(k), Ok(v)) = (
                                axum::http::HeaderName::from_bytes(k.as_str().as_bytes()),
                                axum::http::HeaderValue::from_bytes(v.as_bytes()),
                            ) && k != "content-length"
                                && k != "transfer-encoding"
                            {
                                out.insert(k, v);
                            }
                        }
                        (status, out, resp.bytes().await.unwrap_or_default().to_vec())
                    }
                    Err(_) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Vec::new()),
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

/// Counts how often the real opener is asked for a SOPS file.
struct Counting(telbase::apply::AgeOpener, std::sync::atomic::AtomicUsize);

impl telbase::apply::Opener for Counting {
    fn open(&self, armor: &str) -> Result<secrecy::SecretString, String> {
        self.0.open(armor)
    }
    fn open_sops(&self, file: &Path) -> Result<telbase::apply::EnvFileValues, String> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.open_sops(file)
    }
    fn open_stored(
        &self,
        project: &str,
        environment: &str,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<secrecy::SecretString, String> {
        self.0.open_stored(project, environment, name, fingerprint)
    }
}

fn run_in(dir: &Path, url: &str) -> common::emu::Run {
    run_config(APP_CONFIG, dir, url)
}

fn run_config(config: &str, dir: &Path, url: &str) -> common::emu::Run {
    use telbase::model::Environment;
    use telbase::providers::{self, Credentials, GitRef, Scope};
    let (mut desired, _) =
        telbase::config::load_str_in(config, Environment::Production, dir).expect("valid");
    desired.pin_git(
        Some("telbase-tests/shop"),
        "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e",
    );
    let http = telbase::providers::http::Http::new(common::emu::http_config()).unwrap();
    let creds = Credentials {
        emulator: Some(url.to_owned()),
        ..Credentials::default()
    };
    let registry = providers::registry_for(&desired, &creds, &http).unwrap();
    let scope = Scope {
        project: desired.project.clone(),
        environment: desired.environment,
        git: Some(GitRef {
            repo: "telbase-tests/shop".into(),
            sha: "4f2a9c1e0b7d3a5f6e8c9b0a1d2e3f4a5b6c7d8e".into(),
            branch: "main".into(),
        }),
    };
    common::emu::Run {
        desired,
        scope,
        registry,
        http,
    }
}

async fn apply_with(
    run: &common::emu::Run,
    opener: std::sync::Arc<dyn telbase::apply::Opener>,
) -> telbase::apply::Report {
    use std::sync::Arc;
    let (plan, actual) = run.plan().await.unwrap();
    telbase::apply::execute(
        Arc::new(plan),
        Arc::new(run.desired.clone()),
        Arc::new(actual),
        Arc::new(run.registry.clone()),
        Arc::new(run.scope.clone()),
        opener,
        telbase::apply::Options::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_file_plans_without_a_key_and_applies_as_sensitive_vercel_env() {
    use std::sync::Arc;
    use telbase::plan;
    let dir = tempfile::tempdir().unwrap();
    let id = telbase::secrets::generate();
    write_env_file(dir.path(), &id, SECRET_TOKEN);
    let emu = common::emu::start(telbase::emulator::Config::default()).await;
    let (proxy, seen) = capturing_proxy(emu.url()).await;
    let run = run_in(dir.path(), &proxy);
    let no_plaintext = |what: &str, text: &str| {
        for secret in [SECRET_TOKEN, SECRET_URL, "Pa55w0rd"] {
            assert!(!text.contains(secret), "{what} shows a plaintext: {text}");
        }
    };

    // Plan with no identity anywhere: both projects, the file's variables by fingerprint.
    let (p, _) = run.plan().await.unwrap();
    let text = plan::render_text(&p);
    let json = plan::render_json(&p);
    no_plaintext("text plan", &text);
    no_plaintext("JSON plan", &json);
    no_plaintext("markdown plan", &plan::render_markdown(&p, 100));
    assert_eq!(p.summary().create, 2, "{text}");
    // The lowered state (what `validate --show-resources` prints) has each variable of the
    // file as a sealed source known by its fingerprint.
    let state = serde_json::to_string(&run.desired).unwrap();
    no_plaintext("desired state", &state);
    assert!(
        state.contains(r#""API_TOKEN":{"sealed":"sha256:"#),
        "{state}"
    );
    assert!(
        state.contains(r#""DATABASE_URL":{"sealed":"sha256:"#),
        "{state}"
    );

    // Apply without the identity fails with the reason, creating nothing half-way.
    let report = apply_with(&run, Arc::new(telbase::apply::NoIdentity)).await;
    assert!(!report.succeeded());
    assert!(
        format!("{report:?}").contains("TELBASE_IDENTITY_FILE"),
        "{report:?}"
    );

    // With it: both apps get both variables; the file is opened once for the whole apply.
    let counting = Arc::new(Counting(
        telbase::apply::AgeOpener(vec![id.clone()]),
        Default::default(),
    ));
    let report = apply_with(&run, counting.clone()).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(counting.1.load(std::sync::atomic::Ordering::SeqCst), 1);

    let requests = seen.lock().unwrap().clone();
    let env_posts: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("POST /vercel/v10/projects/") && r.contains("/env?"))
        .collect();
    for (key, value) in [("API_TOKEN", SECRET_TOKEN), ("DATABASE_URL", SECRET_URL)] {
        let sent: Vec<serde_json::Value> = env_posts
            .iter()
            .filter_map(|r| serde_json::from_str(r.splitn(3, ' ').nth(2)?).ok())
            .flat_map(|v: serde_json::Value| match v {
                serde_json::Value::Array(a) => a,
                one => vec![one],
            })
            .filter(|v| v["key"] == key)
            .collect();
        assert_eq!(
            sent.len(),
            2,
            "{key} written to both projects: {env_posts:?}"
        );
        for v in sent {
            assert_eq!(v["value"], value, "the plaintext reaches Vercel");
            assert_eq!(v["type"], "sensitive", "{v}");
            assert!(
                v["comment"]
                    .as_str()
                    .unwrap_or("")
                    .contains("sealed sha256:"),
                "{v}"
            );
        }
    }
    // The plaintext goes only into those env writes.
    for r in requests.iter().filter(|r| !env_posts.contains(r)) {
        no_plaintext("another request", r);
    }

    // A second plan, still without the identity, has nothing to do.
    let (p, _) = run.plan().await.unwrap();
    assert!(!p.has_changes(), "{}", plan::render_text(&p));

    // Changing a value in the file changes its fingerprint only.
    write_env_file(dir.path(), &id, "tok_live_rotated_000");
    let run = run_in(dir.path(), &proxy);
    let (p, _) = run.plan().await.unwrap();
    assert!(p.has_changes());
    let text = plan::render_text(&p);
    assert!(text.contains("API_TOKEN"), "{text}");
    assert!(!text.contains("tok_live_rotated_000"), "{text}");
    let report = apply_with(&run, counting.clone()).await;
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(counting.1.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (p, _) = run.plan().await.unwrap();
    assert!(!p.has_changes(), "{}", plan::render_text(&p));
    emu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_file_on_cloud_run_goes_to_secret_manager_only() {
    use std::sync::Arc;
    use telbase::model::{Kind, Provider, ResourceKey, ResourceSpec};
    let config = r#"version: 1
project: shop
environments:
  production:
    branch: main
apps:
  api:
    runtime: go
    image: us-east1-docker.pkg.dev/shop-prod/containers/api:${git.short_sha}
    region: us-east1
    access: public
    env:
      LOG_FORMAT: json
    env_file: secrets/app.sops.yaml
"#;
    let dir = tempfile::tempdir().unwrap();
    let id = telbase::secrets::generate();
    write_env_file(dir.path(), &id, SECRET_TOKEN);
    let emu = common::emu::start(telbase::emulator::Config::default()).await;
    let (proxy, seen) = capturing_proxy(emu.url()).await;
    let run = run_config(config, dir.path(), &proxy);

    // Each variable of the file is its own Secret Manager secret, the service references it.
    for var in ["API_TOKEN", "DATABASE_URL"] {
        let key = ResourceKey::new(Kind::Secret, format!("shop-api-{var}"));
        assert!(run.desired.resources.contains_key(&key), "{key}");
    }
    let report = apply_with(&run, Arc::new(telbase::apply::AgeOpener(vec![id.clone()]))).await;
    assert!(report.succeeded(), "{report:?}");
    let inv = emu.inventory();
    assert_eq!(inv["secret_manager.secrets"], 2, "{inv:?}");
    for (var, want) in [("API_TOKEN", SECRET_TOKEN), ("DATABASE_URL", SECRET_URL)] {
        let secret = run.desired.resources
            [&ResourceKey::new(Kind::Secret, format!("shop-api-{var}"))]
            .clone();
        let value = run.registry[&Provider::SecretManager]
            .output(&run.scope, &secret, telbase::model::Output::Url)
            .await
            .unwrap();
        assert_eq!(value.expose_secret(), want);
    }
    // The plaintext went only to Secret Manager's addVersion, never to Cloud Run.
    for r in seen.lock().unwrap().iter() {
        if r.contains(SECRET_TOKEN) || r.contains("Pa55w0rd") {
            assert!(
                r.starts_with("POST /secret-manager/") && r.contains(":addVersion"),
                "{r}"
            );
        }
    }
    let service = run
        .desired
        .resources
        .values()
        .find_map(|r| match &r.spec {
            ResourceSpec::CloudRunService(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(service.env.len(), 3);
    let (p, _) = run.plan().await.unwrap();
    assert!(!p.has_changes(), "{}", telbase::plan::render_text(&p));
    emu.stop().await;
}

/// `telbase validate` on a config in another directory: the env file is found beside it,
/// a broken one is reported at `telbase.yaml:LINE`, and no key is needed either way.
#[test]
fn cli_validate_reads_the_env_file_beside_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("telbase.yaml");
    std::fs::write(&config, APP_CONFIG).unwrap();
    let validate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_telbase"))
            .arg("validate")
            .arg(&config)
            .env_remove("TELBASE_IDENTITY_FILE")
            .output()
            .unwrap()
    };
    let out = validate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains(":11:") && stdout.contains("E0215"),
        "{stdout}"
    );

    let id = telbase::secrets::generate();
    write_env_file(dir.path(), &id, SECRET_TOKEN);
    let out = validate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains(SECRET_TOKEN));
}

/// A file changed between plan and apply: the apply refuses to write a value other than the
/// one planned (it would be recorded under the old fingerprint), and asks for a new plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_file_changed_after_the_plan_is_not_applied_under_the_old_fingerprint() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let id = telbase::secrets::generate();
    write_env_file(dir.path(), &id, SECRET_TOKEN);
    let emu = common::emu::start(telbase::emulator::Config::default()).await;
    let run = run_in(dir.path(), &emu.url());
    write_env_file(dir.path(), &id, "tok_live_changed_meanwhile");
    let report = apply_with(&run, Arc::new(telbase::apply::AgeOpener(vec![id.clone()]))).await;
    assert!(!report.succeeded());
    let shown = format!("{report:?}");
    assert!(shown.contains("changed after the plan was made"), "{shown}");
    assert!(!shown.contains("tok_live"), "{shown}");
    assert_eq!(
        emu.inventory()["vercel.projects"],
        0,
        "nothing half-written"
    );
    emu.stop().await;
}
