//! `cargo xtask bench`: Palisade's echo and secure endpoints against a plain tokio-tungstenite
//! echo server (the baseline), in one sitting, alternating, with the servers on core 0 and the
//! load generator (`palisade-load`, crates/bench) on core 1. Writes docs/benchmarks.md and
//! docs/benchmarks.json.
//!
//! Every measurement starts a fresh server process, so memory figures start from the same
//! point. Server CPU time comes from /proc/PID/stat between the load generator's
//! `measure_start` and `measure_end` events; memory from VmRSS in /proc/PID/status.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::jwks::{JwksServer, jwks_json, rsa_public_jwk};
use crate::process::{self, PalisadeProcess, mint};
use crate::{cargo, root, status};

pub(crate) const USAGE: &str = "\
  bench [--quick] [--only S1,S2,...] [--reps N] [--held N] [--write]
                           benchmarks against a tokio-tungstenite baseline in the same run
                           (release build, servers on core 0, load on core 1); writes
                           docs/benchmarks.md and docs/benchmarks.json (--quick: ~3 minutes,
                           nothing written unless --write); --held: connections held in S6
                           (default 19000: each process needs that many open files)
";

/// The servers under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Echo,
    Secure,
    Baseline,
    /// The secure endpoint verifying RS256 tokens with the static `[auth] public_key_file` (S4j).
    SecureRs256,
    /// The secure endpoint verifying the same RS256 tokens through an `[[auth.issuers]]` entry
    /// whose keys come from a loopback JWKS server (S4j).
    SecureJwks,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Echo => "palisade-echo",
            Target::Secure => "palisade-secure",
            Target::Baseline => "tungstenite",
            Target::SecureRs256 => "palisade-rs256",
            Target::SecureJwks => "palisade-jwks",
        }
    }
}

/// Sizes and durations of one run.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    write: bool,
    reps: usize,
    secs: f64,
    warmup: f64,
    idle_conns: usize,
    hold_conns: usize,
    hold_secs: f64,
    only: Option<Vec<String>>,
}

impl Plan {
    fn wants(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s.eq_ignore_ascii_case(id)))
    }
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut plan = Plan {
        quick: false,
        write: true,
        reps: 3,
        secs: 8.0,
        warmup: 1.0,
        idle_conns: 10_000,
        // The hard open-file limit on the reference machine is 20 000 per process.
        hold_conns: 19_000,
        hold_secs: 60.0,
        only: None,
    };
    let mut write = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                plan.quick = true;
                plan.reps = 2;
                plan.secs = 2.0;
                plan.warmup = 0.5;
                plan.idle_conns = 2_000;
                plan.hold_conns = 2_000;
                plan.hold_secs = 5.0;
            }
            "--write" => write = Some(true),
            "--only" => {
                let v = it.next().ok_or("--only needs a value such as S1,S5")?;
                plan.only = Some(v.split(',').map(|s| s.trim().to_owned()).collect());
            }
            "--held" => {
                let v = it.next().ok_or("--held needs a number of connections")?;
                plan.hold_conns = v.parse().map_err(|_| format!("--held: not a number: {v:?}"))?;
            }
            "--reps" => {
                let v = it.next().ok_or("--reps needs a number")?;
                plan.reps = v.parse().map_err(|_| format!("--reps: not a number: {v:?}"))?;
                if plan.reps == 0 {
                    return Err("--reps must be at least 1".into());
                }
            }
            other => return Err(format!("bench: unknown argument {other:?}\n\nusage:\n{USAGE}")),
        }
    }
    plan.write = write.unwrap_or(!plan.quick && plan.only.is_none());
    Ok(plan)
}

/// One measurement of one target.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Messages (or handshakes) per wall-clock second.
    rate: f64,
    /// Messages (or handshakes) per second of server CPU time.
    per_cpu: f64,
    /// Server CPU use over the measured interval (1.0 = one core).
    server_cpu: f64,
    /// Load generator CPU use over its whole run (1.0 = one core).
    client_cpu: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Server RSS growth per connection (idle scenarios), bytes.
    bytes_per_conn: f64,
    /// Server RSS, KiB: with every connection up (idle scenarios), else at the end of the run.
    rss_kib: f64,
    connections: f64,
    errors: f64,
    first_error: Option<String>,
    /// Requests to the JWKS server between `measure_start` and `measure_end` (S4j, JWKS issuer).
    jwks_measured: Option<f64>,
    /// Requests to the JWKS server from the server's start to its stop (the start fetches once).
    jwks_run: Option<f64>,
}

/// A scenario: what the load generator is told, for which targets.
struct Scenario {
    id: &'static str,
    title: &'static str,
    targets: &'static [Target],
    /// Arguments for `palisade-load` (the URL, token and prefix are added per target).
    args: Vec<String>,
    /// Idle scenarios report memory per connection instead of a rate.
    idle: bool,
}

fn scenarios(plan: &Plan) -> Vec<Scenario> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let timed = |mode: &str, extra: &[&str]| {
        let mut v = s(&[mode, "--duration", &plan.secs.to_string()]);
        v.extend(s(&["--warmup", &plan.warmup.to_string()]));
        v.extend(s(extra));
        v
    };
    let all = &[Target::Echo, Target::Secure, Target::Baseline];
    vec![
        Scenario {
            id: "S1",
            title: "1 connection ping-pong, 32 B text",
            targets: all,
            args: timed("echo", &["--connections", "1", "--inflight", "1", "--size", "32"]),
            idle: false,
        },
        Scenario {
            id: "S2",
            title: "64 connections x 16 in flight, 32 B text",
            targets: all,
            args: timed("echo", &["--connections", "64", "--inflight", "16", "--size", "32"]),
            idle: false,
        },
        Scenario {
            id: "S3",
            title: "16 connections, 64 KiB binary",
            targets: all,
            args: timed(
                "echo",
                &["--connections", "16", "--inflight", "1", "--size", "65536", "--binary"],
            ),
            idle: false,
        },
        Scenario {
            id: "S4",
            title: "handshakes/s (echo: upgrade + one reply; secure: upgrade + JWT + `Authenticated!`)",
            targets: all,
            args: timed("handshake", &["--concurrency", "32", "--sources", SOURCES]),
            idle: false,
        },
        Scenario {
            id: "S4j",
            title: "handshakes/s with RS256 tokens: `[[auth.issuers]]` (keys from a loopback JWKS server) vs the static `[auth]` public key",
            targets: &[Target::SecureRs256, Target::SecureJwks],
            args: timed("handshake", &["--concurrency", "32", "--sources", SOURCES]),
            idle: false,
        },
        Scenario {
            id: "S5",
            title: "idle connections (secure: authenticated sessions): server RSS per connection",
            targets: all,
            args: s(&[
                "idle",
                "--connections",
                &plan.idle_conns.to_string(),
                "--hold",
                "1",
                "--sources",
                SOURCES,
            ]),
            idle: true,
        },
        Scenario {
            id: "S6",
            title: "connections held with a trickle of messages (one per connection every 10 s)",
            targets: &[Target::Echo, Target::Secure],
            args: s(&[
                "idle",
                "--connections",
                &plan.hold_conns.to_string(),
                "--hold",
                &plan.hold_secs.to_string(),
                "--trickle-ms",
                "10000",
                "--sources",
                SOURCES,
            ]),
            idle: true,
        },
    ]
}

/// Loopback source addresses for many connections (past one address's ephemeral ports).
const SOURCES: &str = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4";

pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--restart") {
        return crate::bench_restart::run(args);
    }
    let plan = parse(args)?;
    let started = Instant::now();
    let mut build = cargo();
    build.args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "palisade-server",
        "--bin",
        "palisade",
        "--package",
        "palisade-bench",
        "--bins",
    ]);
    status(build)?;
    let bins = target_dir().join("release");
    let work = process::temp_dir("bench")?;
    let max_connections = plan.hold_conns.max(plan.idle_conns) + 1000;
    let secret = process::write_secret(&work)?;
    let auth = format!("[auth]\nsecret_file = {:?}\n", secret.display().to_string());
    let config = write_config(&work, "palisade.toml", max_connections, &auth)?;
    let palisade = bins.join("palisade");
    let token = mint(&palisade, &config, "bench")?;
    let rs256 = if plan.wants("S4j") {
        Some(Rs256::set_up(&work, &palisade, max_connections)?)
    } else {
        None
    };
    let env = Env { bins, work: work.clone(), config, token, rs256 };

    let mut results = Vec::new();
    for sc in scenarios(&plan).into_iter().filter(|s| plan.wants(s.id)) {
        println!("xtask bench: {} — {}", sc.id, sc.title);
        let mut samples: Vec<(Target, Sample)> = Vec::new();
        for rep in 0..plan.reps {
            // Alternate the order so no target always runs first (or last).
            let n = sc.targets.len();
            for i in 0..n {
                let target = sc.targets[(i + rep) % n];
                let sample = measure(&env, &sc, target)?;
                println!("  rep {} {:<16} {}", rep + 1, target.name(), describe(&sc, &sample));
                samples.push((target, sample));
            }
        }
        results.push((sc, samples));
    }
    let machine = machine();
    let report = Report { plan: &plan, results: &results, machine: &machine };
    let md = report.markdown();
    println!("\n{}", report.table());
    if plan.write {
        let docs = root().join("docs");
        fs::write(docs.join("benchmarks.md"), md)
            .map_err(|e| format!("docs/benchmarks.md: {e}"))?;
        fs::write(docs.join("benchmarks.json"), report.json())
            .map_err(|e| format!("docs/benchmarks.json: {e}"))?;
        println!("xtask bench: wrote docs/benchmarks.md and docs/benchmarks.json");
    }
    let _ = fs::remove_dir_all(&work);
    println!("xtask bench: finished in {:.0?}", started.elapsed());
    let errors: f64 = results.iter().flat_map(|(_, s)| s.iter()).map(|(_, s)| s.errors).sum();
    if errors > 0.0 {
        return Err(format!("{errors} load generator errors; see the lines above"));
    }
    Ok(())
}

struct Env {
    bins: PathBuf,
    work: PathBuf,
    config: PathBuf,
    token: String,
    /// S4j's configurations, token and JWKS server (when S4j runs).
    rs256: Option<Rs256>,
}

/// The `iss` and `aud` of S4j's tokens, required by both of its configurations.
const BENCH_ISSUER: &str = "https://idp.bench.invalid/realms/bench";
const BENCH_AUDIENCE: &str = "palisade-bench";

/// S4j: one RSA 2048 key pair (the token crate's test fixture: not a secret), a token signed
/// with it, a configuration verifying it with the static public key and one verifying it through
/// an `[[auth.issuers]]` entry served by a loopback JWKS server.
struct Rs256 {
    static_config: PathBuf,
    jwks_config: PathBuf,
    token: String,
    jwks: JwksServer,
}

impl Rs256 {
    fn set_up(work: &Path, palisade: &Path, max_connections: usize) -> Result<Rs256, String> {
        let fixtures = root().join("crates/token/tests/fixtures");
        let (public, private) = (fixtures.join("rsa-public.pem"), fixtures.join("rsa-private.pem"));
        let pem = fs::read_to_string(&public)
            .map_err(|e| format!("cannot read {}: {e}", public.display()))?;
        let jwk =
            rsa_public_jwk(&pem, "bench").map_err(|e| format!("{}: {e}", public.display()))?;
        let jwks = JwksServer::start(jwks_json(&[jwk]))?;
        let static_auth = format!(
            "[auth]\nalgorithm = \"RS256\"\npublic_key_file = {:?}\n\
             issuer = {BENCH_ISSUER:?}\naudience = {BENCH_AUDIENCE:?}\n",
            public.display().to_string()
        );
        let static_config =
            write_config(work, "palisade-rs256.toml", max_connections, &static_auth)?;
        // Only `palisade token` sees the private key; it sets `iss` and `aud` from `[auth]`.
        let mint_auth =
            format!("{static_auth}private_key_file = {:?}\n", private.display().to_string());
        let mint_config = write_config(work, "palisade-mint.toml", max_connections, &mint_auth)?;
        let token = mint(palisade, &mint_config, "bench")?;
        let jwks_auth = format!(
            "[auth]\nalgorithm = \"RS256\" # no static key: only the issuer below\n\n\
             [[auth.issuers]]\nissuer = {BENCH_ISSUER:?}\njwks_url = {:?}\n\
             audience = {BENCH_AUDIENCE:?}\nalgorithms = [\"RS256\"]\n",
            jwks.url()
        );
        let jwks_config = write_config(work, "palisade-jwks.toml", max_connections, &jwks_auth)?;
        Ok(Rs256 { static_config, jwks_config, token, jwks })
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root().join("target"))
}

/// The benchmark configuration: the defaults (every layer on), with the limits that would
/// refuse a benchmark from one machine raised (connection caps, per-IP rates, session caps).
fn write_config(
    work: &Path,
    name: &str,
    max_connections: usize,
    auth: &str,
) -> Result<PathBuf, String> {
    let text = format!(
        "# Written by `cargo xtask bench`; see docs/benchmarks.md.\n\
         [echo]\nlisten = \"127.0.0.1:0\"\n\n\
         [secure]\nlisten = \"127.0.0.1:0\"\nmax_sessions_per_user = 0\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         {auth}\n\
         [limits]\nmax_connections = {max_connections}\n\n\
         # On, with rates one load generator on one address stays under.\n\
         [firewall]\nmax_connections_per_ip = {max_connections}\n\
         handshakes_per_sec_per_ip = 1000000\nhandshake_burst = 1000000\n\
         messages_per_sec = 1000000\nmessage_burst = 1000000\n\n\
         [log]\ndir = {:?}\nlevel = \"info\"\n",
        work.join("log").display().to_string()
    );
    let config = work.join(name);
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

/// A server on core 0: Palisade (both endpoints) or the baseline.
enum Server {
    Palisade(PalisadeProcess),
    Baseline { child: Child, addr: String },
}

impl Server {
    fn start(env: &Env, target: Target) -> Result<Server, String> {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]);
        if target == Target::Baseline {
            cmd.arg(env.bins.join("tungstenite-echo"));
            cmd.stdout(Stdio::piped()).stderr(Stdio::null()).stdin(Stdio::null());
            let mut child = cmd.spawn().map_err(|e| format!("cannot start taskset: {e}"))?;
            let stdout = child.stdout.take().ok_or("no stdout pipe")?;
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(|e| format!("tungstenite-echo: {e}"))?;
            let addr = line
                .trim()
                .strip_prefix("tungstenite-echo listening on ")
                .ok_or_else(|| format!("tungstenite-echo printed {line:?}"))?
                .to_owned();
            return Ok(Server::Baseline { child, addr });
        }
        cmd.arg(env.bins.join("palisade"));
        let config = match (target, &env.rs256) {
            (Target::SecureRs256, Some(rs)) => &rs.static_config,
            (Target::SecureJwks, Some(rs)) => &rs.jwks_config,
            (Target::SecureRs256 | Target::SecureJwks, None) => {
                return Err("S4j's configurations were not written".into());
            }
            _ => &env.config,
        };
        Ok(Server::Palisade(PalisadeProcess::start(cmd, config, &env.work)?))
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Palisade(p) => p.child.id(),
            Server::Baseline { child, .. } => child.id(),
        }
    }

    fn url(&self, target: Target) -> String {
        match (self, target) {
            (Server::Palisade(p), Target::Secure | Target::SecureRs256 | Target::SecureJwks) => {
                format!("ws://{}/", p.secure)
            }
            (Server::Palisade(p), _) => format!("ws://{}/", p.echo),
            (Server::Baseline { addr, .. }, _) => format!("ws://{addr}/"),
        }
    }

    fn stop(self) -> Result<(), String> {
        match self {
            Server::Palisade(p) => {
                let console = p.stop();
                if console.contains("panicked") {
                    return Err(format!("palisade panicked:\n{console}"));
                }
            }
            Server::Baseline { mut child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        Ok(())
    }
}

/// Runs the load generator once against a fresh server of `target`.
fn measure(env: &Env, sc: &Scenario, target: Target) -> Result<Sample, String> {
    // Requests to S4j's JWKS server, counted for the JWKS target only.
    let jwks_requests = || match (target, &env.rs256) {
        (Target::SecureJwks, Some(rs)) => Some(rs.jwks.requests() as f64),
        _ => None,
    };
    let jwks_before = jwks_requests();
    let server = Server::start(env, target)?;
    let pid = server.pid();
    let rss_before = rss_kib(pid)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]).arg(env.bins.join("palisade-load")).args(&sc.args);
    cmd.arg("--url").arg(server.url(target));
    match target {
        Target::Echo => {
            cmd.args(["--prefix", "Server received: "]);
        }
        Target::Secure => {
            cmd.args(["--prefix", "Server received: ", "--token", &env.token]);
        }
        Target::SecureRs256 | Target::SecureJwks => {
            let token = env.rs256.as_ref().map(|rs| rs.token.as_str()).unwrap_or_default();
            cmd.args(["--prefix", "Server received: ", "--token", token]);
        }
        Target::Baseline => {}
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let mut load = cmd.spawn().map_err(|e| format!("cannot start palisade-load: {e}"))?;
    let load_pid = load.id();
    let stdout = load.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut sample = Sample::default();
    let mut cpu_start = None;
    let mut cpu_end = None;
    let (mut jwks_start, mut jwks_end) = (None, None);
    let mut client_cpu = 0.0;
    let run_started = Instant::now();
    let limit = Duration::from_secs(600);
    let mut result = None;
    while result.is_none() {
        let line = match rx.recv_timeout(limit.saturating_sub(run_started.elapsed())) {
            Ok(line) => line,
            Err(_) => {
                let _ = load.kill();
                let _ = load.wait();
                let _ = server.stop();
                return Err(format!("palisade-load ({}) ended without a result", sc.id));
            }
        };
        match field_str(&line, "event").as_deref() {
            Some("measure_start") => {
                cpu_start = Some((cpu_secs(pid)?, Instant::now()));
                jwks_start = jwks_requests();
            }
            Some("measure_end") => {
                cpu_end = Some((cpu_secs(pid)?, Instant::now()));
                jwks_end = jwks_requests();
                client_cpu = cpu_secs(load_pid).unwrap_or(0.0);
            }
            Some("ready") => {
                let rss = rss_kib(pid)?;
                sample.rss_kib = rss;
                let conns = field(&line, "connections").unwrap_or(0.0);
                sample.connections = conns;
                if conns > 0.0 {
                    sample.bytes_per_conn = (rss - rss_before) * 1024.0 / conns;
                }
            }
            Some("result") => result = Some(line),
            _ => {}
        }
    }
    let _ = load.wait();
    let line = result.unwrap_or_default();
    if !sc.idle {
        sample.rss_kib = rss_kib(pid).unwrap_or(0.0);
    }
    server.stop()?;
    if let (Some(a), Some(b)) = (jwks_start, jwks_end) {
        sample.jwks_measured = Some(b - a);
    }
    if let (Some(a), Some(b)) = (jwks_before, jwks_requests()) {
        sample.jwks_run = Some(b - a);
    }
    sample.errors = field(&line, "errors").unwrap_or(0.0);
    sample.first_error = field_str(&line, "first_error");
    sample.p50_us = field(&line, "p50_us").unwrap_or(0.0);
    sample.p99_us = field(&line, "p99_us").unwrap_or(0.0);
    sample.p999_us = field(&line, "p999_us").unwrap_or(0.0);
    if !sc.idle {
        let count = field(&line, "messages")
            .filter(|m| *m > 0.0)
            .or_else(|| field(&line, "handshakes"))
            .unwrap_or(0.0);
        let secs = field(&line, "secs").unwrap_or(0.0);
        sample.rate = if secs > 0.0 { count / secs } else { 0.0 };
        if let (Some((c0, t0)), Some((c1, t1))) = (cpu_start, cpu_end) {
            let cpu = c1 - c0;
            let wall = t1.duration_since(t0).as_secs_f64();
            sample.per_cpu = if cpu > 0.0 { count / cpu } else { 0.0 };
            sample.server_cpu = if wall > 0.0 { cpu / wall } else { 0.0 };
            let run_wall = run_started.elapsed().as_secs_f64();
            sample.client_cpu = if run_wall > 0.0 { client_cpu / run_wall } else { 0.0 };
        }
    }
    Ok(sample)
}

fn describe(sc: &Scenario, s: &Sample) -> String {
    let errors = match &s.first_error {
        Some(e) if s.errors > 0.0 => format!("  ERRORS {} (first: {e})", s.errors),
        _ => String::new(),
    };
    if sc.idle {
        return format!(
            "{:.0} connections, {:.1} KiB/conn, RSS {:.1} MiB{errors}",
            s.connections,
            s.bytes_per_conn / 1024.0,
            s.rss_kib / 1024.0
        );
    }
    let jwks = match (s.jwks_measured, s.jwks_run) {
        (Some(m), Some(r)) => format!("  JWKS requests {m:.0} measured, {r:.0} in the run"),
        _ => String::new(),
    };
    format!(
        "{:>9.0}/s  {:>9.0}/server-CPU-s  server CPU {:>3.0}%  client CPU {:>3.0}%  p50 {:.0} µs  p99 {:.0} µs{jwks}{errors}",
        s.rate,
        s.per_cpu,
        s.server_cpu * 100.0,
        s.client_cpu * 100.0,
        s.p50_us,
        s.p99_us
    )
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5); `rest` starts at field 3. USER_HZ is 100 on Linux.
    Ok((tick(11) + tick(12)) / 100.0)
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> Result<f64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// A number field of a flat JSON object line, e.g. `"errors":0`.
fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// A string field of a flat JSON object line (simple escapes only); `None` for null.
fn field_str(line: &str, key: &str) -> Option<String> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, Linux {}, load average at the end {}",
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )
}

struct Report<'a> {
    plan: &'a Plan,
    results: &'a [(Scenario, Vec<(Target, Sample)>)],
    machine: &'a str,
}

/// Medians of one target in one scenario.
struct Row {
    target: Target,
    rate: f64,
    per_cpu: f64,
    server_cpu: f64,
    client_cpu: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    bytes_per_conn: f64,
    rss_kib: f64,
    connections: f64,
    errors: f64,
    reps: usize,
    /// Most JWKS requests in one run's measured phase, and from start to stop (S4j).
    jwks_measured_max: Option<f64>,
    jwks_run_max: Option<f64>,
}

impl Report<'_> {
    fn rows(samples: &[(Target, Sample)], targets: &[Target]) -> Vec<Row> {
        targets
            .iter()
            .map(|&t| {
                let of: Vec<&Sample> =
                    samples.iter().filter(|(x, _)| *x == t).map(|(_, s)| s).collect();
                let m = |f: fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
                let max =
                    |f: fn(&Sample) -> Option<f64>| of.iter().filter_map(|s| f(s)).reduce(f64::max);
                Row {
                    target: t,
                    rate: m(|s| s.rate),
                    per_cpu: m(|s| s.per_cpu),
                    server_cpu: m(|s| s.server_cpu),
                    client_cpu: m(|s| s.client_cpu),
                    p50: m(|s| s.p50_us),
                    p99: m(|s| s.p99_us),
                    p999: m(|s| s.p999_us),
                    bytes_per_conn: m(|s| s.bytes_per_conn),
                    rss_kib: m(|s| s.rss_kib),
                    connections: m(|s| s.connections),
                    errors: of.iter().map(|s| s.errors).sum(),
                    reps: of.len(),
                    jwks_measured_max: max(|s| s.jwks_measured),
                    jwks_run_max: max(|s| s.jwks_run),
                }
            })
            .collect()
    }

    /// The row ratios are taken against: the static RS256 key in S4j, else the baseline.
    fn baseline<'r>(sc: &Scenario, rows: &'r [Row]) -> Option<&'r Row> {
        let reference = if sc.id == "S4j" { Target::SecureRs256 } else { Target::Baseline };
        rows.iter().find(|r| r.target == reference)
    }

    fn table(&self) -> String {
        let mut out = String::new();
        for (sc, samples) in self.results {
            let rows = Self::rows(samples, sc.targets);
            let base = Self::baseline(sc, &rows);
            let _ = writeln!(out, "### {} — {}\n", sc.id, sc.title);
            if sc.idle {
                out.push_str("| server | connections | KiB per connection | server RSS MiB, all connected | ratio to baseline | errors |\n");
                out.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
                for r in &rows {
                    let ratio = base
                        .filter(|b| b.bytes_per_conn > 0.0)
                        .map(|b| format!("{:.3}", r.bytes_per_conn / b.bytes_per_conn))
                        .unwrap_or_else(|| "—".into());
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.1} | {:.1} | {ratio} | {:.0} |",
                        r.target.name(),
                        r.connections,
                        r.bytes_per_conn / 1024.0,
                        r.rss_kib / 1024.0,
                        r.errors
                    );
                }
            } else {
                let unit = if sc.id.starts_with("S4") { "handshakes" } else { "msgs" };
                let _ = writeln!(
                    out,
                    "| server | {unit}/s | {unit}/server-CPU-s | ratio per CPU-s | ratio per s | server CPU | client CPU | p50 µs | p99 µs | p99.9 µs | errors |"
                );
                out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
                for r in &rows {
                    let (rc, rw) = match base {
                        Some(b) if b.per_cpu > 0.0 && b.rate > 0.0 => (
                            format!("{:.2}", r.per_cpu / b.per_cpu),
                            format!("{:.2}", r.rate / b.rate),
                        ),
                        _ => ("—".into(), "—".into()),
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.0} | {rc} | {rw} | {:.0}% | {:.0}% | {:.0} | {:.0} | {:.0} | {:.0} |",
                        r.target.name(),
                        r.rate,
                        r.per_cpu,
                        r.server_cpu * 100.0,
                        r.client_cpu * 100.0,
                        r.p50,
                        r.p99,
                        r.p999,
                        r.errors
                    );
                }
            }
            let reps = rows.first().map(|r| r.reps).unwrap_or(0);
            let _ = writeln!(out, "\nMedians of {reps} runs per server.\n");
            if let Some(r) = rows.iter().find(|r| r.jwks_measured_max.is_some()) {
                let _ = writeln!(
                    out,
                    "Ratios are to {} (the static key). Requests to the JWKS server, most in one \
                     run: {:.0} while measuring, {:.0} from the server's start to its stop (its \
                     start fetches the keys once).\n",
                    Target::SecureRs256.name(),
                    r.jwks_measured_max.unwrap_or(0.0),
                    r.jwks_run_max.unwrap_or(0.0)
                );
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let p = self.plan;
        let mut out = String::new();
        out.push_str(include_str!("bench_intro.md"));
        let _ = writeln!(
            out,
            "\n## Figures\n\nWritten by `cargo xtask bench{}` — {} repetitions, {} s measured per run after {} s of warm-up,\n\
             idle scenarios with {} (S5) and {} connections held {} s (S6).\n\nMachine: {}.\n",
            if p.quick { " --quick" } else { "" },
            p.reps,
            p.secs,
            p.warmup,
            p.idle_conns,
            p.hold_conns,
            p.hold_secs,
            self.machine
        );
        out.push_str("## Targets\n\n");
        out.push_str(&self.targets());
        out.push_str("\n## Runs\n\n");
        out.push_str(&self.table());
        out
    }

    /// The issue's targets, each with the figure from this run and whether it is met.
    fn targets(&self) -> String {
        let mut out = String::from(
            "| scenario | server | target | this run | met |\n| --- | --- | --- | ---: | --- |\n",
        );
        let mut line = |id: &str, t: Target, goal: &str, value: String, met: bool| {
            let _ = writeln!(
                out,
                "| {id} | {} | {goal} | {value} | {} |",
                t.name(),
                if met { "yes" } else { "**no**" }
            );
        };
        for (sc, samples) in self.results {
            let rows = Self::rows(samples, sc.targets);
            let base = Self::baseline(sc, &rows);
            for r in rows.iter().filter(|r| r.target != Target::Baseline) {
                match sc.id {
                    "S1" | "S2" | "S3" => {
                        let Some(b) = base.filter(|b| b.per_cpu > 0.0) else { continue };
                        let ratio = r.per_cpu / b.per_cpu;
                        line(
                            sc.id,
                            r.target,
                            ">= 0.95x baseline msgs/server-CPU-s",
                            format!("{ratio:.2}x"),
                            ratio >= 0.95,
                        );
                    }
                    "S4" => {
                        let Some(b) = base.filter(|b| b.per_cpu > 0.0 && b.rate > 0.0) else {
                            continue;
                        };
                        let goal = if r.target == Target::Echo { 0.9 } else { 0.8 };
                        let ratio = r.per_cpu / b.per_cpu;
                        line(
                            sc.id,
                            r.target,
                            &format!(">= {goal}x baseline handshakes/server-CPU-s"),
                            format!("{ratio:.2}x"),
                            ratio >= goal,
                        );
                        let wall = r.rate / b.rate;
                        line(
                            sc.id,
                            r.target,
                            &format!(">= {goal}x baseline handshakes/s (wall)"),
                            format!("{wall:.2}x"),
                            wall >= goal,
                        );
                    }
                    "S4j" => {
                        if r.target != Target::SecureJwks {
                            continue;
                        }
                        let Some(b) = base.filter(|b| b.per_cpu > 0.0) else { continue };
                        let ratio = r.per_cpu / b.per_cpu;
                        line(
                            sc.id,
                            r.target,
                            ">= 0.90x static RS256 key handshakes/server-CPU-s",
                            format!("{ratio:.2}x"),
                            ratio >= 0.9,
                        );
                        if let Some(n) = r.jwks_measured_max {
                            line(
                                sc.id,
                                r.target,
                                "<= 1 JWKS request while measuring (the cache serves)",
                                format!("{n:.0} (most in one run)"),
                                n <= 1.0,
                            );
                        }
                    }
                    "S5" => {
                        let kib = if r.target == Target::Echo { 8.0 } else { 10.0 };
                        let got = r.bytes_per_conn / 1024.0;
                        line(
                            sc.id,
                            r.target,
                            &format!("<= {kib} KiB per idle connection"),
                            format!("{got:.1} KiB"),
                            got <= kib,
                        );
                    }
                    _ => {
                        line(
                            sc.id,
                            r.target,
                            "zero errors",
                            format!("{:.0} connections, {:.0} errors", r.connections, r.errors),
                            r.errors == 0.0,
                        );
                    }
                }
            }
        }
        out
    }

    fn json(&self) -> String {
        let mut out = String::from("{\n");
        let _ = writeln!(out, "  \"machine\": {:?},", self.machine);
        let _ = writeln!(
            out,
            "  \"plan\": {{\"quick\": {}, \"reps\": {}, \"secs\": {}, \"warmup\": {}, \"idle_connections\": {}, \"held_connections\": {}, \"hold_secs\": {}}},",
            self.plan.quick,
            self.plan.reps,
            self.plan.secs,
            self.plan.warmup,
            self.plan.idle_conns,
            self.plan.hold_conns,
            self.plan.hold_secs
        );
        out.push_str("  \"scenarios\": [\n");
        for (i, (sc, samples)) in self.results.iter().enumerate() {
            let rows = Self::rows(samples, sc.targets);
            let _ = writeln!(
                out,
                "    {{\"id\": {:?}, \"title\": {:?}, \"medians\": [",
                sc.id, sc.title
            );
            for (j, r) in rows.iter().enumerate() {
                let jwks = match (r.jwks_measured_max, r.jwks_run_max) {
                    (Some(m), Some(all)) => format!(
                        ", \"jwks_requests_measured_max\": {m:.0}, \"jwks_requests_per_run_max\": {all:.0}"
                    ),
                    _ => String::new(),
                };
                let _ = write!(
                    out,
                    "      {{\"server\": {:?}, \"rate_per_sec\": {:.1}, \"per_server_cpu_sec\": {:.1}, \"server_cpu\": {:.3}, \"client_cpu\": {:.3}, \"p50_us\": {:.0}, \"p99_us\": {:.0}, \"p999_us\": {:.0}, \"bytes_per_connection\": {:.0}, \"rss_kib\": {:.0}, \"connections\": {:.0}, \"errors\": {:.0}, \"runs\": {}{jwks}}}",
                    r.target.name(),
                    r.rate,
                    r.per_cpu,
                    r.server_cpu,
                    r.client_cpu,
                    r.p50,
                    r.p99,
                    r.p999,
                    r.bytes_per_conn,
                    r.rss_kib,
                    r.connections,
                    r.errors,
                    r.reps
                );
                out.push_str(if j + 1 < rows.len() { ",\n" } else { "\n" });
            }
            out.push_str(if i + 1 < self.results.len() { "    ]},\n" } else { "    ]}\n" });
        }
        out.push_str("  ]\n}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_a_result_line() {
        let line = r#"{"event":"result","mode":"echo","secs":2.5,"messages":1000,"errors":0,"first_error":null,"note":"a \"q\""}"#;
        assert_eq!(field(line, "secs"), Some(2.5));
        assert_eq!(field(line, "messages"), Some(1000.0));
        assert_eq!(field(line, "errors"), Some(0.0));
        assert_eq!(field(line, "missing"), None);
        assert_eq!(field_str(line, "event").as_deref(), Some("result"));
        assert_eq!(field_str(line, "first_error"), None);
        assert_eq!(field_str(line, "note").as_deref(), Some("a \"q\""));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn quick_and_only_do_not_overwrite_the_docs_unless_asked() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(parse(&args(&[])).unwrap().write);
        assert!(!parse(&args(&["--quick"])).unwrap().write);
        assert!(parse(&args(&["--quick", "--write"])).unwrap().write);
        assert!(!parse(&args(&["--only", "S1"])).unwrap().write);
        assert!(parse(&args(&["--bogus"])).is_err());
    }

    #[test]
    fn s4j_runs_in_full_and_quick_runs_and_alone() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        for plan in [parse(&args(&[])).unwrap(), parse(&args(&["--quick"])).unwrap()] {
            assert!(scenarios(&plan).iter().any(|s| s.id == "S4j" && plan.wants(s.id)));
        }
        let plan = parse(&args(&["--only", "s4j", "--reps", "3"])).unwrap();
        let wanted: Vec<&str> =
            scenarios(&plan).iter().filter(|s| plan.wants(s.id)).map(|s| s.id).collect();
        assert_eq!(wanted, ["S4j"]);
        assert!(!plan.write);
    }

    #[test]
    fn s4j_reports_the_jwks_ratio_to_the_static_key_and_the_jwks_requests() {
        let plan = parse(&[]).unwrap();
        let sc = scenarios(&plan).into_iter().find(|s| s.id == "S4j").unwrap();
        let sample = |per_cpu: f64, jwks: Option<f64>| Sample {
            rate: per_cpu,
            per_cpu,
            jwks_measured: jwks,
            jwks_run: jwks.map(|j| j + 1.0),
            ..Sample::default()
        };
        let samples = vec![
            (Target::SecureRs256, sample(1000.0, None)),
            (Target::SecureJwks, sample(950.0, Some(0.0))),
            (Target::SecureJwks, sample(930.0, Some(1.0))),
            (Target::SecureRs256, sample(1000.0, None)),
        ];
        let results = vec![(sc, samples)];
        let report = Report { plan: &plan, results: &results, machine: "test" };
        let targets = report.targets();
        assert!(
            targets.contains(
                "| S4j | palisade-jwks | >= 0.90x static RS256 key handshakes/server-CPU-s | 0.94x | yes |"
            ),
            "{targets}"
        );
        assert!(targets.contains("| 1 (most in one run) | yes |"), "{targets}");
        assert!(!targets.contains("palisade-rs256"), "{targets}");
        let table = report.table();
        assert!(table.contains("| server | handshakes/s |"), "{table}");
        assert!(table.contains("| palisade-jwks | 940 | 940 | 0.94 | 0.94 |"), "{table}");
        assert!(table.contains("1 while measuring, 2 from the server's start"), "{table}");
        let json = report.json();
        assert!(
            json.contains("\"jwks_requests_measured_max\": 1, \"jwks_requests_per_run_max\": 2}")
        );
    }

    #[test]
    fn configs_carry_the_auth_section() {
        let work = process::temp_dir("bench-config-test").unwrap();
        let auth = "[auth]\nalgorithm = \"RS256\"\n\n[[auth.issuers]]\nissuer = \"i\"\n";
        let path = write_config(&work, "x.toml", 10, auth).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let _ = fs::remove_dir_all(&work);
        assert!(
            text.contains("[admin]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nalgorithm = \"RS256\"\n")
        );
        assert!(
            text.contains("[[auth.issuers]]\nissuer = \"i\"\n\n[limits]\nmax_connections = 10\n")
        );
    }
}
