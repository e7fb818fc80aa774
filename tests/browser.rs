//! The dashboard in headless Chromium, driven through chromedriver (W3C WebDriver) against
//! the in-process server and the fake identity provider: sign-in with the fake Google and
//! GitHub, a CLI device login approved in the browser while the CLI side polls for its
//! token, revoking sessions (another browser is signed out at once), a Viewer who sees no
//! change forms, and a form posted from another origin being refused. Then the project
//! pages: a Member follows the navigation from the team to a run and sees its plan and
//! per-resource results (escaped), sets an env var through the form (afterwards only the
//! mask shows) and unsets it; a Viewer sees no change form and no env var name on these
//! pages, and a POST forged with the Viewer's own cookie and CSRF token is refused.
//!
//! One chromedriver serves the whole binary (one test function, one browser session per
//! scenario). Without chromium or chromedriver the test says why and returns; CI installs
//! the Debian packages `chromium` and `chromium-driver`, so it never skips there.
//!
//! The WebDriver client is the few endpoints used here over reqwest (already a dependency):
//! new session, navigate, find, click, type, read the page and the URL, delete session.

#[path = "common/dashboard.rs"]
mod dashboard;
#[path = "common/resources.rs"]
mod resources;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| std::path::Path::new(n).exists())
        .map(|n| n.to_string())
}

impl Driver {
    async fn start() -> Option<Driver> {
        let driver = find_binary(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let browser = find_binary(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
        let (Some(driver), Some(_)) = (driver, browser) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must install chromium and chromium-driver (.ci/run does)"
            );
            eprintln!(
                "browser tests skipped: chromium and chromedriver are not installed (Debian packages `chromium` and `chromium-driver`; .ci/run installs them)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = d.http.get(format!("{}/status", d.url)).send().await
                && r.status().is_success()
            {
                return Some(d);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not answer within 20 s");
    }

    async fn browser(&self) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find_binary(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--window-size=1200,900"]
            }
        }}});
        let r: Value = self
            .http
            .post(format!("{}/session", self.url))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Browser {
            base: format!("{}/session/{id}", self.url),
            http: self.http.clone(),
        }
    }
}

struct Browser {
    base: String,
    http: reqwest::Client,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }
    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }
    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }
    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }
    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }
    async fn count(&self, css: &str) -> usize {
        self.call(
            reqwest::Method::POST,
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
    }
    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }
    async fn type_in(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }
    /// The page source once it contains `text` (a click's navigation may still be
    /// under way when the click returns); panics with the page after 10 s.
    async fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let src = self.source().await;
            if src.contains(text) {
                return src;
            }
            if Instant::now() > deadline {
                panic!("{text:?} never appeared: {src}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `text` is gone from the page (a form's answer replacing the page that
    /// had it), returning the page without it.
    async fn wait_gone(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let src = self.source().await;
            if !src.contains(text) {
                return src;
            }
            if Instant::now() > deadline {
                panic!("{text:?} never went away: {src}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser's cookies for the current page, as a `Cookie` header.
    async fn cookie_header(&self) -> String {
        self.call(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c["name"].as_str().unwrap(),
                    c["value"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }

    /// Signs in through the fake provider's consent page, as a person would.
    async fn sign_in(&self, app: &dashboard::App, provider: &str, email: &str) {
        self.go(&format!("{}/signin", app.base)).await;
        self.click(&format!("#signin-{provider}")).await;
        self.type_in("#email", email).await;
        self.click("#allow").await;
        self.wait_for(&format!("Signed in as <strong>{email}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = dashboard::start().await;

    // 1. Sign-in with the fake Google and the fake GitHub.
    let owner = driver.browser().await;
    owner.sign_in(&app, "google", "ada@example.com").await;
    assert!(app.events.actions().contains(&"auth.login"));
    let owner2 = driver.browser().await;
    owner2.sign_in(&app, "github", "ada@example.com").await;

    // 2. A CLI device login approved in the browser while the CLI side polls.
    let http = reqwest::Client::new();
    let auth: Value = http
        .post(format!("{}/api/v1/oauth/device_authorization", app.base))
        .form(&[("client_id", "telbase-cli")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = auth["device_code"].as_str().unwrap().to_owned();
    let poll = || async {
        http.post(format!("{}/api/v1/oauth/token", app.base))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code.as_str()),
                ("client_id", "telbase-cli"),
            ])
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first_poll = Instant::now();
    assert_eq!(poll().await["error"], "authorization_pending");
    owner
        .go(auth["verification_uri_complete"].as_str().unwrap())
        .await;
    let code_in_page = owner.source().await;
    assert!(code_in_page.contains(auth["user_code"].as_str().unwrap()));
    owner.click("#approve").await;
    owner.wait_for("Approved: the CLI is signed in").await;
    // RFC 8628's interval between polls, then the token.
    tokio::time::sleep(
        Duration::from_secs(5).saturating_sub(first_poll.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let grant = poll().await;
    let access = grant["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {grant}"));
    let me = http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    // 3. Revoking sessions: the second browser revokes all; the first is signed out at once.
    owner2.go(&format!("{}/sessions", app.base)).await;
    assert!(
        owner2.count("#sessions tr").await >= 3,
        "both sessions listed"
    );
    owner2.click("#revoke-all").await;
    owner2
        .wait_for("Every other session and CLI login was signed out")
        .await;
    owner.go(&format!("{}/sessions", app.base)).await;
    assert!(
        owner.url().await.contains("/signin"),
        "the other browser was signed out"
    );
    owner2.go(&format!("{}/sessions", app.base)).await;
    assert!(owner2.url().await.ends_with("/sessions"));
    // The CLI login went with it.
    let me = http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "revoke-all ends CLI logins too");
    owner.quit().await;

    // 4. A Viewer: no change forms, and a forged POST is refused.
    let viewer = driver.browser().await;
    viewer.sign_in(&app, "google", "vic@example.com").await;
    viewer.go(&format!("{}/teams/acme/members", app.base)).await;
    assert!(viewer.source().await.contains("does not allow this"));
    assert_eq!(viewer.count("form[action^='/teams']").await, 0);
    viewer.go(&format!("{}/", app.base)).await;
    assert_eq!(viewer.count("form[action^='/teams']").await, 0);

    // 5. A CSRF attempt: a page on another origin posts to the dashboard. The session
    //    cookie is sent (127.0.0.1 on another port is the same site for SameSite), so
    //    only the CSRF check stands between the attacker and the action.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_url = format!("http://{}", evil.local_addr().unwrap());
    let target = format!("{}/sessions/revoke-all", app.base);
    let page = format!(
        "<!doctype html><form method=post action=\"{target}\"><input type=hidden name=csrf value=guess><button id=go>Win a prize</button></form>"
    );
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let p = page.clone();
                async move { axum::response::Html(p) }
            }),
        );
        let _ = axum::serve(evil, app).await;
    });
    owner2.go(&evil_url).await;
    owner2.click("#go").await;
    owner2.wait_for("This form was refused").await;
    owner2.go(&format!("{}/sessions", app.base)).await;
    assert!(owner2.url().await.ends_with("/sessions"), "still signed in");
    assert!(app.events.actions().contains(&"auth.csrf_rejected"));
    owner2.quit().await;
    viewer.quit().await;

    project_pages(&driver, &app).await;
}

/// A project with a run whose plan and results carry markup, and a stored env var.
fn seed_pages(app: &dashboard::App) -> (String, String) {
    use telbase::store::RunRows as _;
    let mut s = app.control.store.lock().unwrap();
    // Registered before the runs below (which start now): a project shows only runs since.
    let project = resources::seed_project_at(&mut s, "acme", "shop", 0);
    let now = chrono::Utc::now().timestamp_millis();
    let mut run = resources::run_record(
        &project.repo,
        "production",
        now - 60_000,
        "failure",
        r#"[{"key":"vercel_project.web","action":"create","outcome":"done","url":"https://shop.example.test","millis":41},
            {"key":"neon_database.db","action":"update","outcome":"failed","error":"quota <b>exceeded</b>","millis":7},
            {"key":"turso_database.cache","action":"create","outcome":"skipped","because":"neon_database.db","millis":0}]"#,
    );
    run.plan =
        "+ vercel_project.web: create\n~ neon_database.db: update <script>alert(1)</script>\n"
            .into();
    run.summary = "1 done, 1 failed, 1 skipped".into();
    s.save_run(&run).unwrap();
    resources::seed_env_var(
        &mut s,
        "shop",
        "production",
        "DATABASE_URL",
        "postgres://keep-out",
    );
    (project.name, run.id)
}

async fn project_pages(driver: &Driver, app: &dashboard::App) {
    let (project, run_id) = seed_pages(app);
    let base = &app.base;

    // A Member: from the dashboard's home to the team's projects, the project, the run.
    let max = driver.browser().await;
    max.sign_in(app, "google", "max@example.com").await;
    max.go(&format!("{base}/")).await;
    max.click("main a[href='/teams/acme/projects']").await;
    max.wait_for("Projects of acme").await;
    assert_eq!(
        max.count("#create").await,
        0,
        "a Member registers no projects"
    );
    max.click(&format!("#projects a[href$='/{project}']")).await;
    let page = max.wait_for("Environments").await;
    assert!(
        page.contains("https://shop.example.test"),
        "the URL the run reported"
    );
    assert!(page.contains("failure"), "the latest run's outcome");
    max.click(&format!("#environments a[href$='/runs/{run_id}']"))
        .await;
    let page = max.wait_for("Results").await;
    // The plan as text: its markup escaped, never elements.
    assert!(
        page.contains("update &lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert_eq!(max.count("#plan script").await, 0);
    assert_eq!(max.count("#report b").await, 0);
    assert!(page.contains("quota &lt;b&gt;exceeded&lt;/b&gt;"));
    assert_eq!(max.count("#report tr").await, 4, "a header and three steps");
    assert!(page.contains("because <code>neon_database.db</code> failed"));
    assert_eq!(
        max.count("#report a[href='https://shop.example.test']")
            .await,
        1
    );
    // The runs list, filtered.
    max.go(&format!(
        "{base}/teams/acme/projects/{project}/runs?outcome=success"
    ))
    .await;
    max.wait_for("No runs match.").await;
    max.go(&format!(
        "{base}/teams/acme/projects/{project}/runs?outcome=failure"
    ))
    .await;
    assert_eq!(max.count("#runs tr").await, 2);

    // Setting an env var as a Member: afterwards only the mask shows, never the value.
    max.go(&format!("{base}/teams/acme/projects/{project}"))
        .await;
    max.click("#environments a[href$='/env/production']").await;
    max.wait_for("DATABASE_URL").await;
    max.type_in("#set-env input[name=name]", "API_KEY").await;
    max.type_in("#set-env input[name=value]", "sk-live-7d1f0c-do-not-show")
        .await;
    max.click("#set-env button").await;
    let page = max.wait_for("API_KEY").await;
    assert!(!page.contains("sk-live-7d1f0c-do-not-show"));
    assert!(!page.contains("postgres://keep-out"));
    assert_eq!(max.count("#env-vars code.masked").await, 2);
    assert!(page.contains(telbase::control::resources::MASK));
    assert!(app.events.actions().contains(&"env.set"));
    let stored = {
        let mut s = app.control.store.lock().unwrap();
        telbase::secrets::stored::open_text(
            &mut *s,
            &resources::keyring(),
            &telbase::store::SecretName {
                project: project.clone(),
                environment: "production".into(),
                name: "API_KEY".into(),
            },
        )
        .unwrap()
        .unwrap()
    };
    use secrecy::ExposeSecret as _;
    assert_eq!(
        stored.expose_secret(),
        "sk-live-7d1f0c-do-not-show",
        "sealed, not lost"
    );
    // Unset it again.
    max.click("#env-vars form[action$='/API_KEY/unset'] button")
        .await;
    // "Set a value" is on the page before and after: wait for the name to go instead
    // (reading the page at once could still see the one before the answer).
    let page = max.wait_gone("API_KEY").await;
    assert!(page.contains("Set a value"));
    assert!(app.events.actions().contains(&"env.unset"));
    max.quit().await;

    // A Viewer: the pages show, without a change form or an env var name.
    let vic = driver.browser().await;
    vic.sign_in(app, "google", "vic@example.com").await;
    for path in [
        "/teams/acme/projects".to_owned(),
        format!("/teams/acme/projects/{project}"),
        format!("/teams/acme/projects/{project}/runs"),
        format!("/teams/acme/projects/{project}/runs/{run_id}"),
    ] {
        vic.go(&format!("{base}{path}")).await;
        let page = vic.source().await;
        assert!(!page.contains("does not allow"), "{path}: {page}");
        assert_eq!(
            vic.count("form[method=post][action^='/teams']").await,
            0,
            "{path}"
        );
        assert!(
            !page.contains("DATABASE_URL") && !page.contains("/env/"),
            "{path}"
        );
    }
    vic.go(&format!(
        "{base}/teams/acme/projects/{project}/env/production"
    ))
    .await;
    let page = vic.source().await;
    assert!(page.contains("does not allow this"));
    assert!(!page.contains("DATABASE_URL"));
    // A POST forged with the Viewer's own session and a valid CSRF token (from the
    // sign-out form): the role decides, not the page.
    vic.go(&format!("{base}/teams/acme/projects")).await;
    let token = dashboard::input_value(&vic.source().await, "csrf").expect("a CSRF token");
    let cookie = vic.cookie_header().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before = app.events.actions().len();
    for (path, form) in [
        (
            format!("/teams/acme/projects/{project}/env/production"),
            vec![("csrf", token.as_str()), ("name", "EVIL"), ("value", "x")],
        ),
        (
            format!("/teams/acme/projects/{project}/env/production/DATABASE_URL/unset"),
            vec![("csrf", token.as_str())],
        ),
        (
            format!("/teams/acme/projects/{project}/delete"),
            vec![("csrf", token.as_str()), ("confirm", project.as_str())],
        ),
        (
            "/teams/acme/projects".to_owned(),
            vec![
                ("csrf", token.as_str()),
                ("name", "evil"),
                ("repo", "acme/evil"),
            ],
        ),
    ] {
        let r = http
            .post(format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("origin", base.as_str())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.text().await.unwrap().contains("does not allow this"));
    }
    assert_eq!(
        app.events.actions().len(),
        before,
        "nothing changed, nothing recorded"
    );
    let left = {
        let mut s = app.control.store.lock().unwrap();
        let team = telbase::control::model::team_by_name(&mut *s, "acme")
            .unwrap()
            .unwrap();
        let p = telbase::control::resources::get_project(&mut s, &team.id, &project).unwrap();
        telbase::control::resources::env_vars(&mut s, &p, "production").unwrap()
    };
    let names: Vec<_> = left.items.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["DATABASE_URL"],
        "the Viewer's forged POSTs changed nothing"
    );
    vic.quit().await;
}
