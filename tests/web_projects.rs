//! The dashboard's project pages over HTTP (no browser), on SQLite and PostgreSQL: which role
//! sees and changes what (the same `roles::allows` as `/api/v1`), another team's project
//! being a 404, registering and unregistering projects, the runs list's filters and pages,
//! setting and unsetting env vars (the value never in a page, sealed in the store, each
//! change recorded like the API's), CSRF on every form, and bad input answered 400.

#[path = "common/dashboard.rs"]
mod dashboard;
#[allow(dead_code)]
#[path = "common/pg.rs"]
mod pg;
#[path = "common/resources.rs"]
mod resources;

use dashboard::{Agent, App, input_value, sign_in};
use secrecy::ExposeSecret as _;
use telbase::control::model;
use telbase::store::{RunRows as _, SecretName};

async fn agent(app: &App, email: &str) -> Agent {
    let mut a = Agent::new();
    a.origin = Some(app.base.clone());
    let home = sign_in(app, &mut a, "google", email).await;
    assert_eq!(home.status, 200, "{}", home.body);
    a
}

/// The CSRF token of `a`'s session, from any signed-in page.
async fn token(app: &App, a: &mut Agent) -> String {
    let page = a.get(&format!("{}/", app.base)).await;
    input_value(&page.body, "csrf").expect("a CSRF field")
}

/// The targets of `action`'s successes. A record-first change (env vars, project deletion)
/// is also recorded as `started` before it runs: checked here once, that each success
/// follows its `started` record.
fn targets(app: &App, action: &str) -> Vec<String> {
    let events = app.events.0.lock().unwrap();
    let of: Vec<_> = events.iter().filter(|e| e.action == action).collect();
    for (i, e) in of.iter().enumerate() {
        if e.outcome == "success" && action != "project.create" {
            assert!(
                i > 0 && of[i - 1].outcome == "started" && of[i - 1].target == e.target,
                "{action}: a success without its started record: {of:?}"
            );
        }
    }
    of.iter()
        .filter(|e| e.outcome == "success")
        .filter_map(|e| e.target.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_pages_on_every_store() {
    for ts in pg::stores() {
        eprintln!("store: {}", ts.name());
        let app = dashboard::start_on(ts.open(), tempfile::tempdir().unwrap()).await;
        pages(&app).await;
    }
}

async fn pages(app: &App) {
    let base = app.base.clone();
    let (acme, project, other_project) = {
        let mut s = app.control.store.lock().unwrap();
        let acme = model::team_by_name(&mut *s, "acme").unwrap().unwrap();
        model::create_team(&mut *s, "other", 1).unwrap().unwrap();
        let p = resources::fresh_name();
        let o = resources::fresh_name();
        resources::seed_project(&mut s, "acme", &p);
        resources::seed_project(&mut s, "other", &o);
        (acme, p, o)
    };
    let mut ada = agent(app, "ada@example.com").await;
    let mut max = agent(app, "max@example.com").await;
    let mut vic = agent(app, "vic@example.com").await;

    // Who sees what.
    let pages = [
        ("/teams/acme/projects".to_owned(), [200, 200, 200]),
        (format!("/teams/acme/projects/{project}"), [200, 200, 200]),
        (
            format!("/teams/acme/projects/{project}/runs"),
            [200, 200, 200],
        ),
        (
            format!("/teams/acme/projects/{project}/env/production"),
            [200, 200, 403],
        ),
        (
            format!("/teams/acme/projects/{project}/env/preview"),
            [200, 200, 403],
        ),
        // Another team's project, a team one is not in, an unknown env var set: 404.
        (format!("/teams/acme/projects/{other_project}"), [404; 3]),
        (format!("/teams/other/projects/{other_project}"), [404; 3]),
        ("/teams/other/projects".to_owned(), [404; 3]),
        (
            format!("/teams/acme/projects/{project}/env/staging"),
            [404, 404, 403],
        ),
        (
            format!("/teams/acme/projects/{project}/runs/aaaaaaaaaaaaaaaaaaaaaaaaaa"),
            [404; 3],
        ),
        (
            format!("/teams/acme/projects/{project}/runs/..%2Fx"),
            [404; 3],
        ),
    ];
    for (path, want) in &pages {
        for (who, a, status) in [
            ("owner", &mut ada, want[0]),
            ("member", &mut max, want[1]),
            ("viewer", &mut vic, want[2]),
        ] {
            let got = a.get(&format!("{base}{path}")).await;
            assert_eq!(got.status, status, "{who} {path}: {}", got.body);
            assert_eq!(
                got.headers["content-security-policy"].to_str().unwrap(),
                "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
            );
        }
    }
    // Signed out: to the sign-in page, coming back afterwards.
    let out = Agent::new()
        .get(&format!("{base}/teams/acme/projects"))
        .await;
    assert_eq!(out.status, 303);
    assert!(out.location.unwrap().starts_with("/signin?next="));

    // Forms by role: only an Admin/Owner registers; Member and up set env vars.
    let list = ada.get(&format!("{base}/teams/acme/projects")).await;
    assert!(list.body.contains("id=\"create\"") && list.body.contains("/delete\""));
    let list = max.get(&format!("{base}/teams/acme/projects")).await;
    assert!(!list.body.contains("id=\"create\"") && !list.body.contains("/delete\""));
    let env = max
        .get(&format!(
            "{base}/teams/acme/projects/{project}/env/production"
        ))
        .await;
    assert!(env.body.contains("id=\"set-env\""));

    // Registering: CSRF first, then the role, then the input.
    let t_ada = token(app, &mut ada).await;
    let t_max = token(app, &mut max).await;
    let create = format!("{base}/teams/acme/projects");
    let r = ada
        .post(&create, &[("name", "fresh-app"), ("repo", "acme/fresh")])
        .await;
    assert_eq!(r.status, 403, "no token");
    assert!(app.events.actions().contains(&"auth.csrf_rejected"));
    let r = ada
        .post(
            &create,
            &[
                ("csrf", &t_max),
                ("name", "fresh-app"),
                ("repo", "acme/fresh"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "another session's token");
    let r = max
        .post(
            &create,
            &[
                ("csrf", &t_max),
                ("name", "fresh-app"),
                ("repo", "acme/fresh"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "a Member: {}", r.body);
    for (name, repo, path) in [
        ("Fresh", "acme/fresh", ""),
        ("fresh-app", "not a repo", ""),
        ("fresh-app", "acme/fresh", "../x.yaml"),
        ("", "", ""),
    ] {
        let r = ada
            .post(
                &create,
                &[
                    ("csrf", &t_ada),
                    ("name", name),
                    ("repo", repo),
                    ("config_path", path),
                ],
            )
            .await;
        assert_eq!(r.status, 400, "{name} {repo} {path}: {}", r.body);
    }
    let fresh = resources::fresh_name();
    let repo = format!("acme/{fresh}");
    let r = ada
        .post(
            &create,
            &[("csrf", &t_ada), ("name", &fresh), ("repo", &repo)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location.as_deref(),
        Some(format!("/teams/acme/projects/{fresh}").as_str())
    );
    assert!(targets(app, "project.create").contains(&format!("{}/{fresh}", acme.id)));
    // The same name or repository again (any team's): 409, without saying whose.
    let r = ada
        .post(
            &create,
            &[
                ("csrf", &t_ada),
                ("name", &other_project),
                ("repo", "acme/x9"),
            ],
        )
        .await;
    assert_eq!(r.status, 409);
    let page = ada
        .get(&format!("{base}/teams/acme/projects/{fresh}"))
        .await;
    assert!(page.body.contains("never run"), "{}", page.body);

    // Runs: filters and pages of 50.
    {
        let mut s = app.control.store.lock().unwrap();
        let repo = format!("acme/{project}");
        for i in 0..53 {
            let env = if i % 2 == 0 {
                "production"
            } else {
                "preview-7"
            };
            let mut r = resources::run_record(
                &repo,
                env,
                1_800_000_000_000 + i * 1000,
                if i == 52 { "failure" } else { "success" },
                "[]",
            );
            r.summary = format!("run number {i}");
            s.save_run(&r).unwrap();
        }
    }
    let runs = format!("{base}/teams/acme/projects/{project}/runs");
    let first = vic.get(&runs).await;
    assert_eq!(first.body.matches("run number").count(), 50);
    assert!(first.body.contains("run number 52") && !first.body.contains("run number 2<"));
    let older = first
        .body
        .split("id=\"older\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an Older link")
        .replace("&amp;", "&");
    let second = vic.get(&format!("{base}{older}")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body.matches("run number").count(), 3);
    assert!(!second.body.contains("id=\"older\""));
    let failed = vic.get(&format!("{runs}?outcome=failure")).await;
    assert_eq!(failed.body.matches("run number").count(), 1);
    let previews = vic
        .get(&format!(
            "{runs}?environment=preview-7&since=2027-01-15T08:00:10Z"
        ))
        .await;
    assert_eq!(previews.status, 200);
    assert_eq!(
        previews.body.matches("run number").count(),
        21,
        "previews 11..=51"
    );
    for bad in [
        "?outcome=ok",
        "?environment=staging",
        "?since=yesterday",
        "?cursor=not-a-cursor",
    ] {
        let r = vic.get(&format!("{runs}{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    // The project page shows both environments' newest runs.
    let page = vic
        .get(&format!("{base}/teams/acme/projects/{project}"))
        .await;
    assert!(page.body.contains("preview-7") && page.body.contains("production"));

    // Env vars: set by a Member, never shown, sealed, recorded like the API's.
    let env = format!("{base}/teams/acme/projects/{project}/env/preview");
    let secret = "very-secret-value-4242";
    let r = max
        .post(
            &env,
            &[("csrf", &t_max), ("name", "API_KEY"), ("value", secret)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = max.follow(&base, r).await;
    assert!(page.body.contains("API_KEY") && !page.body.contains(secret));
    assert!(page.body.contains(telbase::control::resources::MASK));
    let r = max
        .post(
            &env,
            &[("csrf", &t_max), ("name", "API_KEY"), ("value", "second")],
        )
        .await;
    assert_eq!(r.status, 303);
    let page = max.get(&env).await;
    assert!(page.body.contains("<td>2</td>"), "version 2: {}", page.body);
    let value = {
        let mut s = app.control.store.lock().unwrap();
        telbase::secrets::stored::open_text(
            &mut *s,
            &resources::keyring(),
            &SecretName {
                project: project.clone(),
                environment: "preview".into(),
                name: "API_KEY".into(),
            },
        )
        .unwrap()
        .unwrap()
    };
    assert_eq!(value.expose_secret(), "second");
    let target = format!("{}/{project}/preview/API_KEY", acme.id);
    assert_eq!(targets(app, "env.set"), [target.clone(), target.clone()]);
    for (name, value) in [("1BAD", "x"), ("API_KEY", ""), ("bad name", "x")] {
        let r = max
            .post(&env, &[("csrf", &t_max), ("name", name), ("value", value)])
            .await;
        assert_eq!(r.status, 400, "{name:?} {value:?}: {}", r.body);
    }
    let r = max
        .post(&env, &[("csrf", &t_max), ("name", "NO_VALUE")])
        .await;
    assert_eq!(r.status, 400, "a value is required");
    let r = max
        .post(
            &format!("{base}/teams/acme/projects/{project}/env/staging"),
            &[("csrf", &t_max), ("name", "A"), ("value", "x")],
        )
        .await;
    assert_eq!(r.status, 404);
    // The Viewer: refused, even with a valid token of their own.
    let t_vic = token(app, &mut vic).await;
    let r = vic
        .post(&env, &[("csrf", &t_vic), ("name", "EVIL"), ("value", "x")])
        .await;
    assert_eq!(r.status, 403);
    let r = vic
        .post(&format!("{env}/API_KEY/unset"), &[("csrf", &t_vic)])
        .await;
    assert_eq!(r.status, 403);
    // Unset, then unset again: 404.
    let r = max
        .post(&format!("{env}/API_KEY/unset"), &[("csrf", &t_max)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(targets(app, "env.unset"), [target]);
    let r = max
        .post(&format!("{env}/API_KEY/unset"), &[("csrf", &t_max)])
        .await;
    assert_eq!(r.status, 404);
    let r = max.post(&format!("{env}/API_KEY/unset"), &[]).await;
    assert_eq!(r.status, 403, "no token");

    // Unregistering: the name typed to confirm; the env vars go with it.
    let del = format!("{base}/teams/acme/projects/{project}/delete");
    let r = max
        .post(&del, &[("csrf", &t_max), ("confirm", &project)])
        .await;
    assert_eq!(r.status, 403, "a Member");
    max.post(
        &env,
        &[("csrf", &t_max), ("name", "KEEP"), ("value", "gone-soon")],
    )
    .await;
    let r = ada
        .post(&del, &[("csrf", &t_ada), ("confirm", "something-else")])
        .await;
    assert_eq!(r.status, 400);
    let r = ada
        .post(&del, &[("csrf", &t_ada), ("confirm", &project)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(targets(app, "project.delete").contains(&format!("{}/{project}", acme.id)));
    assert_eq!(
        ada.get(&format!("{base}/teams/acme/projects/{project}"))
            .await
            .status,
        404
    );
    {
        use telbase::store::SecretRows as _;
        let mut s = app.control.store.lock().unwrap();
        assert!(s.list_values(&project, None).unwrap().is_empty());
    }
    // No page or event ever carried a value.
    let events = format!("{:?}", app.events.0.lock().unwrap());
    assert!(!events.contains(secret) && !events.contains("gone-soon"));
}
