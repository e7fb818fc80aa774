//! Property tests for the config parser, the only parser here that takes outside input.
//!
//! 1. Mutated configs (byte edits, YAML-token insertions, line shuffles) never panic, and every
//!    diagnostic is well formed: a position inside the file, a message, no raw control
//!    characters.
//! 2. Randomly generated valid configs validate, lower deterministically, and the lowered
//!    resources respect their dependency edges.

use proptest::prelude::*;
use telbase::config::{self, diag};
use telbase::model::{EnvSource, Environment, Kind};

fn seeds() -> Vec<Vec<u8>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut seeds = Vec::new();
    for dir in ["examples", "tests/invalid"] {
        let mut entries: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let file = if p.is_dir() {
                p.join("telbase.yaml")
            } else {
                p
            };
            // examples/ also holds non-project directories (examples/workflows).
            if file.extension().is_some_and(|e| e == "yaml") && file.is_file() {
                seeds.push(std::fs::read(file).unwrap());
            }
        }
    }
    seeds
}

const TOKENS: &[&[u8]] = &[
    b":",
    b"- ",
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\t",
    b"\n  ",
    b"\n",
    b"'",
    b"\"",
    b"#",
    b"---\n",
    b"? ",
    b"!!binary ",
    b"!custom ",
    b"~",
    b"no",
    b"1.2",
    b"0x1F",
    b"version: 2\n",
    b"\xff",
    b"\xef\xbb\xbf",
    b"\x1b[31m",
    b"from: databases.main.url",
    b"access: staff",
    b"${git.sha}",
    b"-----BEGIN AGE ENCRYPTED FILE-----\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Byte { at: usize, value: u8 },
    SwapLines { a: usize, b: usize },
    DuplicateLine { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Byte { at, value }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::DuplicateLine { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let n = bytes.len().max(1);
    match *m {
        Mutation::Delete { at, len } => {
            let at = at % n;
            let end = (at + len).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Insert { at, token } => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, TOKENS[token].iter().copied());
        }
        Mutation::Byte { at, value } => {
            if !bytes.is_empty() {
                let at = at % bytes.len();
                bytes[at] = value;
            }
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&[u8]> = bytes.split(|c| *c == b'\n').collect();
            let l = lines.len();
            lines.swap(a % l, b % l);
            bytes = lines.join(&b'\n');
        }
        Mutation::DuplicateLine { at } => {
            let mut lines: Vec<Vec<u8>> =
                bytes.split(|c| *c == b'\n').map(<[u8]>::to_vec).collect();
            let l = lines.len();
            let line = lines[at % l].clone();
            lines.insert(at % l, line);
            bytes = lines.join(&b'\n');
        }
    }
    bytes
}

fn assert_well_formed(bytes: &[u8], checked: &config::Checked) {
    let lines = bytes.split(|c| *c == b'\n').count() as u32;
    if !checked.is_valid() {
        assert!(
            checked.diagnostics.iter().any(|d| d.is_error()),
            "invalid without an error"
        );
    }
    for d in &checked.diagnostics {
        assert!(
            d.pos.line >= 1 && d.pos.line <= lines + 1,
            "line {} of {lines}: {d:?}",
            d.pos.line
        );
        assert!(d.pos.column >= 1, "{d:?}");
        assert!(!d.message.is_empty());
        assert!(
            !d.message.chars().any(|c| c.is_control()),
            "control character in {:?}",
            d.message
        );
    }
    // Rendering never panics either, in every format.
    let text = std::str::from_utf8(bytes).ok();
    let _ = diag::render_text("t.yaml", text, &checked.diagnostics);
    let _ = diag::render_github("t.yaml", &checked.diagnostics);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_never_panic(seed in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let seeds = seeds();
        let mut bytes = seed.get(&seeds).clone();
        for m in &muts {
            bytes = apply(bytes, m);
        }
        let checked = config::check_bytes(&bytes);
        assert_well_formed(&bytes, &checked);
        if let Some(cfg) = &checked.config {
            let _ = config::lower::lower(cfg, Environment::Production);
            let _ = config::lower::lower(cfg, Environment::Preview { pull_request: 9_999_999 });
        }
    }
}

#[derive(Debug, Clone)]
struct Gen {
    apps: Vec<(bool, usize, Option<usize>, bool)>, // (container, db ref, app ref, behind policy)
    dbs: Vec<u8>,                                  // 0 neon, 1 cloudsql, 2 turso
    previews: bool,
}

fn project() -> impl Strategy<Value = Gen> {
    (
        prop::collection::vec(0u8..3, 1..5),
        prop::collection::vec(
            (
                any::<bool>(),
                any::<usize>(),
                prop::option::of(any::<usize>()),
                any::<bool>(),
            ),
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(dbs, apps, previews)| Gen {
            apps,
            dbs,
            previews,
        })
}

fn render(g: &Gen) -> String {
    let mut s = String::from("version: 1\nproject: prop\nedge: { zone: prop.dev }\n");
    if g.previews {
        s.push_str("environments:\n  preview: { access: staff, ttl: 2d }\n");
    }
    s.push_str("access:\n  staff: { login: [github], allow_emails: [a@prop.dev] }\n");
    s.push_str("databases:\n");
    for (i, kind) in g.dbs.iter().enumerate() {
        s.push_str(&match kind {
            0 => format!(
                "  db{i}: {{ engine: postgres, branch_per_preview: {} }}\n",
                g.previews
            ),
            1 => format!("  db{i}: {{ engine: postgres, provider: cloudsql, region: us-east1 }}\n"),
            _ => format!(
                "  db{i}: {{ engine: sqlite, location: aws-us-east-1, branch_per_preview: true }}\n"
            ),
        });
    }
    if !g.apps.is_empty() {
        s.push_str("apps:\n");
    }
    for (i, (container, db, app_ref, private)) in g.apps.iter().enumerate() {
        s.push_str(&format!("  a{i}:\n"));
        if *container {
            s.push_str(
                "    runtime: docker\n    image: ghcr.io/prop/a:${git.sha}\n    region: us-east1\n",
            );
        } else {
            s.push_str("    framework: astro\n");
        }
        s.push_str(&format!(
            "    domains: [a{i}.prop.dev]\n    access: {}\n",
            if *private { "staff" } else { "public" }
        ));
        let d = db % g.dbs.len();
        let output = if g.dbs[d] == 2 { "token" } else { "url" };
        s.push_str(&format!(
            "    env:\n      DB: {{ from: databases.db{d}.{output} }}\n      PLAIN: \"x\"\n"
        ));
        // Only refer to earlier apps, so the generated graph has no cycle.
        if let Some(r) = app_ref.filter(|_| i > 0) {
            s.push_str(&format!("      PEER: {{ from: apps.a{}.url }}\n", r % i));
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn generated_valid_configs_lower_consistently(g in project(), pr in 1u64..10_000_000) {
        let text = render(&g);
        let checked = config::check_str(&text);
        prop_assert!(checked.is_valid(), "{text}\n{:?}", checked.diagnostics);
        let cfg = checked.config.unwrap();
        for env in [Environment::Production, Environment::Preview { pull_request: pr }] {
            let state = config::lower::lower(&cfg, env);
            // Deterministic: the same file always lowers to the same state.
            prop_assert_eq!(&state, &config::lower::lower(&cfg, env));
            // Dependency order: everything a resource waits for, if managed here, comes first.
            let order = state.topological();
            prop_assert_eq!(order.len(), state.resources.len());
            let position: std::collections::BTreeMap<_, _> =
                order.iter().enumerate().map(|(i, r)| (&r.key, i)).collect();
            for r in &order {
                for d in &r.depends_on {
                    if let Some(p) = position.get(d) {
                        prop_assert!(*p < position[&r.key], "{} before its dependency {}", r.key, d);
                    }
                }
            }
            // Every `from:` output becomes a dependency of the resource that reads it.
            for r in state.resources.values() {
                let env_vars = match &r.spec {
                    telbase::model::ResourceSpec::VercelProject(p) => &p.env,
                    telbase::model::ResourceSpec::CloudRunService(s) => &s.env,
                    _ => continue,
                };
                for v in env_vars {
                    if let EnvSource::Output { resource, .. } = &v.source {
                        let direct = r.depends_on.contains(resource);
                        let via_secret = r.depends_on.iter().any(|d| {
                            d.kind == Kind::Secret
                                && state.resources.get(d).is_some_and(|s| s.depends_on.contains(resource))
                        });
                        prop_assert!(direct || via_secret, "{} reads {} without depending on it", r.key, resource);
                    }
                }
            }
            // One main resource per app.
            let mains = state.resources.keys().filter(|k| matches!(k.kind, Kind::VercelProject | Kind::CloudRunService)).count();
            prop_assert_eq!(mains, g.apps.len());
        }
    }
}

proptest! {
    /// Rate-limit headers come from the network: any text parses to a delay or to nothing,
    /// never a panic, and the retry decision never waits past the policy's deadline.
    #[test]
    fn rate_limit_headers_never_panic(value in ".{0,64}", digits in "[0-9]{1,25}", attempts in 1u32..50, elapsed_ms in 0u64..200_000, jitter in 0.0f64..1.0) {
        use telbase::providers::{retry, Decision, ErrorKind, ProviderError, RetryPolicy};
        let now = chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        for v in [value.as_str(), digits.as_str()] {
            let after = retry::parse_retry_after(v, now);
            let _ = retry::parse_reset_epoch(v, now);
            let e = ProviderError::new(telbase::model::Provider::Vercel, ErrorKind::RateLimited, "list projects", Some(429), v, None, after);
            let policy = RetryPolicy::default();
            let elapsed = std::time::Duration::from_millis(elapsed_ms);
            if let Decision::RetryAfter(d) = policy.decide(attempts, &e, elapsed, jitter) {
                prop_assert!(elapsed + d <= policy.deadline);
                prop_assert!(attempts < policy.max_attempts);
            }
        }
    }
}
