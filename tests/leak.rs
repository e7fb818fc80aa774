//! The leak test: nothing secret leaves the places it must go.
//!
//! Every example project is planned (text, markdown, JSON), applied and planned again through
//! the real binary, with the most verbose tracing (`RUST_LOG=trace`, every crate), against an
//! emulator that keeps every exchange unredacted. Then every plaintext secret of the run is
//! looked for everywhere it must not be:
//! - in everything the binary printed (logs, plans, reports, errors), and in the emulator's
//!   shared recording file;
//! - in every request Telbase sent, outside the one field that delivers it to its destination
//!   (a sensitive Vercel env value, a Secret Manager payload, a password field): not in a
//!   URL, a query string, a label, a comment, a plain env value, or any other provider.
//!
//! The secrets are found, not listed by hand, so a new provider or example is covered without
//! editing this file: the sealed values of every example (opened with the published demo
//! identity), and every value that crossed the wire in a secret field (passwords, tokens,
//! connection strings, Secret Manager payloads, sensitive env values), plus the password
//! part of every connection string. The test also proves that its search can fail: each kind
//! of secret must be found at its destination, and a planted leak must be caught.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use serde_json::Value;
use telbase::emulator::{Config, Exchange};

use common::{emu, root};

fn telbase(args: &[&str], cwd: &Path, extra_env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_telbase"));
    c.args(args)
        .current_dir(cwd)
        .env_remove("TELBASE_EMULATOR")
        .env_remove("TELBASE_IDENTITY_FILE")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.output().expect("run telbase")
}

fn all_text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A git repository holding one example, committed, as a team's repository would be.
fn repo_with(example: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("examples").join(example);
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let repo = git2::Repository::init_opts(
        dir.path(),
        git2::RepositoryInitOptions::new().initial_head("main"),
    )
    .unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::now("Leak test", "leak@telbase.dev").unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "example", &tree, &[])
        .unwrap();
    dir
}

/// The plaintext of every `sealed:` value in an example, opened with the demo identity.
fn sealed_plaintexts(example: &str) -> Vec<String> {
    let dir = root().join("examples").join(example);
    let Ok(identity) = std::fs::read_to_string(dir.join("demo-identity.txt")) else {
        return Vec::new();
    };
    let ids = telbase::secrets::parse_identities(&identity).unwrap();
    let text = std::fs::read_to_string(dir.join("telbase.yaml")).unwrap();
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("-----BEGIN AGE ENCRYPTED FILE-----") {
        let end = rest[i..]
            .find("-----END AGE ENCRYPTED FILE-----")
            .expect("armor end")
            + i
            + "-----END AGE ENCRYPTED FILE-----".len();
        let armor: String = rest[i..end]
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n");
        let plain = telbase::secrets::open(armor.as_bytes(), &ids).expect("demo value opens");
        out.push(String::from_utf8(plain.to_vec()).unwrap());
        rest = &rest[end..];
    }
    out
}

/// Fields that carry a secret to (or from) its one legitimate place; mirrors what a
/// provider treats as a credential.
fn is_secret_field(obj: &serde_json::Map<String, Value>, key: &str) -> bool {
    let secret_type = matches!(
        obj.get("type").and_then(Value::as_str),
        Some("sensitive" | "encrypted" | "secret")
    );
    matches!(key, "password" | "uri" | "connection_uri" | "jwt" | "token")
        || (key == "value" && secret_type)
}

/// Every secret value in a JSON body, and the body with those values removed (what may not
/// contain any secret).
fn split_secrets(v: &Value, found: &mut BTreeSet<String>) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                if let (true, Some(s)) = (is_secret_field(m, k), x.as_str()) {
                    // `uri` is a credential only when it carries one (Neon's connection
                    // URI); a service's public address (Cloud Run's `uri`) is not.
                    if k != "uri" || url_password(s).is_some() {
                        found.insert(s.to_owned());
                        continue;
                    }
                }
                if k == "payload"
                    && let Some(data) = x.get("data").and_then(Value::as_str)
                {
                    // Secret Manager: the value travels base64-encoded.
                    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data)
                        && let Ok(s) = String::from_utf8(bytes)
                    {
                        found.insert(s);
                    }
                    found.insert(data.to_owned());
                    continue;
                }
                out.insert(k.clone(), split_secrets(x, found));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| split_secrets(x, found)).collect()),
        other => other.clone(),
    }
}

/// The password of a connection string, which is a secret on its own.
fn url_password(s: &str) -> Option<String> {
    let rest = s.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then(|| pw.to_owned())
}

/// What Telbase sent that must hold no secret: method, path, query and the request body
/// with its secret fields removed.
fn request_outside_secret_fields(x: &Exchange, found: &mut BTreeSet<String>) -> String {
    let body = serde_json::from_slice::<Value>(&x.request_body)
        .map(|v| split_secrets(&v, found).to_string())
        .unwrap_or_else(|_| String::from_utf8_lossy(&x.request_body).into_owned());
    format!(
        "{} {} {} {}?{} {}",
        x.provider.as_str(),
        x.method,
        x.status,
        x.path,
        x.query,
        body
    )
}

struct Run {
    /// Everything that must never contain a secret, labelled for the failure message.
    haystacks: Vec<(String, String)>,
    secrets: BTreeSet<String>,
    /// Secrets seen at their destination (request secret fields), for the positive control.
    delivered: BTreeSet<String>,
}

fn run_example(example: &str) -> Run {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = repo_with(example);
    let record = dir.path().join("record.jsonl");
    let emu = rt.block_on(emu::start(Config {
        capture: true,
        record: Some(record.clone()),
        ..Config::default()
    }));
    let url = emu.url();
    let identity = root()
        .join("examples")
        .join(example)
        .join("demo-identity.txt");
    let mut env: Vec<(&str, &str)> = vec![("TELBASE_EMULATOR", url.as_str())];
    let identity_s = identity.to_string_lossy().into_owned();
    if identity.exists() {
        env.push(("TELBASE_IDENTITY_FILE", identity_s.as_str()));
    }

    let mut haystacks = Vec::new();
    for args in [
        &["validate"][..],
        &["plan", "--format", "text"],
        &["plan", "--format", "markdown"],
        &["plan", "--format", "json"],
        &["apply", "--auto-approve"],
        &["plan", "--format", "json"],
        &["plan", "--format", "markdown"],
    ] {
        let o = telbase(args, dir.path(), &env);
        let out = all_text(&o);
        assert!(
            o.status.success(),
            "{example}: telbase {args:?} failed:\n{out}"
        );
        // The trace level really is on: the run logs at least the provider calls.
        if args[0] == "apply" {
            assert!(
                out.contains("TRACE") || out.contains("DEBUG"),
                "{example}: RUST_LOG=trace produced no verbose log lines"
            );
            assert!(out.contains("Apply complete"), "{example}: {out}");
        }
        haystacks.push((format!("{example}: output of telbase {args:?}"), out));
    }
    haystacks.push((
        format!("{example}: the emulator's recording file"),
        std::fs::read_to_string(&record).unwrap_or_default(),
    ));

    let mut secrets: BTreeSet<String> = sealed_plaintexts(example).into_iter().collect();
    let mut delivered = BTreeSet::new();
    let exchanges = emu.exchanges();
    assert!(!exchanges.is_empty(), "{example}: nothing was captured");
    for x in &exchanges {
        let outside = request_outside_secret_fields(x, &mut delivered);
        haystacks.push((
            format!(
                "{example}: request {} {} {}",
                x.provider.as_str(),
                x.method,
                x.path
            ),
            outside,
        ));
        if let Some(body) = &x.response_body {
            split_secrets(body, &mut secrets);
        }
    }
    secrets.extend(delivered.iter().cloned());
    let passwords: Vec<String> = secrets.iter().filter_map(|s| url_password(s)).collect();
    secrets.extend(passwords);
    // Placeholders and empty values are not secrets; real ones are long and random. A
    // service's public address handed to another app (`from: apps.api.url`) travels as a
    // sensitive value too, because Telbase marks every `from:` value sensitive, but it is
    // printed on purpose as the app's URL: an address without credentials is not a secret.
    secrets.retain(|s| {
        s.len() >= 8
            && s != "[redacted]"
            && !(s.starts_with("https://") && url_password(s).is_none())
    });
    rt.block_on(emu.stop());
    Run {
        haystacks,
        secrets,
        delivered,
    }
}

/// Where each secret shows up where it must not: the place and the secret's length, never
/// the secret itself.
fn leaks(run: &Run) -> Vec<String> {
    let mut leaks = Vec::new();
    for secret in &run.secrets {
        for (label, hay) in &run.haystacks {
            if hay.contains(secret.as_str()) {
                // Name the place and the secret's length, never the secret itself.
                leaks.push(format!("{label} (a {}-byte secret)", secret.len()));
            }
        }
    }
    leaks
}

#[test]
fn no_example_leaks_a_secret_anywhere() {
    let mut kinds_delivered = 0;
    for example in [
        "quickstart",
        "nextjs-neon",
        "go-turso",
        "django-cloudsql",
        "monorepo",
    ] {
        let run = run_example(example);
        assert!(
            !run.secrets.is_empty(),
            "{example}: the run handled no secret at all, so the test would prove nothing"
        );
        let found = leaks(&run);
        assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
        eprintln!(
            "{example}: {} secrets searched for in {} outputs and requests: no leak",
            run.secrets.len(),
            run.haystacks.len()
        );

        // Positive control: the sealed values did reach a provider, in a secret field.
        for plain in sealed_plaintexts(example) {
            assert!(
                run.delivered.contains(&plain),
                "{example}: a sealed value was never delivered in a secret field"
            );
            kinds_delivered += 1;
        }
        // The search itself works: a planted copy of a secret in an output is caught.
        let secret = run.secrets.iter().next().unwrap().clone();
        let planted = Run {
            haystacks: vec![("planted".into(), format!("log line: {secret}"))],
            secrets: run.secrets.clone(),
            delivered: BTreeSet::new(),
        };
        assert_eq!(leaks(&planted).len(), 1, "a planted leak was not caught");
    }
    assert!(
        kinds_delivered >= 3,
        "expected the monorepo's sealed values to be delivered"
    );
}

/// The README's first command, at the most verbose log level: the demo opens the monorepo's
/// sealed values (with the published demo identity) and delivers them, and prints none.
#[test]
fn the_demo_prints_no_sealed_value_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let plaintexts = sealed_plaintexts("monorepo");
    assert!(
        plaintexts.len() >= 3,
        "the monorepo example has sealed values"
    );
    let o = telbase(&["demo", "--example", "monorepo"], dir.path(), &[]);
    let out = all_text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("TRACE"), "RUST_LOG=trace was not honoured");
    for p in &plaintexts {
        assert!(
            !out.contains(p.as_str()),
            "a sealed value ({} bytes) appears in the demo's output",
            p.len()
        );
    }
}
