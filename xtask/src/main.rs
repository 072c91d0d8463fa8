//! Project automation: `cargo xtask run | token | deps | ci | autobahn | fuzz | bench`. Plain std, no
//! dependencies.

#![allow(clippy::print_stdout)] // xtask talks to a person on stdout.

mod autobahn;
mod bench;
mod bench_fanout;
mod bench_restart;
mod fuzz;
mod jwks;
mod process;

use std::env;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  run [--tls] [-- ARGS]    build and run the server on the embedded defaults, with a
                           development secret in .dev/ (generated on first run);
                           --tls: wss:// and https:// with a development CA and a
                           localhost certificate in .dev/tls/ (generated on first run)
  token --user-id ID [--ttl 1h] [--email a@example.com]
                           print a token signed with the development secret
  deps [--offline]         direct dependencies with newer releases (cargo update
                           --dry-run), then cargo deny check licenses bans sources;
                           --offline: only the cargo-deny part, without the network
  ci                       what CI runs: fmt --check, clippy -D warnings, test,
                           deps --offline, autobahn
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("token") => token(&args[1..]),
        Some("deps") => deps(&args[1..]),
        Some("ci") => ci(),
        Some("autobahn") => autobahn::autobahn(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!(
                "{USAGE}{}{}{}{}",
                autobahn::USAGE,
                fuzz::USAGE,
                bench::USAGE,
                bench_restart::USAGE
            );
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

/// Creates `.dev/` with a 0600 HS256 secret and a config that uses it (and, with `tls`, the
/// development certificates in `.dev/tls/`); returns the config path.
fn dev_setup(tls: bool) -> Result<PathBuf, String> {
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
    let mut text = format!(
        "# Written by `cargo xtask run`: the embedded defaults plus the development secret.\n\
         [auth]\nsecret_file = {:?}\n\n[log]\ndir = {:?}\n",
        secret.display().to_string(),
        dev.join("logs").display().to_string()
    );
    if tls {
        let dir = dev.join("tls");
        text.push_str(&format!(
            "\n# `cargo xtask run --tls`: the development certificate (clients trust {}).\n\
             [tls]\ncert_file = {:?}\nkey_file = {:?}\n\n[admin]\ntls = true\n",
            dir.join("ca.pem").display(),
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string()
        ));
    }
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

fn run(args: &[String]) -> Result<(), String> {
    let (ours, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &args[args.len()..]),
    };
    let tls = match ours {
        [] => false,
        [flag] if flag == "--tls" => true,
        other => return Err(format!("run: unknown arguments {other:?}\n\n{USAGE}")),
    };
    let config = dev_setup(tls)?;
    status({
        let mut c = cargo();
        c.args(["build", "--quiet", "--package", "palisade-server", "--bin", "palisade"]);
        c
    })?;
    if tls {
        return run_tls(&config, extra);
    }
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
    cmd.arg("run").args(extra);
    status(cmd)
}

/// `run --tls`: makes sure the development CA and certificate exist, tells how to trust the
/// CA, and starts the server with them.
fn run_tls(config: &Path, extra: &[String]) -> Result<(), String> {
    let dir = root().join(".dev").join("tls");
    let mut certs = palisade(config);
    certs.arg("dev-cert").arg("--out").arg(&dir);
    status(certs)?;
    let ca = dir.join("ca.pem");
    let ca = ca.display();
    println!(
        "xtask: starting palisade with TLS ({config})\n\
         \n  echo:   wss://localhost:8765   (send `hello`, get `Server received: hello`)\
         \n  secure: wss://localhost:8888   (send a token first, get `Authenticated!`)\
         \n  admin:  https://localhost:9100/healthz\
         \n\n  The certificate is signed by a development CA: make clients trust {ca}\
         \n  (never install it system-wide on a machine you care about):\
         \n    curl --cacert {ca} https://localhost:9100/healthz\
         \n    openssl s_client -connect localhost:8765 -CAfile {ca} </dev/null\
         \n    python3 -c 'import ssl; from websockets.sync.client import connect; \
         ws = connect(\"wss://localhost:8765\", ssl=ssl.create_default_context(cafile=\"{ca}\")); \
         ws.send(\"hello\"); print(ws.recv())'   (pip install websockets)\
         \n\n  mint a token:  cargo xtask token --user-id 42 --ttl 1h\
         \n  new certificate, no restart:\
         \n    target/debug/palisade dev-cert --out .dev/tls --renew && kill -HUP <palisade pid>\
         \n\n  Ctrl-C stops the server (connections get close 1001).\n",
        config = config.display(),
    );
    let mut cmd = palisade(config);
    if env::var_os("PALISADE_LOG_LEVEL").is_none() {
        cmd.env("PALISADE_LOG_LEVEL", "info,palisade=debug");
    }
    cmd.arg("run").args(extra);
    status(cmd)
}

fn token(args: &[String]) -> Result<(), String> {
    if !args.iter().any(|a| a == "--user-id" || a.starts_with("--user-id=")) {
        return Err(
            "token needs --user-id ID (e.g. cargo xtask token --user-id 42 --ttl 1h)".into()
        );
    }
    let config = dev_setup(false)?;
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
    println!("xtask ci: RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps");
    let mut c = cargo();
    c.args(["doc", "--workspace", "--no-deps"]).env("RUSTDOCFLAGS", "-D warnings");
    status(c)?;
    println!("xtask ci: cargo deny check licenses bans sources");
    deny(true)?;
    println!("xtask ci: cargo xtask autobahn");
    autobahn::autobahn(&[])?;
    println!("xtask ci: all green");
    Ok(())
}

/// `deps`: newer releases of direct dependencies, then the cargo-deny policy.
fn deps(args: &[String]) -> Result<(), String> {
    let offline = match args {
        [] => false,
        [flag] if flag == "--offline" => true,
        other => return Err(format!("deps: unknown arguments {other:?}\n\n{USAGE}")),
    };
    if offline {
        println!("xtask deps: --offline, not asking the registry for newer releases");
    } else {
        outdated()?;
    }
    println!("\nxtask deps: cargo deny check licenses bans sources (policy in deny.toml)");
    deny(offline)
}

/// Lists what `cargo update --dry-run --verbose` would change or holds back, direct
/// dependencies (those in `[workspace.dependencies]`) first.
fn outdated() -> Result<(), String> {
    let manifest = fs::read_to_string(root().join("Cargo.toml"))
        .map_err(|e| format!("cannot read Cargo.toml: {e}"))?;
    let direct = workspace_dependencies(&manifest);
    let mut cmd = cargo();
    cmd.args(["update", "--dry-run", "--verbose"]);
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{shown} failed (is the registry reachable?):\n{text}"));
    }
    let updates: Vec<Update> = text.lines().filter_map(Update::parse).collect();
    let (ours, transitive): (Vec<&Update>, Vec<&Update>) =
        updates.iter().partition(|u| direct.contains(&u.name));
    println!("xtask deps: direct dependencies ([workspace.dependencies]) with newer releases");
    if ours.is_empty() {
        println!("  none: every direct dependency is at its newest release");
    }
    for u in &ours {
        println!("  {:<20} {:<10} -> {:<10} {}", u.name, short(&u.from), short(&u.to), u.advice());
    }
    println!("\nxtask deps: transitive dependencies with newer releases");
    if transitive.is_empty() {
        println!("  none");
    }
    for u in &transitive {
        println!("  {:<20} {:<10} -> {:<10} {}", u.name, short(&u.from), short(&u.to), u.advice());
    }
    Ok(())
}

/// A version without build metadata: `v0.9.12+spec-1.1.0` -> `v0.9.12`.
fn short(version: &str) -> &str {
    version.split('+').next().unwrap_or(version)
}

/// One line of `cargo update --dry-run --verbose`.
struct Update {
    name: String,
    from: String,
    to: String,
    /// True for `Updating a v1 -> v2`: compatible, `cargo update` takes it.
    compatible: bool,
}

impl Update {
    /// Parses `Updating NAME vA -> vB` and `Unchanged NAME vA (available: vB)`.
    fn parse(line: &str) -> Option<Update> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Updating", name, from, "->", to, ..] => Some(Update {
                name: (*name).to_owned(),
                from: (*from).to_owned(),
                to: (*to).to_owned(),
                compatible: true,
            }),
            ["Unchanged", name, from, "(available:", to, ..] => Some(Update {
                name: (*name).to_owned(),
                from: (*from).to_owned(),
                to: to.trim_end_matches(')').to_owned(),
                compatible: false,
            }),
            _ => None,
        }
    }

    fn advice(&self) -> &'static str {
        if self.compatible {
            "compatible: `cargo update` takes it"
        } else if semver_line(&self.from) == semver_line(&self.to) {
            "compatible, held back by rust-version or another crate's requirement"
        } else {
            "new major release: raise the requirement, then fix the code"
        }
    }
}

/// The part of a version that semver compatibility keeps: `1.2.3` -> `1`, `0.9.5` -> `0.9`.
fn semver_line(version: &str) -> String {
    let v = version.trim_start_matches('v');
    let v = v.split(['+', '-']).next().unwrap_or(v);
    let parts: Vec<&str> = v.split('.').collect();
    match parts.as_slice() {
        ["0", "0", patch, ..] => format!("0.0.{patch}"),
        ["0", minor, ..] => format!("0.{minor}"),
        [major, ..] => (*major).to_owned(),
        [] => String::new(),
    }
}

/// The names in the root manifest's `[workspace.dependencies]`, except Palisade's own crates.
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.dependencies]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with("palisade-"))
        .map(str::to_owned)
        .collect()
}

/// Runs `cargo deny check licenses bans sources`, which needs no network once the crates are
/// downloaded (`offline`: `--frozen`, so it does not even try).
fn deny(offline: bool) -> Result<(), String> {
    let installed =
        cargo().args(["deny", "--version"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !installed {
        return Err("cargo-deny is not installed: `cargo install --locked cargo-deny` \
             (see docs/dependencies.md)"
            .into());
    }
    if offline {
        // `cargo deny --frozen` reads every package of the lock file, for every platform, and a
        // build downloads only this platform's: fetch the locked versions of the rest first
        // (from the registry, no resolution, nothing newer).
        let mut fetch = cargo();
        fetch.args(["fetch", "--locked", "--quiet"]);
        status(fetch)?;
    }
    let mut c = cargo();
    c.args(["deny", if offline { "--frozen" } else { "--locked" }]);
    c.args(["check", "--hide-inclusion-graph", "licenses", "bans", "sources"]);
    status(c)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tidy;
