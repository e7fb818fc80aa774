//! The dashboard over plain HTTP (no browser): sign-in through the fake Google, Microsoft
//! and GitHub, the refusals (unknown email, replayed or foreign state, an IdP's denial),
//! the security headers, CSRF (missing token, another session's token, another origin),
//! session rotation and revocation, and a Viewer's forged forms. tests/browser.rs drives
//! the same pages in headless Chromium.

#[path = "common/dashboard.rs"]
mod dashboard;

#[path = "common/pg.rs"]
#[allow(dead_code)]
mod pg;

use dashboard::{Agent, input_value, sign_in, start};

/// Sign-in, rotation and revoke-all on SQLite and PostgreSQL (migration 9's
/// `cp_oidc_flows` and its single-use UPDATE on both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_on_every_store() {
    for ts in pg::stores() {
        let app = dashboard::start_on(ts.open(), tempfile::tempdir().unwrap()).await;
        let mut a = Agent::new();
        let page = sign_in(&app, &mut a, "google", "ada@example.com").await;
        assert_eq!(page.status, 200, "{}: {}", ts.name(), page.body);
        let mut b = Agent::new();
        let page = sign_in(&app, &mut b, "github", "ada@example.com").await;
        assert_eq!(page.status, 200, "{}", ts.name());
        b.origin = Some(app.base.clone());
        let p = b.get(&format!("{}/sessions", app.base)).await;
        let csrf = input_value(&p.body, "csrf").unwrap();
        b.post(
            &format!("{}/sessions/revoke-all", app.base),
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(
            a.get(&format!("{}/sessions", app.base)).await.status,
            303,
            "{}",
            ts.name()
        );
        assert_eq!(
            b.get(&format!("{}/sessions", app.base)).await.status,
            200,
            "{}",
            ts.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sign_in_makes_a_session_and_records_it() {
    let app = start().await;
    let mut a = Agent::new();
    let page = sign_in(&app, &mut a, "google", "Ada@Example.com").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("ada@example.com"), "{}", page.body);
    assert!(a.jar.contains_key("telbase_session"));
    // The binding cookie is gone once used.
    assert!(!a.jar.contains_key("telbase_signin"));
    assert!(app.events.actions().contains(&"auth.login"));
    // Headers: no script, no framing, no caching, no referrer.
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("script-src"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert_eq!(page.headers["referrer-policy"], "same-origin");
    // The session works on the API too (the same cookie, the same Principal).
    let me = a.get(&format!("{}/api/v1/me", app.base)).await;
    assert_eq!(me.status, 200, "{}", me.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_and_microsoft_sign_in() {
    let app = start().await;
    let mut g = Agent::new();
    let page = sign_in(&app, &mut g, "github", "max@example.com").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("max@example.com"));
    let mut m = Agent::new();
    let page = sign_in(&app, &mut m, "microsoft", "vic@example.com").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("vic@example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_emails_and_replays_are_refused() {
    let app = start().await;
    let mut a = Agent::new();
    let page = sign_in(&app, &mut a, "google", "mallory@example.com").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("no Telbase account"), "{}", page.body);
    assert!(!a.jar.contains_key("telbase_session"));
    assert!(app.events.actions().contains(&"auth.failure"));

    // A callback replayed (same state and binding cookie) after it was used.
    let mut b = Agent::new();
    let start_ = b.get(&format!("{}/auth/google/start", app.base)).await;
    let consent = b.get(start_.location.as_ref().unwrap()).await;
    let mut form = Vec::new();
    for k in [
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "provider",
    ] {
        form.push((k, input_value(&consent.body, k).unwrap()));
    }
    form.push(("email", "ada@example.com".into()));
    form.push(("verified", "true".into()));
    form.push(("decision", "allow".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let back = b.post(&format!("{}/consent", app.idp_base), &pairs).await;
    let callback = back.location.clone().unwrap();
    let binding = b.jar.clone();
    let ok = b.get(&callback).await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    b.jar = binding.clone();
    let again = b.get(&callback).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("already used"));

    // Another browser (no binding cookie) cannot finish someone else's sign-in.
    let mut c = Agent::new();
    let foreign = c.get(&callback).await;
    assert_eq!(foreign.status, 400);

    // The IdP's "deny" comes back as an error and is refused.
    let mut d = Agent::new();
    let s = d.get(&format!("{}/auth/github/start", app.base)).await;
    let consent = d.get(s.location.as_ref().unwrap()).await;
    let mut form = Vec::new();
    for k in [
        "client_id",
        "redirect_uri",
        "state",
        "code_challenge",
        "provider",
    ] {
        form.push((k, input_value(&consent.body, k).unwrap()));
    }
    form.push(("decision", "deny".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let back = d.post(&format!("{}/consent", app.idp_base), &pairs).await;
    let page = d.get(back.location.as_ref().unwrap()).await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("access_denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_emails_are_refused() {
    let app = start().await;
    for provider in ["google", "github", "microsoft"] {
        let mut a = Agent::new();
        let s = a.get(&format!("{}/auth/{provider}/start", app.base)).await;
        let consent = a.get(s.location.as_ref().unwrap()).await;
        let mut form = Vec::new();
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
        form.push(("email", "ada@example.com".into()));
        form.push(("tenant", "t1".into()));
        form.push(("decision", "allow".into()));
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let back = a.post(&format!("{}/consent", app.idp_base), &pairs).await;
        let page = a.get(back.location.as_ref().unwrap()).await;
        assert_eq!(page.status, 401, "{provider}: {}", page.body);
        assert!(!a.jar.contains_key("telbase_session"), "{provider}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_rotation_and_revocation() {
    let app = start().await;
    let mut a = Agent::new();
    sign_in(&app, &mut a, "google", "ada@example.com").await;
    let page = a.get(&format!("{}/tokens", app.base)).await;
    let csrf = input_value(&page.body, "csrf").unwrap();
    // No token, a wrong token, another origin: 403 and an audit record each.
    let no = a
        .post(
            &format!("{}/tokens", app.base),
            &[("name", "x"), ("team", "acme")],
        )
        .await;
    assert_eq!(no.status, 403);
    let wrong = a
        .post(
            &format!("{}/tokens", app.base),
            &[("name", "x"), ("team", "acme"), ("csrf", "0000")],
        )
        .await;
    assert_eq!(wrong.status, 403);
    a.origin = Some("http://evil.example".into());
    let cross = a
        .post(
            &format!("{}/tokens", app.base),
            &[("name", "x"), ("team", "acme"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(cross.status, 403);
    let refused = app
        .events
        .actions()
        .iter()
        .filter(|a| **a == "auth.csrf_rejected")
        .count();
    assert_eq!(refused, 3);

    // A good form creates the token, shows it once, and rotates the session.
    a.origin = Some(app.base.clone());
    let before = a.jar["telbase_session"].clone();
    let made = a
        .post(
            &format!("{}/tokens", app.base),
            &[
                ("name", "ci"),
                ("team", "acme"),
                ("role", "viewer"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert!(made.body.contains("tlb_"), "the secret is shown once");
    let after = a.jar["telbase_session"].clone();
    assert_ne!(before, after, "rotated");
    let mut old = Agent::new();
    old.jar.insert("telbase_session".into(), before);
    let dead = old.get(&format!("{}/sessions", app.base)).await;
    assert_eq!(dead.status, 303, "the old session is dead at once");
    // The old CSRF token died with the old session.
    let stale = a
        .post(
            &format!("{}/tokens", app.base),
            &[("name", "y"), ("team", "acme"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(stale.status, 403);
    // The page rendered after the rotation carries the new session's token, which works.
    let fresh = input_value(&made.body, "csrf").unwrap();
    assert_ne!(fresh, csrf);
    let again = a
        .post(
            &format!("{}/tokens", app.base),
            &[("name", "ci2"), ("team", "acme"), ("csrf", &fresh)],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);

    // Revoke-all from a second browser signs the first out at once.
    let mut b = Agent::new();
    sign_in(&app, &mut b, "github", "ada@example.com").await;
    b.origin = Some(app.base.clone());
    let page = b.get(&format!("{}/sessions", app.base)).await;
    let csrf_b = input_value(&page.body, "csrf").unwrap();
    let r = b
        .post(
            &format!("{}/sessions/revoke-all", app.base),
            &[("csrf", &csrf_b)],
        )
        .await;
    assert_eq!(r.status, 303);
    let out = a.get(&format!("{}/tokens", app.base)).await;
    assert_eq!(out.status, 303);
    assert!(out.location.unwrap().starts_with("/signin"));
    let still = b.get(&format!("{}/sessions", app.base)).await;
    assert_eq!(
        still.status, 200,
        "the browser that asked keeps a new session"
    );

    // Sign-out revokes on the server.
    let csrf_b = input_value(&still.body, "csrf").unwrap();
    let cookie = b.jar["telbase_session"].clone();
    b.post(&format!("{}/auth/logout", app.base), &[("csrf", &csrf_b)])
        .await;
    let mut replay = Agent::new();
    replay.jar.insert("telbase_session".into(), cookie);
    assert_eq!(
        replay.get(&format!("{}/sessions", app.base)).await.status,
        303
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_forms_and_forged_ones_are_refused() {
    let app = start().await;
    let mut v = Agent::new();
    sign_in(&app, &mut v, "google", "vic@example.com").await;
    v.origin = Some(app.base.clone());
    // A Viewer does not see the member list at all (roles::allows: ViewMembers is Member+).
    let members = v.get(&format!("{}/teams/acme/members", app.base)).await;
    assert_eq!(members.status, 403);
    let audit = v.get(&format!("{}/teams/acme/audit", app.base)).await;
    assert_eq!(audit.status, 403);
    let other = v.get(&format!("{}/teams/nope/members", app.base)).await;
    assert_eq!(other.status, 404);
    let page = v.get(&format!("{}/sessions", app.base)).await;
    let csrf = input_value(&page.body, "csrf").unwrap();
    // Forged forms with a valid CSRF token: the server asks roles::allows anyway.
    let invite = v
        .post(
            &format!("{}/teams/acme/members", app.base),
            &[
                ("email", "eve@example.com"),
                ("role", "owner"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(invite.status, 403, "{}", invite.body);
    let role = v
        .post(
            &format!("{}/teams/acme/members/x/role", app.base),
            &[("role", "owner"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(role.status, 403);
    let token = v
        .post(
            &format!("{}/tokens", app.base),
            &[
                ("name", "x"),
                ("team", "acme"),
                ("role", "owner"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(token.status, 403, "a token above the Viewer's role");

    // The Owner sees the change forms; a Member sees the list without them.
    let mut o = Agent::new();
    sign_in(&app, &mut o, "google", "ada@example.com").await;
    let page = o.get(&format!("{}/teams/acme/members", app.base)).await;
    assert!(page.body.contains("/role\"") && page.body.contains("id=\"invite\""));
    let mut m = Agent::new();
    sign_in(&app, &mut m, "google", "max@example.com").await;
    let page = m.get(&format!("{}/teams/acme/members", app.base)).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<form method=\"post\" action=\"/teams"));
    assert!(!page.body.contains("id=\"invite\""));
    // The Owner's audit page renders.
    let audit = o.get(&format!("{}/teams/acme/audit", app.base)).await;
    assert_eq!(audit.status, 200, "{}", audit.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_redirects_and_unknown_providers() {
    let app = start().await;
    let mut a = Agent::new();
    assert_eq!(
        a.get(&format!("{}/auth/okta/start", app.base)).await.status,
        404
    );
    let p = a.get(&format!("{}/sessions", app.base)).await;
    assert_eq!(p.location.as_deref(), Some("/signin?next=%2Fsessions"));
    let s = a
        .get(&format!("{}/signin?next=//evil.example/x", app.base))
        .await;
    assert!(s.body.contains("next=%2F\""), "{}", s.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_sign_ins_lock_the_address() {
    let app = start().await;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let mut a = Agent::new();
        let page = sign_in(&app, &mut a, "google", "mallory@example.com").await;
        statuses.push(page.status);
        if page.status == 429 {
            assert!(page.headers.contains_key("retry-after"));
            assert!(page.body.contains("Too many failed sign-ins"));
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 403));
    // While locked, even a good sign-in is refused before its answer is looked at.
    let mut ada = Agent::new();
    let page = sign_in(&app, &mut ada, "google", "ada@example.com").await;
    assert_eq!(page.status, 429);
}

/// `telbase emulator` serves the fake IdP under `/idp`, with issuers naming that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_serves_the_fake_idp() {
    let emu = telbase::emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        telbase::emulator::Config::default(),
    )
    .await
    .unwrap();
    let base = emu.url();
    let http = reqwest::Client::new();
    let get = |u: String| {
        let http = http.clone();
        async move {
            http.get(u)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let g = get(format!(
        "{base}/idp/google/.well-known/openid-configuration"
    ))
    .await;
    assert_eq!(g["issuer"], format!("{base}/idp/google"));
    let keys = get(g["jwks_uri"].as_str().unwrap().to_owned()).await;
    assert_eq!(keys["keys"][0]["kty"], "RSA");
    assert_eq!(keys["keys"][0]["alg"], "RS256");
    let m = get(format!(
        "{base}/idp/microsoft/organizations/v2.0/.well-known/openid-configuration"
    ))
    .await;
    assert_eq!(
        m["issuer"],
        format!("{base}/idp/microsoft/{{tenantid}}/v2.0")
    );
    // An unknown client is shown an error, never redirected (RFC 6749 4.1.2.1).
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "{base}/idp/github/login/oauth/authorize?client_id=nope&redirect_uri=https://evil.example/"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The GitHub API wants a token, in GitHub's error shape.
    let r = http
        .get(format!("{base}/idp/github/api/user"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/idp/_admin/clients"))
        .body(r#"{"id": "c1", "secret": "s1", "redirect_uris": ["http://127.0.0.1:1/cb"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let consent = http
        .get(format!(
            "{base}/idp/google/o/oauth2/v2/auth?client_id=c1&redirect_uri=http://127.0.0.1:1/cb&response_type=code&state=x&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 200);
    assert!(
        consent
            .text()
            .await
            .unwrap()
            .contains("Fake google sign-in")
    );
    emu.stop().await;
}

/// The team's audit page: its members' records only, filtered by action, paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_shows_the_teams_records() {
    let app = start().await;
    let (ada, outsider) = {
        let mut s = app.control.store.lock().unwrap();
        let ada = telbase::control::model::user_by_email(&mut *s, "ada@example.com")
            .unwrap()
            .unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let out =
            telbase::control::model::create_user(&mut *s, "out@else.org", "out", now).unwrap();
        let log = telbase::audit::AuditLog::new(telbase::audit::AuditKeys::from_secret(&[3; 32]));
        let acme = telbase::control::model::team_by_name(&mut *s, "acme")
            .unwrap()
            .unwrap();
        let mut write = |actor: &str, action: &'static str| {
            let target = action
                .starts_with("member.")
                .then(|| telbase::control::api::member_target(&acme.id, actor));
            let e = telbase::serve::audit::from_control(&telbase::control::SecurityEvent {
                action,
                actor: Some(actor.to_owned()),
                address: "192.0.2.7".into(),
                target,
                outcome: "success",
            })
            .unwrap();
            log.record(&mut *s, &e).unwrap();
        };
        // What the team's view holds (the API's rule, `projects::team_audit`): session and
        // member records of its members; never those of someone outside it.
        for _ in 0..60 {
            write(&ada.id, "session.revoke");
        }
        write(&ada.id, "member.invite");
        write(&out.id, "session.revoke");
        // A member change in another team, by a member of this one: not this team's.
        let e = telbase::serve::audit::from_control(&telbase::control::SecurityEvent {
            action: "member.remove",
            actor: Some(ada.id.clone()),
            address: "192.0.2.7".into(),
            target: Some(telbase::control::api::member_target(
                "elsewhere-team",
                &out.id,
            )),
            outcome: "success",
        })
        .unwrap();
        log.record(&mut *s, &e).unwrap();
        (ada, out)
    };
    let mut a = Agent::new();
    sign_in(&app, &mut a, "google", "ada@example.com").await;
    let page = a.get(&format!("{}/teams/acme/audit", app.base)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&ada.id));
    assert!(!page.body.contains(&outsider.id), "another team's person");
    assert!(
        page.body.contains("id=\"older\""),
        "60+ records: a next page"
    );
    let only = a
        .get(&format!("{}/teams/acme/audit?action=admin.*", app.base))
        .await;
    assert!(only.body.contains("admin.member_invite"), "{}", only.body);
    assert!(
        !only.body.contains("admin.member_remove"),
        "another team's member change"
    );
    assert!(!only.body.contains("access.session_revoke"));
    let bad = a
        .get(&format!("{}/teams/acme/audit?before=x", app.base))
        .await;
    assert_eq!(bad.status, 400);
    let bad = a
        .get(&format!(
            "{}/teams/acme/audit?action=%3Cscript%3E",
            app.base
        ))
        .await;
    assert_eq!(bad.status, 400);
}

/// Wrong user codes on `/device` count against the same limit as the API's approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_device_codes_are_limited() {
    let app = start().await;
    let mut a = Agent::new();
    sign_in(&app, &mut a, "google", "max@example.com").await;
    a.origin = Some(app.base.clone());
    let page = a
        .get(&format!("{}/device?user_code=bcdf-ghjk", app.base))
        .await;
    assert!(page.body.contains("value=\"BCDF-GHJK\""), "{}", page.body);
    let csrf = input_value(&page.body, "csrf").unwrap();
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let r = a
            .post(
                &format!("{}/device", app.base),
                &[
                    ("user_code", "BCDF-GHJK"),
                    ("team", "acme"),
                    ("decision", "approve"),
                    ("csrf", &csrf),
                ],
            )
            .await;
        statuses.push(r.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 400), "{statuses:?}");
    assert_eq!(statuses[10], 429);
    // Another team's name is a 404, as in the API.
    let r = a
        .post(
            &format!("{}/device", app.base),
            &[
                ("user_code", "x"),
                ("team", "other"),
                ("decision", "approve"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(r.status, 404);
}
