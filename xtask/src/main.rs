//! Project automation: `cargo xtask run | token | ci | autobahn | fuzz`. Plain std, no dependencies.

#![allow(clippy::print_stdout)] // xtask talks to a person on stdout.

mod autobahn;
mod fuzz;

use std::env;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  run [-- ARGS]            build and run the server on the embedded defaults, with a
                           development secret in .dev/ (generated on first run)
  token --user-id ID [--ttl 1h] [--email a@example.com]
                           print a token signed with the development secret
  ci                       what CI runs: fmt --check, clippy -D warnings, test, autobahn
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("token") => token(&args[1..]),
        Some("ci") => ci(),
        Some("autobahn") => autobahn::autobahn(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}{}{}", autobahn::USAGE, fuzz::USAGE);
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn status(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if st.success() { Ok(()) } else { Err(format!("{shown} failed with {st}")) }
}

/// Creates `.dev/` with a 0600 HS256 secret and a config that uses it; returns the config path.
fn dev_setup() -> Result<PathBuf, String> {
    let dev = root().join(".dev");
    fs::create_dir_all(dev.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", dev.display()))?;
    let secret = dev.join("jwt-secret");
    if !secret.exists() {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(|e| format!("cannot create {}: {e}", secret.display()))?;
        writeln!(f, "{hex}").map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
        println!("xtask: generated a development JWT secret in {}", secret.display());
    }
    // Keep it private even if it was created by hand.
    let _ = fs::set_permissions(&secret, fs::Permissions::from_mode(0o600));
    let config = dev.join("palisade.toml");
    let text = format!(
        "# Written by `cargo xtask run`: the embedded defaults plus the development secret.\n\
         [auth]\nsecret_file = {:?}\n\n[log]\ndir = {:?}\n",
        secret.display().to_string(),
        dev.join("logs").display().to_string()
    );
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

fn palisade(config: &Path) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--package",
        "palisade-server",
        "--bin",
        "palisade",
        "--",
        "--config",
    ]);
    cmd.arg(config);
    cmd
}

fn run(extra: &[String]) -> Result<(), String> {
    let config = dev_setup()?;
    status({
        let mut c = cargo();
        c.args(["build", "--quiet", "--package", "palisade-server", "--bin", "palisade"]);
        c
    })?;
    println!(
        "xtask: starting palisade with {}\n\
         \n  echo:   ws://127.0.0.1:8765   (send `hello`, get `Server received: hello`)\
         \n  secure: ws://127.0.0.1:8888   (send a token first, get `Authenticated!`)\
         \n  admin:  http://127.0.0.1:9100/healthz\
         \n\n  mint a token:  cargo xtask token --user-id 42 --ttl 1h\
         \n  try it:        python3 -m websockets ws://127.0.0.1:8765   (pip install websockets)\
         \n\n  Ctrl-C stops the server (connections get close 1001).\n",
        config.display()
    );
    let mut cmd = palisade(&config);
    if env::var_os("PALISADE_LOG_LEVEL").is_none() {
        cmd.env("PALISADE_LOG_LEVEL", "info,palisade=debug");
    }
    cmd.arg("run").args(extra.iter().skip_while(|a| *a == "--"));
    status(cmd)
}

fn token(args: &[String]) -> Result<(), String> {
    if !args.iter().any(|a| a == "--user-id" || a.starts_with("--user-id=")) {
        return Err(
            "token needs --user-id ID (e.g. cargo xtask token --user-id 42 --ttl 1h)".into()
        );
    }
    let config = dev_setup()?;
    let mut cmd = palisade(&config);
    cmd.arg("token").args(args);
    status(cmd)
}

fn ci() -> Result<(), String> {
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--check"],
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        &["test", "--workspace"],
    ];
    for step in steps {
        println!("xtask ci: cargo {}", step.join(" "));
        let mut c = cargo();
        c.args(step);
        status(c)?;
    }
    println!("xtask ci: cargo xtask autobahn");
    autobahn::autobahn(&[])?;
    println!("xtask ci: all green");
    Ok(())
}
