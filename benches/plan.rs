//! Planner speed (`cargo bench --bench plan`): 10,000 and 100,000 resources, 10% of them
//! drifted, 5% missing and 2% gone from the file. Issue target: the cost grows linearly
//! (100k at most 12× the 10k time). States are built directly: the YAML budgets rightly
//! refuse files this large.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use telbase::model::{
    ActualState, CloudRunService, DesiredState, DnsRecord, EnvSource, EnvVar, Environment, Kind,
    Observed, ReconcilePolicy, Resource, ResourceKey, ResourceSpec, Secret,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn states(n: usize) -> (DesiredState, ActualState) {
    let mut resources = BTreeMap::new();
    // Groups of four: secret → service → DNS record, and a standalone secret.
    for g in 0..n / 4 {
        let secret = ResourceKey::new(Kind::Secret, format!("p-app{g}-DB"));
        let service = ResourceKey::new(Kind::CloudRunService, format!("p-app{g}"));
        let dns = ResourceKey::new(Kind::DnsRecord, format!("app{g}.example.com"));
        let other = ResourceKey::new(Kind::Secret, format!("p-app{g}-TOKEN"));
        let secret_spec = ResourceSpec::Secret(Secret {
            env: "DB".into(),
            source: EnvSource::Plain("x".into()),
        });
        for (key, spec, deps) in [
            (secret.clone(), secret_spec.clone(), vec![]),
            (other.clone(), secret_spec, vec![]),
            (
                service.clone(),
                ResourceSpec::CloudRunService(CloudRunService {
                    region: "us-central1".into(),
                    image: format!("ghcr.io/p/app{g}:${{git.sha}}"),
                    port: 8080,
                    command: vec![],
                    args: vec![],
                    cpu: "1".into(),
                    memory_mib: 512,
                    min_instances: 0,
                    max_instances: 10,
                    concurrency: 80,
                    probe: None,
                    public: true,
                    env: vec![EnvVar {
                        name: "MODE".into(),
                        source: EnvSource::Plain("prod".into()),
                    }],
                }),
                vec![secret.clone(), other.clone()],
            ),
            (
                dns.clone(),
                ResourceSpec::DnsRecord(DnsRecord {
                    zone: "example.com".into(),
                    hostname: dns.name.clone(),
                    proxied: true,
                    target: service.clone(),
                }),
                vec![service.clone()],
            ),
        ] {
            resources.insert(
                key.clone(),
                Resource {
                    key,
                    origin: format!("apps.app{g}"),
                    spec,
                    depends_on: deps.into_iter().collect::<BTreeSet<_>>(),
                    allow_data_loss: false,
                },
            );
        }
    }
    let desired = DesiredState {
        project: "p".into(),
        environment: Environment::Production,
        reconcile: ReconcilePolicy {
            drift_cron: "*/15 * * * *".into(),
            on_drift: "correct",
            prune: true,
            preview_ttl_seconds: None,
            preview_max: None,
            production_branch: "main".into(),
        },
        resources,
    };
    let mut actual = ActualState::default();
    for (i, r) in desired.resources.values().enumerate() {
        if i % 20 == 7 {
            continue; // missing: create
        }
        let mut spec = r.spec.clone();
        if i % 10 == 3
            && let ResourceSpec::CloudRunService(s) = &mut spec
        {
            s.max_instances = 20; // drifted: update
        }
        if i % 10 == 5
            && let ResourceSpec::DnsRecord(d) = &mut spec
        {
            d.proxied = false;
        }
        actual.resources.insert(
            r.key.clone(),
            Observed {
                key: r.key.clone(),
                spec,
                provider_id: format!("id{i}"),
                deletion_allowed: false,
            },
        );
        if i % 50 == 11 {
            let k = ResourceKey::new(r.key.kind, format!("{}-old", r.key.name));
            actual.resources.insert(
                k.clone(),
                Observed {
                    key: k,
                    spec: r.spec.clone(),
                    provider_id: format!("old{i}"),
                    deletion_allowed: false,
                },
            );
        }
    }
    (desired, actual)
}

fn planner(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    group.sample_size(10);
    for n in [10_000usize, 100_000] {
        let (desired, actual) = states(n);
        assert!(telbase::plan::plan(&desired, &actual).has_changes());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                black_box(telbase::plan::plan(black_box(&desired), black_box(&actual)))
                    .steps
                    .len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
