//! `cargo xtask bench`, scenarios F1 and F10: channel fan-out. `palisade-load fanout`
//! (crates/bench) holds 1 000 (F1) or 10 000 (F10) `palisade.v1` subscribers of the channel
//! `bench` on the secure endpoint and publishes to it through the admin API
//! (`POST /channels/bench/publish`) at a fixed rate; every subscriber checks that offsets
//! follow each other without a gap and records the delivery latency.
//!
//! Two setups per scenario, alternating: one node, and two nodes sharing a Redis
//! (`[cluster] redis_url`, `redis-server` from PATH on a free loopback port with
//! `--save "" --appendonly no`; skipped with its reason when missing), the subscribers split
//! between the nodes and every publication made on the first node. Each node and Redis run
//! under `taskset -c 0`, the load under `taskset -c 1`; server CPU is the nodes' CPU time
//! (from /proc/PID/stat) between the load's `measure_start` and `measure_end`, Redis's is
//! reported beside it. The main figure is deliveries (publication × subscriber) per
//! server-CPU-second, and the two-node figure's ratio is to the one-node figure of the same
//! run. A delivery that does not arrive is reported as missing, per node, never as a crash.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use palisade_testkit::Palisade;

use crate::bench::{cpu_secs, field, field_str, median, write_config};
use crate::process;

/// The channel every subscriber of the benchmark subscribes to (`channels.public`).
const CHANNEL: &str = "bench";
/// Loopback source addresses for the subscribers (past one address's ephemeral ports).
const SOURCES: &str = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4";
/// `limits.outbound_queue` of the fan-out nodes.
const OUTBOUND_QUEUE: usize = 4096;

/// Longest wait for the last deliveries after the last publication.
const DRAIN_SECS: f64 = 5.0;

/// One fan-out scenario.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scenario {
    pub(crate) id: &'static str,
    pub(crate) subscribers: usize,
    /// Publications per second.
    pub(crate) rate: u32,
    /// Seconds of publishing.
    pub(crate) secs: f64,
}

impl Scenario {
    pub(crate) fn title(&self) -> String {
        format!(
            "channel fan-out: {} subscribers, {} publications/s ({} ms apart) for {} s",
            thousands(self.subscribers),
            thousands(self.rate as usize),
            1000 / self.rate.max(1),
            self.secs
        )
    }
}

/// `10000` as `10 000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// What the fan-out part of a run does.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) scenarios: Vec<Scenario>,
    pub(crate) reps: usize,
    /// Also run the two-node setup (not in `--quick`).
    pub(crate) two_nodes: bool,
}

/// F1 and F10. Both deliver a million publications a second when the server keeps up: F1 one
/// publication per ms to 1 000 subscribers, F10 one per 10 ms to 10 000 (the load generator
/// has one core; 10 000 subscribers at one publication per ms would be 10 million messages a
/// second for it). `rate` overrides both rates.
pub(crate) fn scenarios(secs: f64, rate: Option<u32>) -> Vec<Scenario> {
    vec![
        Scenario { id: "F1", subscribers: 1_000, rate: rate.unwrap_or(1000), secs },
        Scenario { id: "F10", subscribers: 10_000, rate: rate.unwrap_or(100), secs },
    ]
}

/// The two setups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Setup {
    OneNode,
    TwoNodes,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::OneNode => "one node",
            Setup::TwoNodes => "two nodes + Redis",
        }
    }
}

/// What one node's subscribers got.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct NodeFigures {
    pub(crate) url: String,
    pub(crate) subscribers: f64,
    pub(crate) expected: f64,
    pub(crate) delivered: f64,
    pub(crate) missing: f64,
}

/// One measurement.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) subscribers: f64,
    pub(crate) publications: f64,
    pub(crate) expected: f64,
    pub(crate) delivered: f64,
    pub(crate) missing: f64,
    /// Deliveries per wall-clock second of the measured window.
    pub(crate) rate: f64,
    /// Deliveries per second of the nodes' CPU time.
    pub(crate) per_cpu: f64,
    /// The nodes' CPU use over the window, summed (1.0 = one core).
    pub(crate) server_cpu: f64,
    pub(crate) redis_cpu: Option<f64>,
    pub(crate) client_cpu: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) errors: f64,
    pub(crate) first_error: Option<String>,
    pub(crate) nodes: Vec<NodeFigures>,
}

/// A scenario's samples, or why a setup was not run.
pub(crate) struct Run {
    pub(crate) scenario: Scenario,
    pub(crate) samples: Vec<(Setup, Sample)>,
    pub(crate) skipped: Vec<(Setup, String)>,
}

/// What the runs need from `cargo xtask bench`.
pub(crate) struct Env<'a> {
    pub(crate) bins: &'a Path,
    pub(crate) work: &'a Path,
    /// `[auth]` of the benchmark configuration (the secret every node shares).
    pub(crate) auth: &'a str,
    /// A token of that secret.
    pub(crate) token: &'a str,
}

/// Runs every scenario of `plan`, printing each measurement.
pub(crate) fn run(env: &Env<'_>, plan: &Plan) -> Result<Vec<Run>, String> {
    let redis = if plan.two_nodes { redis_missing() } else { None };
    let mut runs = Vec::new();
    for sc in &plan.scenarios {
        println!("xtask bench: {} — {}", sc.id, sc.title());
        let mut run = Run { scenario: sc.clone(), samples: Vec::new(), skipped: Vec::new() };
        let needed = sc.subscribers + 1000;
        if let Some(limit) = open_files_limit().filter(|l| *l < needed as u64) {
            let why = format!(
                "the open-file limit is {limit}, {needed} are needed per process; run \
                 `ulimit -n 65536 || ulimit -n $(ulimit -Hn)` first"
            );
            println!("  skipped: {why}");
            run.skipped.push((Setup::OneNode, why.clone()));
            run.skipped.push((Setup::TwoNodes, why));
            runs.push(run);
            continue;
        }
        let mut setups = vec![Setup::OneNode];
        if plan.two_nodes {
            match &redis {
                Some(why) => {
                    println!("  two nodes: skipped: {why}");
                    run.skipped.push((Setup::TwoNodes, why.clone()));
                }
                None => setups.push(Setup::TwoNodes),
            }
        } else {
            run.skipped.push((Setup::TwoNodes, "not run with --quick".into()));
        }
        for rep in 0..plan.reps {
            for i in 0..setups.len() {
                let setup = setups[(i + rep) % setups.len()];
                let sample = measure(env, sc, setup)?;
                println!("  rep {} {:<17} {}", rep + 1, setup.name(), describe(&sample));
                run.samples.push((setup, sample));
            }
        }
        runs.push(run);
    }
    Ok(runs)
}

/// Why Redis cannot be used, or `None`.
fn redis_missing() -> Option<String> {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!ok).then(|| "`redis-server` is not on PATH (Debian: apt-get install redis-server)".into())
}

/// The soft open-file limit of this process (children inherit it).
fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The node configuration: the benchmark's (`bench::write_config`), an admin token, the
/// channel open to every session, and `[cluster]` when `redis` is given.
fn node_config(
    dir: &Path,
    max_connections: usize,
    auth: &str,
    admin_token: &Path,
    cluster: Option<(u16, &str)>,
) -> Result<PathBuf, String> {
    let path = write_config(dir, "palisade.toml", max_connections, auth)?;
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    if !text.contains(admin) {
        return Err("bench::write_config no longer writes the [admin] section as expected".into());
    }
    let mut text = text.replacen(
        admin,
        &format!("{admin}token_file = {:?}\n", admin_token.display().to_string()),
        1,
    );
    // A subscriber may fall this many publications behind before it is closed as a slow
    // consumer (default 256, a quarter second at F1's rate): the one-core load generator reads
    // 1 000 or 10 000 sockets and stalls for longer than that now and then.
    let limits = format!("[limits]\nmax_connections = {max_connections}\n");
    if !text.contains(&limits) {
        return Err("bench::write_config no longer writes the [limits] section as expected".into());
    }
    text = text.replacen(&limits, &format!("{limits}outbound_queue = {OUTBOUND_QUEUE}\n"), 1);
    let _ = write!(text, "\n[channels]\npublic = [{CHANNEL:?}]\n");
    if let Some((port, node_id)) = cluster {
        let _ = write!(
            text,
            "\n[cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\nnode_id = {node_id:?}\n"
        );
    }
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A Redis server for the two-node setup, on core 0.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Result<Redis, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let log = dir.join("redis.log");
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("taskset")
            .args(["-c", "0", "redis-server", "--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let mut redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if redis.ping() {
                return Ok(redis);
            }
            if Instant::now() > deadline || matches!(redis.child.try_wait(), Ok(Some(_))) {
                redis.stop();
                let text = fs::read_to_string(&log).unwrap_or_default();
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(format!("redis-server did not answer PING on port {port}: {last}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One node on core 0, with its secure and admin addresses.
struct Node {
    process: Palisade,
    secure: String,
    admin: String,
}

impl Node {
    fn start(bins: &Path, config: &Path, dir: &Path) -> Result<Node, String> {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(bins.join("palisade"));
        let process = process::start(cmd, config, dir, &["secure", "admin"])?;
        let (Some(secure), Some(admin)) = (process.addr("secure"), process.addr("admin")) else {
            return Err("palisade did not print its addresses".into());
        };
        Ok(Node { process, secure: format!("ws://{secure}/"), admin: admin.to_string() })
    }

    /// Stops the node; an error if it panicked.
    fn stop(mut self) -> Result<(), String> {
        let console = self.process.stop(Duration::from_secs(15));
        if console.contains("panicked") {
            return Err(format!("palisade panicked:\n{console}"));
        }
        Ok(())
    }
}

/// A fresh admin token (not a secret worth more than this run).
fn admin_token(dir: &Path) -> Result<(PathBuf, String), String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("admin-token");
    fs::write(&path, &token).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, token))
}

/// Starts the setup's servers, runs the load once, stops everything.
fn measure(env: &Env<'_>, sc: &Scenario, setup: Setup) -> Result<Sample, String> {
    let dir = env.work.join(format!("fanout-{}-{}", sc.id, rand_suffix()));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (token_path, admin_token) = admin_token(&dir)?;
    let max_connections = sc.subscribers + 1000;
    let redis = match setup {
        Setup::OneNode => None,
        Setup::TwoNodes => Some(Redis::start(&dir.join("redis"))?),
    };
    let mut nodes = Vec::new();
    let count = if setup == Setup::OneNode { 1 } else { 2 };
    for n in 1..=count {
        let node_dir = dir.join(format!("node{n}"));
        fs::create_dir_all(&node_dir).map_err(|e| format!("{}: {e}", node_dir.display()))?;
        let node_id = format!("bench-{n}");
        let cluster = redis.as_ref().map(|r| (r.port, node_id.as_str()));
        let config = node_config(&node_dir, max_connections, env.auth, &token_path, cluster)?;
        match Node::start(env.bins, &config, &node_dir) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                for node in nodes {
                    let _ = node.stop();
                }
                return Err(format!("node {n}: {e}"));
            }
        }
    }
    let outcome = load(env, sc, &nodes, &admin_token, redis.as_ref().map(|r| r.child.id()));
    let mut stopped = Ok(());
    for node in nodes {
        if let Err(e) = node.stop() {
            stopped = Err(e);
        }
    }
    drop(redis);
    let _ = fs::remove_dir_all(&dir);
    let sample = outcome?;
    stopped?;
    Ok(sample)
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:09}")
}

/// Runs `palisade-load fanout` on core 1 against `nodes` and reads its lines.
fn load(
    env: &Env<'_>,
    sc: &Scenario,
    nodes: &[Node],
    admin_token: &str,
    redis: Option<u32>,
) -> Result<Sample, String> {
    let urls: Vec<&str> = nodes.iter().map(|n| n.secure.as_str()).collect();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]).arg(env.bins.join("palisade-load")).arg("fanout");
    cmd.args(["--url", &urls.join(","), "--token", env.token]);
    cmd.args(["--admin", &nodes[0].admin, "--admin-token", admin_token]);
    cmd.args(["--channel", CHANNEL, "--subscribers", &sc.subscribers.to_string()]);
    cmd.args(["--rate", &sc.rate.to_string(), "--duration", &sc.secs.to_string()]);
    cmd.args(["--drain", &DRAIN_SECS.to_string(), "--sources", SOURCES]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start palisade-load: {e}"))?;
    let load_pid = child.id();
    let rx = process::lines_of(child.stdout.take().ok_or("no stdout pipe")?);
    let pids: Vec<u32> = nodes.iter().map(|n| n.process.pid()).collect();
    let cpu = |pids: &[u32]| -> Result<f64, String> {
        pids.iter().map(|p| cpu_secs(*p)).sum::<Result<f64, String>>()
    };
    let started = Instant::now();
    let limit = Duration::from_secs(300);
    let (mut window_start, mut window_end) = (None, None);
    let (mut redis_start, mut redis_end) = (None, None);
    let mut client_cpu = 0.0;
    let result = loop {
        let Ok(line) = rx.recv_timeout(limit.saturating_sub(started.elapsed())) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("palisade-load ({}) ended without a result", sc.id));
        };
        match field_str(&line, "event").as_deref() {
            Some("measure_start") => {
                window_start = Some((cpu(&pids)?, Instant::now()));
                redis_start = redis.and_then(|p| cpu_secs(p).ok());
            }
            Some("measure_end") => {
                window_end = Some((cpu(&pids)?, Instant::now()));
                redis_end = redis.and_then(|p| cpu_secs(p).ok());
                client_cpu = cpu_secs(load_pid).unwrap_or(0.0);
            }
            Some("result") => break line,
            _ => {}
        }
    };
    let _ = child.wait();
    let run_wall = started.elapsed().as_secs_f64();
    let mut s = sample(&result);
    if let (Some((c0, t0)), Some((c1, t1))) = (window_start, window_end) {
        let wall = t1.duration_since(t0).as_secs_f64();
        let cpu = c1 - c0;
        s.per_cpu = if cpu > 0.0 { s.delivered / cpu } else { 0.0 };
        s.server_cpu = if wall > 0.0 { cpu / wall } else { 0.0 };
        if let (Some(a), Some(b)) = (redis_start, redis_end) {
            s.redis_cpu = Some(if wall > 0.0 { (b - a) / wall } else { 0.0 });
        }
    }
    s.client_cpu = if run_wall > 0.0 { client_cpu / run_wall } else { 0.0 };
    Ok(s)
}

/// The figures of a result line (CPU figures are filled in by the caller).
fn sample(line: &str) -> Sample {
    let f = |key: &str| field(line, key).unwrap_or(0.0);
    Sample {
        subscribers: f("subscribers"),
        publications: f("publications"),
        expected: f("expected"),
        delivered: f("delivered"),
        missing: f("missing"),
        rate: f("deliveries_per_sec"),
        p50_us: f("p50_us"),
        p99_us: f("p99_us"),
        max_us: f("max_us"),
        errors: f("errors"),
        first_error: field_str(line, "first_error"),
        nodes: nodes(line),
        ..Sample::default()
    }
}

/// The `nodes` array of a result line: `[{"url":..,"subscribers":..,..},..]`.
fn nodes(line: &str) -> Vec<NodeFigures> {
    let Some(at) = line.find("\"nodes\":[") else { return Vec::new() };
    let rest = &line[at + "\"nodes\":[".len()..];
    let Some(end) = rest.find(']') else { return Vec::new() };
    rest[..end]
        .split("},{")
        .filter(|obj| obj.contains("\"url\":"))
        .map(|obj| {
            let obj = format!("{{{}}}", obj.trim_matches(['{', '}']));
            let f = |key: &str| field(&obj, key).unwrap_or(0.0);
            NodeFigures {
                url: field_str(&obj, "url").unwrap_or_default(),
                subscribers: f("subscribers"),
                expected: f("expected"),
                delivered: f("delivered"),
                missing: f("missing"),
            }
        })
        .collect()
}

/// One console line for a measurement.
fn describe(s: &Sample) -> String {
    let mut out = format!(
        "{:>9.0} deliveries/s  {:>9.0}/server-CPU-s  server CPU {:>3.0}%{}  client CPU {:>3.0}%  \
         p50 {:.0} µs  p99 {:.0} µs  {:.0} subscribers, {:.0} publications",
        s.rate,
        s.per_cpu,
        s.server_cpu * 100.0,
        s.redis_cpu.map(|r| format!(" (Redis {:.0}%)", r * 100.0)).unwrap_or_default(),
        s.client_cpu * 100.0,
        s.p50_us,
        s.p99_us,
        s.subscribers,
        s.publications
    );
    if s.missing > 0.0 {
        let _ =
            write!(out, "  MISSING {} of {} deliveries ({})", s.missing, s.expected, per_node(s));
    }
    if s.errors > 0.0 {
        let first = s.first_error.as_deref().unwrap_or("unknown");
        let _ = write!(out, "  ERRORS {} (first: {first})", s.errors);
    }
    out
}

/// `node 1: 0 of 5000 missing, node 2: 5000 of 5000 missing`.
fn per_node(s: &Sample) -> String {
    s.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("node {}: {:.0} of {:.0} missing", i + 1, n.missing, n.expected))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Medians of one setup.
struct Row {
    setup: Setup,
    subscribers: f64,
    publications: f64,
    rate: f64,
    per_cpu: f64,
    server_cpu: f64,
    redis_cpu: Option<f64>,
    client_cpu: f64,
    p50: f64,
    p99: f64,
    max: f64,
    missing: f64,
    expected: f64,
    errors: f64,
    reps: usize,
    /// The last run's per-node figures.
    nodes: Vec<NodeFigures>,
    first_error: Option<String>,
}

fn rows(samples: &[(Setup, Sample)]) -> Vec<Row> {
    [Setup::OneNode, Setup::TwoNodes]
        .into_iter()
        .filter_map(|setup| {
            let of: Vec<&Sample> =
                samples.iter().filter(|(s, _)| *s == setup).map(|(_, s)| s).collect();
            let last = of.last()?;
            let m = |f: fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
            let redis: Vec<f64> = of.iter().filter_map(|s| s.redis_cpu).collect();
            Some(Row {
                setup,
                subscribers: m(|s| s.subscribers),
                publications: m(|s| s.publications),
                rate: m(|s| s.rate),
                per_cpu: m(|s| s.per_cpu),
                server_cpu: m(|s| s.server_cpu),
                redis_cpu: (!redis.is_empty()).then(|| median(redis)),
                client_cpu: m(|s| s.client_cpu),
                p50: m(|s| s.p50_us),
                p99: m(|s| s.p99_us),
                max: m(|s| s.max_us),
                missing: m(|s| s.missing),
                expected: m(|s| s.expected),
                errors: of.iter().map(|s| s.errors).sum(),
                reps: of.len(),
                nodes: last.nodes.clone(),
                first_error: of.iter().find_map(|s| s.first_error.clone()),
            })
        })
        .collect()
}

/// The Markdown tables of the fan-out scenarios (for the console and docs/benchmarks.md).
pub(crate) fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    for run in runs {
        let sc = &run.scenario;
        let _ = writeln!(out, "### {} — {}\n", sc.id, sc.title());
        let rows = rows(&run.samples);
        if !rows.is_empty() {
            out.push_str(
                "| setup | subscribers | publications | deliveries/s | deliveries/server-CPU-s | ratio to one node | server CPU | Redis CPU | client CPU | p50 µs | p99 µs | max µs | missing | errors |\n\
                 | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            );
        }
        let one = rows.iter().find(|r| r.setup == Setup::OneNode && r.per_cpu > 0.0);
        for r in &rows {
            let ratio = one.map_or("—".into(), |o| format!("{:.2}", r.per_cpu / o.per_cpu));
            let missing = if r.expected > 0.0 {
                format!("{:.0} ({:.1}%)", r.missing, r.missing / r.expected * 100.0)
            } else {
                format!("{:.0}", r.missing)
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {ratio} | {:.0}% | {} | {:.0}% | {:.0} | {:.0} | {:.0} | {missing} | {:.0} |",
                r.setup.name(),
                r.subscribers,
                r.publications,
                r.rate,
                r.per_cpu,
                r.server_cpu * 100.0,
                r.redis_cpu.map_or("—".into(), |c| format!("{:.0}%", c * 100.0)),
                r.client_cpu * 100.0,
                r.p50,
                r.p99,
                r.max,
                r.errors
            );
        }
        if let Some(r) = rows.first() {
            let _ = write!(
                out,
                "\nMedians of {} runs per setup. A delivery is one publication received by one \
                 subscriber; server CPU is the nodes' together (Redis's beside it).",
                r.reps
            );
        }
        for r in rows.iter().filter(|r| r.missing > 0.0) {
            let lines: Vec<String> = r
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    format!(
                        "node {} got {:.0} of {:.0} ({:.0} subscribers)",
                        i + 1,
                        n.delivered,
                        n.expected,
                        n.subscribers
                    )
                })
                .collect();
            let _ = write!(
                out,
                " **{}: deliveries missing** (last run: {})",
                r.setup.name(),
                lines.join(", ")
            );
            if r.setup == Setup::TwoNodes
                && r.nodes.len() == 2
                && r.nodes[1].delivered == 0.0
                && r.nodes[1].expected > 0.0
            {
                out.push_str(
                    "; the second node's subscribers got none of the first node's publications: \
                     channel publications do not cross nodes through Redis in this build",
                );
            }
            out.push('.');
        }
        for r in rows.iter().filter(|r| r.errors > 0.0) {
            let _ = write!(
                out,
                " {}: first error: {}.",
                r.setup.name(),
                r.first_error.as_deref().unwrap_or("unknown")
            );
        }
        for (setup, why) in &run.skipped {
            let _ = write!(out, " {}: not measured ({why}).", setup.name());
        }
        out.push_str("\n\n");
    }
    out
}

/// The fan-out scenarios as JSON array items.
pub(crate) fn json(runs: &[Run]) -> String {
    let mut items = Vec::new();
    for run in runs {
        let sc = &run.scenario;
        let medians: Vec<String> = rows(&run.samples)
            .iter()
            .map(|r| {
                format!(
                    "{{\"setup\": {:?}, \"subscribers\": {:.0}, \"publications\": {:.0}, \"deliveries_per_sec\": {:.1}, \"deliveries_per_server_cpu_sec\": {:.1}, \"server_cpu\": {:.3}, \"redis_cpu\": {}, \"client_cpu\": {:.3}, \"p50_us\": {:.0}, \"p99_us\": {:.0}, \"max_us\": {:.0}, \"missing\": {:.0}, \"expected\": {:.0}, \"errors\": {:.0}, \"runs\": {}}}",
                    r.setup.name(),
                    r.subscribers,
                    r.publications,
                    r.rate,
                    r.per_cpu,
                    r.server_cpu,
                    r.redis_cpu.map_or("null".into(), |c| format!("{c:.3}")),
                    r.client_cpu,
                    r.p50,
                    r.p99,
                    r.max,
                    r.missing,
                    r.expected,
                    r.errors,
                    r.reps
                )
            })
            .collect();
        items.push(format!(
            "    {{\"id\": {:?}, \"title\": {:?}, \"subscribers\": {}, \"rate\": {}, \"secs\": {}, \"medians\": [{}]}}",
            sc.id,
            sc.title(),
            sc.subscribers,
            sc.rate,
            sc.secs,
            medians.join(", ")
        ));
    }
    items.join(",\n")
}

/// Errors of every run (missing deliveries are not errors: the table shows them).
pub(crate) fn errors(runs: &[Run]) -> f64 {
    runs.iter().flat_map(|r| r.samples.iter()).map(|(_, s)| s.errors).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULT: &str = r#"{"event":"result","mode":"fanout","subscribers":1000,"subscribers_wanted":1000,"rate":1000,"secs":10.0,"publish_secs":10.0,"window_secs":10.01,"publications":10000,"publish_errors":0,"server_delivered":5000000,"expected":10000000,"delivered":5000000,"missing":5000000,"gaps":0,"duplicates":0,"deliveries_per_sec":499500.0,"p50_us":310,"p99_us":2100,"p999_us":3000,"max_us":4000,"nodes":[{"url":"ws://127.0.0.1:1/","subscribers":500,"expected":5000000,"delivered":5000000,"missing":0},{"url":"ws://127.0.0.1:2/","subscribers":500,"expected":5000000,"delivered":0,"missing":5000000}],"errors":0,"first_error":null}"#;

    #[test]
    fn result_lines_are_read_with_their_nodes() {
        let s = sample(RESULT);
        assert_eq!((s.subscribers, s.publications, s.delivered), (1000.0, 10000.0, 5e6));
        assert_eq!((s.missing, s.expected, s.errors), (5e6, 1e7, 0.0));
        assert_eq!((s.rate, s.p99_us), (499_500.0, 2100.0));
        assert_eq!(s.first_error, None);
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(
            s.nodes[1],
            NodeFigures {
                url: "ws://127.0.0.1:2/".into(),
                subscribers: 500.0,
                expected: 5e6,
                delivered: 0.0,
                missing: 5e6
            }
        );
        assert!(nodes("{}").is_empty());
    }

    #[test]
    fn two_nodes_are_compared_with_one_and_missing_deliveries_are_named() {
        let one = Sample { per_cpu: 1e6, delivered: 1e7, expected: 1e7, ..sample(RESULT) };
        let one = Sample { missing: 0.0, nodes: Vec::new(), ..one };
        let two = Sample { per_cpu: 5e5, redis_cpu: Some(0.05), ..sample(RESULT) };
        let run = Run {
            scenario: scenarios(10.0, None).remove(0),
            samples: vec![(Setup::OneNode, one), (Setup::TwoNodes, two)],
            skipped: Vec::new(),
        };
        let table = table(&[run]);
        assert!(table.starts_with("### F1 — channel fan-out: 1 000 subscribers, 1 000 publications/s (1 ms apart) for 10 s\n"), "{table}");
        assert!(table.contains("| one node | 1000 | 10000 | 499500 | 1000000 | 1.00 |"), "{table}");
        assert!(
            table.contains("| two nodes + Redis | 1000 | 10000 | 499500 | 500000 | 0.50 |"),
            "{table}"
        );
        assert!(table.contains("| 5% |"), "{table}");
        assert!(table.contains("| 5000000 (50.0%) | 0 |"), "{table}");
        assert!(table.contains("node 2 got 0 of 5000000 (500 subscribers)"), "{table}");
        assert!(table.contains("do not cross nodes through Redis"), "{table}");
        let d = describe(&sample(RESULT));
        assert!(d.contains("MISSING 5000000 of 10000000 deliveries (node 1: 0 of 5000000 missing, node 2: 5000000 of 5000000 missing)"), "{d}");
    }

    #[test]
    fn skipped_setups_say_why() {
        let run = Run {
            scenario: scenarios(2.0, Some(50)).remove(1),
            samples: Vec::new(),
            skipped: vec![(Setup::TwoNodes, "`redis-server` is not on PATH".into())],
        };
        assert_eq!(
            run.scenario.title(),
            "channel fan-out: 10 000 subscribers, 50 publications/s (20 ms apart) for 2 s"
        );
        let table = table(&[run]);
        assert!(
            table.contains("two nodes + Redis: not measured (`redis-server` is not on PATH)."),
            "{table}"
        );
        assert!(!table.contains("| setup |"), "{table}");
    }

    #[test]
    fn node_configs_open_the_channel_and_join_the_cluster() {
        let dir = process::temp_dir("bench-fanout-config-test").unwrap();
        let token = dir.join("admin-token");
        let path = node_config(
            &dir,
            2000,
            "[auth]\nsecret_file = \"s\"\n",
            &token,
            Some((6400, "bench-2")),
        )
        .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let _ = fs::remove_dir_all(&dir);
        assert!(
            text.contains(&format!(
                "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n",
                token.display().to_string()
            )),
            "{text}"
        );
        assert!(text.contains("\n[channels]\npublic = [\"bench\"]\n"), "{text}");
        assert!(
            text.contains(
                "\n[cluster]\nredis_url = \"redis://127.0.0.1:6400\"\nnode_id = \"bench-2\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("max_connections = 2000"), "{text}");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(1_234_567), "1 234 567");
    }
}
