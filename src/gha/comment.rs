//! The pull-request comment of `telbase ci`: exactly one per pull request and config file,
//! found again by a hidden marker that names the config path and updated in place on every
//! run, never posted twice. Its marker differs from the GitHub App's
//! (`serve::worker::PREVIEW_MARKER`), so a repository using both gets two comments that never
//! overwrite each other. Posting is best effort: a missing token or a refusal (a fork's
//! pull request gets a read-only token) is reported, and never fails the plan.

use secrecy::SecretString;

use crate::github::app::{GitHubApp, GitHubError};
use crate::plan::GITHUB_COMMENT_LIMIT;

/// The hidden marker for the config at `repo_path` (relative to the repository). Characters
/// outside a plain path's are percent-encoded, so no path can close the HTML comment or
/// match another config's marker.
pub fn marker(repo_path: &str) -> String {
    let mut path = String::new();
    for b in repo_path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-') {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    // `--` cannot appear inside an HTML comment.
    let path = path.replace("--", "-%2D");
    format!("<!-- telbase:action config={path} -->")
}

/// A comment body: the marker, `body`, and `footer`, at most GitHub's limit in characters.
/// `body` should already fit (the plan renderer cuts with a note); this is the last guard.
pub fn assemble(marker: &str, body: &str, footer: &str) -> String {
    let mut out = format!("{marker}\n{body}");
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(footer);
    if out.chars().count() > GITHUB_COMMENT_LIMIT {
        let note = "\n\n_Cut: the comment would exceed GitHub's size limit; the workflow run's job summary has it all._\n";
        let keep = GITHUB_COMMENT_LIMIT - note.chars().count();
        out = out.chars().take(keep).collect::<String>() + note;
    }
    out
}

/// What became of the comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Created or updated; its URL.
    Posted(String),
    /// Not posted, and why (one line, for a notice or warning). `warn` when something is
    /// wrong rather than merely not set up.
    Skipped { reason: String, warn: bool },
}

/// Create or update the comment on pull request `pr` of `repo` with `token` at `api_url`.
pub async fn post(
    api_url: &str,
    token: Option<SecretString>,
    repo: &str,
    pr: u64,
    marker: &str,
    body: &str,
) -> Posted {
    let Some(token) = token else {
        return Posted::Skipped {
            reason: "no GITHUB_TOKEN: pass the action's `github-token` input (the default is the workflow token) and grant the job `pull-requests: write`".into(),
            warn: false,
        };
    };
    let gh = match GitHubApp::with_token(api_url, token) {
        Ok(gh) => gh,
        Err(e) => {
            return Posted::Skipped {
                reason: format!("GITHUB_TOKEN cannot be used: {e}"),
                warn: true,
            };
        }
    };
    match gh.upsert_comment(0, repo, pr, marker, body).await {
        Ok(url) => Posted::Posted(url),
        Err(e) => Posted::Skipped {
            reason: refusal(&e),
            warn: true,
        },
    }
}

/// A refusal in terms of what to do about it.
fn refusal(e: &GitHubError) -> String {
    match e {
        GitHubError::Auth { status: 403, .. } => "GitHub refused to write the comment (403): the token is read-only. Pull requests from forks get a read-only GITHUB_TOKEN; for others, grant the job `pull-requests: write`".into(),
        GitHubError::Auth { status, .. } => format!("GitHub did not accept the token ({status}); check the action's `github-token` input"),
        GitHubError::NotFound { .. } => "GitHub answered 404 for the pull request's comments: the token cannot see this repository".into(),
        other => format!("the comment could not be written: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_the_config_and_stay_inside_the_comment() {
        assert_eq!(
            marker("telbase.yaml"),
            "<!-- telbase:action config=telbase.yaml -->"
        );
        assert_eq!(
            marker("infra/prod app/telbase.yaml"),
            "<!-- telbase:action config=infra/prod%20app/telbase.yaml -->"
        );
        let hostile = marker("a-->b--c.yaml");
        assert_eq!(hostile.matches("-->").count(), 1, "{hostile}");
        assert!(!hostile[4..hostile.len() - 3].contains("--"), "{hostile}");
        assert_ne!(marker("a.yaml"), marker("b/a.yaml"));
        assert_ne!(
            marker("telbase.yaml"),
            crate::serve::worker::PREVIEW_MARKER,
            "the App's and the Action's comments never share a marker"
        );
    }

    #[test]
    fn a_body_never_passes_the_limit() {
        let m = marker("telbase.yaml");
        let body = "é".repeat(GITHUB_COMMENT_LIMIT);
        let out = assemble(&m, &body, "footer\n");
        assert!(out.chars().count() <= GITHUB_COMMENT_LIMIT);
        assert!(out.starts_with(&m));
        assert!(out.contains("job summary"));
        let small = assemble(&m, "plan", "footer\n");
        assert_eq!(small, format!("{m}\nplan\nfooter\n"));
    }
}
