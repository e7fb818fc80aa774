//! GitHub webhook deliveries: proving one came from GitHub, and reading the few events
//! Telbase acts on into what should happen.
//!
//! Verification comes first and works on the raw bytes: `X-Hub-Signature-256` is an
//! HMAC-SHA256 of the body exactly as received, so nothing is parsed (or re-serialized)
//! before it holds. The comparison is constant-time (`hmac`'s `verify_slice`), the legacy
//! SHA-1 `X-Hub-Signature` is never accepted, and several secrets may be configured at once
//! so a secret can be rotated without dropping deliveries. Parsing then reads only the
//! fields Telbase needs, from payloads as GitHub sends them (tested against real ones), and
//! [`Event::intents`] turns an event into decisions, with the reason when it is ignored.

use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub's largest delivery: payloads are capped at 25 MB (axum's default limit is 2 MB).
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Why a delivery's signature does not hold. The messages are safe to return to the caller
/// and to log: they never include the secret, the expected MAC or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "no X-Hub-Signature-256 header (the SHA-1 X-Hub-Signature is not accepted); set a webhook secret on the GitHub App"
    )]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body under any configured webhook secret")]
    Mismatch,
    #[error("no webhook secret is configured, so no delivery can be verified")]
    NoSecret,
}

/// Verify `X-Hub-Signature-256` over the raw body with any of `secrets` (the current one and,
/// during a rotation, the previous one).
pub fn verify(
    secrets: &[SecretString],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let given = decode_hex(hex.trim_end()).ok_or(SignatureError::Malformed)?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut ok = false;
    for secret in secrets {
        // Every secret is tried, so the time taken does not say which one matched.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(body);
        ok |= mac.verify_slice(&given).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The signature header for `body` under `secret`, as GitHub computes it (for tests, fake
/// GitHubs and the notification webhooks Telbase itself sends).
pub fn sign(secret: &SecretString, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Hand-written because it is six lines and the only hex decoding Telbase needs; upper and
/// lower case are accepted (GitHub sends lower case).
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Why a verified delivery could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the {event} payload is not the JSON GitHub sends: {reason}")]
    Shape { event: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    pub id: u64,
    pub full_name: String,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationRef {
    pub id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Push {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub after: String,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub forced: bool,
    pub repository: Repository,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrSide {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    /// Missing (null) when the head repository (a fork) was deleted.
    #[serde(default)]
    pub repo: Option<Repository>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestBody {
    pub number: u64,
    pub head: PrSide,
    pub base: PrSide,
    #[serde(default)]
    pub merged: Option<bool>,
    #[serde(default)]
    pub draft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    pub action: String,
    pub number: u64,
    pub pull_request: PullRequestBody,
    pub repository: Repository,
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Account {
    pub login: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationBody {
    pub id: u64,
    pub account: Account,
}

/// A repository as the installation events list it (no default branch there).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RepoRef {
    pub id: u64,
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Installation {
    pub action: String,
    pub installation: InstallationBody,
    #[serde(default)]
    pub repositories: Vec<RepoRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationRepositories {
    pub action: String,
    pub installation: InstallationBody,
    #[serde(default)]
    pub repositories_added: Vec<RepoRef>,
    #[serde(default)]
    pub repositories_removed: Vec<RepoRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ping {
    pub zen: String,
    pub hook_id: u64,
}

/// A delivery Telbase understands, by its `X-GitHub-Event` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ping(Ping),
    Push(Box<Push>),
    PullRequest(Box<PullRequest>),
    Installation(Box<Installation>),
    InstallationRepositories(Box<InstallationRepositories>),
    /// Any other event: acknowledged and ignored.
    Other(String),
}

/// Read a verified delivery. Only call after [`verify`].
pub fn parse(event: &str, body: &[u8]) -> Result<Event, PayloadError> {
    fn read<T: for<'de> Deserialize<'de>>(event: &str, body: &[u8]) -> Result<T, PayloadError> {
        serde_json::from_slice(body).map_err(|e| PayloadError::Shape {
            event: event.to_owned(),
            // serde_json's message names the field and position, never echoes the body.
            reason: e.to_string(),
        })
    }
    Ok(match event {
        "ping" => Event::Ping(read(event, body)?),
        "push" => Event::Push(Box::new(read(event, body)?)),
        "pull_request" => Event::PullRequest(Box::new(read(event, body)?)),
        "installation" => Event::Installation(Box::new(read(event, body)?)),
        "installation_repositories" => {
            Event::InstallationRepositories(Box::new(read(event, body)?))
        }
        other => Event::Other(other.to_owned()),
    })
}

/// What a delivery asks Telbase to do. Serialized (tagged by `kind`) into the queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// A branch moved: reconcile production at exactly `sha` if `branch` is the
    /// repository's production branch (read from its telbase.yaml at that commit).
    Push {
        installation: u64,
        repo: String,
        branch: String,
        sha: String,
    },
    /// Create or update the preview environment of a pull request at its head commit.
    Preview {
        installation: u64,
        repo: String,
        pr: u64,
        sha: String,
        head_branch: String,
    },
    /// Tear a pull request's preview down completely (closed, merged or not). `sha` is the
    /// PR's last head commit: its telbase.yaml says which providers hold the preview.
    Teardown {
        installation: u64,
        repo: String,
        pr: u64,
        sha: String,
        head_branch: String,
    },
    /// The App was installed or given repositories: reconcile each that has a telbase.yaml.
    Installed {
        installation: u64,
        account: String,
        repos: Vec<String>,
    },
    /// Repositories the App may no longer see: forget them (their resources stay; Telbase
    /// never deletes what it can no longer reconcile).
    Removed {
        installation: u64,
        repos: Vec<String>,
    },
    /// A scheduled drift check of production at the commit last reconciled (from the
    /// file's `reconcile.drift` cron): corrected, reported or skipped as `on_drift` says.
    Drift {
        installation: u64,
        repo: String,
        branch: String,
        sha: String,
    },
    /// A commit of a repository `telbase serve --watch` polls with git instead of GitHub:
    /// reconcile production at exactly `sha` (or check it for drift), reading the config
    /// from the repository's object database; no commit status is set, the outcome is
    /// logged.
    Watched {
        source: crate::serve::watch::GitSource,
        branch: String,
        sha: String,
        /// A scheduled drift check of the commit last reconciled, not a new commit.
        #[serde(default)]
        drift: bool,
    },
    /// Nothing to do, and why (shown in the delivery log).
    Ignore(String),
}

impl Intent {
    /// What may not run twice at once, and where a newer job makes an older queued one
    /// pointless: one repository's production branch pushes, one pull request's preview,
    /// one installation's bookkeeping.
    pub fn serial_key(&self) -> (String, String) {
        match self {
            // A drift check shares the key of pushes to its branch: never both at once, and
            // a newer push makes a queued check pointless.
            Intent::Push { repo, branch, .. } | Intent::Drift { repo, branch, .. } => {
                (repo.clone(), format!("push:{branch}"))
            }
            Intent::Preview { repo, pr, .. } | Intent::Teardown { repo, pr, .. } => {
                (repo.clone(), format!("pr:{pr}"))
            }
            Intent::Installed { installation, .. } | Intent::Removed { installation, .. } => {
                (String::new(), format!("installation:{installation}"))
            }
            // Shares its shape with pushes: a newer commit of the watched branch
            // supersedes a queued older one or a queued drift check.
            Intent::Watched { source, branch, .. } => {
                (source.name.clone(), format!("push:{branch}"))
            }
            Intent::Ignore(_) => (String::new(), "ignore".into()),
        }
    }
}

impl Event {
    /// The decisions for this event (one, except when an installation both gains and loses
    /// repositories). Pure: the worker does the I/O.
    pub fn intents(&self) -> Vec<Intent> {
        let one = match self {
            Event::Ping(p) => Intent::Ignore(format!("ping from hook {}", p.hook_id)),
            Event::Other(name) => Intent::Ignore(format!("event `{name}` is not used")),
            Event::Push(p) => {
                let Some(installation) = p.installation.as_ref().map(|i| i.id) else {
                    return vec![Intent::Ignore("push without an installation".into())];
                };
                let Some(branch) = p.git_ref.strip_prefix("refs/heads/") else {
                    return vec![Intent::Ignore(format!("{} is not a branch", p.git_ref))];
                };
                if p.deleted || p.after.bytes().all(|b| b == b'0') {
                    return vec![Intent::Ignore(format!("branch {branch} was deleted"))];
                }
                Intent::Push {
                    installation,
                    repo: p.repository.full_name.clone(),
                    branch: branch.to_owned(),
                    sha: p.after.clone(),
                }
            }
            Event::PullRequest(p) => {
                let Some(installation) = p.installation.as_ref().map(|i| i.id) else {
                    return vec![Intent::Ignore(
                        "pull request without an installation".into(),
                    )];
                };
                let repo = p.repository.full_name.clone();
                match p.action.as_str() {
                    "opened" | "synchronize" | "reopened" | "ready_for_review" => {
                        // A fork's code would run with this repository's secrets and
                        // provider accounts: never deployed automatically (as Vercel and
                        // Render do for untrusted forks).
                        let same_repo = p
                            .pull_request
                            .head
                            .repo
                            .as_ref()
                            .is_some_and(|r| r.id == p.repository.id);
                        if !same_repo {
                            return vec![Intent::Ignore(format!(
                                "pull request #{} comes from a fork; previews run only for branches of {repo}",
                                p.number
                            ))];
                        }
                        Intent::Preview {
                            installation,
                            repo,
                            pr: p.number,
                            sha: p.pull_request.head.sha.clone(),
                            head_branch: p.pull_request.head.git_ref.clone(),
                        }
                    }
                    "closed" => Intent::Teardown {
                        installation,
                        repo,
                        pr: p.number,
                        sha: p.pull_request.head.sha.clone(),
                        head_branch: p.pull_request.head.git_ref.clone(),
                    },
                    other => Intent::Ignore(format!("pull_request action `{other}` is not used")),
                }
            }
            Event::Installation(i) => match i.action.as_str() {
                "created" | "unsuspend" | "new_permissions_accepted" => Intent::Installed {
                    installation: i.installation.id,
                    account: i.installation.account.login.clone(),
                    repos: i.repositories.iter().map(|r| r.full_name.clone()).collect(),
                },
                "deleted" | "suspend" => Intent::Removed {
                    installation: i.installation.id,
                    repos: i.repositories.iter().map(|r| r.full_name.clone()).collect(),
                },
                other => Intent::Ignore(format!("installation action `{other}` is not used")),
            },
            Event::InstallationRepositories(i) => {
                let names = |v: &[RepoRef]| v.iter().map(|r| r.full_name.clone()).collect();
                let mut out = Vec::new();
                if !i.repositories_added.is_empty() {
                    out.push(Intent::Installed {
                        installation: i.installation.id,
                        account: i.installation.account.login.clone(),
                        repos: names(&i.repositories_added),
                    });
                }
                if !i.repositories_removed.is_empty() {
                    out.push(Intent::Removed {
                        installation: i.installation.id,
                        repos: names(&i.repositories_removed),
                    });
                }
                if out.is_empty() {
                    out.push(Intent::Ignore("no repositories added or removed".into()));
                }
                return out;
            }
        };
        vec![one]
    }
}
