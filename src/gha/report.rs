//! What `telbase ci` tells people: the one-line summaries (the `summary` output), and the
//! markdown of the job summary and the pull-request comment (validation results, the plan,
//! an apply's per-resource results, and where the run and commit are).

use std::fmt::Write as _;

use crate::apply::{Outcome, Report};
use crate::config::Diagnostic;
use crate::config::diag::{self, Severity};
use crate::model::Environment;
use crate::plan::{Action, Plan};

/// The plan's `summary` output: "N to create, N to update, N to delete". A replacement
/// counts as one creation and one deletion, as Terraform counts it, so the line keeps the
/// three numbers scripts parse.
pub fn plan_line(plan: &Plan) -> String {
    let s = plan.summary();
    format!(
        "{} to create, {} to update, {} to delete",
        s.create + s.replace,
        s.update,
        s.delete + s.replace
    )
}

/// The apply's `summary` output: "N created, N updated, N deleted", with failures and skips
/// when there were any (replacements count as a creation and a deletion).
pub fn apply_line(report: &Report) -> String {
    let (mut created, mut updated, mut deleted) = (0, 0, 0);
    for st in &report.steps {
        if !matches!(st.outcome, Outcome::Done { .. }) {
            continue;
        }
        match st.action {
            Action::Create => created += 1,
            Action::Update => updated += 1,
            Action::Replace => {
                created += 1;
                deleted += 1
            }
            Action::Delete => deleted += 1,
            Action::NoOp => {}
        }
    }
    let failed = report.count(|o| matches!(o, Outcome::Failed { .. }));
    let skipped = report.count(|o| matches!(o, Outcome::Skipped { .. }));
    let mut line = format!("{created} created, {updated} updated, {deleted} deleted");
    if failed + skipped > 0 {
        let _ = write!(line, ", {failed} failed, {skipped} skipped");
    }
    line
}

/// Whether an apply changed anything at the providers.
pub fn applied_changes(report: &Report) -> bool {
    report
        .steps
        .iter()
        .any(|st| st.action != Action::NoOp && matches!(st.outcome, Outcome::Done { .. }))
}

/// The validation `summary`: "valid", "valid, 1 warning", "invalid: 2 errors, 1 warning".
pub fn validate_line(diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let w = match warnings {
        0 => String::new(),
        1 => ", 1 warning".into(),
        n => format!(", {n} warnings"),
    };
    match errors {
        0 => format!("valid{w}"),
        1 => format!("invalid: 1 error{w}"),
        n => format!("invalid: {n} errors{w}"),
    }
}

/// The resources a drift check found changed: `key (action)`.
pub fn drifted(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .filter(|s| s.action != Action::NoOp)
        .map(|s| {
            let what = match s.action {
                Action::Create => "missing",
                Action::Update => "changed",
                Action::Replace => "changed, needs replacing",
                Action::Delete => "not in the file",
                Action::NoOp => "",
            };
            format!("{} ({what})", s.key)
        })
        .collect()
}

/// Where a result comes from, for the line under each summary and comment.
pub struct Context<'a> {
    pub environment: Environment,
    /// The commit planned (the pull request's head for a preview).
    pub sha: Option<&'a str>,
    /// The config, relative to the repository.
    pub config: &'a str,
    pub run_url: Option<&'a str>,
}

impl Context<'_> {
    /// "preview of #2" or "production".
    pub fn environment_name(&self) -> String {
        match self.environment {
            Environment::Production => "production".into(),
            Environment::Preview { pull_request } => format!("preview of #{pull_request}"),
        }
    }

    /// One line in `<sub>`: environment, commit, config, and a link to the run.
    pub fn footer(&self, comment: bool) -> String {
        let mut parts = vec![self.environment_name()];
        if let Some(sha) = self.sha {
            parts.push(format!("commit `{}`", sha.get(..7).unwrap_or(sha)));
        }
        parts.push(format!("`{}`", md_code(self.config)));
        if let Some(u) = self.run_url {
            parts.push(format!("[workflow run]({u})"));
        }
        if comment {
            parts.push("updated in place on every run".into());
        }
        format!("\n<sub>Telbase · {}</sub>\n", parts.join(" · "))
    }

    /// The end of the note when a comment's plan is cut: where the full plan is.
    pub fn full_plan_at(&self) -> String {
        match self.run_url {
            Some(u) => format!("The full plan is in the [job summary]({u}) of the workflow run."),
            None => "The full plan is in the workflow run's job summary.".into(),
        }
    }
}

/// Text for inside backticks: no backticks, no line breaks.
fn md_code(s: &str) -> String {
    diag::sanitize(s).replace('`', "'")
}

/// Text for a table cell: one line, no pipes or HTML, capped.
fn cell(s: &str) -> String {
    diag::sanitize_to(s, 300)
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The job summary of `validate`: the result, then each diagnostic with its place.
pub fn validate_markdown(config: &str, diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    let line = validate_line(diags);
    let icon = if line.starts_with("valid") {
        "✅"
    } else {
        "❌"
    };
    let _ = writeln!(
        out,
        "### Telbase validate: `{}`\n\n{icon} **{line}**\n",
        md_code(config)
    );
    if !diags.is_empty() {
        let _ = writeln!(out, "| Where | Code | Problem |\n|---|---|---|");
        for d in diags {
            let sev = match d.severity() {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            let mut msg = d.message.clone();
            if let Some(h) = &d.hint {
                let _ = write!(msg, " (hint: {h})");
            }
            let _ = writeln!(
                out,
                "| line {}, column {} | {sev} {} | {} |",
                d.pos.line,
                d.pos.column,
                d.code.as_str(),
                cell(&msg)
            );
        }
    }
    out
}

/// The per-resource results of an apply, as a table.
pub fn apply_markdown(project: &str, report: &Report) -> String {
    let mut out = String::new();
    let ok = report.succeeded();
    let _ = writeln!(
        out,
        "### Telbase apply for `{}`: {}\n\n**{}**\n",
        md_code(project),
        if ok { "✅ done" } else { "❌ failed" },
        apply_line(report)
    );
    let rows: Vec<_> = report
        .steps
        .iter()
        .filter(|s| s.action != Action::NoOp)
        .collect();
    if rows.is_empty() {
        let _ = writeln!(out, "Nothing to change.");
        return out;
    }
    let _ = writeln!(
        out,
        "| Resource | Action | Result | Time |\n|---|---|---|---|"
    );
    for st in rows {
        let action = match st.action {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::NoOp => "",
        };
        let result = match &st.outcome {
            Outcome::Done { url: Some(u) } => format!("✅ done: {}", cell(u)),
            Outcome::Done { url: None } => "✅ done".into(),
            Outcome::Failed { error } => format!("❌ {}", cell(error)),
            Outcome::Skipped { because } => format!("⏭️ skipped: `{because}` failed"),
        };
        let _ = writeln!(
            out,
            "| `{}` | {action} | {result} | {:.1} s |",
            st.key,
            st.millis as f64 / 1000.0
        );
    }
    if !ok {
        let _ = writeln!(
            out,
            "\nRun the apply again once the cause is fixed; finished steps are not repeated."
        );
    }
    out
}

/// A failure as markdown, for the summary and the comment.
pub fn failure_markdown(title: &str, reason: &str) -> String {
    format!(
        "### {title}\n\n❌ **Failed**: {}\n",
        diag::sanitize_to(reason, 2_000)
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diag::{Code, Pos};

    #[test]
    fn validation_lines_count_errors_and_warnings() {
        let e = Diagnostic::new(Code::E0101, Pos::START, "x");
        let w = Diagnostic::new(Code::W0301, Pos::START, "y");
        assert_eq!(validate_line(&[]), "valid");
        assert_eq!(validate_line(std::slice::from_ref(&w)), "valid, 1 warning");
        assert_eq!(
            validate_line(&[e.clone(), e, w.clone(), w]),
            "invalid: 2 errors, 2 warnings"
        );
    }

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc<d>"), "a\\|b\\nc&lt;d&gt;");
    }

    #[test]
    fn the_footer_names_environment_commit_and_run() {
        let c = Context {
            environment: Environment::Preview { pull_request: 2 },
            sha: Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821"),
            config: "infra/telbase.yaml",
            run_url: Some("https://github.com/a/b/actions/runs/1"),
        };
        assert_eq!(
            c.footer(true),
            "\n<sub>Telbase · preview of #2 · commit `ec26c3e` · `infra/telbase.yaml` · [workflow run](https://github.com/a/b/actions/runs/1) · updated in place on every run</sub>\n"
        );
    }
}
