//! Helpers shared by the integration tests: running the real binary, and golden files.

#![allow(dead_code)]

pub mod emu;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The official provider API descriptions: `../shared/provider-apis/` beside the
/// repository, or wherever `TELBASE_PROVIDER_APIS` points. Missing: a skip with a reason on
/// a laptop, a failure in CI (a green run that checked nothing would be a lie).
pub fn provider_apis() -> Option<PathBuf> {
    let dir = std::env::var_os("TELBASE_PROVIDER_APIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/provider-apis"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "provider API descriptions not found at {}: CI must provide them (set TELBASE_PROVIDER_APIS)",
        dir.display()
    );
    eprintln!(
        "skipping: provider API descriptions not found at {} (set TELBASE_PROVIDER_APIS)",
        dir.display()
    );
    None
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn telbase(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telbase"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run telbase")
}

/// Compare `actual` with the golden file, or rewrite it when `UPDATE_GOLDEN=1`.
pub fn assert_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the output (run with UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// A fresh RSA key (PKCS#8 PEM, as GitHub's download is PKCS#1; octocrab reads both) and
/// its PKCS#1 DER public half. `None` with a printed reason without `openssl`.
pub fn app_key() -> Option<&'static (String, Vec<u8>)> {
    static KEY: OnceLock<Option<(String, Vec<u8>)>> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().ok()?;
        let key = dir.path().join("key.pem");
        let public = dir.path().join("pub.der");
        let run = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        let made = run(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str()?,
        ]) && run(&[
            "rsa",
            "-in",
            key.to_str()?,
            "-pubout",
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            public.to_str()?,
        ]);
        if !made {
            assert!(
                std::env::var_os("CI").is_none(),
                "`openssl` is needed to generate the App's test key, and CI must have it"
            );
            eprintln!("SKIPPED: `openssl` is not available to generate a test RSA key");
            return None;
        }
        Some((
            std::fs::read_to_string(&key).ok()?,
            std::fs::read(&public).ok()?,
        ))
    })
    .as_ref()
}
