//! The planner against hand-made actual states (golden renderings for create, update,
//! replace, delete, no-op, drift and held-back cases) and a property: apply a plan to the
//! actual state, plan again, and nothing is left to do.

mod common;

use proptest::prelude::*;
use telbase::config;
use telbase::model::{
    ActualState, DesiredState, Environment, Kind, Observed, ResourceKey, ResourceSpec,
};
use telbase::plan::{self, Action};

use common::{assert_golden, root};

fn desired(example: &str) -> DesiredState {
    let text =
        std::fs::read_to_string(root().join(format!("examples/{example}/telbase.yaml"))).unwrap();
    config::load_str(&text, Environment::Production)
        .expect("valid example")
        .0
}

/// The actual state a perfect apply of `d` leaves behind.
fn converged(d: &DesiredState) -> ActualState {
    ActualState {
        resources: d
            .resources
            .values()
            .map(|r| {
                (
                    r.key.clone(),
                    Observed {
                        key: r.key.clone(),
                        spec: r.spec.clone(),
                        provider_id: format!("id-{}", r.key.name),
                        deletion_allowed: r.allow_data_loss,
                    },
                )
            })
            .collect(),
    }
}

fn key(kind: Kind, name: &str) -> ResourceKey {
    ResourceKey::new(kind, name)
}

/// Google's kinds beyond the renderings above: in-place updates of a Cloud SQL instance and a
/// Secret Manager secret, and with prune on the deletion of a Cloud Run service, its domain
/// mapping, a secret and a Cloud SQL user, while a Cloud SQL database is held back.
#[test]
fn golden_google_update_and_delete() {
    let mut d = desired("django-cloudsql");
    d.reconcile.prune = true;
    let mut actual = converged(&d);
    for o in actual.resources.values_mut() {
        match &mut o.spec {
            ResourceSpec::CloudSqlInstance(i) => {
                i.tier = "db-f1-micro".into();
                i.backups = false;
            }
            ResourceSpec::Secret(s) if s.env == "DATABASE_URL" => {
                s.source = telbase::model::EnvSource::Plain("typed by hand".into())
            }
            _ => {}
        }
    }
    for (kind, name) in [
        (Kind::CloudRunService, "ledger-worker"),
        (Kind::CloudRunDomainMapping, "old.example.org"),
        (Kind::Secret, "ledger-worker-TOKEN"),
        (Kind::CloudSqlUser, "ledger-reports"),
        (Kind::CloudSqlDatabase, "ledger-reports"),
    ] {
        let template = actual
            .resources
            .values()
            .find(|o| o.key.kind == kind)
            .unwrap()
            .clone();
        actual.resources.insert(
            key(kind, name),
            Observed {
                key: key(kind, name),
                ..template
            },
        );
    }
    let p = plan::plan(&d, &actual);
    let s = p.summary();
    assert_eq!((s.update, s.delete, s.held_back), (2, 4, 1), "{s:?}");
    assert_golden(
        &root().join("tests/golden/plan/google-update-delete.txt"),
        &plan::render_text(&p),
    );
}

#[test]
fn golden_renderings() {
    let d = desired("django-cloudsql");

    // Nothing exists yet: everything is created, in dependency order.
    let p = plan::plan(&d, &ActualState::default());
    assert!(p.steps.iter().all(|s| s.action == Action::Create));
    assert_golden(
        &root().join("tests/golden/plan/create.txt"),
        &plan::render_text(&p),
    );

    // Converged: no changes.
    let actual = converged(&d);
    let p = plan::plan(&d, &actual);
    assert!(!p.has_changes());
    assert_golden(
        &root().join("tests/golden/plan/no-op.txt"),
        &plan::render_text(&p),
    );

    // Drift and edits: someone lowered TLS on the zone and scaled the service; the region of
    // the service moved (replace); the instance's region moved (held back: data).
    let mut drifted = converged(&d);
    for o in drifted.resources.values_mut() {
        match &mut o.spec {
            ResourceSpec::ZoneSettings(z) => z.min_tls_version = "1.0",
            ResourceSpec::CloudRunService(s) => {
                s.max_instances = 3;
                s.region = "europe-west1".into();
            }
            ResourceSpec::CloudSqlInstance(i) => i.region = "europe-west1".into(),
            _ => {}
        }
    }
    let p = plan::plan(&d, &drifted);
    assert_eq!(p.summary().replace, 1);
    assert_eq!(p.summary().update, 1);
    assert_eq!(p.summary().held_back, 1);
    assert_golden(
        &root().join("tests/golden/plan/drift-update-replace.txt"),
        &plan::render_text(&p),
    );
    assert_golden(
        &root().join("tests/golden/plan/drift-update-replace.md"),
        &plan::render_markdown(&p, plan::GITHUB_COMMENT_LIMIT),
    );
    assert_golden(
        &root().join("tests/golden/plan/drift-update-replace.json"),
        &plan::render_json(&p),
    );

    // Resources that left the file: held back while prune is off…
    let mut extra = converged(&d);
    for (kind, name) in [
        (Kind::DnsRecord, "old.example.com"),
        (Kind::CloudSqlInstance, "shop-legacy"),
    ] {
        let template = extra
            .resources
            .values()
            .find(|o| o.key.kind == kind)
            .unwrap()
            .clone();
        extra.resources.insert(
            key(kind, name),
            Observed {
                key: key(kind, name),
                ..template
            },
        );
    }
    let p = plan::plan(&d, &extra);
    assert!(!p.has_changes());
    assert_eq!(p.summary().held_back, 2);
    assert_golden(
        &root().join("tests/golden/plan/delete-prune-off.txt"),
        &plan::render_text(&p),
    );

    // …and with prune on, the DNS record goes but the database instance still needs
    // allow_data_loss.
    let mut pruning = d.clone();
    pruning.reconcile.prune = true;
    let p = plan::plan(&pruning, &extra);
    assert_eq!(p.summary().delete, 1);
    assert_eq!(p.summary().held_back, 1);
    assert_golden(
        &root().join("tests/golden/plan/delete-prune-on.txt"),
        &plan::render_text(&p),
    );
}

#[test]
fn sealed_values_show_only_fingerprints() {
    let d = desired("monorepo");
    let p = plan::plan(&d, &ActualState::default());
    let mut changed = converged(&d);
    for o in changed.resources.values_mut() {
        if let ResourceSpec::CloudRunService(s) = &mut o.spec {
            s.env.clear();
        }
    }
    let p2 = plan::plan(&d, &changed);
    for text in [
        plan::render_text(&p),
        plan::render_text(&p2),
        serde_json::to_string(&p2).unwrap(),
    ] {
        assert!(!text.contains("AGE ENCRYPTED"), "ciphertext in a plan");
    }
    assert!(
        plan::render_text(&p2).contains("sha256:"),
        "{}",
        plan::render_text(&p2)
    );
}

#[derive(Debug, Clone)]
enum Fate {
    Missing,
    Same,
    Drifted,
}

fn drift(spec: &mut ResourceSpec) {
    match spec {
        ResourceSpec::CloudRunService(s) => s.min_instances += 1,
        ResourceSpec::VercelProject(p) => p.build_command = Some("make drift".into()),
        ResourceSpec::ZoneSettings(z) => z.hsts_max_age_seconds = 60,
        ResourceSpec::NeonProject(n) => n.region = "aws-eu-west-2".into(),
        ResourceSpec::TursoGroup(g) => g.location = "aws-eu-west-1".into(),
        ResourceSpec::AccessPolicy(a) => a.session_seconds += 1,
        ResourceSpec::DnsRecord(r) => r.proxied = false,
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Apply the plan (as a perfect executor would), plan again: no changes. Held-back items
    /// stay held back and are never applied behind the rules' back.
    #[test]
    fn apply_then_plan_again_has_no_changes(
        example in prop::sample::select(vec!["nextjs-neon", "django-cloudsql", "go-turso", "monorepo"]),
        fates in prop::collection::vec(prop_oneof![Just(Fate::Missing), Just(Fate::Same), Just(Fate::Drifted)], 64),
        extras in prop::collection::vec(any::<bool>(), 0..4),
        prune in any::<bool>(),
        allow_loss in any::<bool>(),
    ) {
        let mut d = desired(example);
        d.reconcile.prune = prune;
        for r in d.resources.values_mut() {
            r.allow_data_loss = allow_loss && r.spec.holds_data();
        }
        let mut actual = ActualState::default();
        for (i, r) in d.resources.values().enumerate() {
            let mut spec = r.spec.clone();
            match fates[i % fates.len()] {
                Fate::Missing => continue,
                Fate::Same => {}
                Fate::Drifted => drift(&mut spec),
            }
            actual.resources.insert(r.key.clone(), Observed {
                key: r.key.clone(), spec, provider_id: format!("id-{i}"), deletion_allowed: r.allow_data_loss,
            });
        }
        // Resources Telbase owns that the file no longer mentions.
        for (i, deletion_allowed) in extras.iter().enumerate() {
            let template = d.resources.values().nth(i % d.resources.len()).unwrap();
            let k = ResourceKey::new(template.key.kind, format!("{}-gone-{i}", template.key.name));
            actual.resources.insert(k.clone(), Observed {
                key: k, spec: template.spec.clone(), provider_id: format!("gone-{i}"), deletion_allowed: *deletion_allowed,
            });
        }

        let first = plan::plan(&d, &actual);
        for step in &first.steps {
            match step.action {
                Action::NoOp => {}
                Action::Delete => { actual.resources.remove(&step.key); }
                Action::Create | Action::Update | Action::Replace => {
                    let r = &d.resources[&step.key];
                    actual.resources.insert(r.key.clone(), Observed {
                        key: r.key.clone(), spec: r.spec.clone(), provider_id: "applied".into(), deletion_allowed: r.allow_data_loss,
                    });
                }
            }
        }
        let second = plan::plan(&d, &actual);
        prop_assert!(!second.has_changes(), "{}", plan::render_text(&second));
        let held = |p: &plan::Plan| p.held_back.iter().map(|h| h.key.clone()).collect::<Vec<_>>();
        prop_assert_eq!(held(&first), held(&second));
        // The planner is deterministic.
        prop_assert_eq!(&second, &plan::plan(&d, &actual));
    }
}

#[test]
fn markdown_stays_under_the_comment_limit() {
    let d = desired("monorepo");
    let p = plan::plan(&d, &ActualState::default());
    let full = plan::render_markdown(&p, plan::GITHUB_COMMENT_LIMIT);
    assert!(full.starts_with("### Telbase plan for `acme`"));
    assert!(!full.contains("not shown"));
    // A small limit forces a cut: the result fits and says what was left out.
    let n = full.chars().count();
    for limit in [400, n / 2, n - 1] {
        let cut = plan::render_markdown(&p, limit);
        assert!(
            cut.chars().count() <= limit,
            "{} > {limit}",
            cut.chars().count()
        );
        assert!(cut.contains("not shown"), "{cut}");
        assert!(cut.contains("to create"), "the summary comes first");
    }
    let json: serde_json::Value = serde_json::from_str(&plan::render_json(&p)).unwrap();
    assert_eq!(json["format_version"], plan::PLAN_JSON_VERSION);
    assert_eq!(json["has_changes"], true);
    assert_eq!(json["summary"]["create"], d.resources.len());
}
