//! `telbase demo`: the whole loop in one command, on a fresh machine, with no accounts. It
//! starts the emulator in-process, puts the quickstart example (a Next.js app on Vercel with
//! a Neon database) into a temporary git repository, and runs validate → plan → apply →
//! plan (no changes) → drift injected behind Telbase's back → drift detected → corrected →
//! converged. It exits 0 only if every stage did what it should.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;

use super::reconcile::{Session, Target, report_summary, run_apply, session};
use crate::apply::{self, NoIdentity};
use crate::emulator;
use crate::plan;

/// The example the demo runs, compiled in so the binary needs nothing beside it.
const EXAMPLE: &str = include_str!("../../examples/quickstart/telbase.yaml");

pub fn demo_cmd() -> ExitCode {
    let dir = std::env::temp_dir().join(format!("telbase-demo-{}", std::process::id()));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(demo(&dir)));
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
fn make_repo(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = dir.join("telbase.yaml");
    std::fs::write(&config, EXAMPLE)?;
    let repo =
        git2::Repository::init_opts(dir, git2::RepositoryInitOptions::new().initial_head("main"))?;
    let mut index = repo.index()?;
    index.add_path(Path::new("telbase.yaml"))?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("Telbase demo", "demo@telbase.dev")?;
    repo.commit(Some("HEAD"), &sig, &sig, "Add telbase.yaml", &tree, &[])?;
    repo.remote("origin", "https://github.com/telbase-demo/notes.git")?;
    Ok(config)
}

async fn plan_now(s: &Session) -> anyhow::Result<(plan::Plan, crate::model::ActualState)> {
    let actual = apply::observe(&s.registry, &s.scope)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok((plan::plan(&s.desired, &actual), actual))
}

async fn demo(dir: &Path) -> anyhow::Result<()> {
    let handle = emulator::start(
        "127.0.0.1:0".parse().expect("a literal socket address"),
        emulator::Config::default(),
    )
    .await?;
    println!("Telbase demo: a Next.js app on Vercel with a Neon Postgres database.");
    println!(
        "Provider APIs are served by the built-in emulator at {}.",
        handle.url()
    );
    let config = make_repo(dir)?;
    println!(
        "The project is a fresh git repository in {}.",
        dir.display()
    );

    stage(1, "validate telbase.yaml");
    let checked = crate::config::check_str(EXAMPLE);
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

    stage(2, "plan");
    let (p, actual) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    if !p.has_changes() {
        bail!("a fresh emulator should need changes");
    }

    stage(3, "apply");
    let report = run_apply(&s, p, actual, Arc::new(NoIdentity), 8, true).await;
    println!("{}", report_summary(&report));
    if !report.succeeded() {
        bail!("apply did not complete");
    }

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
    let web = "notes-web";
    handle
        .drift(&json!({"provider": "vercel", "project": web, "set": {"buildCommand": "npm run build:fast"}, "remove_env": "NEXT_PUBLIC_SITE_NAME"}))
        .map_err(|e| anyhow!(e))?;
    println!(
        "  Vercel: build command of {web} set to `npm run build:fast`; NEXT_PUBLIC_SITE_NAME removed"
    );
    handle
        .drift(&json!({"provider": "neon", "project": "notes-main", "protected": false}))
        .map_err(|e| anyhow!(e))?;
    println!("  Neon: deletion protection of notes-main turned off");

    stage(6, "plan: drift detected");
    let (p, actual) = plan_now(&s).await?;
    print!("{}", plan::render_text(&p));
    if !p.has_changes() {
        bail!("the drift was not detected");
    }

    stage(7, "apply: drift corrected");
    let report = run_apply(&s, p, actual, Arc::new(NoIdentity), 8, true).await;
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
    let inv = handle.inventory();
    for k in [
        "vercel.projects",
        "vercel.deployments",
        "neon.projects",
        "neon.databases",
    ] {
        if inv.get(k).copied() != Some(1) {
            bail!(
                "expected exactly one of {k} at the providers, found {:?}",
                inv.get(k)
            );
        }
    }
    let n = |k: &str, one: &str, many: &str| {
        let v = inv.get(k).copied().unwrap_or(0);
        format!("{v} {}", if v == 1 { one } else { many })
    };
    println!(
        "\nConverged. {} provider calls in all ({} reads, {} writes). At the providers: {}, {}, {}, {}; nothing duplicated.",
        c.requests,
        c.reads,
        c.writes,
        n("vercel.projects", "Vercel project", "Vercel projects"),
        n("vercel.deployments", "deployment", "deployments"),
        n("neon.projects", "Neon project", "Neon projects"),
        n("neon.databases", "database", "databases"),
    );
    println!(
        "Next: `telbase emulate` in one terminal, then `TELBASE_EMULATOR=http://127.0.0.1:4010 telbase plan --config examples/quickstart/telbase.yaml`."
    );
    handle.stop().await;
    Ok(())
}
