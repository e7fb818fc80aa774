//! `telbase exec` against the Go `age -d` (`cargo bench --bench exec`), the speed target of
//! the secrets issue: opening 50 sealed variables and starting a command costs no more than
//! twice one `age -d` process opening one value.
//!
//! - `telbase exec --identity key -- true` with 50 environment variables, each an armored
//!   value sealed to one X25519 recipient (what `telbase secrets seal` prints), as a project
//!   would have them;
//! - `age -d -i key value.age` on one such value, output discarded.
//!
//! Both run in the same loop, interleaved (alternating which goes first), so a busy machine
//! slows both alike; we report the medians and their ratio. For the profile, also: `telbase
//! exec -- true` with nothing sealed (process start, argument parsing and the exec of
//! `true`: the fixed cost), and opening the 50 values in-process on one thread and on two
//! (what the parallel opening buys), and the whole run pinned to one core and to two. A plain harness rather than criterion: each sample is
//! a process start, and the ratio of two interleaved medians is the number that matters.
//!
//! Skips with a reason when the Go `age` is not installed.

use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;

const VARS: usize = 50;
const ROUNDS: usize = 200;

fn main() {
    if Command::new("age").arg("--version").output().is_err() {
        eprintln!("SKIPPED exec bench: the Go `age` is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public();
    let key = dir.path().join("key");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).expect("write key");
    let mut sealed = Vec::with_capacity(VARS);
    for i in 0..VARS {
        let mut out = Vec::new();
        let plain = format!("value-{i:02}-{}", "x".repeat(24));
        telbase::secrets::seal(plain.as_bytes(), std::slice::from_ref(&recipient), &mut out)
            .expect("seal");
        sealed.push((
            OsString::from(format!("SECRET_{i:02}")),
            OsString::from(String::from_utf8(out).expect("armor is text")),
        ));
    }
    let one = dir.path().join("value.age");
    std::fs::write(&one, sealed[0].1.as_encoded_bytes()).expect("write value");

    let telbase_exec = |with_values: bool, cmd: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_telbase"));
        c.args(["exec", "--identity"])
            .arg(&key)
            .arg("--")
            .args(cmd)
            .env_remove("TELBASE_IDENTITY")
            .env_remove("TELBASE_IDENTITY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if with_values {
            c.envs(sealed.iter().map(|(k, v)| (k, v)));
        }
        c
    };
    let age_d = || {
        let mut c = Command::new("age");
        c.arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(&one)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };

    // Both must really open what they are timed on.
    let check = telbase_exec(true, &["sh", "-c", r#"printf %s "$SECRET_00|$SECRET_49""#])
        .stdout(Stdio::piped())
        .output()
        .expect("run telbase");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        format!("value-00-{0}|value-49-{0}", "x".repeat(24)),
        "telbase exec did not open the values"
    );
    let check = age_d().stdout(Stdio::piped()).output().expect("run age");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        format!("value-00-{}", "x".repeat(24))
    );

    let time = |mut c: Command| {
        let t = Instant::now();
        let s = c.status().expect("run");
        assert!(s.success());
        t.elapsed()
    };
    // Warm the page cache and the dynamic loader for both binaries.
    for _ in 0..10 {
        time(telbase_exec(true, &["true"]));
        time(age_d());
    }
    let (mut ours, mut theirs, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            ours.push(time(telbase_exec(true, &["true"])));
            theirs.push(time(age_d()));
        } else {
            theirs.push(time(age_d()));
            ours.push(time(telbase_exec(true, &["true"])));
        }
        bare.push(time(telbase_exec(false, &["true"])));
    }

    // What the second thread buys end to end: the same run under `taskset` on one core
    // (`available_parallelism` follows the affinity mask, so the values open sequentially)
    // and on both; both pay taskset's own exec, so only the difference matters.
    let taskset = Command::new("taskset").arg("-V").output().is_ok();
    let (mut one_core, mut two_cores) = (Vec::new(), Vec::new());
    if taskset {
        let pinned = |cores: &str| {
            let exec = telbase_exec(true, &["true"]);
            let mut c = Command::new("taskset");
            c.args(["-c", cores])
                .arg(exec.get_program())
                .args(exec.get_args())
                .envs(sealed.iter().map(|(k, v)| (k, v)))
                .env_remove("TELBASE_IDENTITY")
                .env_remove("TELBASE_IDENTITY_FILE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c
        };
        for round in 0..ROUNDS / 2 {
            let order = if round % 2 == 0 {
                ["0", "0,1"]
            } else {
                ["0,1", "0"]
            };
            for cores in order {
                let d = time(pinned(cores));
                if cores == "0" {
                    one_core.push(d);
                } else {
                    two_cores.push(d);
                }
            }
        }
    }

    // In-process: the opening alone, sequential and on two threads.
    let ids = std::slice::from_ref(&id);
    let (mut one_thread, mut two_threads) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS / 4 {
        for (threads, out) in [(1, &mut one_thread), (2, &mut two_threads)] {
            let t = Instant::now();
            let opened = telbase::secrets::inject::open_vars_in(&sealed, ids, threads);
            out.push(t.elapsed());
            assert_eq!(opened.map(|o| o.len()).unwrap_or(0), VARS);
        }
    }

    let (o, t) = (median(&mut ours), median(&mut theirs));
    println!("exec bench ({ROUNDS} interleaved rounds; medians):");
    println!("  telbase exec, {VARS} sealed variables -- true   {o:>10.3?}");
    println!("  age -d, one value                             {t:>10.3?}");
    println!(
        "  ratio                                         {:>10.2}  (target <= 2)",
        o.as_secs_f64() / t.as_secs_f64()
    );
    println!("profile:");
    println!(
        "  telbase exec, nothing sealed -- true          {:>10.3?}",
        median(&mut bare)
    );
    println!(
        "  open {VARS} values in-process, 1 thread         {:>10.3?}",
        median(&mut one_thread)
    );
    println!(
        "  open {VARS} values in-process, 2 threads        {:>10.3?}",
        median(&mut two_threads)
    );
    if taskset {
        println!(
            "  taskset -c 0 telbase exec ({VARS} values)       {:>10.3?}",
            median(&mut one_core)
        );
        println!(
            "  taskset -c 0,1 telbase exec ({VARS} values)     {:>10.3?}",
            median(&mut two_cores)
        );
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
