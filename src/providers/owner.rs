//! Ownership markers: how Telbase recognises what it created, for which project and which
//! environment, at providers that have no common tagging scheme.
//!
//! Every resource carries two marks: its name starts with the project's name and a hyphen
//! (`notes-web`), and the provider's own metadata says "Telbase, project notes" (a marker
//! env var on a Vercel project, written in the same call that creates it; annotations on a
//! Neon project's default branch, also set at creation). Observe returns only resources with
//! both marks, so a same-named resource somebody made by hand is never adopted, changed or
//! deleted.

use crate::model::Environment;

/// The Vercel env var that marks a project as this Telbase project's.
pub const VERCEL_MARKER_ENV: &str = "TELBASE_PROJECT";

/// The comment on every env var Telbase writes to Vercel starts with this.
pub const COMMENT_PREFIX: &str = "telbase";

/// Neon branch annotation keys.
pub const NEON_PROJECT_ANNOTATION: &str = "telbase-project";
pub const NEON_ENVIRONMENT_ANNOTATION: &str = "telbase-environment";
pub const NEON_DELETION_ANNOTATION: &str = "telbase-deletion-allowed";

/// Cloudflare: the mark on DNS record comments and in Access names. DNS records carry
/// `telbase project=<p> env=<e> target=<provider>/<app>` as their comment; Access applications are named
/// `<name> (telbase project=<p> env=<e>)` and reusable policies `<name> (telbase
/// project=<p>)`, since neither has a comment field (Access tags must be created in the
/// account first, and DNS tags need a paid plan).
pub const CLOUDFLARE_MARK: &str = "telbase project=";

/// The project mark for Cloudflare: `telbase project=notes`.
pub fn cloudflare_project_mark(project: &str) -> String {
    format!("{CLOUDFLARE_MARK}{project}")
}

/// The project-and-environment mark for Cloudflare: `telbase project=notes env=pr-42`.
pub fn cloudflare_env_mark(project: &str, env: Environment) -> String {
    format!(
        "{} env={}",
        cloudflare_project_mark(project),
        environment_label(env)
    )
}

/// Whether a provider-side name belongs to this project by its prefix.
pub fn has_prefix(project: &str, name: &str) -> bool {
    name.strip_prefix(project)
        .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1)
}

/// The environment as a marker value: `production` or `pr-42`.
pub fn environment_label(env: Environment) -> String {
    match env {
        Environment::Production => "production".into(),
        Environment::Preview { pull_request } => format!("pr-{pull_request}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_needs_hyphen_and_more() {
        assert!(has_prefix("notes", "notes-web"));
        assert!(!has_prefix("notes", "notes"));
        assert!(!has_prefix("notes", "notes-"));
        assert!(!has_prefix("notes", "notesweb"));
        assert!(!has_prefix("notes", "other-web"));
    }
}
