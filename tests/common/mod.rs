//! Helpers shared by the integration tests: running the real binary, and golden files.

#![allow(dead_code)]

pub mod emu;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
