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
        let _ = writeln!(out, "{:>3} {}  ({verb})", marker(step.action), step.key);
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
    let s = plan.summary();
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to update, {} to replace, {} to delete, {} unchanged{}.",
        s.create,
        s.update,
        s.replace,
        s.delete,
        s.unchanged,
        if s.held_back > 0 {
            format!(", {} held back", s.held_back)
        } else {
            String::new()
        }
    );
    out
}
