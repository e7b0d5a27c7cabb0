//! Helpers for the end-to-end tests: locating the built `temper` binary and running it in scratch
//! projects with their own store. The binary is built by `make test` before the tests run
//! (`TEMPER_BIN` points at it); otherwise it is looked up next to the test executable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `temper` binary under test.
pub fn temper_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEMPER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/temper
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("temper");
    if bin.exists() {
        return bin;
    }
    let release = profile_dir
        .parent()
        .expect("target dir")
        .join("release")
        .join("temper");
    assert!(
        release.exists(),
        "temper binary not found at {} — run `make test` (it builds the binary first)",
        release.display()
    );
    release
}

/// Root of the repository (for fixtures such as `examples/` and `tests/bad/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A scratch project: a temporary directory with recipe and data files and a store inside.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Self::new()
    }
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::Builder::new()
                .prefix("temper-e2e-")
                .tempdir()
                .expect("tempdir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn store(&self) -> PathBuf {
        self.path().join(".temper")
    }
    /// Writes a file (creating parent directories).
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }
    /// Copies a file or directory from the repository.
    pub fn copy_from_repo(&self, repo_rel: &str, rel: &str) {
        copy_all(&repo_root().join(repo_rel), &self.path().join(rel));
    }
    /// A `temper` command running in the project directory with the project's store, no inherited
    /// `TEMPER_STORE` and no `LD_LIBRARY_PATH` (the binary must find libtorch by itself).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(temper_bin());
        c.current_dir(self.path())
            .env_remove("TEMPER_STORE")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("TEMPER_CRASH_AT")
            .env_remove("TEMPER_PAUSE_AT")
            .env("NO_COLOR", "1")
            .arg("--store")
            .arg(self.store())
            .args(args);
        c
    }
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn temper")
    }
    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "temper {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Recursively copies `src` (file or directory) to `dst`.
pub fn copy_all(src: &Path, dst: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            copy_all(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir");
        std::fs::copy(src, dst).expect("copy");
    }
}

/// stdout+stderr of an output as text, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails if the output shows a panic (Rust's panic message or exit code 101).
pub fn assert_no_panic(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked at") && out.status.code() != Some(101),
        "{what}: temper panicked\n{}",
        text(out)
    );
}
