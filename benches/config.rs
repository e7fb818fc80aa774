//! Speed of the config pipeline (criterion; `cargo bench --bench config`).
//!
//! - `pipeline/1000-apps-1000-dbs`: parse + validate + lower of a generated config with 1,000
//!   apps and 1,000 databases (target: median under 50 ms).
//! - `pipeline/largest-example`: the same on `examples/monorepo`, for the side-by-side with
//!   check-jsonschema (see `benches/vs-check-jsonschema.sh`).
//! - `hostile/<case>`: how fast each hostile input is rejected (target: under 100 ms).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use telbase::config;
use telbase::model::Environment;

// Measure with the allocator the `telbase` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/generate.rs"]
mod generate;
#[path = "../tests/common/hostile_cases.rs"]
mod hostile_cases;

fn pipeline(c: &mut Criterion) {
    let big = generate::large_config(1000, 1000);
    assert!(
        config::check_str(&big).is_valid(),
        "the generated config must be valid"
    );
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(30);
    group.bench_function("1000-apps-1000-dbs", |b| {
        b.iter(|| {
            let (state, _) =
                config::load_str(black_box(&big), Environment::Production).expect("valid");
            black_box(state.resources.len())
        })
    });
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/monorepo/telbase.yaml"
    ))
    .expect("examples/monorepo");
    group.bench_function("largest-example", |b| {
        b.iter(|| config::load_str(black_box(&example), Environment::Production).is_ok())
    });
    group.finish();

    // Where the time goes, stage by stage, on the same input.
    let mut group = c.benchmark_group("stages");
    group.sample_size(20);
    // The peer: serde-saphyr reading the same text into nothing at all, the floor any
    // pipeline built on it pays.
    group.bench_function("serde-saphyr-floor", |b| {
        b.iter(|| serde_saphyr::from_str::<serde::de::IgnoredAny>(black_box(&big)).is_ok())
    });
    group.bench_function("yaml-parse", |b| {
        b.iter(|| config::yaml::parse(black_box(&big)).is_ok())
    });
    let root = config::yaml::parse(&big).expect("parses");
    group.bench_function("structural", |b| {
        b.iter(|| {
            config::structural::check(black_box(&root))
                .diagnostics
                .len()
        })
    });
    let sound = config::structural::check(&root).sound.expect("sound");
    group.bench_function("typed", |b| {
        b.iter(|| serde_json::from_value::<config::ConfigFile>(black_box(sound.clone())).is_ok())
    });
    let cfg: config::ConfigFile = serde_json::from_value(sound).expect("typed");
    let defined = config::semantic::Defined::from_tree(&root);
    group.bench_function("semantic", |b| {
        b.iter(|| config::semantic::check(black_box(&root), &cfg, &defined).len())
    });
    group.bench_function("lower", |b| {
        b.iter(|| {
            config::lower::lower(black_box(&cfg), Environment::Production)
                .resources
                .len()
        })
    });
    group.finish();
}

fn hostile(c: &mut Criterion) {
    let mut group = c.benchmark_group("hostile");
    group.sample_size(20);
    for (name, bytes, expected) in hostile_cases::generated() {
        group.bench_with_input(BenchmarkId::from_parameter(&name), &bytes, |b, bytes| {
            b.iter(|| {
                let checked = config::check_bytes(black_box(bytes));
                assert!(!checked.is_valid());
                black_box(checked.diagnostics.len())
            })
        });
        let _ = expected;
    }
    group.finish();
}

criterion_group!(benches, pipeline, hostile);
criterion_main!(benches);
