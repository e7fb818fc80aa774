//! Plan rendering for terminals: one line per resource with a marker (`+` create, `~` update,
//! `-/+` replace, `-` delete), the changed fields under it, what was held back and why, and a
//! summary line. Unchanged resources are counted, not listed.

use std::fmt::Write as _;

use serde_json::Value as J;

use super::{Action, Plan};

fn marker(a: Action) -> &'static str {
    match a {
        Action::Create => "+",
        Action::Update => "~",
        Action::Replace => "-/+",
        Action::Delete => "-",
        Action::NoOp => " ",
    }
}

fn value(v: &Option<J>) -> String {
    match v {
        None => "(unset)".into(),
        Some(J::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

pub fn render_text(plan: &Plan) -> String {
    render_text_styled(plan, false)
}

/// ANSI colour for a marker: green create, yellow update, magenta replace, red delete.
fn paint(a: Action, text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match a {
        Action::Create => "32",
        Action::Update => "33",
        Action::Replace => "35",
        Action::Delete => "31",
        Action::NoOp => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The terminal rendering, coloured when `colour` (the CLI decides: a TTY and no
/// `NO_COLOR`).
pub fn render_text_styled(plan: &Plan, colour: bool) -> String {
    let mut out = String::new();
    let changing: Vec<_> = plan
        .steps
        .iter()
        .filter(|s| s.action != Action::NoOp)
        .collect();
    if changing.is_empty() && plan.held_back.is_empty() {
        let _ = writeln!(
            out,
            "{}: no changes. The providers match telbase.yaml.",
            plan.project
        );
        return out;
    }
    let _ = writeln!(out, "{}: planned changes\n", plan.project);
    if changing.is_empty() {
        let _ = writeln!(out, "  nothing to apply");
    }
    for step in changing {
        let verb = match step.action {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::NoOp => "",
        };
        let _ = writeln!(
            out,
            "{} {}  ({verb})",
            paint(step.action, &format!("{:>3}", marker(step.action)), colour),
            step.key
        );
        for c in &step.changes {
            let _ = writeln!(
                out,
                "      {}: {} → {}{}",
                c.path,
                value(&c.before),
                value(&c.after),
                if c.forces_replacement {
                    "  (forces replacement)"
                } else {
                    ""
                }
            );
        }
    }
    if !plan.held_back.is_empty() {
        let _ = writeln!(out, "\nheld back:");
        for h in &plan.held_back {
            let _ = writeln!(out, "  ! {}: {}", h.key, h.reason);
        }
    }
    let (changes, rest) = summary_parts(plan);
    let _ = writeln!(out, "\nPlan: {changes}, {rest}.");
    out
}

/// "N to create, N to update, N to replace, N to delete" and "N unchanged[, N held back]".
fn summary_parts(plan: &Plan) -> (String, String) {
    let s = plan.summary();
    let changes = format!(
        "{} to create, {} to update, {} to replace, {} to delete",
        s.create, s.update, s.replace, s.delete
    );
    let mut rest = format!("{} unchanged", s.unchanged);
    if s.held_back > 0 {
        rest.push_str(&format!(", {} held back", s.held_back));
    }
    (changes, rest)
}

/// GitHub's limit on an issue or pull-request comment body, in characters.
pub const GITHUB_COMMENT_LIMIT: usize = 65_536;

/// Markdown for a pull-request comment: the summary first, each resource's changes folded
/// in `<details>`, and never longer than `limit` characters; when resources must be left out,
/// the comment says how many and where to see the full plan.
pub fn render_markdown(plan: &Plan, limit: usize) -> String {
    render_markdown_noting(plan, limit, "Run `telbase plan` for the full plan.")
}

/// `render_markdown`, with `full_plan_at` (markdown) ending the note on what was cut: where
/// the reader finds the whole plan (`telbase ci` links the workflow run's job summary).
pub fn render_markdown_noting(plan: &Plan, limit: usize, full_plan_at: &str) -> String {
    let mut head = String::new();
    let _ = writeln!(head, "### Telbase plan for `{}`\n", plan.project);
    if !plan.has_changes() && plan.held_back.is_empty() {
        let _ = writeln!(head, "No changes. The providers match `telbase.yaml`.");
        return head;
    }
    let (changes, rest) = summary_parts(plan);
    let _ = writeln!(head, "**{changes}**, {rest}.\n");
    let mut blocks: Vec<String> = Vec::new();
    for h in &plan.held_back {
        blocks.push(format!(
            "- :warning: `{}` held back: {}\n",
            h.key,
            md_escape(&h.reason)
        ));
    }
    for step in plan.steps.iter().filter(|s| s.action != Action::NoOp) {
        let mut b = String::new();
        if step.changes.is_empty() {
            let _ = writeln!(b, "- `{}` `{}`", marker(step.action), step.key);
        } else {
            let _ = writeln!(
                b,
                "<details><summary><code>{}</code> <code>{}</code> ({} field{})</summary>\n\n```diff",
                html_escape(marker(step.action)),
                html_escape(&step.key.to_string()),
                step.changes.len(),
                if step.changes.len() == 1 { "" } else { "s" }
            );
            for c in &step.changes {
                let _ = writeln!(b, "- {}: {}", c.path, fence_safe(&value(&c.before)));
                let _ = writeln!(
                    b,
                    "+ {}: {}{}",
                    c.path,
                    fence_safe(&value(&c.after)),
                    if c.forces_replacement {
                        "  # forces replacement"
                    } else {
                        ""
                    }
                );
            }
            let _ = writeln!(b, "```\n</details>");
        }
        blocks.push(b);
    }
    let mut out = head;
    // A running count: recounting `out` for every block made a large plan quadratic.
    let mut used = out.chars().count();
    let total = blocks.len();
    for (i, b) in blocks.into_iter().enumerate() {
        let len = b.chars().count();
        // Keep room for the note that says what was cut.
        if used + len + 200 > limit {
            let _ = writeln!(
                out,
                "\n_{} more item{} not shown: the comment would exceed GitHub's size limit. {full_plan_at}_",
                total - i,
                if total - i == 1 { "" } else { "s" }
            );
            break;
        }
        used += len;
        out.push_str(&b);
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('<', "&lt;").replace('>', "&gt;")
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A value inside a ```diff fence must not close the fence.
fn fence_safe(s: &str) -> String {
    s.replace("```", "ˋˋˋ")
}

/// Version of the JSON plan format; bumped on any incompatible change (docs/plan-json.md).
pub const PLAN_JSON_VERSION: u32 = 1;

/// The plan as JSON: `{format_version, project, summary, steps, held_back}`; unchanged
/// resources are included with action `noop` so tools can see the whole picture.
pub fn render_json(plan: &Plan) -> String {
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        format_version: u32,
        project: &'a str,
        has_changes: bool,
        summary: super::Summary,
        steps: &'a [super::Step],
        held_back: &'a [super::HeldBack],
    }
    let doc = Doc {
        format_version: PLAN_JSON_VERSION,
        project: &plan.project,
        has_changes: plan.has_changes(),
        summary: plan.summary(),
        steps: &plan.steps,
        held_back: &plan.held_back,
    };
    // Plain data with string keys: serialization cannot fail.
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
