//! `telbase demo [--example NAME]`: the whole loop in one command, on a fresh machine, with
//! no accounts. It starts the emulator in-process, puts an example from `examples/` (by
//! default the quickstart: a Next.js app on Vercel with a Neon database) into a temporary git
//! repository, and runs validate → plan → apply → plan (no changes) → drift injected behind
//! Telbase's back at every provider the example uses → drift detected → corrected →
//! converged, with nothing duplicated at any provider. It exits 0 only if every stage did
//! what it should.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};

use super::reconcile::{Session, Target, report_summary, run_apply, session};
use crate::apply::{self, NoIdentity, Opener};
use crate::emulator;
use crate::plan;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Which example of `examples/` to run: quickstart, nextjs-neon, go-turso,
    /// django-cloudsql or monorepo.
    #[arg(long, default_value = "quickstart", value_name = "NAME")]
    pub example: String,
}

/// Something changed behind Telbase's back: an emulator drift request and what it does, in
/// words.
struct Drift {
    request: &'static str,
    says: &'static str,
}

/// An example the demo can run, compiled in so the binary needs nothing beside it.
struct Example {
    name: &'static str,
    text: &'static str,
    about: &'static str,
    /// The published demo identity that opens the example's sealed values, if it has any.
    identity: Option<&'static str>,
    drift: &'static [Drift],
}

const EXAMPLES: &[Example] = &[
    Example {
        name: "quickstart",
        text: include_str!("../../examples/quickstart/telbase.yaml"),
        about: "a Next.js app on Vercel with a Neon Postgres database",
        identity: None,
        drift: &[
            Drift {
                request: r#"{"provider": "vercel", "project": "notes-web", "set": {"buildCommand": "npm run build:fast"}, "remove_env": "NEXT_PUBLIC_SITE_NAME"}"#,
                says: "Vercel: build command of notes-web set to `npm run build:fast`; NEXT_PUBLIC_SITE_NAME removed",
            },
            Drift {
                request: r#"{"provider": "neon", "project": "notes-main", "protected": false}"#,
                says: "Neon: deletion protection of notes-main turned off",
            },
        ],
    },
    Example {
        name: "nextjs-neon",
        text: include_str!("../../examples/nextjs-neon/telbase.yaml"),
        about: "Next.js on Vercel with Neon, behind Cloudflare with a staff Access policy",
        identity: None,
        drift: &[
            Drift {
                request: r#"{"provider": "vercel", "project": "notes-web", "remove_env": "NEXT_PUBLIC_SITE_NAME"}"#,
                says: "Vercel: NEXT_PUBLIC_SITE_NAME removed from notes-web",
            },
            Drift {
                request: r#"{"provider": "cloudflare", "zone": "example.com", "settings": {"min_tls_version": "1.0"}}"#,
                says: "Cloudflare: minimum TLS version of example.com lowered to 1.0",
            },
            Drift {
                request: r#"{"provider": "cloudflare", "zone": "example.com", "record": "www.example.com", "set": {"proxied": false}}"#,
                says: "Cloudflare: www.example.com no longer proxied",
            },
        ],
    },
    Example {
        name: "go-turso",
        text: include_str!("../../examples/go-turso/telbase.yaml"),
        about: "a Go service on Cloud Run with a Turso database, behind Cloudflare",
        identity: None,
        drift: &[
            Drift {
                request: r#"{"provider": "cloud-run", "service": "links-api", "max_instances": 3}"#,
                says: "Cloud Run: links-api limited to 3 instances",
            },
            Drift {
                request: r#"{"provider": "turso", "database": "links-links", "delete_protection": false}"#,
                says: "Turso: deletion protection of links-links turned off",
            },
            Drift {
                request: r#"{"provider": "cloudflare", "zone": "example.net", "record": "go.example.net", "set": {"proxied": false}}"#,
                says: "Cloudflare: go.example.net no longer proxied",
            },
        ],
    },
    Example {
        name: "django-cloudsql",
        text: include_str!("../../examples/django-cloudsql/telbase.yaml"),
        about: "Django on Cloud Run with Cloud SQL for Postgres, behind Cloudflare",
        identity: None,
        drift: &[
            Drift {
                request: r#"{"provider": "cloud-sql", "instance": "ledger-db", "backups": false}"#,
                says: "Cloud SQL: backups of ledger-db turned off",
            },
            Drift {
                request: r#"{"provider": "cloud-run", "service": "ledger-web", "remove_public": true}"#,
                says: "Cloud Run: ledger-web no longer public",
            },
            Drift {
                request: r#"{"provider": "cloudflare", "zone": "example.org", "settings": {"always_use_https": "off"}}"#,
                says: "Cloudflare: Always Use HTTPS turned off for example.org",
            },
        ],
    },
    Example {
        name: "monorepo",
        text: include_str!("../../examples/monorepo/telbase.yaml"),
        about: "a monorepo on Vercel and Cloud Run with Neon and Turso, sealed secrets, two Access policies",
        identity: Some(include_str!("../../examples/monorepo/demo-identity.txt")),
        drift: &[
            Drift {
                request: r#"{"provider": "vercel", "project": "acme-admin", "set": {"buildCommand": "make"}}"#,
                says: "Vercel: build command of acme-admin set to `make`",
            },
            Drift {
                request: r#"{"provider": "secret-manager", "secret": "acme-api-STRIPE_SECRET_KEY", "disable_all": true}"#,
                says: "Secret Manager: every version of acme-api-STRIPE_SECRET_KEY disabled",
            },
            Drift {
                request: r#"{"provider": "neon", "project": "acme-main", "protected": false}"#,
                says: "Neon: deletion protection of acme-main turned off",
            },
            Drift {
                request: r#"{"provider": "cloudflare", "zone": "example.com", "settings": {"min_tls_version": "1.2"}}"#,
                says: "Cloudflare: minimum TLS version of example.com lowered to 1.2",
            },
        ],
    },
];

/// Inventory counters that count history rather than resources.
const HISTORY: &[&str] = &["cloud_run.revisions", "turso.tokens_minted"];

fn example(name: &str) -> anyhow::Result<&'static Example> {
    EXAMPLES.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<&str> = EXAMPLES.iter().map(|e| e.name).collect();
        anyhow!(
            "there is no example `{name}`; the demo can run: {}",
            names.join(", ")
        )
    })
}

pub fn demo_cmd(args: &DemoArgs) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("telbase-demo-{}", std::process::id()));
    let result = example(&args.example).and_then(|ex| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(demo(ex, &dir)))
    });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn stage(n: u32, title: &str) {
    println!("\n━━ {n}/8 {title}");
}

/// A git repository with the example committed on `main` and a GitHub `origin`.
fn make_repo(dir: &Path, ex: &Example) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("telbase.yaml");
    std::fs::write(&config, ex.text)?;
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))?;
    let mut index = repo.index()?;
    index.add_path(Path::new("telbase.yaml"))?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("Telbase demo", "demo@telbase.dev")?;
    repo.commit(Some("HEAD"), &sig, &sig, "Add telbase.yaml", &tree, &[])?;
    repo.remote(
        "origin",
        &format!("https://github.com/telbase-demo/{}.git", ex.name),
    )?;
    Ok(config)
}

async fn plan_now(s: &Session) -> anyhow::Result<(plan::Plan, crate::model::ActualState)> {
    let actual = apply::observe(&s.registry, &s.scope)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok((plan::plan(&s.desired, &actual), actual))
}

async fn demo(ex: &Example, dir: &Path) -> anyhow::Result<()> {
    let handle = emulator::start(
        "127.0.0.1:0".parse().expect("a literal socket address"),
        emulator::Config::default(),
    )
    .await?;
    println!("Telbase demo: {}.", ex.about);
    println!(
        "Provider APIs are served by the built-in emulator at {}.",
        handle.url()
    );
    let config = make_repo(dir, ex)?;
    println!(
        "The project is a fresh git repository in {}.",
        dir.display()
    );

    stage(1, "validate telbase.yaml");
    let checked = crate::config::check_str(ex.text);
    let Some(cfg) = checked.config else {
        bail!("the example does not validate");
    };
    println!("telbase.yaml: valid\n");
    print!(
        "{}",
        super::render_resources(&crate::config::lower::lower(
            &cfg,
            crate::model::Environment::Production
        ))
    );

    // The session is made on a blocking thread: it reads files and git.
    let target = Target {
        config,
        emulator: Some(handle.url()),
    };
    let s = tokio::task::spawn_blocking(move || session(&target)).await??;
    let opener: Arc<dyn Opener> = match ex.identity {
        Some(text) => Arc::new(super::reconcile::age_opener(text, "the demo identity")?),
        None => Arc::new(NoIdentity),
    };

    stage(2, "plan");
    let (p, actual) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    if !p.has_changes() {
        bail!("a fresh emulator should need changes");
    }

    stage(3, "apply");
    let report = run_apply(&s, p, actual, opener.clone(), 8, true).await;
    println!("{}", report_summary(&report));
    if !report.succeeded() {
        bail!("apply did not complete");
    }
    let applied = handle.inventory();

    stage(4, "plan again: nothing left to do");
    let (p, _) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    if p.has_changes() {
        bail!("the second plan still has changes");
    }

    stage(
        5,
        "drift: someone edits the resources behind Telbase's back",
    );
    for d in ex.drift {
        let request: serde_json::Value =
            serde_json::from_str(d.request).context("a demo drift request")?;
        handle.drift(&request).map_err(|e| anyhow!(e))?;
        println!("  {}", d.says);
    }

    stage(6, "plan: drift detected");
    let (p, actual) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    // Every provider drifted at must show up in the plan.
    for d in ex.drift {
        let request: serde_json::Value = serde_json::from_str(d.request)?;
        let provider = request["provider"].as_str().unwrap_or_default();
        let seen = p
            .steps
            .iter()
            .any(|st| st.action != plan::Action::NoOp && st.key.provider().as_str() == provider);
        if !seen {
            bail!("the drift at {provider} was not detected ({})", d.says);
        }
    }

    stage(7, "apply: drift corrected");
    let report = run_apply(&s, p, actual, opener.clone(), 8, true).await;
    println!("{}", report_summary(&report));
    if !report.succeeded() {
        bail!("the correction did not complete");
    }

    stage(8, "plan: converged");
    let (p, _) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    if p.has_changes() {
        bail!("still not converged");
    }
    let c = handle.counters();
    // History grows legitimately with a correction (a Cloud Run revision per change, a token
    // per mint); resources must not.
    let resources = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .filter(|(k, _)| !HISTORY.contains(&k.as_str()))
            .map(|(k, n)| (k.clone(), *n))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (inv, applied) = (resources(&handle.inventory()), resources(&applied));
    if inv != applied {
        bail!(
            "the providers hold different resources than after the first apply: {applied:?} then, {inv:?} now"
        );
    }
    let held: Vec<String> = inv
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!(
        "\nConverged. {} provider calls in all ({} reads, {} writes). At the providers, exactly what the first apply made: {}; nothing duplicated.",
        c.requests,
        c.reads,
        c.writes,
        held.join(", "),
    );
    println!(
        "Next: `telbase emulate` in one terminal, then `TELBASE_EMULATOR=http://127.0.0.1:4010 telbase plan --config examples/{}/telbase.yaml`.",
        ex.name
    );
    handle.stop().await;
    Ok(())
}
