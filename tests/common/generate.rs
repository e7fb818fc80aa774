//! A large, valid, deterministic telbase.yaml for benchmarks and scale tests: `apps` apps and
//! `dbs` databases, mixing every provider, with domains, policies and `from:` references.

pub fn large_config(apps: usize, dbs: usize) -> String {
    let mut s = String::with_capacity(apps * 200 + dbs * 100);
    s.push_str("version: 1\nproject: big\n");
    s.push_str("environments:\n  preview: { access: staff, ttl: 3d }\n");
    s.push_str("edge:\n  zone: big.example.com\n  hsts: { max_age: 365d, preload: true }\n");
    s.push_str("access:\n  staff: { login: [google, github], allow_domains: [example.com], session: 12h }\n");
    s.push_str("apps:\n");
    for i in 0..apps {
        if i % 2 == 0 {
            s.push_str(&format!(
                "  w{i}:\n    framework: nextjs\n    root: apps/w{i}\n    domains: [w{i}.big.example.com]\n    access: staff\n    env:\n      NEXT_PUBLIC_N: \"{i}\"\n      DATABASE_URL: {{ from: databases.d{}.url }}\n",
                i % dbs.max(1)
            ));
        } else {
            s.push_str(&format!(
                "  c{i}:\n    runtime: docker\n    image: ghcr.io/big/c{i}:${{git.sha}}\n    region: us-central1\n    resources: {{ cpu: 1, memory: 512Mi }}\n    scaling: {{ min: 0, max: 10 }}\n    health: {{ path: /healthz, interval: 10s, timeout: 2s }}\n    env:\n      DATABASE_URL: {{ from: databases.d{}.url }}\n",
                i % dbs.max(1)
            ));
        }
    }
    s.push_str("databases:\n");
    for i in 0..dbs {
        match i % 3 {
            0 => s.push_str(&format!("  d{i}: {{ engine: postgres, region: aws-us-east-2, branch_per_preview: true }}\n")),
            1 => s.push_str(&format!("  d{i}: {{ engine: postgres, provider: cloudsql, region: us-central1, tier: db-custom-1-3840 }}\n")),
            _ => s.push_str(&format!("  d{i}: {{ engine: sqlite, location: aws-us-east-1, branch_per_preview: true }}\n")),
        }
    }
    s.push_str("reconcile:\n  drift: \"*/10 * * * *\"\n");
    s
}
