//! `cargo xtask autobahn`: RFC 6455 conformance with Autobahn|Testsuite against both endpoints.
//!
//! Starts the real `palisade` binary with a test configuration (no echo prefix, 16 MiB+ limits,
//! rate limits and pings off), then runs `../shared/autobahn/run.sh` against the echo endpoint
//! and, through a small loopback proxy that adds `Authorization: Bearer <token>` to the upgrade
//! request, against the secure endpoint. The suite's fuzzingclient cannot send headers itself.

use std::env;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use crate::process::{self, PalisadeProcess, mint};
use crate::{cargo, root, status};

pub(crate) const USAGE: &str = "\
  autobahn [--cases PATTERNS] [--endpoint echo|secure|both] [--release]
                           RFC 6455 conformance: run Autobahn|Testsuite (../shared/autobahn)
                           against the echo and secure endpoints; fails on any FAILED case
";

/// The text frame the secure endpoint sends after a header-authenticated upgrade.
const AUTHENTICATED_FRAME: &[u8] = b"\x81\x0eAuthenticated!";

struct Options {
    cases: Option<String>,
    endpoints: Vec<&'static str>,
    release: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options { cases: None, endpoints: vec!["echo", "secure"], release: false };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cases" => opts.cases = Some(it.next().ok_or("--cases needs a value")?.clone()),
            "--endpoint" => {
                opts.endpoints = match it.next().map(String::as_str) {
                    Some("echo") => vec!["echo"],
                    Some("secure") => vec!["secure"],
                    Some("both") => vec!["echo", "secure"],
                    other => {
                        return Err(format!(
                            "--endpoint: expected echo, secure or both, got {other:?}"
                        ));
                    }
                }
            }
            "--release" => opts.release = true,
            other => {
                return Err(format!("autobahn: unknown argument {other:?}\n\nusage:\n{USAGE}"));
            }
        }
    }
    Ok(opts)
}

pub(crate) fn autobahn(args: &[String]) -> Result<(), String> {
    let opts = parse(args)?;
    let suite = suite_dir()?;
    ensure_installed(&suite)?;
    let started = Instant::now();

    let mut build = cargo();
    build.args(["build", "--quiet", "--package", "palisade-server", "--bin", "palisade"]);
    if opts.release {
        build.arg("--release");
    }
    status(build)?;
    let target =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root().join("target"));
    let bin = target.join(if opts.release { "release" } else { "debug" }).join("palisade");

    let work = process::temp_dir("autobahn")?;
    let config = write_config(&work)?;
    let server = PalisadeProcess::start(Command::new(&bin), &config, &work)?;
    let result = run_suites(&opts, &suite, &bin, &config, &server, &work);
    let console = server.stop();
    let panicked = console.lines().any(|l| l.contains("panicked"));
    let mut failures = match result {
        Ok(failures) => failures,
        Err(e) => vec![e],
    };
    if panicked {
        failures.push(format!("the server panicked; see {}", work.join("console.log").display()));
    }
    println!("xtask autobahn: finished in {:.0?}", started.elapsed());
    if failures.is_empty() {
        let _ = fs::remove_dir_all(&work);
        Ok(())
    } else {
        Err(format!(
            "conformance failed:\n  {}\n(server config and console log kept in {})",
            failures.join("\n  "),
            work.display()
        ))
    }
}

/// Runs the suite against each endpoint; returns one line per failure.
fn run_suites(
    opts: &Options,
    suite: &Path,
    bin: &Path,
    config: &Path,
    server: &PalisadeProcess,
    work: &Path,
) -> Result<Vec<String>, String> {
    let mut failures = Vec::new();
    let mut summaries = Vec::new();
    for endpoint in &opts.endpoints {
        let (target, proxy) = match *endpoint {
            "echo" => (server.echo, None),
            _ => {
                let token = mint(bin, config, "autobahn")?;
                let proxy = BearerProxy::start(server.secure, token)?;
                (proxy.addr, Some(proxy))
            }
        };
        println!("xtask autobahn: {endpoint} endpoint ({target})");
        let outdir = work.join(format!("reports-{endpoint}"));
        let mut cmd = Command::new("bash");
        cmd.arg(suite.join("run.sh")).arg(target.to_string());
        if let Some(cases) = &opts.cases {
            cmd.arg(cases);
        }
        cmd.env("AUTOBAHN_AGENT", format!("palisade-{endpoint}"))
            .env("AUTOBAHN_OUTDIR", &outdir)
            .env("AUTOBAHN_TIMEOUT", "900")
            .stdout(Stdio::piped());
        let output = cmd.output().map_err(|e| format!("cannot run {}: {e}", suite.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        print!("{text}");
        let summary = text
            .lines()
            .rev()
            .find(|l| l.starts_with("autobahn: OK="))
            .map(str::to_owned)
            .unwrap_or_else(|| "autobahn: no summary line".into());
        let failed = field(&summary, "FAILED");
        let total = field(&summary, "total");
        if !output.status.success() || failed != Some(0) || total.unwrap_or(0) == 0 {
            failures.push(format!(
                "{endpoint}: run.sh exited with {} ({summary}); reports in {}",
                output.status,
                outdir.join("reports").display()
            ));
        }
        if let Some(p) = proxy {
            let (authenticated, refused) = p.counts();
            println!(
                "xtask autobahn: secure endpoint: {authenticated} connections authenticated by header, {refused} not"
            );
            if refused > 0 {
                failures.push(format!("secure: {refused} connections were not authenticated"));
            }
        }
        summaries.push(format!("{endpoint:>6}: {summary}"));
    }
    println!("xtask autobahn: results\n  {}", summaries.join("\n  "));
    Ok(failures)
}

/// `FAILED=3` in the summary line gives `Some(3)` for `FAILED`.
fn field(summary: &str, name: &str) -> Option<u64> {
    summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim_start_matches("autobahn: ") == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// Finds `shared/autobahn`: `AUTOBAHN_DIR`, else `../shared/autobahn` from the repository root
/// (CI, /work/main), else two levels up (a worktree under /work/wt/).
fn suite_dir() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("AUTOBAHN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let root = root();
    let candidates = [root.join("../shared/autobahn"), root.join("../../shared/autobahn")];
    candidates.iter().find(|d| d.join("run.sh").is_file()).cloned().ok_or_else(|| {
        format!(
            "cannot find shared/autobahn/run.sh (looked in {}); set AUTOBAHN_DIR",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Runs `install.sh` unless wstest is already there (where run.sh will look for it).
fn ensure_installed(suite: &Path) -> Result<(), String> {
    let home = env::var_os("AUTOBAHN_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let cache = env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
        cache.join("autobahn-testsuite")
    });
    let venv = env::var_os("AUTOBAHN_VENV").map(PathBuf::from).unwrap_or(home.join(".venv"));
    if venv.join("bin/wstest").exists() {
        return Ok(());
    }
    println!("xtask autobahn: wstest not found in {}; running install.sh", venv.display());
    let mut cmd = Command::new("bash");
    cmd.arg(suite.join("install.sh"));
    status(cmd)
}

/// The conformance configuration: what the suite needs, nothing else changed.
fn write_config(work: &Path) -> Result<PathBuf, String> {
    let secret = process::write_secret(work)?;
    let text = format!(
        "# Written by `cargo xtask autobahn`; see docs/conformance.md.\n\
         [echo]\nlisten = \"127.0.0.1:0\"\nprefix = \"\"   # echo the payload as is\n\n\
         [secure]\nlisten = \"127.0.0.1:0\"\nmax_sessions_per_user = 0\n\n\
         [admin]\nenabled = false\n\n\
         [auth]\nsecret_file = {:?}\n\n\
         [limits]\n# Cases 9.* send messages and frames of up to 16 MiB.\n\
         max_message_bytes = 20971520\nmax_frame_bytes = 20971520\n\
         idle_timeout_secs = 120\nping_interval_secs = 0   # unsolicited pings would show in the results\n\n\
         [firewall]\nmax_connections_per_ip = 1000\nhandshakes_per_sec_per_ip = 0\nmessages_per_sec = 0\n\
         ban_after_auth_failures = 0\n\n\
         [log]\ndir = {:?}\nlevel = \"warn\"\n",
        secret.display().to_string(),
        work.join("log").display().to_string()
    );
    let config = work.join("palisade.toml");
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

/// A loopback TCP proxy to the secure endpoint: adds `Authorization: Bearer <token>` to each
/// upgrade request, checks that the server answers the upgrade with `Authenticated!` and keeps
/// that application greeting from the suite, then relays bytes both ways untouched.
struct BearerProxy {
    addr: SocketAddr,
    authenticated: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

impl BearerProxy {
    fn start(upstream: SocketAddr, token: String) -> Result<BearerProxy, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy cannot bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("proxy address: {e}"))?;
        let authenticated = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (ok, bad) = (authenticated.clone(), refused.clone());
        let token: Arc<str> = token.into();
        // The accept thread ends with the process; xtask exits right after the run.
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let (token, ok, bad) = (token.clone(), ok.clone(), bad.clone());
                thread::spawn(move || match relay(client, upstream, &token) {
                    Ok(Relayed::Authenticated) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Relayed::NotAuthenticated) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    // run.sh first checks the port with a bare TCP connect: not an upgrade.
                    Ok(Relayed::NoRequest) | Err(_) => {}
                });
            }
        });
        Ok(BearerProxy { addr, authenticated, refused })
    }

    fn counts(&self) -> (usize, usize) {
        (self.authenticated.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

/// How one proxied connection went.
enum Relayed {
    /// The client closed before sending a request head.
    NoRequest,
    /// 101, then `Authenticated!`.
    Authenticated,
    /// Anything else: the secure endpoint did not take the header.
    NotAuthenticated,
}

/// Proxies one connection.
fn relay(mut client: TcpStream, upstream: SocketAddr, token: &str) -> std::io::Result<Relayed> {
    client.set_nodelay(true)?;
    let (head, rest) = match read_head(&mut client) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Relayed::NoRequest),
        Err(e) => return Err(e),
    };
    let mut server = TcpStream::connect(upstream)?;
    server.set_nodelay(true)?;
    // The head ends with an empty line; put the header before it.
    let mut request = head[..head.len() - 2].to_vec();
    request.extend_from_slice(format!("Authorization: Bearer {token}\r\n\r\n").as_bytes());
    request.extend_from_slice(&rest);
    server.write_all(&request)?;

    let (response, mut early) = read_head(&mut server)?;
    client.write_all(&response)?;
    let upgraded = response.starts_with(b"HTTP/1.1 101");
    if upgraded {
        while early.len() < AUTHENTICATED_FRAME.len() {
            let mut buf = [0u8; 64];
            let n = server.read(&mut buf)?;
            if n == 0 {
                break;
            }
            early.extend_from_slice(&buf[..n]);
        }
        if early.starts_with(AUTHENTICATED_FRAME) {
            early.drain(..AUTHENTICATED_FRAME.len());
        } else {
            client.write_all(&early)?;
            pipe_both(client, server);
            return Ok(Relayed::NotAuthenticated);
        }
    }
    client.write_all(&early)?;
    pipe_both(client, server);
    Ok(if upgraded { Relayed::Authenticated } else { Relayed::NotAuthenticated })
}

/// Reads up to the end of an HTTP head (at most 64 KiB); returns the head and what followed.
fn read_head(s: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("http head too large"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Copies both directions until both are done, passing half-closes (FIN) through.
fn pipe_both(client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(_) => {
                // A reset: pass it on as an abrupt end of both sides.
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
