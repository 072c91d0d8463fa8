//! The real `palisade` binary as a child process, for the integration tests of
//! `palisade-server` (crates/server/tests/it/support.rs) and the xtask commands that drive it
//! (autobahn, bench): a scratch folder, a secret, start with a configuration and wait for the
//! `palisade: NAME listening on URL` lines, stop. Standard library only, so xtask stays free of
//! dependencies.

use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A fresh scratch folder `$TMP/palisade-NAME.PID` with a `log/` folder inside.
pub fn temp_dir(name: &str) -> Result<PathBuf, String> {
    let dir = env::temp_dir().join(format!("palisade-{name}.{}", std::process::id()));
    fs::create_dir_all(dir.join("log"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes a random 256-bit HS256 secret (hex) to `WORK/jwt-secret` and returns its path.
pub fn write_secret(work: &Path) -> Result<PathBuf, String> {
    let secret = work.join("jwt-secret");
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&secret, hex).map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
    Ok(secret)
}

/// The listener and address of a line `palisade: NAME listening on SCHEME://ADDR/` (any scheme:
/// `ws`, `wss`, `http`, `https`); `None` for any other line, `Err` when the address does not
/// parse.
pub fn listening(line: &str) -> Option<(&str, Result<SocketAddr, String>)> {
    let (name, url) = line.strip_prefix("palisade: ")?.split_once(" listening on ")?;
    let addr = url.split_once("://").map_or(url, |(_, rest)| rest).trim_end_matches('/');
    Some((name, addr.parse().map_err(|e| format!("{line:?}: {e}"))))
}

/// A running `palisade`; killed (SIGKILL) and reaped on drop.
pub struct Palisade {
    /// The process: `palisade`, or the wrapper (such as `taskset`) that runs it.
    pub child: Child,
    addrs: Vec<(String, SocketAddr)>,
    console: PathBuf,
    lines: Option<mpsc::Receiver<String>>,
}

impl Palisade {
    /// Starts `cmd` (the `palisade` binary, or a wrapper such as `taskset` around it) with
    /// `--config CONFIG`, stdin closed, its console (stderr) in the file `console`, and waits up
    /// to `within` until it has printed the address of every listener in `listeners` (`echo`,
    /// `secure`, `admin`). The configuration alone says how to log: `PALISADE_LOG_LEVEL` and
    /// `PALISADE_LOG_DIR` are removed from its environment. Its stdout is read on a thread that
    /// keeps draining it, so the server never blocks on a full pipe.
    pub fn start(
        mut cmd: Command,
        config: &Path,
        console: &Path,
        listeners: &[&str],
        within: Duration,
    ) -> Result<Palisade, String> {
        let stderr = fs::File::create(console)
            .map_err(|e| format!("cannot create {}: {e}", console.display()))?;
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env_remove("PALISADE_LOG_LEVEL")
            .env_remove("PALISADE_LOG_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep draining after nobody listens any more, so the server never blocks.
                let _ = tx.send(line);
            }
        });
        let mut server =
            Palisade { child, addrs: Vec::new(), console: console.to_owned(), lines: None };
        let deadline = Instant::now() + within;
        loop {
            let missing: Vec<&str> =
                listeners.iter().copied().filter(|name| server.addr(name).is_none()).collect();
            if missing.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                server.kill();
                return Err(format!(
                    "palisade did not print its addresses within {within:?} (missing: {}); \
                     console:\n{}",
                    missing.join(", "),
                    server.console()
                ));
            };
            match listening(&line) {
                Some((name, Ok(addr))) => server.addrs.push((name.to_owned(), addr)),
                Some((_, Err(e))) => {
                    server.kill();
                    return Err(format!("palisade printed an address that does not parse: {e}"));
                }
                None => {}
            }
        }
        server.lines = Some(rx);
        Ok(server)
    }

    /// The address that listener `name` (`echo`, `secure`, `admin`) printed, if it did by now.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The process id, for signals and /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console output (stderr) as it is now.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The lines of stdout after the addresses (once; later calls return `None`).
    pub fn take_lines(&mut self) -> Option<mpsc::Receiver<String>> {
        self.lines.take()
    }

    /// Sends SIGTERM to the process (`kill -TERM PID`); `Err` when `kill` fails or refuses.
    pub fn terminate(&self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("kill -TERM failed: {status}")) }
    }

    /// Stops the server gracefully: SIGTERM, up to `grace` for it to exit, then SIGKILL.
    /// Returns its console output.
    pub fn stop(&mut self, grace: Duration) -> String {
        let _ = self.terminate();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        self.console()
    }

    /// SIGKILL (no chance to clean up), and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Palisade {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests;
