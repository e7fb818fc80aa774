//! The GitHub App's API client: App JWT, installation tokens, and the handful of calls a
//! reconciler makes (read `telbase.yaml` at a commit, set a commit status, keep one plan
//! comment per pull request, list what an installation may see, read the rate limit, list
//! webhook deliveries for the polling fallback).
//!
//! Built on octocrab (default features: its JWT backend is `aws-lc-rs`; the alternative
//! `jwt-rust-crypto` pulls the `rsa` crate, which has an open advisory). octocrab signs the
//! App JWT and mints, caches and refreshes installation tokens (30 s before expiry); this
//! module keeps one octocrab client per installation so the cache is shared, and types the
//! answers it needs rather than depending on octocrab's wide models. The base URL is
//! configurable so tests run against the emulator's GitHub. The App asks only for contents
//! read, metadata read, statuses write and pull requests write (for the plan comment): never
//! write access to code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Why a GitHub call failed; callers branch on it (retry, give up, tell the user).
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("GitHub App configuration: {0}")]
    Config(String),
    #[error("GitHub refused the App's credentials ({status}): {message}")]
    Auth { status: u16, message: String },
    #[error("GitHub rate limit reached: {message}")]
    RateLimited { message: String },
    #[error("not found on GitHub: {what}")]
    NotFound { what: String },
    #[error("GitHub rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("GitHub is unavailable or the connection failed: {0}")]
    Transient(String),
}

impl GitHubError {
    /// Worth retrying later (with backoff): a 5xx, a cut connection, or a rate limit.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitHubError::Transient(_) | GitHubError::RateLimited { .. }
        )
    }
}

fn map_err(what: &str, e: octocrab::Error) -> GitHubError {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            let message = source.message.clone();
            match status {
                401 => GitHubError::Auth { status, message },
                403 | 429 if message.to_ascii_lowercase().contains("rate limit") => {
                    GitHubError::RateLimited { message }
                }
                403 => GitHubError::Auth { status, message },
                404 => GitHubError::NotFound {
                    what: what.to_owned(),
                },
                500..=599 => GitHubError::Transient(format!("{what}: {status} {message}")),
                _ => GitHubError::Rejected { status, message },
            }
        }
        // Transport, timeouts, bodies that are not JSON: the octocrab error names the cause
        // and never carries a token (octocrab holds tokens in `SecretString`).
        other => GitHubError::Transient(format!("{what}: {other}")),
    }
}

/// The App's identity.
pub struct AppConfig {
    pub app_id: u64,
    /// The App's private key (PEM, PKCS#1 or PKCS#8), as GitHub hands it out.
    pub private_key: SecretString,
    /// `https://api.github.com`, a GitHub Enterprise Server API URL, or the emulator's
    /// `…/github`.
    pub base_url: String,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("app_id", &self.app_id)
            .field("private_key", &"[redacted]")
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// A commit status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

/// A commit status to set: `context` names the check (`telbase/production`).
#[derive(Debug, Clone)]
pub struct CommitStatus<'a> {
    pub state: StatusState,
    pub context: &'a str,
    pub description: &'a str,
    pub target_url: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    pub html_url: String,
    #[serde(default)]
    pub user: Option<CommentAuthor>,
    #[serde(default)]
    pub author_association: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CommentAuthor {
    pub login: String,
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl Comment {
    /// Whether this is Telbase's comment carrying `marker`. The marker is public (anyone
    /// can read and type it), so it counts only at the very start of the body and only in
    /// a comment by an App (`Bot`: the App itself, or `github-actions[bot]` for the
    /// workflow token; a person cannot post as one) or by someone with write access to
    /// the repository (a personal access token's owner). Otherwise anyone could post the
    /// marker first, have Telbase write its plan into their comment, and later edit that
    /// into a fake plan.
    pub fn is_ours(&self, marker: &str) -> bool {
        let trusted = self.user.as_ref().is_some_and(|u| u.kind == "Bot")
            || matches!(
                self.author_association.as_deref(),
                Some("OWNER" | "MEMBER" | "COLLABORATOR")
            );
        trusted
            && self
                .body
                .as_deref()
                .is_some_and(|b| b.trim_start().starts_with(marker))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Delivery {
    pub id: u64,
    pub guid: String,
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    pub status_code: u16,
    pub redelivery: bool,
    pub delivered_at: String,
}

#[derive(Deserialize)]
struct Contents {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct RepoList {
    repositories: Vec<RepoName>,
}

#[derive(Deserialize)]
struct RepoName {
    full_name: String,
}

/// The App, and one cached client per installation.
pub struct GitHubApp {
    app: Octocrab,
    /// Shared by `Arc`, never cloned: cloning an `Octocrab` copies its token cache instead
    /// of sharing it, so each clone would mint its own installation token.
    installations: Mutex<HashMap<u64, Arc<Octocrab>>>,
    /// A client authenticated by a token given from outside (a workflow's GITHUB_TOKEN,
    /// see [`GitHubApp::with_token`]): used for every installation-scoped call.
    token_client: Option<Arc<Octocrab>>,
}

/// Largest file Telbase reads through the contents API (the config's own cap is smaller).
const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

impl GitHubApp {
    pub fn new(config: &AppConfig) -> Result<Self, GitHubError> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(
            config.private_key.expose_secret().as_bytes(),
        )
        .map_err(|_| {
            GitHubError::Config(
                "the private key is not an RSA key in PEM form (download it from the App's settings page)".into(),
            )
        })?;
        let app = Octocrab::builder()
            .base_uri(config.base_url.as_str())
            .map_err(|e| GitHubError::Config(format!("base URL {}: {e}", config.base_url)))?
            .app(AppId(config.app_id), key)
            .build()
            .map_err(|e| GitHubError::Config(e.to_string()))?;
        Ok(GitHubApp {
            app,
            installations: Mutex::new(HashMap::new()),
            token_client: None,
        })
    }

    /// A client with no App, for `telbase serve --watch` without GitHub: anything that
    /// needs an installation fails with an error instead of reaching GitHub.
    pub fn without_app(base_url: &str) -> Result<Self, GitHubError> {
        let app = Octocrab::builder()
            .base_uri(base_url)
            .map_err(|e| GitHubError::Config(format!("base URL {base_url}: {e}")))?
            .build()
            .map_err(|e| GitHubError::Config(e.to_string()))?;
        Ok(GitHubApp {
            app,
            installations: Mutex::new(HashMap::new()),
            token_client: None,
        })
    }

    /// A client that acts with a token it is given instead of an App's: a GitHub Actions
    /// workflow's `GITHUB_TOKEN` (an installation token of the Actions App, minted by the
    /// runner), for `telbase ci`'s pull-request comment. The installation arguments of the
    /// calls are ignored; `/app` calls fail as GitHub fails them for such a token.
    pub fn with_token(base_url: &str, token: SecretString) -> Result<Self, GitHubError> {
        // octocrab puts the token into a header and panics on one a header cannot hold.
        let t = token.expose_secret();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GitHubError::Config(
                "the token is empty or has characters a token cannot have (spaces, line breaks)"
                    .into(),
            ));
        }
        let client = Octocrab::builder()
            .base_uri(base_url)
            .map_err(|e| GitHubError::Config(format!("base URL {base_url}: {e}")))?
            .personal_token(token)
            .build()
            .map_err(|e| GitHubError::Config(e.to_string()))?;
        let mut app = Self::without_app(base_url)?;
        app.token_client = Some(Arc::new(client));
        Ok(app)
    }

    /// The client of one installation; its token cache lives as long as this App.
    fn installation(&self, id: u64) -> Result<Arc<Octocrab>, GitHubError> {
        if let Some(c) = &self.token_client {
            return Ok(c.clone());
        }
        let mut map = self.installations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(
            self.app
                .installation(InstallationId(id))
                .map_err(|e| map_err("installation", e))?,
        );
        map.insert(id, c.clone());
        Ok(c)
    }

    /// An installation token, minted or from the cache (for git over HTTPS).
    pub async fn installation_token(&self, installation: u64) -> Result<SecretString, GitHubError> {
        let c = self.installation(installation)?;
        c.installation_token()
            .await
            .map_err(|e| map_err("installation token", e))
    }

    /// A file at an exact commit, or `None` when the commit has no such file.
    pub async fn read_file(
        &self,
        installation: u64,
        repo: &str,
        path: &str,
        sha: &str,
    ) -> Result<Option<Vec<u8>>, GitHubError> {
        let c = self.installation(installation)?;
        let route = format!("/repos/{repo}/contents/{path}");
        let what = format!("{repo}/{path}@{sha}");
        let got: Result<Contents, _> = c.get(route, Some(&json!({"ref": sha}))).await;
        let contents = match got.map_err(|e| map_err(&what, e)) {
            Ok(c) => c,
            Err(GitHubError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if contents.kind != "file" {
            return Err(GitHubError::Rejected {
                status: 200,
                message: format!("{what} is a {}, not a file", contents.kind),
            });
        }
        let (Some(b64), Some("base64")) = (contents.content, contents.encoding.as_deref()) else {
            // Files over 1 MB come back without content; telbase.yaml never is.
            return Err(GitHubError::Rejected {
                status: 200,
                message: format!("{what} is too large to read through the contents API"),
            });
        };
        let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| GitHubError::Transient(format!("{what}: the content is not base64")))?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(GitHubError::Rejected {
                status: 200,
                message: format!("{what} is larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        Ok(Some(bytes))
    }

    /// Set a commit status on `sha` (GitHub keeps the latest per context).
    pub async fn set_status(
        &self,
        installation: u64,
        repo: &str,
        sha: &str,
        status: &CommitStatus<'_>,
    ) -> Result<(), GitHubError> {
        let c = self.installation(installation)?;
        // GitHub caps descriptions at 140 characters.
        let description: String = status.description.chars().take(140).collect();
        let mut body =
            json!({"state": status.state, "context": status.context, "description": description});
        if let Some(u) = status.target_url {
            body["target_url"] = u.into();
        }
        let _: Value = c
            .post(format!("/repos/{repo}/statuses/{sha}"), Some(&body))
            .await
            .map_err(|e| map_err(&format!("status on {repo}@{sha}"), e))?;
        Ok(())
    }

    /// Keep exactly one comment carrying `marker` on a pull request: update it in place if
    /// it exists (see [`Comment::is_ours`] for which comments count), create it otherwise.
    /// Returns the comment's URL.
    pub async fn upsert_comment(
        &self,
        installation: u64,
        repo: &str,
        pr: u64,
        marker: &str,
        body: &str,
    ) -> Result<String, GitHubError> {
        let c = self.installation(installation)?;
        let what = format!("comments of {repo}#{pr}");
        let mut page = 1u32;
        let existing = loop {
            let batch: Vec<Comment> = c
                .get(
                    format!("/repos/{repo}/issues/{pr}/comments"),
                    Some(&json!({"per_page": 100, "page": page})),
                )
                .await
                .map_err(|e| map_err(&what, e))?;
            let n = batch.len();
            if let Some(found) = batch.into_iter().find(|cm| cm.is_ours(marker)) {
                break Some(found);
            }
            if n < 100 || page >= 50 {
                break None;
            }
            page += 1;
        };
        // The marker leads the body: that is where `is_ours` looks for it.
        let full = if body.trim_start().starts_with(marker) {
            body.to_owned()
        } else {
            format!("{marker}\n{body}")
        };
        let out: Comment = match existing {
            Some(cm) => c
                .patch(
                    format!("/repos/{repo}/issues/comments/{}", cm.id),
                    Some(&json!({"body": full})),
                )
                .await
                .map_err(|e| map_err(&what, e))?,
            None => c
                .post(
                    format!("/repos/{repo}/issues/{pr}/comments"),
                    Some(&json!({"body": full})),
                )
                .await
                .map_err(|e| map_err(&what, e))?,
        };
        Ok(out.html_url)
    }

    /// A repository's default branch, or `None` when the installation cannot see it.
    pub async fn default_branch(
        &self,
        installation: u64,
        repo: &str,
    ) -> Result<Option<String>, GitHubError> {
        let c = self.installation(installation)?;
        let got: Result<Value, _> = c.get(format!("/repos/{repo}"), None::<&()>).await;
        match got.map_err(|e| map_err(repo, e)) {
            Ok(v) => Ok(v["default_branch"].as_str().map(str::to_owned)),
            Err(GitHubError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The head commit of a branch, or `None` when the branch does not exist.
    pub async fn branch_head(
        &self,
        installation: u64,
        repo: &str,
        branch: &str,
    ) -> Result<Option<String>, GitHubError> {
        let c = self.installation(installation)?;
        let what = format!("branch {branch} of {repo}");
        let got: Result<Value, _> = c
            .get(format!("/repos/{repo}/branches/{branch}"), None::<&()>)
            .await;
        match got.map_err(|e| map_err(&what, e)) {
            Ok(v) => Ok(v["commit"]["sha"].as_str().map(str::to_owned)),
            Err(GitHubError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The repositories an installation may see.
    pub async fn repositories(&self, installation: u64) -> Result<Vec<String>, GitHubError> {
        let c = self.installation(installation)?;
        let list: RepoList = c
            .get(
                "/installation/repositories",
                Some(&json!({"per_page": 100})),
            )
            .await
            .map_err(|e| map_err("installation repositories", e))?;
        Ok(list.repositories.into_iter().map(|r| r.full_name).collect())
    }

    /// Core API requests left in the current window, for /metrics.
    pub async fn rate_limit_remaining(&self, installation: u64) -> Result<u64, GitHubError> {
        let c = self.installation(installation)?;
        let v: Value = c
            .get("/rate_limit", None::<&()>)
            .await
            .map_err(|e| map_err("rate limit", e))?;
        v["resources"]["core"]["remaining"]
            .as_u64()
            .ok_or_else(|| GitHubError::Transient("rate limit: no resources.core.remaining".into()))
    }

    /// Ask GitHub to deliver a webhook delivery again (after it failed to reach us).
    pub async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        let _: Value = self
            .app
            .post(
                format!("/app/hook/deliveries/{delivery_id}/attempts"),
                None::<&()>,
            )
            .await
            .map_err(|e| map_err(&format!("redelivery of {delivery_id}"), e))?;
        Ok(())
    }

    /// A repository's open pull requests (every page), for the polling fallback.
    pub async fn open_pulls(
        &self,
        installation: u64,
        repo: &str,
    ) -> Result<Vec<PullRequest>, GitHubError> {
        let c = self.installation(installation)?;
        let what = format!("open pull requests of {repo}");
        let mut out = Vec::new();
        // At most 100 pages of 100: a bound, so a misbehaving server cannot loop us.
        for page in 1..=100u32 {
            let list: Vec<Value> = c
                .get(
                    format!("/repos/{repo}/pulls"),
                    Some(&json!({"state": "open", "per_page": 100, "page": page})),
                )
                .await
                .map_err(|e| map_err(&what, e))?;
            let n = list.len();
            out.extend(list.iter().filter_map(|v| PullRequest::from_json(v, repo)));
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// One pull request, or `None` when it does not exist (or the App cannot see it).
    pub async fn pull(
        &self,
        installation: u64,
        repo: &str,
        number: u64,
    ) -> Result<Option<PullRequest>, GitHubError> {
        let c = self.installation(installation)?;
        let what = format!("pull request #{number} of {repo}");
        let got: Result<Value, _> = c
            .get(format!("/repos/{repo}/pulls/{number}"), None::<&()>)
            .await;
        match got.map_err(|e| map_err(&what, e)) {
            Ok(v) => Ok(PullRequest::from_json(&v, repo)),
            Err(GitHubError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The App's most recent webhook deliveries, newest first (the polling fallback finds
    /// deliveries that failed to reach the server and asks GitHub to redeliver them).
    pub async fn deliveries(&self, per_page: u8) -> Result<Vec<Delivery>, GitHubError> {
        self.app
            .get(
                "/app/hook/deliveries",
                Some(&json!({"per_page": per_page.clamp(1, 100)})),
            )
            .await
            .map_err(|e| map_err("webhook deliveries", e))
    }
}

/// What the polling fallback needs of a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    pub head_sha: String,
    pub head_branch: String,
    /// The head branch lives in another repository (a fork, or a deleted one): never
    /// previewed, as with webhooks.
    pub from_fork: bool,
    pub closed_at: Option<String>,
}

impl PullRequest {
    fn from_json(v: &Value, repo: &str) -> Option<PullRequest> {
        Some(PullRequest {
            number: v["number"].as_u64()?,
            state: v["state"].as_str()?.to_owned(),
            head_sha: v["head"]["sha"].as_str()?.to_owned(),
            head_branch: v["head"]["ref"].as_str()?.to_owned(),
            from_fork: v["head"]["repo"]["full_name"].as_str() != Some(repo),
            closed_at: v["closed_at"].as_str().map(str::to_owned),
        })
    }
}
