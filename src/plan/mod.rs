//! The planner: a pure, deterministic function of (`DesiredState`, `ActualState`) → `Plan`.
//!
//! It proposes changes and changes nothing (as in omicron's reconfigurator): for every
//! resource one step, NoOp, Create, Update with field-level changes, Replace when a field the
//! provider cannot change in place differs, or Delete for what Telbase owns but the file no
//! longer has. Deletions need `prune: true`, and resources that hold data also need
//! `allow_data_loss`; anything the rules refuse is listed as held back rather than silently
//! dropped. Comparison happens on normalized specs (providers' `map.rs` fill defaults and
//! order lists), so a reordered list or a server default is never a change. Secret values
//! never appear: sealed values serialize as fingerprints and `from:` values as references.
//! No I/O, no clock, no environment.

mod render;

use serde::Serialize;
use serde_json::Value as J;

use crate::model::{
    ActualState, DesiredState, Kind, Observed, Resource, ResourceKey, ResourceSpec,
};

pub use render::{
    GITHUB_COMMENT_LIMIT, PLAN_JSON_VERSION, render_json, render_markdown, render_markdown_noting,
    render_text, render_text_styled,
};

/// What the plan does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    NoOp,
    Create,
    Update,
    Replace,
    Delete,
}

/// One changed field, by dotted path inside the spec.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    /// Absent when the field is new.
    pub before: Option<J>,
    /// Absent when the field goes away.
    pub after: Option<J>,
    /// The provider cannot change this field in place.
    pub forces_replacement: bool,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub key: ResourceKey,
    pub action: Action,
    pub changes: Vec<FieldChange>,
}

/// A change the rules hold back, with the reason and how to allow it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldBack {
    pub key: ResourceKey,
    pub wanted: Action,
    pub reason: String,
}

/// The plan: steps in an order the executor can follow (creates and updates after what they
/// depend on, deletions after everything else, dependents first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub project: String,
    pub steps: Vec<Step>,
    pub held_back: Vec<HeldBack>,
}

/// Counts by action, for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub held_back: usize,
}

impl Plan {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            held_back: self.held_back.len(),
            ..Summary::default()
        };
        for step in &self.steps {
            match step.action {
                Action::NoOp => s.unchanged += 1,
                Action::Create => s.create += 1,
                Action::Update => s.update += 1,
                Action::Replace => s.replace += 1,
                Action::Delete => s.delete += 1,
            }
        }
        s
    }

    /// Whether applying the plan would change anything. Destructures the summary so a new
    /// kind of action forces a decision here.
    pub fn has_changes(&self) -> bool {
        let Summary {
            create,
            update,
            replace,
            delete,
            unchanged: _,
            held_back: _,
        } = self.summary();
        create + update + replace + delete > 0
    }
}

/// Fields (dotted paths inside a spec) that the provider cannot change in place.
fn immutable_fields(spec: &ResourceSpec) -> &'static [&'static str] {
    match spec {
        ResourceSpec::CloudRunService(_) => &["region"],
        ResourceSpec::NeonProject(_) => &["region", "pg_version"],
        ResourceSpec::NeonBranch(_) => &["project", "parent"],
        ResourceSpec::CloudSqlInstance(_) => &["region"],
        ResourceSpec::TursoGroup(_) => &["location"],
        ResourceSpec::TursoDatabase(_) => &["group", "seed_from"],
        ResourceSpec::VercelDomain(_) | ResourceSpec::CloudRunDomainMapping(_) => &["target"],
        ResourceSpec::DnsRecord(_) => &["zone"],
        ResourceSpec::NeonDatabase(_) | ResourceSpec::CloudSqlDatabase(_) => &["database"],
        ResourceSpec::CloudSqlUser { .. } => &["user"],
        _ => &[],
    }
}

/// Fields where leaving the setting out of the file means "whatever the provider chose":
/// Vercel fills in a Node.js version, and without a git checkout there is no commit or
/// repository to pin. A value the file does set is compared as usual.
fn no_opinion_when_unset(spec: &ResourceSpec) -> &'static [&'static str] {
    match spec {
        ResourceSpec::VercelProject(_) => &["node_version", "production_commit", "git_repository"],
        _ => &[],
    }
}

/// Compare two specs as JSON; null and absent are the same (an unset optional setting).
fn diff(before: &J, after: &J, path: &mut Vec<String>, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (J::Object(b), J::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                path.push(k.clone());
                diff(
                    b.get(k).unwrap_or(&J::Null),
                    a.get(k).unwrap_or(&J::Null),
                    path,
                    out,
                );
                path.pop();
            }
        }
        (b, a) if b == a => {}
        (b, a) => out.push(FieldChange {
            path: path.join("."),
            before: (!b.is_null()).then(|| b.clone()),
            after: (!a.is_null()).then(|| a.clone()),
            forces_replacement: false,
        }),
    }
}

/// The verdict on one desired resource.
enum Compared {
    Step(Action, Vec<FieldChange>),
    /// A replacement the rules refuse, with the reason.
    HeldBack(&'static str),
}

/// Compare one desired resource with what the provider has (if anything).
fn compare(res: &Resource, observed: Option<&Observed>) -> Compared {
    let Some(observed) = observed else {
        return Compared::Step(Action::Create, Vec::new());
    };
    // Equal typed specs serialize equally, so most resources (unchanged) skip the JSON
    // comparison. Unequal ones may still compare equal as JSON (fields that are not
    // compared, null versus absent), which the diff below settles.
    if observed.spec == res.spec {
        return Compared::Step(Action::NoOp, Vec::new());
    }
    // Specs serialize infallibly: plain data, string keys.
    let before = serde_json::to_value(&observed.spec).unwrap_or(J::Null);
    let after = serde_json::to_value(&res.spec).unwrap_or(J::Null);
    let mut changes = Vec::new();
    diff(&before, &after, &mut Vec::new(), &mut changes);
    let no_opinion = no_opinion_when_unset(&res.spec);
    changes.retain(|c| c.after.is_some() || !no_opinion.contains(&c.path.as_str()));
    let immutable = immutable_fields(&res.spec);
    for c in &mut changes {
        let top = c.path.split('.').next().unwrap_or("");
        c.forces_replacement = immutable.contains(&top);
    }
    let replace = changes.iter().any(|c| c.forces_replacement);
    let action = match (changes.is_empty(), replace) {
        (true, _) => Action::NoOp,
        (false, false) => Action::Update,
        (false, true) => Action::Replace,
    };
    if action == Action::Replace && res.spec.holds_data() && !res.allow_data_loss {
        return Compared::HeldBack(
            "replacing it would destroy its data; set `allow_data_loss: true` on the database to allow it",
        );
    }
    Compared::Step(action, changes)
}

/// Plan the changes that make `actual` match `desired`.
pub fn plan(desired: &DesiredState, actual: &ActualState) -> Plan {
    // One pass in key order, walking both maps side by side (they are sorted the same
    // way): compare each resource, and copy out its key and its dependencies' keys, so each
    // resource's memory is visited once, while it is in cache. On large states memory
    // traffic, not the algorithm (linear), is the cost: everything after this pass works on
    // the planner's own dense vectors, never on the states again. Keys are flat values
    // (inline names), so copying them is cheap.
    let n = desired.resources.len();
    let mut keys: Vec<ResourceKey> = Vec::with_capacity(n);
    let mut verdicts: Vec<Option<Compared>> = Vec::with_capacity(n);
    let mut wanted: Vec<(ResourceKey, u32)> = Vec::with_capacity(n);
    // What Telbase owns but the file no longer has, with its teardown rank.
    let mut gone: Vec<(u8, &Observed)> = Vec::new();
    let mut observed = actual.resources.values().peekable();
    for (i, res) in desired.resources.values().enumerate() {
        wanted.extend(res.depends_on.iter().map(|d| (d.clone(), i as u32)));
        while let Some(o) = observed.next_if(|o| o.key < res.key) {
            gone.push((o.key.kind.teardown_rank(), o));
        }
        let matched = observed.next_if(|o| o.key == res.key);
        verdicts.push(Some(compare(res, matched)));
        keys.push(res.key.clone());
    }
    gone.extend(observed.map(|o| (o.key.kind.teardown_rank(), o)));
    let order = {
        // The index points into `keys`, a few MB even for 100k resources, so confirming a
        // hash match reads there rather than somewhere in the states.
        let mut index = crate::model::KeyIndex::default();
        index.reserve(n);
        index.extend(keys.iter().zip(0u32..));
        let edges: Vec<(u32, u32)> = wanted
            .iter()
            .filter_map(|(d, i)| index.get(d).map(|&j| (j, *i)))
            .collect();
        crate::model::dependency_order(n, &edges)
    };
    drop(wanted);

    let mut steps = Vec::with_capacity(n);
    let mut held_back = Vec::new();
    for i in order {
        let Some(c) = verdicts[i as usize].take() else {
            continue;
        };
        // Each position comes out of the order once, so its key can be moved out.
        let key = std::mem::replace(&mut keys[i as usize], ResourceKey::new(Kind::Secret, ""));
        match c {
            Compared::Step(action, changes) => steps.push(Step {
                key,
                action,
                changes,
            }),
            Compared::HeldBack(reason) => held_back.push(HeldBack {
                key,
                wanted: Action::Replace,
                reason: reason.into(),
            }),
        }
    }

    // What Telbase owns but the file no longer has: dependents first, by teardown rank and
    // then key. `gone` is in key order already, so a stable pass per rank is enough (and
    // linear: there are a handful of ranks).
    let max_rank = gone.iter().map(|&(r, _)| r).max().unwrap_or(0);
    let gone = (0..=max_rank).flat_map(|rank| {
        gone.iter()
            .filter(move |&&(r, _)| r == rank)
            .map(|&(_, o)| o)
    });
    let preview = matches!(
        desired.environment,
        crate::model::Environment::Preview { .. }
    );
    for o in gone {
        if preview && o.key.kind.shared_with_production() {
            // Production's, seen from the preview: never the preview's to delete.
            continue;
        }
        if !desired.reconcile.prune {
            held_back.push(HeldBack {
                key: o.key.clone(),
                wanted: Action::Delete,
                reason: "no longer in telbase.yaml; `reconcile.prune` is off".into(),
            });
        } else if o.spec.holds_data() && !o.deletion_allowed {
            held_back.push(HeldBack {
                key: o.key.clone(),
                wanted: Action::Delete,
                reason: "it holds data; apply it once with `allow_data_loss: true` before removing it from the file".into(),
            });
        } else {
            steps.push(Step {
                key: o.key.clone(),
                action: Action::Delete,
                changes: Vec::new(),
            });
        }
    }
    Plan {
        project: desired.project.clone(),
        steps,
        held_back,
    }
}
