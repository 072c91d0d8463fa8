//! `cargo xtask bench`: Palisade's echo and secure endpoints against plain echo servers (the
//! baselines: tokio-tungstenite, fastwebsockets, uWebSockets.js, Python `websockets`), in one
//! sitting, alternating, with the servers on core 0 and the load generator (`palisade-load`,
//! crates/bench) on core 1. Writes docs/benchmarks.md, docs/benchmarks.json and
//! docs/benchmarks.svg.
//!
//! The baselines are built or installed by the benchmark itself: the two Rust ones with the
//! workspace (crates/bench), Python `websockets` into a venv and uWebSockets.js with npm, both
//! under target/bench-baselines/ and reused on later runs (see [`set_up_baselines`]). A
//! baseline that cannot be installed or started is skipped with its reason; one whose echoes
//! are wrong is reported and not timed.
//!
//! Every measurement starts a fresh server process, so memory figures start from the same
//! point. Server CPU time comes from /proc/PID/stat between the load generator's
//! `measure_start` and `measure_end` events; memory from VmRSS in /proc/PID/status.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::bench_fanout;
use crate::jwks::{JwksServer, jwks_json, rsa_public_jwk};
use crate::process::{self, PalisadeProcess, mint};
use crate::{cargo, root, status};

pub(crate) const USAGE: &str = "\
  bench [--quick] [--only S1,S2,F1,...] [--reps N] [--held N] [--rate R] [--write]
                           benchmarks against echo baselines (tokio-tungstenite, fastwebsockets,
                           uWebSockets.js, Python websockets) in the same run (release build,
                           servers on core 0, load on core 1), and channel fan-out (F1: 1000
                           subscribers, F10: 10000; one node and two nodes over Redis);
                           writes docs/benchmarks.md, .json and .svg (--quick: under 5
                           minutes, nothing written unless --write); --held: connections held
                           in S6 (default 19000: each process needs that many open files);
                           --rate: fan-out publications per second (default F1 1000, F10 100)
";

/// The servers under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Echo,
    Secure,
    /// tokio-tungstenite's echo-server example (`tungstenite-echo`, crates/bench): the
    /// baseline of the issue's targets.
    Tungstenite,
    /// fastwebsockets' echo_server example (`fastwebsockets-echo`, crates/bench).
    Fastwebsockets,
    /// uWebSockets.js's EchoServer example on Node.js (crates/bench/node).
    UwsNode,
    /// Python `websockets` 16, `serve` with default settings (crates/bench/python).
    PythonWebsockets,
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
            Target::Tungstenite => "tungstenite",
            Target::Fastwebsockets => "fastwebsockets",
            Target::UwsNode => "uwebsockets.js",
            Target::PythonWebsockets => "python-websockets",
            Target::SecureRs256 => "palisade-rs256",
            Target::SecureJwks => "palisade-jwks",
        }
    }

    fn is_baseline(self) -> bool {
        BASELINES.contains(&self)
    }
}

/// Every baseline, in the order of the tables.
const BASELINES: [Target; 4] =
    [Target::Tungstenite, Target::Fastwebsockets, Target::UwsNode, Target::PythonWebsockets];

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
    /// Fan-out publications per second for F1 and F10 (default: each scenario's own).
    rate: Option<u32>,
    /// Seconds of publishing per fan-out run.
    fanout_secs: f64,
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
        rate: None,
        fanout_secs: 10.0,
    };
    let mut write = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                // Six servers per scenario (four baselines): kept under 5 minutes in all.
                plan.quick = true;
                plan.reps = 2;
                plan.secs = 1.5;
                plan.warmup = 0.3;
                plan.idle_conns = 2_000;
                plan.hold_conns = 2_000;
                plan.hold_secs = 3.0;
                plan.fanout_secs = 2.0;
            }
            "--rate" => {
                let v = it.next().ok_or("--rate needs a number of publications per second")?;
                let rate: u32 = v.parse().map_err(|_| format!("--rate: not a number: {v:?}"))?;
                if rate == 0 || rate > 1_000_000 {
                    return Err("--rate must be between 1 and 1000000".into());
                }
                plan.rate = Some(rate);
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

impl Plan {
    /// The fan-out scenarios of this run: F1 and F10 with one and two nodes; `--quick` runs F1
    /// on one node once (unless `--only` names the scenarios).
    fn fanout(&self) -> bench_fanout::Plan {
        let quick = self.quick && self.only.is_none();
        bench_fanout::Plan {
            scenarios: bench_fanout::scenarios(self.fanout_secs, self.rate)
                .into_iter()
                .filter(|s| self.wants(s.id) && (!quick || s.id == "F1"))
                .collect(),
            reps: if self.quick { 1 } else { self.reps },
            two_nodes: !self.quick,
        }
    }
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
    let all = &[
        Target::Echo,
        Target::Secure,
        Target::Tungstenite,
        Target::Fastwebsockets,
        Target::UwsNode,
        Target::PythonWebsockets,
    ];
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
            targets: all,
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

/// Builds the release `palisade` and every `palisade-bench` binary (load generator, baselines).
pub(crate) fn build_release() -> Result<(), String> {
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
    status(build)
}

pub(crate) fn bench(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--restart") {
        return crate::bench_restart::run(args);
    }
    let plan = parse(args)?;
    let started = Instant::now();
    build_release()?;
    println!("xtask bench: built in {:.0?}", started.elapsed());
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
    let wanted: Vec<Scenario> = scenarios(&plan).into_iter().filter(|s| plan.wants(s.id)).collect();
    let mut env = Env {
        bins,
        work: work.clone(),
        config,
        token,
        rs256,
        python: None,
        uws: None,
        baselines: Vec::new(),
    };
    if wanted.iter().any(|sc| sc.targets.iter().any(|t| t.is_baseline())) {
        set_up_baselines(&mut env);
    }

    let mut results = Vec::new();
    for sc in wanted {
        println!("xtask bench: {} — {}", sc.id, sc.title);
        let mut samples: Vec<(Target, Sample)> = Vec::new();
        // Baselines that are missing or answer wrongly are left out (reported once, above).
        let targets: Vec<Target> = sc.targets.iter().copied().filter(|t| env.timed(*t)).collect();
        for rep in 0..plan.reps {
            // Alternate the order so no target always runs first (or last).
            let n = targets.len();
            for i in 0..n {
                let target = targets[(i + rep) % n];
                let sample = measure(&env, &sc, target)?;
                println!("  rep {} {:<17} {}", rep + 1, target.name(), describe(&sc, &sample));
                samples.push((target, sample));
            }
        }
        results.push((sc, samples));
    }
    let fanout_plan = plan.fanout();
    let fanout = if fanout_plan.scenarios.is_empty() {
        Vec::new()
    } else {
        let fan_env =
            bench_fanout::Env { bins: &env.bins, work: &work, auth: &auth, token: &env.token };
        bench_fanout::run(&fan_env, &fanout_plan)?
    };
    let machine = machine();
    let report = Report {
        plan: &plan,
        results: &results,
        fanout: &fanout,
        machine: &machine,
        baselines: &env.baselines,
    };
    let md = report.markdown();
    println!(
        "\n{}\n{}\n{}{}",
        report.baselines(),
        report.glance(),
        report.table(),
        bench_fanout::table(&fanout)
    );
    if plan.write {
        let docs = root().join("docs");
        fs::write(docs.join("benchmarks.md"), md)
            .map_err(|e| format!("docs/benchmarks.md: {e}"))?;
        fs::write(docs.join("benchmarks.json"), report.json())
            .map_err(|e| format!("docs/benchmarks.json: {e}"))?;
        fs::write(docs.join("benchmarks.svg"), report.svg())
            .map_err(|e| format!("docs/benchmarks.svg: {e}"))?;
        println!(
            "xtask bench: wrote docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.svg"
        );
    }
    let _ = fs::remove_dir_all(&work);
    println!("xtask bench: finished in {:.0?}", started.elapsed());
    let errors: f64 =
        results.iter().flat_map(|(_, s)| s.iter()).map(|(_, s)| s.errors).sum::<f64>()
            + bench_fanout::errors(&fanout);
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
    /// The venv's Python, with `websockets` 16 installed (when it could be set up).
    python: Option<PathBuf>,
    /// uws-echo.js next to its node_modules (when Node.js and npm could set it up).
    uws: Option<PathBuf>,
    /// What the pre-check found for each baseline (empty when no scenario has baselines).
    baselines: Vec<(Target, BaselineStatus)>,
}

impl Env {
    /// Whether `target` is measured: Palisade always, a baseline when it passed the pre-check.
    fn timed(&self, target: Target) -> bool {
        !target.is_baseline()
            || self.baselines.iter().any(|(t, s)| *t == target && *s == BaselineStatus::Ready)
    }
}

/// The outcome of a baseline's pre-check.
#[derive(Clone, Debug, PartialEq)]
enum BaselineStatus {
    /// Installed, started and echoed correctly: timed in every scenario.
    Ready,
    /// Not available here (the reason says why): not timed.
    Skipped(String),
    /// Started but answered wrongly (the first wrong answer): not timed.
    WrongAnswers(String),
}

impl BaselineStatus {
    fn describe(&self) -> String {
        match self {
            BaselineStatus::Ready => "measured (echoes checked)".into(),
            BaselineStatus::Skipped(why) => format!("skipped: {why}"),
            BaselineStatus::WrongAnswers(first) => {
                format!("wrong answers, not timed (first: {first})")
            }
        }
    }
}

/// Where each baseline comes from, for the report.
fn baseline_source(t: Target) -> &'static str {
    match t {
        Target::Tungstenite => {
            "tokio-tungstenite 0.28 (crates.io), its echo-server example: `tungstenite-echo` in crates/bench"
        }
        Target::Fastwebsockets => {
            "fastwebsockets 0.10 with hyper 1 (crates.io), its echo_server example: `fastwebsockets-echo` in crates/bench"
        }
        Target::UwsNode => {
            "uWebSockets.js v20.30.0's Node.js addon (npm `@trufflesuite/uws-js-unofficial`, version pinned in crates/bench/node/package-lock.json), its EchoServer example on Node.js: crates/bench/node/uws-echo.js"
        }
        Target::PythonWebsockets => {
            "Python `websockets` >=16,<17 (PyPI, in a venv under target/bench-baselines/), `serve` with default settings: crates/bench/python/echo.py"
        }
        _ => "",
    }
}

/// The C++ uWebSockets cannot be built here: say so wherever the baselines are listed.
const UWS_CPP_SKIPPED: &str = "uWebSockets (C++ example compiled with the system compiler): \
     skipped: its source (uWebSockets and uSockets) is in none of the package registries the \
     benchmark may use (crates.io, PyPI, npm, Debian) and nothing is downloaded from elsewhere; \
     uwebsockets.js, the same C++ core behind a Node.js addon, stands in for it";

/// Installs the baselines that are not built with the workspace and checks every baseline's
/// echoes, recording each one's status in `env.baselines`.
fn set_up_baselines(env: &mut Env) {
    let dir = target_dir().join("bench-baselines");
    println!("xtask bench: {UWS_CPP_SKIPPED}");
    let mut early: Vec<(Target, String)> = Vec::new();
    match set_up_python(&dir.join("python")) {
        Ok(python) => env.python = Some(python),
        Err(e) => early.push((Target::PythonWebsockets, e)),
    }
    match set_up_uws(&dir.join("uws")) {
        Ok(script) => env.uws = Some(script),
        Err(e) => early.push((Target::UwsNode, e)),
    }
    for target in BASELINES {
        let status = match early.iter().find(|(t, _)| *t == target) {
            Some((_, why)) => BaselineStatus::Skipped(why.clone()),
            None => check_echoes(env, target),
        };
        println!("xtask bench: baseline {:<17} {}", target.name(), status.describe());
        env.baselines.push((target, status));
    }
}

/// A venv under `dir` with `websockets` 16 (created or reused); returns its Python.
fn set_up_python(dir: &Path) -> Result<PathBuf, String> {
    let python = dir.join("bin/python");
    let version_ok = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                "import websockets, sys; sys.exit(websockets.__version__.split('.')[0] != '16')",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if version_ok(&python) {
        return Ok(python);
    }
    let quiet = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!("{what} failed ({}){}", out.status, last_line(&out.stderr)))
    };
    if !runs("python3") {
        return Err("`python3` is not installed".into());
    }
    let _ = fs::remove_dir_all(dir);
    quiet(Command::new("python3").args(["-m", "venv"]).arg(dir), "python3 -m venv")?;
    quiet(
        Command::new(dir.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PYTHON_WEBSOCKETS,
        ]),
        &format!("pip install '{PYTHON_WEBSOCKETS}'"),
    )?;
    if !version_ok(&python) {
        return Err(format!("the venv's Python cannot import {PYTHON_WEBSOCKETS}"));
    }
    Ok(python)
}

/// Whether `TOOL --version` runs and succeeds.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `": LINE"` for the last non-empty line of a tool's error output, or nothing.
fn last_line(stderr: &[u8]) -> String {
    let err = String::from_utf8_lossy(stderr);
    err.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

/// The Python baseline's requirement (a venv under target/bench-baselines/python).
const PYTHON_WEBSOCKETS: &str = "websockets>=16,<17";

/// crates/bench/node (package.json, package-lock.json, uws-echo.js) copied under `dir`, with
/// `npm ci` run there once; returns the script.
fn set_up_uws(dir: &Path) -> Result<PathBuf, String> {
    for tool in ["node", "npm"] {
        if !runs(tool) {
            return Err(format!("`{tool}` (Node.js) is not installed"));
        }
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let source = root().join("crates/bench/node");
    let mut changed = false;
    for name in ["package.json", "package-lock.json", "uws-echo.js"] {
        let text =
            fs::read(source.join(name)).map_err(|e| format!("crates/bench/node/{name}: {e}"))?;
        let to = dir.join(name);
        if name != "uws-echo.js" && fs::read(&to).ok().as_deref() != Some(&text[..]) {
            changed = true;
        }
        fs::write(&to, text).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    if changed || !dir.join("node_modules/@trufflesuite/uws-js-unofficial/binaries").is_dir() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--omit=optional", "--loglevel=error"])
            .current_dir(dir)
            .output()
            .map_err(|e| format!("npm ci: {e}"))?;
        if !out.status.success() {
            return Err(format!("npm ci failed ({}){}", out.status, last_line(&out.stderr)));
        }
    }
    Ok(dir.join("uws-echo.js"))
}

/// Starts `target` once and sends it text and binary echoes and a handshake burst: any reply
/// that is not the message sent (byte for byte, opcode included) makes it `WrongAnswers`.
fn check_echoes(env: &Env, target: Target) -> BaselineStatus {
    let server = match Server::start(env, target) {
        Ok(s) => s,
        Err(e) => return BaselineStatus::Skipped(format!("did not start: {e}")),
    };
    let url = server.url(target);
    let checks: [&[&str]; 3] = [
        &["echo", "--connections", "2", "--inflight", "4", "--size", "32"],
        &["echo", "--connections", "2", "--inflight", "1", "--size", "65536", "--binary"],
        &["handshake", "--concurrency", "4"],
    ];
    let mut status = BaselineStatus::Ready;
    for check in checks {
        let out = Command::new(env.bins.join("palisade-load"))
            .args(check)
            .args(["--duration", "0.2", "--warmup", "0.1", "--url", &url])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let stdout = match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => {
                status = BaselineStatus::Skipped(format!("cannot run palisade-load: {e}"));
                break;
            }
        };
        let result = stdout.lines().find(|l| field_str(l, "event").as_deref() == Some("result"));
        if let Some(wrong) = wrong_answer(result) {
            status = BaselineStatus::WrongAnswers(wrong);
            break;
        }
    }
    let _ = server.stop();
    status
}

/// `None` when a check's result line shows replies and no errors; else what went wrong.
fn wrong_answer(result: Option<&str>) -> Option<String> {
    let Some(line) = result else {
        return Some("palisade-load printed no result".into());
    };
    let errors = field(line, "errors").unwrap_or(0.0);
    let count = field(line, "messages")
        .filter(|m| *m > 0.0)
        .or_else(|| field(line, "handshakes"))
        .unwrap_or(0.0);
    if errors > 0.0 {
        let first = field_str(line, "first_error").unwrap_or_else(|| "unknown".into());
        return Some(format!("{errors:.0} errors; {first}"));
    }
    if count == 0.0 {
        return Some("no replies".into());
    }
    None
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

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or(root().join("target"))
}

/// The benchmark configuration: the defaults (every layer on), with the limits that would
/// refuse a benchmark from one machine raised (connection caps, per-IP rates, session caps).
pub(crate) fn write_config(
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
        if target.is_baseline() {
            // Each prints `NAME listening on HOST:PORT` once it listens.
            let name = match target {
                Target::Tungstenite => {
                    cmd.arg(env.bins.join("tungstenite-echo"));
                    "tungstenite-echo"
                }
                Target::Fastwebsockets => {
                    cmd.arg(env.bins.join("fastwebsockets-echo"));
                    "fastwebsockets-echo"
                }
                Target::UwsNode => {
                    let script = env.uws.as_ref().ok_or("uWebSockets.js is not installed")?;
                    cmd.arg("node").arg(script);
                    "uws-echo"
                }
                _ => {
                    let python = env.python.as_ref().ok_or("the Python venv is not set up")?;
                    cmd.arg(python).arg(root().join("crates/bench/python/echo.py"));
                    "python-websockets-echo"
                }
            };
            let err_path = env.work.join(format!("{name}.stderr"));
            let err =
                fs::File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
            cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
            let mut child = cmd.spawn().map_err(|e| format!("cannot start taskset: {e}"))?;
            let stdout = child.stdout.take().ok_or("no stdout pipe")?;
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let addr = match (read, line.trim().strip_prefix(&format!("{name} listening on "))) {
                (Ok(_), Some(addr)) => addr.to_owned(),
                (read, _) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
                    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                    return Err(format!(
                        "{name} printed {line:?} ({}){}",
                        read.err().map(|e| e.to_string()).unwrap_or_else(|| "no error".into()),
                        last.map(|l| format!("; stderr: {}", l.trim())).unwrap_or_default()
                    ));
                }
            };
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
        Target::Tungstenite
        | Target::Fastwebsockets
        | Target::UwsNode
        | Target::PythonWebsockets => {}
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let mut load = cmd.spawn().map_err(|e| format!("cannot start palisade-load: {e}"))?;
    let load_pid = load.id();
    let rx = process::lines_of(load.stdout.take().ok_or("no stdout pipe")?);
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
pub(crate) fn cpu_secs(pid: u32) -> Result<f64, String> {
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
pub(crate) fn field(line: &str, key: &str) -> Option<f64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = line[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// A string field of a flat JSON object line (simple escapes only); `None` for null.
pub(crate) fn field_str(line: &str, key: &str) -> Option<String> {
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

/// One chart panel: a title and one bar per server (name, value, whether it is Palisade).
struct Panel {
    title: String,
    bars: Vec<(String, f64, bool)>,
    decimals: usize,
}

/// Horizontal bar charts, one panel per scenario, each scaled to its own largest value, as
/// SVG text.
fn svg_chart(caption: &str, panels: &[Panel]) -> String {
    const WIDTH: usize = 760;
    const LABEL: usize = 150;
    const BAR_MAX: f64 = 470.0;
    const BAR: usize = 14;
    const STEP: usize = 18;
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut body = String::new();
    let mut y = 40;
    for p in panels {
        let _ = writeln!(
            body,
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>",
            y + 12,
            esc(&p.title)
        );
        y += 20;
        let max = p.bars.iter().map(|b| b.1).fold(0.0, f64::max);
        for (name, value, palisade) in &p.bars {
            let w = if max > 0.0 { (value / max * BAR_MAX).max(1.0) } else { 1.0 };
            let fill = if *palisade { "#2a7f62" } else { "#8a96a8" };
            let _ = writeln!(
                body,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
                 <rect x=\"{LABEL}\" y=\"{y}\" width=\"{w:.1}\" height=\"{BAR}\" fill=\"{fill}\"/>\
                 <text x=\"{:.1}\" y=\"{}\">{value:.prec$}</text>",
                LABEL - 6,
                y + 11,
                esc(name),
                LABEL as f64 + w + 4.0,
                y + 11,
                prec = p.decimals
            );
            y += STEP;
        }
        y += 14;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y}\" \
         viewBox=\"0 0 {WIDTH} {y}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"13\">{}</text>\n{body}</svg>\n",
        esc(caption)
    )
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
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
    /// F1 and F10 (channel fan-out), when run.
    fanout: &'a [bench_fanout::Run],
    machine: &'a str,
    /// Each baseline's pre-check (empty when no scenario had baselines).
    baselines: &'a [(Target, BaselineStatus)],
}

/// The best baseline of one scenario per measure (target and value), for ratios.
struct Best {
    per_cpu: Option<(Target, f64)>,
    rate: Option<(Target, f64)>,
    bytes_per_conn: Option<(Target, f64)>,
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
    /// One row per target measured at least once (a skipped baseline has none).
    fn rows(samples: &[(Target, Sample)], targets: &[Target]) -> Vec<Row> {
        targets
            .iter()
            .filter(|&&t| samples.iter().any(|(x, _)| *x == t))
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

    /// The row the issue's targets are taken against: the static RS256 key in S4j, else
    /// tokio-tungstenite.
    fn baseline<'r>(sc: &Scenario, rows: &'r [Row]) -> Option<&'r Row> {
        let reference = if sc.id == "S4j" { Target::SecureRs256 } else { Target::Tungstenite };
        rows.iter().find(|r| r.target == reference)
    }

    /// What the tables' ratios divide by: in S4j the static RS256 key; elsewhere the best
    /// baseline of each column (most per CPU-second, most per second, fewest bytes per
    /// connection among baselines with replies and no errors).
    fn best(sc: &Scenario, rows: &[Row]) -> Best {
        if sc.id == "S4j" {
            let r = rows.iter().find(|r| r.target == Target::SecureRs256);
            let pick = |f: fn(&Row) -> f64| r.map(|r| (r.target, f(r))).filter(|(_, v)| *v > 0.0);
            return Best {
                per_cpu: pick(|r| r.per_cpu),
                rate: pick(|r| r.rate),
                bytes_per_conn: pick(|r| r.bytes_per_conn),
            };
        }
        let clean: Vec<&Row> =
            rows.iter().filter(|r| r.target.is_baseline() && r.errors == 0.0).collect();
        let pick = |f: fn(&Row) -> f64, most: bool| {
            clean
                .iter()
                .map(|r| (r.target, f(r)))
                .filter(|(_, v)| *v > 0.0)
                .reduce(|a, b| if (b.1 > a.1) == most { b } else { a })
        };
        Best {
            per_cpu: pick(|r| r.per_cpu, true),
            rate: pick(|r| r.rate, true),
            bytes_per_conn: pick(|r| r.bytes_per_conn, false),
        }
    }

    fn table(&self) -> String {
        let mut out = String::new();
        for (sc, samples) in self.results {
            let rows = Self::rows(samples, sc.targets);
            let best = Self::best(sc, &rows);
            let _ = writeln!(out, "### {} — {}\n", sc.id, sc.title);
            if sc.idle {
                out.push_str("| server | connections | KiB per connection | server RSS MiB, all connected | ratio to best baseline | errors |\n");
                out.push_str("| --- | ---: | ---: | ---: | ---: | ---: |\n");
                for r in &rows {
                    let ratio = best
                        .bytes_per_conn
                        .map(|(_, b)| format!("{:.3}", r.bytes_per_conn / b))
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
                    let ratio = |b: Option<(Target, f64)>, v: f64| {
                        b.map(|(_, b)| format!("{:.2}", v / b)).unwrap_or_else(|| "—".into())
                    };
                    let (rc, rw) = (ratio(best.per_cpu, r.per_cpu), ratio(best.rate, r.rate));
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
            let _ = write!(out, "\nMedians of {reps} runs per server.");
            if sc.id != "S4j" {
                let name = |b: Option<(Target, f64)>| b.map(|(t, _)| t.name()).unwrap_or("—");
                if sc.idle {
                    let _ = write!(
                        out,
                        " Ratios are to the baseline with the fewest bytes per connection ({}).",
                        name(best.bytes_per_conn)
                    );
                } else {
                    let _ = write!(
                        out,
                        " Ratios are to the best baseline of each column: per CPU-s {}, per s {}.",
                        name(best.per_cpu),
                        name(best.rate)
                    );
                }
            }
            out.push_str("\n\n");
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
        // The intro's title and first paragraph, then the one-glance table and chart, then
        // the rest of the intro (how to run, method).
        let intro = include_str!("bench_intro.md");
        let (head, rest) = intro.split_at(intro.find("\n## ").map(|i| i + 1).unwrap_or(0));
        out.push_str(head);
        out.push_str("## At a glance\n\n");
        out.push_str(&self.glance());
        out.push_str(
            "\n![Messages (S4: handshakes) per server-CPU-second and KiB per connection, per \
             server and scenario](benchmarks.svg)\n\n",
        );
        out.push_str(&self.baselines());
        out.push('\n');
        out.push_str(rest);
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
        out.push_str(&bench_fanout::table(self.fanout));
        out
    }

    /// Palisade's ratio to the best baseline per scenario: per server-CPU-second where there
    /// is a rate (higher is better), per connection where memory is measured (lower is better).
    fn glance(&self) -> String {
        let mut out = String::from(
            "Palisade's ratio to the best baseline per scenario (medians; the best baseline's own \
             figure in the last column).\n\n\
             | scenario | measure | palisade-echo | palisade-secure | best baseline |\n\
             | --- | --- | ---: | ---: | --- |\n",
        );
        for (sc, samples) in self.results.iter().filter(|(sc, _)| sc.id != "S4j") {
            let rows = Self::rows(samples, sc.targets);
            let best = Self::best(sc, &rows);
            let (measure, b, value): (&str, _, fn(&Row) -> f64) = if sc.idle {
                ("KiB per connection (lower is better)", best.bytes_per_conn, |r| r.bytes_per_conn)
            } else if sc.id.starts_with("S4") {
                ("handshakes per server-CPU-s (higher is better)", best.per_cpu, |r| r.per_cpu)
            } else {
                ("messages per server-CPU-s (higher is better)", best.per_cpu, |r| r.per_cpu)
            };
            let ratio = |t: Target| match (rows.iter().find(|r| r.target == t), b) {
                (Some(r), Some((_, b))) => format!("{:.2}x", value(r) / b),
                _ => "—".into(),
            };
            let best_cell = match b {
                Some((t, v)) if sc.idle => format!("{}: {:.1} KiB", t.name(), v / 1024.0),
                Some((t, v)) => format!("{}: {v:.0}", t.name()),
                None => "none measured".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {measure} | {} | {} | {best_cell} |",
                sc.id,
                ratio(Target::Echo),
                ratio(Target::Secure)
            );
        }
        out
    }

    /// Each baseline, where it comes from and what its pre-check found.
    fn baselines(&self) -> String {
        let mut out =
            String::from("Baselines (each one's echoes are checked before it is timed):\n\n");
        for (t, status) in self.baselines {
            let _ = writeln!(
                out,
                "- **{}**: {}; {}.",
                t.name(),
                baseline_source(*t),
                status.describe()
            );
        }
        let _ = writeln!(out, "- {UWS_CPP_SKIPPED}.");
        out
    }

    /// docs/benchmarks.svg: per scenario, one bar per server — messages (S4: handshakes) per
    /// server-CPU-second, or KiB per connection in S5 and S6.
    fn svg(&self) -> String {
        let panels: Vec<Panel> = self
            .results
            .iter()
            .filter(|(sc, _)| sc.id != "S4j")
            .map(|(sc, samples)| {
                let rows = Self::rows(samples, sc.targets);
                let (what, value): (&str, fn(&Row) -> f64) = if sc.idle {
                    ("KiB per connection, lower is better", |r| r.bytes_per_conn / 1024.0)
                } else if sc.id.starts_with("S4") {
                    ("handshakes per server-CPU-second", |r| r.per_cpu)
                } else {
                    ("messages per server-CPU-second", |r| r.per_cpu)
                };
                Panel {
                    title: format!("{} — {what}", sc.id),
                    bars: rows
                        .iter()
                        .map(|r| (r.target.name().to_owned(), value(r), !r.target.is_baseline()))
                        .collect(),
                    decimals: if sc.idle { 1 } else { 0 },
                }
            })
            .collect();
        svg_chart(&format!("cargo xtask bench — {}", self.machine), &panels)
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
            for r in rows.iter().filter(|r| !r.target.is_baseline()) {
                match sc.id {
                    // Issue #20: Palisade's echo endpoint against the best baseline per
                    // server-CPU-second; >= 1.0x for S2 and S4, >= 0.95x for S1 and S3.
                    "S1" | "S2" | "S3" | "S4" => {
                        if r.target != Target::Echo {
                            continue;
                        }
                        let Some((best, b)) = Self::best(sc, &rows).per_cpu else { continue };
                        let goal = if matches!(sc.id, "S2" | "S4") { 1.0 } else { 0.95 };
                        let what = if sc.id == "S4" { "handshakes" } else { "msgs" };
                        let ratio = r.per_cpu / b;
                        line(
                            sc.id,
                            r.target,
                            &format!(
                                ">= {goal:.2}x the best baseline ({}) {what}/server-CPU-s",
                                best.name()
                            ),
                            format!("{ratio:.2}x"),
                            ratio >= goal,
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
                        let kib = if r.target == Target::Echo { 6.0 } else { 8.0 };
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
        let baselines: Vec<String> = self
            .baselines
            .iter()
            .map(|(t, s)| format!("{{\"server\": {:?}, \"status\": {:?}}}", t.name(), s.describe()))
            .collect();
        let _ = writeln!(out, "  \"baselines\": [{}],", baselines.join(", "));
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
        out.push_str("  ],\n  \"fanout\": [\n");
        let fanout = bench_fanout::json(self.fanout);
        if !fanout.is_empty() {
            out.push_str(&fanout);
            out.push('\n');
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
        let report =
            Report { plan: &plan, results: &results, fanout: &[], machine: "test", baselines: &[] };
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

    /// A rate sample: `per_cpu` per server-CPU-second, `rate` per second.
    fn timed(rate: f64, per_cpu: f64, errors: f64) -> Sample {
        Sample { rate, per_cpu, errors, ..Sample::default() }
    }

    fn idle(kib: f64) -> Sample {
        Sample { bytes_per_conn: kib * 1024.0, connections: 100.0, ..Sample::default() }
    }

    #[test]
    fn every_scenario_but_s4j_has_every_baseline() {
        for sc in scenarios(&parse(&[]).unwrap()) {
            let has_all = BASELINES.iter().all(|b| sc.targets.contains(b));
            assert_eq!(has_all, sc.id != "S4j", "{}", sc.id);
            assert!(sc.targets.contains(&Target::Echo) || sc.id == "S4j");
        }
    }

    #[test]
    fn ratios_are_to_the_best_clean_baseline_and_skipped_baselines_have_no_row() {
        let plan = parse(&[]).unwrap();
        let mut all = scenarios(&plan).into_iter();
        let s2 = all.find(|s| s.id == "S2").unwrap();
        let s5 = scenarios(&plan).into_iter().find(|s| s.id == "S5").unwrap();
        let results = vec![
            (
                s2,
                vec![
                    (Target::Echo, timed(900.0, 1800.0, 0.0)),
                    (Target::Secure, timed(800.0, 1000.0, 0.0)),
                    (Target::Tungstenite, timed(500.0, 1000.0, 0.0)),
                    (Target::Fastwebsockets, timed(600.0, 2000.0, 0.0)),
                    // More per CPU-second, but with errors: never the reference.
                    (Target::PythonWebsockets, timed(50.0, 9000.0, 3.0)),
                ],
            ),
            (
                s5,
                vec![
                    (Target::Echo, idle(8.0)),
                    (Target::Secure, idle(10.0)),
                    (Target::Tungstenite, idle(128.0)),
                    (Target::Fastwebsockets, idle(4.0)),
                ],
            ),
        ];
        let baselines = [
            (Target::Tungstenite, BaselineStatus::Ready),
            (Target::Fastwebsockets, BaselineStatus::Ready),
            (Target::UwsNode, BaselineStatus::Skipped("`node` (Node.js) is not installed".into())),
            (Target::PythonWebsockets, BaselineStatus::WrongAnswers("1 errors; x".into())),
        ];
        let report = Report {
            plan: &plan,
            results: &results,
            fanout: &[],
            machine: "m",
            baselines: &baselines,
        };
        let table = report.table();
        assert!(table.contains("| palisade-echo | 900 | 1800 | 0.90 | 1.50 |"), "{table}");
        assert!(table.contains("| tungstenite | 500 | 1000 | 0.50 | 0.83 |"), "{table}");
        assert!(table.contains("per CPU-s fastwebsockets, per s fastwebsockets."), "{table}");
        assert!(table.contains("| palisade-echo | 100 | 8.0 | 0.0 | 2.000 | 0 |"), "{table}");
        assert!(table.contains("fewest bytes per connection (fastwebsockets)"), "{table}");
        assert!(!table.contains("uwebsockets.js"), "{table}");

        let glance = report.glance();
        assert!(
            glance.contains(
                "| S2 | messages per server-CPU-s (higher is better) | 0.90x | 0.50x | fastwebsockets: 2000 |"
            ),
            "{glance}"
        );
        assert!(
            glance.contains(
                "| S5 | KiB per connection (lower is better) | 2.00x | 2.50x | fastwebsockets: 4.0 KiB |"
            ),
            "{glance}"
        );

        // The issue's targets: the echo endpoint against the best baseline.
        let targets = report.targets();
        assert!(
            targets.contains(
                "| S2 | palisade-echo | >= 1.00x the best baseline (fastwebsockets) msgs/server-CPU-s | 0.90x | **no** |"
            ),
            "{targets}"
        );
        assert!(!targets.contains("| S2 | palisade-secure"), "{targets}");
        assert!(
            targets.contains(
                "| S5 | palisade-echo | <= 6 KiB per idle connection | 8.0 KiB | **no** |"
            ),
            "{targets}"
        );

        let listed = report.baselines();
        assert!(listed.contains("- **uwebsockets.js**: "), "{listed}");
        assert!(listed.contains("; skipped: `node` (Node.js) is not installed."), "{listed}");
        assert!(listed.contains("; wrong answers, not timed (first: 1 errors; x)."), "{listed}");
        assert!(listed.contains("uWebSockets (C++ example"), "{listed}");
        assert!(report.json().contains(
            "{\"server\": \"uwebsockets.js\", \"status\": \"skipped: `node` (Node.js) is not installed\"}"
        ));

        let md = report.markdown();
        let glance_at = md.find("## At a glance").unwrap();
        assert!(md.starts_with("# Benchmarks"));
        assert!(glance_at < md.find("## How to run").unwrap(), "{md}");
        assert!(md.contains("](benchmarks.svg)"));

        let svg = report.svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
        assert!(svg.contains(">S2 — messages per server-CPU-second</text>"), "{svg}");
        assert!(svg.contains(">S5 — KiB per connection, lower is better</text>"), "{svg}");
        assert_eq!(svg.matches("<rect x=").count(), 5 + 4, "{svg}");
    }

    #[test]
    fn svg_bars_scale_to_each_panel_and_text_is_escaped() {
        let panels = [Panel {
            title: "S1 <a & b>".into(),
            bars: vec![("palisade".into(), 50.0, true), ("base".into(), 100.0, false)],
            decimals: 1,
        }];
        let svg = svg_chart("caption", &panels);
        assert!(svg.contains("S1 &lt;a &amp; b&gt;"), "{svg}");
        assert!(svg.contains("width=\"235.0\" height=\"14\" fill=\"#2a7f62\""), "{svg}");
        assert!(svg.contains("width=\"470.0\" height=\"14\" fill=\"#8a96a8\""), "{svg}");
        assert!(svg.contains(">50.0</text>") && svg.contains(">100.0</text>"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_baseline_check_fails_on_errors_no_replies_or_no_result() {
        let ok = r#"{"event":"result","mode":"echo","messages":10,"errors":0,"first_error":null}"#;
        assert_eq!(wrong_answer(Some(ok)), None);
        let hs = r#"{"event":"result","mode":"handshake","handshakes":5,"errors":0}"#;
        assert_eq!(wrong_answer(Some(hs)), None);
        let wrong =
            r#"{"event":"result","messages":0,"errors":1,"first_error":"reply did not match"}"#;
        assert_eq!(wrong_answer(Some(wrong)).as_deref(), Some("1 errors; reply did not match"));
        let silent = r#"{"event":"result","messages":0,"errors":0,"first_error":null}"#;
        assert_eq!(wrong_answer(Some(silent)).as_deref(), Some("no replies"));
        assert!(wrong_answer(None).is_some());
    }

    #[test]
    fn tool_errors_end_with_their_last_line_if_any() {
        assert_eq!(last_line(b"warning\nerror: no venv\n\n"), ": error: no venv");
        assert_eq!(last_line(b"  \n"), "");
    }

    #[test]
    fn only_ready_baselines_are_timed() {
        let env = Env {
            bins: PathBuf::new(),
            work: PathBuf::new(),
            config: PathBuf::new(),
            token: String::new(),
            rs256: None,
            python: None,
            uws: None,
            baselines: vec![
                (Target::Tungstenite, BaselineStatus::Ready),
                (Target::PythonWebsockets, BaselineStatus::WrongAnswers("x".into())),
            ],
        };
        assert!(env.timed(Target::Echo) && env.timed(Target::SecureJwks));
        assert!(env.timed(Target::Tungstenite));
        assert!(!env.timed(Target::PythonWebsockets));
        assert!(!env.timed(Target::UwsNode), "not checked: not timed");
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
