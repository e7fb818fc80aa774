//! The dashboard under test, in-process: the control plane's `/api/v1` and the dashboard on
//! one SQLite store, the fake identity provider (`telbase::emulator::idp`) on its own port
//! registered with a test client for all three providers, a team `acme` with an Owner
//! (ada@example.com) and a Viewer (vic@example.com), and every security event kept.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use telbase::control::api::{self, ControlState};
use telbase::control::model;
use telbase::control::roles::Role;
use telbase::control::secrets::ServerKey;
use telbase::control::{SecurityEvent, SecurityEvents};
use telbase::emulator::idp::{self, Client, Idp};
use telbase::web::{self, Web, oidc};

#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<SecurityEvent>>);

impl SecurityEvents for Recorder {
    fn record(&self, e: &SecurityEvent) -> Result<(), String> {
        self.0.lock().unwrap().push(e.clone());
        Ok(())
    }
}

impl Recorder {
    pub fn actions(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|e| e.action).collect()
    }
}

pub struct App {
    pub base: String,
    pub idp_base: String,
    pub idp: Arc<Idp>,
    pub key: ServerKey,
    pub events: Arc<Recorder>,
    pub control: Arc<ControlState>,
    _dir: tempfile::TempDir,
}

/// The envelope store's master key in tests (base64 of 32 bytes).
pub const TEST_MASTER_KEY: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub const CLIENT_ID: &str = "telbase-test-client";
pub const CLIENT_SECRET: &str = "telbase-test-secret";

pub async fn start() -> App {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("telbase.db");
    let store = telbase::store::open(&telbase::store::Location::Sqlite(db.clone())).unwrap();
    start_on(store, dir).await
}

/// The same on a given store (`dir` is kept for as long as the app).
pub async fn start_on(mut store: telbase::store::Store, dir: tempfile::TempDir) -> App {
    let now = chrono::Utc::now().timestamp_millis();
    let team = model::create_team(&mut store, "acme", now)
        .unwrap()
        .unwrap();
    // The team may register its own account's repositories (an operator's grant).
    telbase::control::projects::grant_repos(&mut store, &team.id, "acme/*", now)
        .unwrap()
        .unwrap();
    for (email, role) in [
        ("ada@example.com", Role::Owner),
        ("vic@example.com", Role::Viewer),
        ("max@example.com", Role::Member),
    ] {
        let u = model::create_user(&mut store, email, email, now).unwrap();
        model::add_member(&mut store, &team.id, &u.id, role, now).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let idp = Idp::new("");
    let idp_base = idp::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        idp.clone(),
    )
    .await;
    idp.register(Client {
        id: CLIENT_ID.into(),
        secret: CLIENT_SECRET.into(),
        redirect_uris: ["google", "microsoft", "github"]
            .iter()
            .map(|p| format!("{base}/auth/{p}/callback"))
            .collect(),
    });
    let vars: HashMap<String, String> = [
        ("GOOGLE_ISSUER", format!("{idp_base}/google")),
        (
            "MICROSOFT_ISSUER",
            format!("{idp_base}/microsoft/organizations/v2.0"),
        ),
        ("GITHUB_ISSUER", format!("{idp_base}/github")),
        ("GITHUB_API_URL", format!("{idp_base}/github/api")),
    ]
    .into_iter()
    .map(|(k, v)| (format!("TELBASE_OIDC_{k}"), v))
    .chain(["GOOGLE", "MICROSOFT", "GITHUB"].into_iter().flat_map(|p| {
        [
            (format!("TELBASE_OIDC_{p}_CLIENT_ID"), CLIENT_ID.to_owned()),
            (
                format!("TELBASE_OIDC_{p}_CLIENT_SECRET"),
                CLIENT_SECRET.to_owned(),
            ),
        ]
    }))
    .collect();
    let providers = oidc::Providers::from_vars(|k| vars.get(k).cloned()).unwrap();
    let key = ServerKey::generate();
    let events = Arc::new(Recorder::default());
    let mut control = ControlState::new(store, key.clone(), base.clone(), false);
    control.events = events.clone();
    // A fixed test keyring, so the env var pages can seal values (as `telbase serve` does
    // with TELBASE_MASTER_KEY_FILE).
    control.master_keys = Arc::new(|| {
        telbase::secrets::envelope::Keyring::parse(TEST_MASTER_KEY, "test keyring")
            .map(|k| Box::new(k) as Box<dyn telbase::secrets::envelope::KeyProvider>)
            .map_err(|e| e.to_string())
    });
    let control = Arc::new(control);
    // Abuse protection on a store of its own (its tables only), as `telbase serve` wires it.
    let abuse_store = telbase::store::open(&telbase::store::Location::Sqlite(
        dir.path().join("abuse.db"),
    ))
    .unwrap();
    let mut web = Web::new(control.clone(), providers);
    web.abuse = Some(Arc::new(telbase::abuse::Abuse::new(
        Arc::new(Mutex::new(abuse_store)),
        telbase::abuse::AbuseConfig::default(),
    )));
    let app = api::router(control.clone()).merge(web::router(Arc::new(web)));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    App {
        base,
        idp_base,
        idp,
        key,
        events,
        control,
        _dir: dir,
    }
}

/// A browser-like HTTP client without JavaScript: a cookie jar and manual redirects.
pub struct Agent {
    pub http: reqwest::Client,
    pub jar: HashMap<String, String>,
    pub origin: Option<String>,
}

pub struct Got {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Default for Agent {
    fn default() -> Self {
        Self::new()
    }
}

impl Agent {
    pub fn new() -> Agent {
        Agent {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
            origin: None,
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn take(&mut self, resp: reqwest::Response) -> Got {
        for c in resp.headers().get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (kv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") || v.is_empty() {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        Got {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned()),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, url: &str) -> Got {
        let r = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.take(r).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> Got {
        let mut req = self
            .http
            .post(url)
            .header("cookie", self.cookie_header())
            .form(form);
        if let Some(o) = &self.origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        self.take(r).await
    }

    /// Follows redirects (GET), resolving relative locations against `base`.
    pub async fn follow(&mut self, base: &str, mut got: Got) -> Got {
        for _ in 0..10 {
            let Some(loc) = got.location.clone() else {
                return got;
            };
            let url = if loc.starts_with("http") {
                loc
            } else {
                format!("{base}{loc}")
            };
            got = self.get(&url).await;
        }
        got
    }
}

/// The value of a hidden input / attribute after `name="NAME" value="` in a page.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let i = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[i + name.len() + 15..];
    Some(rest[..rest.find('"')?].replace("&amp;", "&"))
}

/// Signs `email` in through the fake `provider` without a browser; the final page.
pub async fn sign_in(app: &App, agent: &mut Agent, provider: &str, email: &str) -> Got {
    let start = agent
        .get(&format!("{}/auth/{provider}/start", app.base))
        .await;
    if start.status == 429 {
        // A locked address is refused at the start already.
        return start;
    }
    assert_eq!(start.status, 303, "{}", start.body);
    let consent = agent.get(start.location.as_ref().unwrap()).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    let mut form: Vec<(&str, String)> = Vec::new();
    for k in [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "provider",
    ] {
        if let Some(v) = input_value(&consent.body, k) {
            form.push((k, v));
        }
    }
    form.push(("email", email.to_owned()));
    form.push(("name", "Test".into()));
    form.push(("verified", "true".into()));
    form.push(("decision", "allow".into()));
    if provider == "microsoft" {
        form.push(("tenant", "9188040d-6c67-4c5b-b112-36a304b66dad".into()));
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let back = agent
        .post(&format!("{}/consent", app.idp_base), &pairs)
        .await;
    assert_eq!(back.status, 303);
    let cb = agent.get(back.location.as_ref().unwrap()).await;
    let base = app.base.clone();
    agent.follow(&base, cb).await
}
