//! The official clients (clients/js, clients/python) run their own test suites against the real
//! `palisade` binary of this build: `npm ci`, a rebuild of the committed `dist/` (which must not
//! change), the unit and integration suites; a venv under target/, `pip install -e .[test]`,
//! pytest. Each skips with a message only when node/npm or python3 (with venv) is absent;
//! `.ci/run` installs them, so CI never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bounds each step (an `npm ci` or `pip install` on a cold cache included).
const STEP_LIMIT: Duration = Duration::from_secs(300);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn available(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `program args` in `dir` with the binary under test in `PALISADE_BIN`; panics with its
/// output when it fails or outlives [`STEP_LIMIT`].
fn run(dir: &Path, program: &str, args: &[&str]) {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("PALISADE_BIN", env!("CARGO_BIN_EXE_palisade"))
        .env_remove("PALISADE_LOG_LEVEL")
        .env_remove("PALISADE_LOG_DIR")
        .stdin(Stdio::null())
        .stdout(log.reopen().expect("log"))
        .stderr(log.reopen().expect("log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > STEP_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    match status {
        Some(s) if s.success() => eprintln!("{program} {}: ok", args.join(" ")),
        Some(s) => {
            panic!("`{program} {}` in {} failed ({s}):\n{output}", args.join(" "), dir.display())
        }
        None => panic!("`{program} {}` took over {STEP_LIMIT:?}:\n{output}", args.join(" ")),
    }
}

/// The compiled files of clients/js/dist.
fn dist(js: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(js.join("dist"))
        .expect("clients/js/dist (committed)")
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).unwrap_or_default())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn typescript_client_suites_pass_against_the_real_server() {
    if !available("node", &["--version"]) || !available("npm", &["--version"]) {
        eprintln!(
            "SKIPPED: the TypeScript client's suites need node and npm (apt-get install nodejs npm; .ci/run installs them)"
        );
        return;
    }
    let js = workspace().join("clients/js");
    let committed = dist(&js);
    run(&js, "npm", &["ci", "--no-audit", "--no-fund"]);
    run(&js, "npm", &["run", "build"]);
    assert_eq!(
        dist(&js),
        committed,
        "clients/js/dist differs from a build of clients/js/src: commit the rebuilt files"
    );
    run(&js, "npm", &["test"]);
    run(&js, "npm", &["run", "test:integration"]);
}

#[test]
fn python_client_suite_passes_against_the_real_server() {
    if !available("python3", &["-m", "venv", "--help"]) {
        eprintln!(
            "SKIPPED: the Python client's suite needs python3 with venv (apt-get install python3-venv; .ci/run installs it)"
        );
        return;
    }
    let py = workspace().join("clients/python");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("palisade-client-venv");
    if !venv.join("bin/python").exists() {
        run(&py, "python3", &["-m", "venv", &venv.display().to_string()]);
    }
    let python = venv.join("bin/python").display().to_string();
    run(&py, &python, &["-m", "pip", "install", "-q", "-e", ".[test]"]);
    run(&py, &python, &["-m", "pytest", "-q", "-p", "no:cacheprovider"]);
}
