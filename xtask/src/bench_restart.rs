//! `cargo xtask bench --restart`: a deploy under load. Starts the release `palisade`, holds
//! 2 000 clients on the echo endpoint that reconnect whenever they are closed (full-jitter
//! backoff as docs/clients.md documents), plus a steady stream of new connections, and has the
//! server upgrade itself twice through the admin API (`POST /upgrade`: socket hand-over, then a
//! drain that spreads the closes). Reports the connection attempts, the refused or failed ones
//! (target 0), the clients that came back after each upgrade (target: all of them, twice) and
//! the peak reconnect rate against the drain spread. Exits non-zero when a target is missed.
//! The figures go into docs/deployment.md by hand.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use palisade_testkit::Palisade;

use crate::process;
use crate::root;

pub(crate) const USAGE: &str = "\
  bench --restart [--clients N] [--new-per-sec R] [--drain-secs S]
                           deploy under load: N held clients (default 2000) that reconnect on
                           close plus R new connections/s (default 50) while the server
                           upgrades itself twice; fails on any refused attempt, a client that
                           did not come back, or a reconnect peak above the spread's bound
";

/// Loopback source addresses (past one address's ephemeral ports).
const SOURCES: &str = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4";

#[derive(Clone, Debug, PartialEq)]
struct Plan {
    clients: usize,
    new_per_sec: u32,
    /// `limits.drain_timeout_secs`; the closes are spread over half of it.
    drain_secs: u64,
}

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut plan = Plan { clients: 2000, new_per_sec: 50, drain_secs: 10 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a number"))
                .and_then(|v| v.parse::<u64>().map_err(|_| format!("{name}: not a number: {v:?}")))
        };
        match a.as_str() {
            "--restart" => {}
            "--clients" => plan.clients = value("--clients")? as usize,
            "--new-per-sec" => plan.new_per_sec = value("--new-per-sec")? as u32,
            "--drain-secs" => plan.drain_secs = value("--drain-secs")?,
            other => {
                return Err(format!("bench --restart: unknown argument {other:?}\n\n{USAGE}"));
            }
        }
    }
    if plan.clients == 0 || plan.drain_secs < 2 {
        return Err("bench --restart: --clients must be >= 1 and --drain-secs >= 2".into());
    }
    Ok(plan)
}

/// The targets, checked against the load generator's result line.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    attempts: f64,
    failed: f64,
    dropped: f64,
    min_reconnects: f64,
    connected_at_end: f64,
    peak_per_sec: f64,
    peak_per_100ms: f64,
    reconnects: f64,
    new_connections: f64,
}

impl Outcome {
    fn from_line(line: &str) -> Outcome {
        let f = |key: &str| field(line, key).unwrap_or(f64::NAN);
        Outcome {
            attempts: f("attempts"),
            failed: f("failed"),
            dropped: f("dropped"),
            min_reconnects: f("min_reconnects_per_client"),
            connected_at_end: f("clients_connected_at_end"),
            peak_per_sec: f("peak_reconnects_per_sec"),
            peak_per_100ms: f("peak_reconnects_per_100ms"),
            reconnects: f("reconnects"),
            new_connections: f("new_connections"),
        }
    }

    /// The reconnect rate the spread allows: the clients evenly over the spread, times 1.5
    /// (the jitter of the closes' spacing and of the backoff). All at once would be every
    /// client within one second.
    fn peak_bound(plan: &Plan) -> f64 {
        let spread = plan.drain_secs as f64 / 2.0;
        (plan.clients as f64 / spread * 1.5).ceil()
    }

    /// The missed targets, in words.
    fn misses(&self, plan: &Plan) -> Vec<String> {
        let mut misses = Vec::new();
        if self.failed != 0.0 {
            misses
                .push(format!("{} refused or failed connection attempts (target 0)", self.failed));
        }
        if self.dropped != 0.0 {
            misses.push(format!("{} connections dropped without a close frame", self.dropped));
        }
        if self.min_reconnects.is_nan() || self.min_reconnects < 2.0 {
            misses.push(format!(
                "a client reconnected only {} times over two upgrades (target 2)",
                self.min_reconnects
            ));
        }
        if self.connected_at_end != plan.clients as f64 {
            misses.push(format!(
                "{} of {} clients connected at the end",
                self.connected_at_end, plan.clients
            ));
        }
        let bound = Outcome::peak_bound(plan);
        if self.peak_per_sec.is_nan() || self.peak_per_sec > bound {
            misses.push(format!(
                "peak of {} reconnects/s above the spread's bound of {bound}",
                self.peak_per_sec
            ));
        }
        misses
    }
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let plan = parse(args)?;
    let started = Instant::now();
    crate::bench::build_release()?;
    let bins = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or(root().join("target"))
        .join("release");
    let work = process::temp_dir("bench-restart")?;
    let config = write_config(&work, &plan)?;
    let palisade = bins.join("palisade");
    let outcome = drive(&plan, &bins, &palisade, &config, &work);
    let _ = fs::remove_dir_all(&work);
    let (result, timeline) = outcome?;
    let o = Outcome::from_line(&result);
    let spread = plan.drain_secs as f64 / 2.0;
    println!("\nxtask bench --restart: two upgrades under load");
    println!("  held clients                 {}", plan.clients);
    println!(
        "  new connections              {}/s ({} served)",
        plan.new_per_sec, o.new_connections
    );
    println!("  connection attempts          {}", o.attempts);
    println!("  refused or failed attempts   {} (target 0)", o.failed);
    println!("  dropped without a close      {}", o.dropped);
    println!(
        "  reconnects                   {} (every client at least {} times; target 2)",
        o.reconnects, o.min_reconnects
    );
    println!("  clients connected at the end {} of {}", o.connected_at_end, plan.clients);
    println!(
        "  peak reconnect rate          {}/s, {} per 100 ms (spread {spread} s: {:.0}/s on \
         average, bound {}/s; all at once would be {} in an instant)",
        o.peak_per_sec,
        o.peak_per_100ms,
        plan.clients as f64 / spread,
        Outcome::peak_bound(&plan),
        plan.clients
    );
    for line in &timeline {
        println!("  {line}");
    }
    if let Some(e) = field_str(&result, "first_error") {
        println!("  first error: {e}");
    }
    println!("xtask bench --restart: finished in {:.0?}", started.elapsed());
    let misses = o.misses(&plan);
    if misses.is_empty() {
        println!("xtask bench --restart: every target met");
        Ok(())
    } else {
        Err(format!("bench --restart missed: {}", misses.join("; ")))
    }
}

/// Starts the server and the load, upgrades twice, returns the result line and a timeline.
fn drive(
    plan: &Plan,
    bins: &Path,
    palisade: &Path,
    config: &Path,
    work: &Path,
) -> Result<(String, Vec<String>), String> {
    let mut server = Server::start(palisade, config, work)?;
    let outcome = load_and_upgrade(plan, bins, &mut server);
    server.stop();
    outcome
}

fn load_and_upgrade(
    plan: &Plan,
    bins: &Path,
    server: &mut Server,
) -> Result<(String, Vec<String>), String> {
    // Long enough for two drains and the reconnects after the second.
    let duration = 6 + 3 * plan.drain_secs;
    let mut load = Command::new(bins.join("palisade-load"))
        .args(["reconnect", "--url", &format!("ws://{}/", server.echo)])
        .args(["--prefix", "Server received: ", "--sources", SOURCES])
        .args(["--clients", &plan.clients.to_string()])
        .args(["--new-per-sec", &plan.new_per_sec.to_string()])
        .args(["--duration", &duration.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start palisade-load: {e}"))?;
    let lines = process::lines_of(load.stdout.take().ok_or("no stdout pipe")?);
    let mut timeline = Vec::new();
    let t0 = Instant::now();
    let ready = lines
        .recv_timeout(Duration::from_secs(150))
        .map_err(|_| "palisade-load never said ready".to_owned())?;
    timeline.push(format!("{:>5.1} s  load ready: {ready}", t0.elapsed().as_secs_f64()));
    thread::sleep(Duration::from_secs(2));
    let mut old = Old::Child;
    for n in 1..=2 {
        let pid = upgrade(server.admin)?;
        timeline.push(format!(
            "{:>5.1} s  upgrade {n}: pid {pid} serves; the old process drains",
            t0.elapsed().as_secs_f64()
        ));
        let gone = old.wait_gone(server, Duration::from_secs(plan.drain_secs + 10))?;
        timeline.push(format!(
            "{:>5.1} s  upgrade {n}: the old process exited after a {gone:.1} s drain",
            t0.elapsed().as_secs_f64()
        ));
        old = Old::Pid(pid);
        server.current = pid;
        thread::sleep(Duration::from_secs(1));
    }
    let result = lines
        .recv_timeout(Duration::from_secs(duration + 60))
        .map_err(|_| "palisade-load printed no result".to_owned())?;
    let _ = load.wait();
    timeline.push(format!("{:>5.1} s  load finished", t0.elapsed().as_secs_f64()));
    if let Some(per_sec) = result.split("\"reconnects_per_sec\":").nth(1) {
        let per_sec = per_sec.split(']').next().unwrap_or("").trim_start_matches('[');
        timeline.push(format!("reconnects per second after ready: [{per_sec}]"));
    }
    Ok((result, timeline))
}

/// The process that is to drain: the first one is this command's child.
enum Old {
    Child,
    Pid(u32),
}

impl Old {
    /// Waits until the old process has exited; returns the seconds it took.
    fn wait_gone(&self, server: &mut Server, limit: Duration) -> Result<f64, String> {
        let start = Instant::now();
        loop {
            let gone = match self {
                Old::Child => matches!(server.process.child.try_wait(), Ok(Some(_))),
                Old::Pid(pid) => !alive(*pid),
            };
            if gone {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > limit {
                return Err(format!("the old process did not exit within {limit:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` runs (a zombie, not reaped by its new parent, counts as gone).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// `POST /upgrade` on the admin API; the new process's pid.
fn upgrade(admin: SocketAddr) -> Result<u32, String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("admin {admin}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /upgrade HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("POST /upgrade: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("POST /upgrade: {e}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if !answer.starts_with("HTTP/1.1 200") {
        let status = answer.lines().next().unwrap_or("");
        return Err(format!("POST /upgrade refused: {status} {body}"));
    }
    field(body, "pid").map(|p| p as u32).ok_or_else(|| format!("POST /upgrade: no pid in {body}"))
}

/// The server: the first process is this command's child; after an upgrade `current` is the
/// process that serves.
struct Server {
    process: Palisade,
    current: u32,
    echo: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    fn start(palisade: &Path, config: &Path, work: &Path) -> Result<Server, String> {
        let mut cmd = Command::new(palisade);
        cmd.env_remove("NOTIFY_SOCKET").env_remove("LISTEN_FDS");
        // The console lines of this process and its successors keep being read (and dropped).
        let process = process::start(cmd, config, work, &["echo", "admin"])?;
        let (Some(echo), Some(admin)) = (process.addr("echo"), process.addr("admin")) else {
            return Err("palisade did not print its addresses".into());
        };
        let current = process.pid();
        Ok(Server { process, current, echo, admin })
    }

    /// SIGTERM to the serving process, bounded; SIGKILL after 20 s.
    fn stop(&mut self) {
        let pid = self.current.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(self.current) && Instant::now() < deadline {
            let _ = self.process.child.try_wait();
            thread::sleep(Duration::from_millis(50));
        }
        if alive(self.current) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        self.process.kill();
        let console = self.process.console();
        let errors = console.lines().filter(|l| l.contains("ERROR")).count();
        if errors > 0 {
            println!("xtask bench --restart: {errors} ERROR lines on the server console");
        }
    }
}

/// The defaults (every layer on), with the caps that would refuse 2 000 clients from one
/// machine raised, as `cargo xtask bench` does, and the drain time of the plan.
fn write_config(work: &Path, plan: &Plan) -> Result<PathBuf, String> {
    let secret = process::write_secret(work)?;
    let max = (plan.clients + 2000).max(10_000);
    let text = format!(
        "# Written by `cargo xtask bench --restart`; see docs/deployment.md.\n\
         [echo]\nlisten = \"127.0.0.1:0\"\n\n\
         [secure]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [auth]\nsecret_file = {:?}\n\n\
         [limits]\nmax_connections = {max}\ndrain_timeout_secs = {}\n\n\
         [firewall]\nmax_connections_per_ip = {max}\n\
         handshakes_per_sec_per_ip = 1000000\nhandshake_burst = 1000000\n\n\
         [log]\ndir = {:?}\nlevel = \"info\"\n",
        secret.display().to_string(),
        plan.drain_secs,
        work.join("log").display().to_string()
    );
    let config = work.join("palisade.toml");
    fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    Ok(config)
}

/// A number field of a JSON line (`"key":123`).
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = line.split(&format!("\"{key}\":")).nth(1)?;
    let end =
        rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A string field of a JSON line (`"key":"..."`), unescaped only for `\"`.
fn field_str(line: &str, key: &str) -> Option<String> {
    let rest = line.split(&format!("\"{key}\":\"")).nth(1)?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_the_plan() {
        assert_eq!(
            parse(&args(&["--restart"])).unwrap(),
            Plan { clients: 2000, new_per_sec: 50, drain_secs: 10 }
        );
        let p = parse(&args(&["--restart", "--clients", "300", "--drain-secs", "4"])).unwrap();
        assert_eq!((p.clients, p.drain_secs), (300, 4));
        assert!(parse(&args(&["--restart", "--bogus"])).is_err());
        assert!(parse(&args(&["--restart", "--drain-secs", "1"])).is_err());
    }

    #[test]
    fn targets_are_checked() {
        let plan = Plan { clients: 2000, new_per_sec: 50, drain_secs: 10 };
        assert_eq!(Outcome::peak_bound(&plan), 600.0);
        let line = r#"{"event":"result","attempts":6100,"failed":0,"dropped":0,"min_reconnects_per_client":2,"clients_connected_at_end":2000,"peak_reconnects_per_sec":420,"peak_reconnects_per_100ms":60,"reconnects":4000,"new_connections":1500,"first_error":null}"#;
        let o = Outcome::from_line(line);
        assert_eq!(o.attempts, 6100.0);
        assert!(o.misses(&plan).is_empty(), "{:?}", o.misses(&plan));
        let bad = line.replace("\"failed\":0", "\"failed\":3").replace(":420", ":1900");
        assert_eq!(Outcome::from_line(&bad).misses(&plan).len(), 2);
        // A missing field is a miss, not a pass.
        assert!(!Outcome::from_line("{}").misses(&plan).is_empty());
        assert_eq!(
            field_str(r#"{"first_error":"a \"b\""}"#, "first_error").as_deref(),
            Some("a \"b\"")
        );
    }
}
