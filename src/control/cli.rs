//! The CLI side of the control plane: `telbase login` (the RFC 8628 device flow against a
//! server), `telbase logout`, `telbase whoami`, and the bootstrap `telbase team create NAME
//! --owner EMAIL` (on the store directly: a fresh server has no one to sign in yet).
//!
//! Tokens are kept in the OS keyring where one answers, else in a 0600 file, never in the
//! main config (`credstore` owns that choice). The access token lives an hour; an expired
//! one is refreshed (and the refresh token rotated) before use, and saved back where it
//! was found.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use super::credstore::{self, Place};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};

/// The client id the CLI presents.
pub const CLIENT_ID: &str = "telbase-cli";

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The Telbase server (default: the last one logged in to, or TELBASE_SERVER).
    #[arg(long, env = "TELBASE_SERVER")]
    pub server: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TeamCommand {
    /// Create a team with its first Owner (on the store: TELBASE_DATABASE_URL).
    Create {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// Mint an API token for a member of a team (on the store, with the control key:
    /// TELBASE_CONTROL_KEY_FILE or TELBASE_CONTROL_KEY). For bootstrap and automation, where
    /// no one can approve a device login yet; prints the token alone, once.
    Token {
        team: String,
        /// The member's email.
        #[arg(long)]
        user: String,
        /// The token's name, as the token list shows it.
        #[arg(long, default_value = "bootstrap")]
        name: String,
        /// Expire after this many days (1 to 3650); default never.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires_in_days: Option<u32>,
    },
    /// The repositories a team may register as projects (on the store). Only an operator
    /// grants them: runs are found by repository, so a team registering a repository that
    /// is not its own would read that repository's plans.
    Repos {
        #[command(subcommand)]
        command: ReposCommand,
    },
    /// The team's projects (on the store): list them, or unregister one as an operator, e.g.
    /// after taking its repository's grant back to give it to another team (a repository
    /// is registered to one project at a time).
    Projects {
        #[command(subcommand)]
        command: ProjectsCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// The team's projects: name, repository, and whether its grant still covers it.
    List { team: String },
    /// Unregister a project: its stored env var values are deleted, its runs stay.
    Remove { team: String, name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum ReposCommand {
    /// Grant `owner/name` or `owner/*` (every repository of that account) to a team. A
    /// pattern overlapping another team's grant is refused.
    Add { team: String, pattern: String },
    /// Take a grant back. The team's projects of those repositories stay registered but
    /// out of its reach (runs, env vars, deploy values) until granted again; an Admin can
    /// still unregister them.
    Remove { team: String, pattern: String },
    /// The team's grants.
    List { team: String },
}

/// What `credentials.json` holds.
#[derive(Serialize, Deserialize, Clone)]
pub struct Credentials {
    pub server: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The tokens do not outlive the value in memory.
impl Drop for Credentials {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.access_token.zeroize();
        self.refresh_token.zeroize();
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("telbase-cli/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: String,
    expires_in: i64,
}

#[derive(Deserialize)]
struct OAuthErr {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The device flow: asks for codes, shows them, polls with the interval (+5 s on
/// `slow_down`) until approved, denied or expired. `show` prints what the person must do.
pub async fn device_login(
    client: &reqwest::Client,
    server: &str,
    show: impl Fn(&str, &str, &str),
) -> anyhow::Result<Credentials> {
    let server = server.trim_end_matches('/').to_owned();
    let start: serde_json::Value = client
        .post(format!("{server}/api/v1/oauth/device_authorization"))
        .form(&[("client_id", CLIENT_ID), ("scope", "api")])
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?
        .error_for_status()?
        .json()
        .await?;
    let field = |k: &str| {
        start[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the server's answer has no {k}"))
    };
    let device_code = field("device_code")?;
    show(
        &field("user_code")?,
        &field("verification_uri")?,
        &field("verification_uri_complete").unwrap_or_default(),
    );
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    let deadline = std::time::Instant::now()
        + Duration::from_secs(start["expires_in"].as_u64().unwrap_or(900));
    // Polls that the server could not answer (no connection, 429, 5xx) in a row. The person
    // may already have approved, so a busy or briefly failing server is asked again at the
    // next interval instead of the login being thrown away; only a run of them ends it.
    let mut troubles = 0u32;
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if std::time::Instant::now() > deadline {
            bail!("the code expired before it was approved; run `telbase login` again");
        }
        let sent = client
            .post(format!("{server}/api/v1/oauth/token"))
            .form(&[
                ("grant_type", super::api::DEVICE_GRANT),
                ("device_code", device_code.as_str()),
                ("client_id", CLIENT_ID),
            ])
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                troubles += 1;
                if troubles > POLL_TROUBLES {
                    return Err(anyhow!(e).context(format!("cannot reach {server}")));
                }
                continue;
            }
        };
        let status = resp.status();
        if status.is_success() {
            let t: TokenAnswer = resp.json().await?;
            return Ok(Credentials {
                server,
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                expires_at: chrono::Utc::now().timestamp() + t.expires_in,
            });
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            troubles += 1;
            if troubles > POLL_TROUBLES {
                bail!(
                    "{server} kept failing while waiting for the approval (last: {status}); run `telbase login` again"
                );
            }
            // Retry-After, when given, is the least wait (RFC 9110 10.2.3).
            if let Some(wait) = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                interval = interval.max(wait.min(60));
            }
            continue;
        }
        troubles = 0;
        let e: OAuthErr = resp.json().await.context("the server's answer")?;
        match e.error.as_str() {
            "authorization_pending" => {}
            // RFC 8628 3.5: add 5 seconds to this and every later interval.
            "slow_down" => interval += 5,
            "access_denied" => bail!("the login was denied"),
            "expired_token" => bail!("the code expired; run `telbase login` again"),
            _ => bail!("login failed: {}: {}", e.error, e.error_description),
        }
    }
}

/// How many polls in a row the server may fail to answer before the login gives up.
const POLL_TROUBLES: u32 = 5;

/// Fresh credentials: refreshed (and saved back in `place`) when the access token expired
/// or is about to.
pub async fn fresh(
    client: &reqwest::Client,
    mut c: Credentials,
    place: &Place,
) -> anyhow::Result<Credentials> {
    if c.expires_at - 60 > chrono::Utc::now().timestamp() {
        return Ok(c);
    }
    let resp = client
        .post(format!("{}/api/v1/oauth/token", c.server))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", c.refresh_token.as_str()),
        ])
        .send()
        .await?;
    if !resp.status().is_success() {
        let e: OAuthErr = resp.json().await.unwrap_or(OAuthErr {
            error: "error".into(),
            error_description: String::new(),
        });
        credstore::forget()?;
        bail!(
            "the login expired ({}); run `telbase login` again",
            e.error_description
        );
    }
    let t: TokenAnswer = resp.json().await?;
    c.access_token = t.access_token;
    c.refresh_token = t.refresh_token;
    c.expires_at = chrono::Utc::now().timestamp() + t.expires_in;
    if let (moved, Some(why)) = credstore::save(&c, place)? {
        eprintln!("The OS keyring failed ({why}); the refreshed login is kept in {moved}.");
    }
    Ok(c)
}

pub fn login_cmd(args: &LoginArgs) -> anyhow::Result<ExitCode> {
    // The last login is read only when it names the server (each keyring call may wait).
    let server = match &args.server {
        Some(s) => s.clone(),
        None => match credstore::load().ok().flatten() {
            Some((c, _)) => c.server.clone(),
            None => {
                bail!("which server? `telbase login --server https://…` (or TELBASE_SERVER)")
            }
        },
    };
    // Where the tokens will go is settled first: a keyring that was asked for and is
    // missing must stop the login before anyone approves it.
    let (place, passed_over) = credstore::destination()?;
    if let Some(why) = passed_over {
        eprintln!(
            "No OS keyring ({why}); the login will be kept in {place}. Set TELBASE_CREDENTIALS_STORE=file to choose the file."
        );
    }
    runtime()?.block_on(async {
        let client = http()?;
        let c = device_login(&client, &server, |code, uri, complete| {
            eprintln!("To sign in, open {uri} and enter the code: {code}");
            if !complete.is_empty() {
                eprintln!("(or open {complete})");
            }
            eprintln!("Waiting for approval…");
        })
        .await?;
        let (place, why) = credstore::save(&c, &place)?;
        if let Some(why) = why {
            eprintln!("The OS keyring failed ({why}); keeping the login in the file instead.");
        }
        eprintln!("Logged in to {}; the login is kept in {place}.", c.server);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn logout_cmd() -> anyhow::Result<ExitCode> {
    let c = match credstore::load() {
        Ok(Some((c, _))) => c,
        Ok(None) => {
            eprintln!("Not logged in.");
            return Ok(ExitCode::SUCCESS);
        }
        // An unreadable login cannot be revoked on the server (its token is not known),
        // but it must still be removable here.
        Err(credstore::LoadError::Unreadable(e)) => {
            credstore::forget()?;
            eprintln!(
                "Removed the local login, which could not be read ({e}); the server was not told (it expires on its own, or revoke it from the dashboard)."
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    runtime()?.block_on(async {
        let client = http()?;
        // Revoking the refresh token revokes the whole login (its access tokens too).
        let r = client
            .post(format!("{}/api/v1/oauth/revoke", c.server))
            .form(&[("token", c.refresh_token.as_str())])
            .send()
            .await;
        credstore::forget()?;
        match r {
            Ok(r) if r.status().is_success() => eprintln!("Logged out of {}.", c.server),
            _ => eprintln!(
                "Removed the local login; the server could not be told (it expires on its own, or revoke it from the dashboard)."
            ),
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn whoami_cmd() -> anyhow::Result<ExitCode> {
    let (c, place) =
        credstore::load()?.ok_or_else(|| anyhow!("not logged in: run `telbase login`"))?;
    runtime()?.block_on(async {
        let client = http()?;
        let c = fresh(&client, c, &place).await?;
        let me: serde_json::Value = client
            .get(format!("{}/api/v1/me", c.server))
            .bearer_auth(&c.access_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        println!(
            "{} <{}>",
            me["user"]["display_name"].as_str().unwrap_or(""),
            me["user"]["email"].as_str().unwrap_or("")
        );
        for t in me["teams"].as_array().into_iter().flatten() {
            println!(
                "  {} ({})",
                t["name"].as_str().unwrap_or(""),
                t["role"].as_str().unwrap_or("")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn team_cmd(cmd: &TeamCommand) -> anyhow::Result<ExitCode> {
    let (name, owner) = match cmd {
        TeamCommand::Create { name, owner } => (name, owner),
        TeamCommand::Token {
            team,
            user,
            name,
            expires_in_days,
        } => return token_cmd(team, user, name, *expires_in_days),
        TeamCommand::Repos { command } => return repos_cmd(command),
        TeamCommand::Projects { command } => return projects_cmd(command),
    };
    if !super::model::valid_team_name(name) {
        bail!("team names are lowercase letters, digits and `-` (at most 64)");
    }
    let mut store = crate::store::open(&crate::store::Location::from_env()?)?;
    let now = chrono::Utc::now().timestamp_millis();
    let team = super::model::create_team(&mut store, name, now)?
        .ok_or_else(|| anyhow!("a team named {name} exists already"))?;
    let user = super::model::create_user(&mut store, owner, owner, now)?;
    super::model::add_member(
        &mut store,
        &team.id,
        &user.id,
        super::roles::Role::Owner,
        now,
    )?;
    println!("Created team {} with {} as Owner.", team.name, user.email);
    Ok(ExitCode::SUCCESS)
}

/// `telbase team repos add|remove|list`.
fn repos_cmd(cmd: &ReposCommand) -> anyhow::Result<ExitCode> {
    use super::projects::{GrantRefused, grant_repos, granted_repos, parse_repo_pattern};
    let team_name = match cmd {
        ReposCommand::Add { team, .. }
        | ReposCommand::Remove { team, .. }
        | ReposCommand::List { team } => team,
    };
    let mut store = crate::store::open(&crate::store::Location::from_env()?)?;
    let t = super::model::team_by_name(&mut store, team_name)?
        .ok_or_else(|| anyhow!("no team named {team_name}"))?;
    let pattern_of = |p: &str| {
        parse_repo_pattern(p)
            .ok_or_else(|| anyhow!("{p:?}: a repository `owner/name` or `owner/*`"))
    };
    match cmd {
        ReposCommand::Add { pattern, .. } => {
            let pattern = pattern_of(pattern)?;
            let now = chrono::Utc::now().timestamp_millis();
            match grant_repos(&mut store, &t.id, &pattern, now)? {
                Ok(()) => {
                    audit_grant(&mut store, "admin.repos_granted", &t.id, &pattern)?;
                    println!("Granted {pattern} to team {}.", t.name)
                }
                Err(GrantRefused::Overlaps(other)) => {
                    bail!("{pattern} overlaps {other}, which another team holds")
                }
            }
        }
        ReposCommand::Remove { pattern, .. } => {
            let pattern = pattern_of(pattern)?;
            if !super::projects::revoke_repos(&mut store, &t.id, &pattern)? {
                bail!("team {} holds no grant {pattern}", t.name);
            }
            audit_grant(&mut store, "admin.repos_revoked", &t.id, &pattern)?;
            println!("Took {pattern} back from team {}.", t.name);
        }
        ReposCommand::List { .. } => {
            for p in granted_repos(&mut store, &t.id)? {
                println!("{p}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `telbase team projects list|remove`.
fn projects_cmd(cmd: &ProjectsCommand) -> anyhow::Result<ExitCode> {
    let team_name = match cmd {
        ProjectsCommand::List { team } | ProjectsCommand::Remove { team, .. } => team,
    };
    let mut store = crate::store::open(&crate::store::Location::from_env()?)?;
    let t = super::model::team_by_name(&mut store, team_name)?
        .ok_or_else(|| anyhow!("no team named {team_name}"))?;
    match cmd {
        ProjectsCommand::List { .. } => {
            let mut after = String::new();
            loop {
                let page = super::projects::list(&mut store, &t.id, &after, 200)?;
                for p in &page {
                    let granted = super::projects::repo_granted(&mut store, &t.id, &p.repo)?;
                    println!(
                        "{}\t{}{}",
                        p.name,
                        p.repo,
                        if granted { "" } else { "\t(not granted)" }
                    );
                }
                match page.last() {
                    Some(p) if page.len() == 200 => after = p.name.clone(),
                    _ => break,
                }
            }
        }
        ProjectsCommand::Remove { name, .. } => {
            // A project that is not there is an error with no record, as in the API.
            let project = match super::resources::find_project(&mut store, &t.id, name) {
                Ok(p) => p,
                Err(super::resources::ResourceError::NotFound(_)) => {
                    bail!("team {} has no project {name}", t.name)
                }
                Err(e) => bail!("{e}"),
            };
            // Recorded first, as the API does for a change that cannot share the audit
            // record's transaction: a log that cannot be written stops it.
            let target = super::resources::project_target(&t.id, &project.name);
            audit_operator(
                &mut store,
                "config.project_delete",
                "project",
                &target,
                "started",
            )?;
            let outcome = super::resources::delete_project(&mut store, &t.id, name);
            let ended = if outcome.is_ok() {
                "success"
            } else {
                "failure"
            };
            audit_operator(
                &mut store,
                "config.project_delete",
                "project",
                &target,
                ended,
            )?;
            let p = outcome.map_err(|e| anyhow!("could not unregister {name}: {e}"))?;
            println!(
                "Unregistered project {} ({}) of team {}; its stored values are deleted, its runs stay.",
                p.name, p.repo, t.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An operator's change on the store, in the security log when this machine has the audit
/// key (as the server's does, and as `telbase abuse unlock` records). The target leads
/// with the team's id, so the team's audit view shows it.
fn audit_operator(
    store: &mut crate::store::Store,
    action: &str,
    kind: &str,
    target: &str,
    outcome: &str,
) -> anyhow::Result<()> {
    use crate::audit::{Action, Actor, AuditEvent, AuditLog, Outcome};
    let log = AuditLog::from_env().context("the audit key")?;
    if !log.has_key() {
        return Ok(());
    }
    let outcome = Outcome::parse(outcome).ok_or_else(|| anyhow!("outcome {outcome}"))?;
    let event = AuditEvent::new(Actor::system("cli"), Action::new(action)?, outcome)
        .on(kind, target.to_owned());
    log.record(store, &event)
        .map_err(|e| anyhow!("the security log could not record it: {e}"))?;
    Ok(())
}

/// A grant decides who may read a repository's plans and set the values its deploys
/// receive: recorded after it is made (it commits on its own).
fn audit_grant(
    store: &mut crate::store::Store,
    action: &str,
    team_id: &str,
    pattern: &str,
) -> anyhow::Result<()> {
    audit_operator(
        store,
        action,
        "repo_grant",
        &format!("{team_id}/{pattern}"),
        "success",
    )
    .context("done, but")
}

/// `telbase team token TEAM --user EMAIL`: an API token with the member's full role in the
/// team, its secret printed once (and stored only as a keyed hash, as every token).
fn token_cmd(
    team: &str,
    email: &str,
    name: &str,
    expires_in_days: Option<u32>,
) -> anyhow::Result<ExitCode> {
    if name.trim().is_empty() || name.len() > 100 {
        bail!("--name: 1 to 100 characters");
    }
    let key = super::secrets::ServerKey::from_vars(|k| std::env::var(k).ok())?;
    let mut store = crate::store::open(&crate::store::Location::from_env()?)?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = super::model::team_by_name(&mut store, team)?
        .ok_or_else(|| anyhow!("no team named {team}"))?;
    let u = super::model::user_by_email(&mut store, email)?
        .ok_or_else(|| anyhow!("no user {email}"))?;
    let role = super::model::role_in(&mut store, &t.id, &u.id)?
        .ok_or_else(|| anyhow!("{email} is not a member of {team}"))?;
    let (_, secret) = super::model::create_token(
        &mut store,
        &key,
        &super::model::NewToken {
            kind: super::secrets::Kind::Api,
            team_id: &t.id,
            user_id: &u.id,
            name: name.trim(),
            role_cap: role,
            family: None,
            expires_at: expires_in_days.map(|d| now + i64::from(d) * 86_400_000),
        },
        now,
    )?;
    println!("{}", secret.expose_secret());
    Ok(ExitCode::SUCCESS)
}
