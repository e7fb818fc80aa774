//! The GitHub Actions environment of one step, read once into types: which event started the
//! run (with the parts of its payload Telbase needs), the repository and commit, where the
//! step's output and summary files are, and the links back to the run.
//!
//! Variables are read through a lookup function rather than from the process, so tests can
//! describe an environment without touching the process-wide one (which other threads read).
//! Empty variables count as unset, as the runner leaves some of them empty.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde_json::Value;

/// Why the environment cannot be used. One line each, naming the variable or the file.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("GITHUB_EVENT_PATH {path}: cannot read the event payload: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("GITHUB_EVENT_PATH {path}: the event payload is not JSON: {reason}")]
    NotJson { path: String, reason: String },
    #[error("the {event} payload has no {field}")]
    MissingField { event: String, field: &'static str },
    #[error("{name} is `{value}`, which is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("GITHUB_EVENT_NAME is {event}, but GITHUB_EVENT_PATH is not set")]
    NoPayload { event: String },
}

/// A pull request, from a `pull_request` or `pull_request_target` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub number: u64,
    /// The head commit: what the pull request proposes. GITHUB_SHA is instead the test
    /// merge commit GitHub makes for the run, which no preview should deploy.
    pub head_sha: String,
    pub head_ref: String,
    pub base_ref: String,
    /// The base branch's commit when the event was made: what production runs while the
    /// pull request is open (production plans on pull-request events pin this, never the
    /// pull request's code).
    pub base_sha: String,
    /// `owner/name` of the head repository (another one for a fork; absent when the fork was
    /// deleted).
    pub head_repo: Option<String>,
    /// The payload's `action` (`opened`, `synchronize`, `closed`…).
    pub action: Option<String>,
}

/// A push, from a `push` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The full ref pushed (`refs/heads/main`).
    pub git_ref: String,
    /// The commit the ref points to after the push.
    pub after: String,
    /// The push deleted the ref (`after` is all zeros).
    pub deleted: bool,
}

/// The event that started the workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PullRequest(PullRequestEvent),
    Push(PushEvent),
    /// Anything else (`schedule`, `workflow_dispatch`, …): only its name matters.
    Other,
}

/// Everything `telbase ci` reads from the Actions environment.
pub struct ActionsEnv {
    /// `GITHUB_ACTIONS=true`: running on a runner, so workflow commands are read.
    pub in_actions: bool,
    pub event_name: Option<String>,
    pub event: Event,
    /// `owner/name`.
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub git_ref: Option<String>,
    pub server_url: String,
    pub api_url: String,
    pub run_id: Option<String>,
    pub run_attempt: Option<String>,
    pub output_path: Option<PathBuf>,
    pub summary_path: Option<PathBuf>,
    pub workspace: Option<PathBuf>,
    pub runner_temp: Option<PathBuf>,
    /// The token for the pull-request comment (the action passes its `github-token` input
    /// here). Never printed.
    pub token: Option<SecretString>,
}

impl std::fmt::Debug for ActionsEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionsEnv")
            .field("in_actions", &self.in_actions)
            .field("event_name", &self.event_name)
            .field("event", &self.event)
            .field("repository", &self.repository)
            .field("sha", &self.sha)
            .field("git_ref", &self.git_ref)
            .field("server_url", &self.server_url)
            .field("api_url", &self.api_url)
            .field("run_id", &self.run_id)
            .field("output_path", &self.output_path)
            .field("summary_path", &self.summary_path)
            .field("workspace", &self.workspace)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Is `s` a full commit id (40 or 64 hex digits, SHA-1 or SHA-256 repositories)?
pub fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Is `s` an `owner/name` GitHub would accept?
pub fn is_repository(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    matches!(s.split_once('/'), Some((o, n)) if ok(o) && ok(n) && n != "." && n != "..")
}

impl ActionsEnv {
    /// Read the environment through `lookup` (`|k| std::env::var(k).ok()` in the CLI), and
    /// the event payload from the file GITHUB_EVENT_PATH names.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<ActionsEnv, EnvError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let path = |k: &str| get(k).map(PathBuf::from);
        let repository = get("GITHUB_REPOSITORY");
        if let Some(r) = &repository
            && !is_repository(r)
        {
            return Err(EnvError::Invalid {
                name: "GITHUB_REPOSITORY",
                value: crate::config::diag::sanitize(r),
                expected: "owner/name",
            });
        }
        let sha = get("GITHUB_SHA");
        if let Some(s) = &sha
            && !is_commit(s)
        {
            return Err(EnvError::Invalid {
                name: "GITHUB_SHA",
                value: crate::config::diag::sanitize(s),
                expected: "a commit id (40 hex digits)",
            });
        }
        let url = |k: &'static str, default: &str| -> Result<String, EnvError> {
            let v = get(k).unwrap_or_else(|| default.to_owned());
            let v = v.trim().trim_end_matches('/').to_owned();
            if !(v.starts_with("https://") || v.starts_with("http://"))
                || v.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(EnvError::Invalid {
                    name: k,
                    value: crate::config::diag::sanitize(&v),
                    expected: "an http(s) URL",
                });
            }
            Ok(v)
        };
        let event_name = get("GITHUB_EVENT_NAME");
        let event = match (&event_name, path("GITHUB_EVENT_PATH")) {
            (Some(name), Some(p)) => parse_event(name, &read_payload(&p)?)?,
            (Some(name), None) if is_pull_request(name) || name == "push" => {
                return Err(EnvError::NoPayload {
                    event: name.clone(),
                });
            }
            _ => Event::Other,
        };
        let token = get("GITHUB_TOKEN").map(|t| SecretString::from(t.trim().to_owned()));
        Ok(ActionsEnv {
            in_actions: get("GITHUB_ACTIONS").as_deref() == Some("true"),
            event_name,
            event,
            repository,
            sha,
            git_ref: get("GITHUB_REF"),
            server_url: url("GITHUB_SERVER_URL", "https://github.com")?,
            api_url: url("GITHUB_API_URL", "https://api.github.com")?,
            run_id: get("GITHUB_RUN_ID").filter(|v| v.bytes().all(|b| b.is_ascii_digit())),
            run_attempt: get("GITHUB_RUN_ATTEMPT")
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit())),
            output_path: path("GITHUB_OUTPUT"),
            summary_path: path("GITHUB_STEP_SUMMARY"),
            workspace: path("GITHUB_WORKSPACE"),
            runner_temp: path("RUNNER_TEMP"),
            token,
        })
    }

    /// The pull request of this run, if a pull-request event started it.
    pub fn pull_request(&self) -> Option<&PullRequestEvent> {
        match &self.event {
            Event::PullRequest(pr) => Some(pr),
            _ => None,
        }
    }

    /// The branch this run is on: the pushed branch, or the branch of GITHUB_REF
    /// (`refs/heads/NAME`); `None` for tags and pull-request merge refs.
    pub fn branch(&self) -> Option<&str> {
        let r = match &self.event {
            Event::Push(p) => p.git_ref.as_str(),
            _ => self.git_ref.as_deref()?,
        };
        r.strip_prefix("refs/heads/")
    }

    /// The link to this run (and attempt), where its job summary is.
    pub fn run_url(&self) -> Option<String> {
        let repo = self.repository.as_deref()?;
        let id = self.run_id.as_deref()?;
        let base = format!("{}/{repo}/actions/runs/{id}", self.server_url);
        Some(match self.run_attempt.as_deref() {
            Some(a) if a != "1" => format!("{base}/attempts/{a}"),
            _ => base,
        })
    }

    /// `path` as the repository sees it: relative to GITHUB_WORKSPACE (with `/`), so
    /// annotations land on the pull request's diff. Paths outside the workspace, or runs
    /// without one, keep the path as given.
    pub fn repo_path(&self, path: &Path) -> String {
        let given = || path.to_string_lossy().replace('\\', "/");
        let Some(ws) = &self.workspace else {
            return given();
        };
        let abs = if path.is_absolute() {
            path.to_owned()
        } else {
            match std::env::current_dir() {
                Ok(d) => d.join(path),
                Err(_) => return given(),
            }
        };
        // Both sides canonical: a runner's workspace is often reached through a symlink
        // (and containers see it under another prefix), and `..` must not confuse it.
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        let (abs, ws) = (canon(&abs), canon(ws));
        match abs.strip_prefix(&ws) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_string_lossy().replace('\\', "/"),
            _ => given(),
        }
    }
}

fn is_pull_request(name: &str) -> bool {
    matches!(name, "pull_request" | "pull_request_target")
}

/// Payloads are small (GitHub caps webhook payloads at 25 MB); the cap keeps a wrong path
/// (a device, a huge file) from being read whole.
const MAX_PAYLOAD: u64 = 32 * 1024 * 1024;

fn read_payload(path: &Path) -> Result<Value, EnvError> {
    use std::io::Read as _;
    let shown = || crate::config::diag::sanitize(&path.display().to_string());
    let unreadable = |e: std::io::Error| EnvError::Unreadable {
        path: shown(),
        reason: e.to_string(),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_PAYLOAD)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    serde_json::from_slice(&bytes).map_err(|e| EnvError::NotJson {
        path: shown(),
        reason: e.to_string(),
    })
}

/// The parts of a payload Telbase uses, checked: a pull-request event must say which pull
/// request and which head commit, or a preview would be planned for the wrong thing.
pub fn parse_event(name: &str, payload: &Value) -> Result<Event, EnvError> {
    let missing = |field| EnvError::MissingField {
        event: name.to_owned(),
        field,
    };
    let commit = |v: &Value, field: &'static str| -> Result<String, EnvError> {
        let s = v.as_str().ok_or_else(|| missing(field))?;
        if !is_commit(s) {
            return Err(EnvError::Invalid {
                name: field,
                value: crate::config::diag::sanitize(s),
                expected: "a commit id (40 hex digits)",
            });
        }
        Ok(s.to_owned())
    };
    if is_pull_request(name) {
        let pr = &payload["pull_request"];
        if !pr.is_object() {
            return Err(missing("pull_request"));
        }
        let number = payload["number"]
            .as_u64()
            .or_else(|| pr["number"].as_u64())
            .filter(|n| *n > 0)
            .ok_or_else(|| missing("number"))?;
        let text = |v: &Value, field| v.as_str().map(str::to_owned).ok_or_else(|| missing(field));
        return Ok(Event::PullRequest(PullRequestEvent {
            number,
            head_sha: commit(&pr["head"]["sha"], "pull_request.head.sha")?,
            head_ref: text(&pr["head"]["ref"], "pull_request.head.ref")?,
            base_ref: text(&pr["base"]["ref"], "pull_request.base.ref")?,
            base_sha: commit(&pr["base"]["sha"], "pull_request.base.sha")?,
            head_repo: pr["head"]["repo"]["full_name"].as_str().map(str::to_owned),
            action: payload["action"].as_str().map(str::to_owned),
        }));
    }
    if name == "push" {
        let git_ref = payload["ref"]
            .as_str()
            .ok_or_else(|| missing("ref"))?
            .to_owned();
        let after = commit(&payload["after"], "after")?;
        let deleted =
            payload["deleted"].as_bool().unwrap_or(false) || after.bytes().all(|b| b == b'0');
        return Ok(Event::Push(PushEvent {
            git_ref,
            after,
            deleted,
        }));
    }
    Ok(Event::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> Result<ActionsEnv, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ActionsEnv::from_lookup(|k| map.get(k).cloned())
    }

    const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";

    #[test]
    fn outside_actions_everything_is_optional() {
        let e = env_of(&[]).unwrap();
        assert!(!e.in_actions);
        assert_eq!(e.event, Event::Other);
        assert_eq!(e.api_url, "https://api.github.com");
        assert_eq!(e.server_url, "https://github.com");
        assert!(e.run_url().is_none());
        assert!(e.token.is_none());
    }

    #[test]
    fn a_pull_request_payload_gives_number_and_head() {
        let payload = json!({"action": "synchronize", "number": 7, "pull_request": {
            "number": 7,
            "head": {"sha": SHA, "ref": "feature", "repo": {"full_name": "fork/web"}},
            "base": {"ref": "main", "sha": "0".repeat(40)}}});
        let Event::PullRequest(pr) = parse_event("pull_request_target", &payload).unwrap() else {
            panic!("not a pull request")
        };
        assert_eq!(pr.number, 7);
        assert_eq!(pr.head_sha, SHA);
        assert_eq!(pr.head_ref, "feature");
        assert_eq!(pr.base_ref, "main");
        assert_eq!(pr.head_repo.as_deref(), Some("fork/web"));
        assert_eq!(pr.action.as_deref(), Some("synchronize"));
    }

    #[test]
    fn a_payload_without_what_telbase_needs_is_a_clear_error() {
        let e = parse_event("pull_request", &json!({"number": 1})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the pull_request payload has no pull_request"
        );
        let e = parse_event(
            "pull_request",
            &json!({"number": 1, "pull_request": {"head": {"sha": "nope", "ref": "x"}, "base": {"ref": "main"}}}),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("pull_request.head.sha is `nope`"),
            "{e}"
        );
        let e = parse_event("push", &json!({"ref": "refs/heads/main"})).unwrap_err();
        assert_eq!(e.to_string(), "the push payload has no after");
    }

    #[test]
    fn a_push_knows_its_branch_and_deletions() {
        let p = parse_event("push", &json!({"ref": "refs/heads/main", "after": SHA})).unwrap();
        assert!(matches!(&p, Event::Push(p) if !p.deleted && p.after == SHA));
        let d = parse_event(
            "push",
            &json!({"ref": "refs/heads/x", "after": "0".repeat(40), "deleted": true}),
        )
        .unwrap();
        assert!(matches!(d, Event::Push(p) if p.deleted));
    }

    #[test]
    fn bad_variables_are_refused_with_their_name() {
        let e = env_of(&[("GITHUB_REPOSITORY", "no-slash")]).unwrap_err();
        assert!(
            e.to_string().starts_with("GITHUB_REPOSITORY is `no-slash`"),
            "{e}"
        );
        let e = env_of(&[("GITHUB_SHA", "HEAD")]).unwrap_err();
        assert!(e.to_string().starts_with("GITHUB_SHA"), "{e}");
        let e = env_of(&[("GITHUB_API_URL", "ftp://x")]).unwrap_err();
        assert!(e.to_string().starts_with("GITHUB_API_URL"), "{e}");
        let e = env_of(&[("GITHUB_EVENT_NAME", "pull_request")]).unwrap_err();
        assert!(
            e.to_string().contains("GITHUB_EVENT_PATH is not set"),
            "{e}"
        );
        let e = env_of(&[
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_EVENT_PATH", "/nonexistent/event.json"),
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot read the event payload"),
            "{e}"
        );
    }

    #[test]
    fn the_run_link_names_the_attempt_after_the_first() {
        let e = env_of(&[
            ("GITHUB_REPOSITORY", "acme/web"),
            ("GITHUB_RUN_ID", "42"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_SERVER_URL", "https://github.example/"),
        ])
        .unwrap();
        assert_eq!(
            e.run_url().unwrap(),
            "https://github.example/acme/web/actions/runs/42/attempts/2"
        );
        let e = env_of(&[("GITHUB_REPOSITORY", "acme/web"), ("GITHUB_RUN_ID", "42")]).unwrap();
        assert_eq!(
            e.run_url().unwrap(),
            "https://github.com/acme/web/actions/runs/42"
        );
    }

    #[test]
    fn branches_come_from_the_push_or_the_ref() {
        let e = env_of(&[("GITHUB_REF", "refs/heads/main")]).unwrap();
        assert_eq!(e.branch(), Some("main"));
        let e = env_of(&[("GITHUB_REF", "refs/pull/2/merge")]).unwrap();
        assert_eq!(e.branch(), None);
        let e = env_of(&[("GITHUB_REF", "refs/tags/v1")]).unwrap();
        assert_eq!(e.branch(), None);
    }

    #[test]
    fn paths_are_made_relative_to_the_workspace() {
        let dir = std::env::temp_dir().join(format!("telbase-gha-env-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("infra")).unwrap();
        std::fs::write(dir.join("infra/telbase.yaml"), "").unwrap();
        let e = env_of(&[("GITHUB_WORKSPACE", dir.to_str().unwrap())]).unwrap();
        assert_eq!(
            e.repo_path(&dir.join("infra/telbase.yaml")),
            "infra/telbase.yaml"
        );
        assert_eq!(
            e.repo_path(Path::new("/elsewhere/x.yaml")),
            "/elsewhere/x.yaml"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_token_never_shows_in_debug() {
        let e = env_of(&[("GITHUB_TOKEN", "ghs_secretvalue\n")]).unwrap();
        let shown = format!("{e:?}");
        assert!(!shown.contains("ghs_secretvalue"), "{shown}");
        use secrecy::ExposeSecret as _;
        assert_eq!(e.token.unwrap().expose_secret(), "ghs_secretvalue");
    }
}
