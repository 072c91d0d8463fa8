//! The real `palisade` binary as a child process, for the xtask commands that drive it
//! (autobahn, bench): a scratch folder, a secret, a token, start, addresses, stop.

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
pub(crate) fn temp_dir(name: &str) -> Result<PathBuf, String> {
    let dir = env::temp_dir().join(format!("palisade-{name}.{}", std::process::id()));
    fs::create_dir_all(dir.join("log"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes a random 256-bit HS256 secret (hex) to `WORK/jwt-secret` and returns its path.
pub(crate) fn write_secret(work: &Path) -> Result<PathBuf, String> {
    let secret = work.join("jwt-secret");
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&secret, hex).map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
    Ok(secret)
}

/// Mints a one-hour token with the server's own `token` subcommand.
pub(crate) fn mint(bin: &Path, config: &Path, user: &str) -> Result<String, String> {
    let out = Command::new(bin)
        .args(["--config"])
        .arg(config)
        .args(["token", "--user-id", user, "--ttl", "1h"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "palisade token failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The server under test, killed (SIGTERM, then SIGKILL) when stopped.
pub(crate) struct PalisadeProcess {
    pub(crate) child: Child,
    pub(crate) echo: SocketAddr,
    pub(crate) secure: SocketAddr,
    console: PathBuf,
}

impl PalisadeProcess {
    /// Starts `cmd` (the `palisade` binary, or a wrapper such as `taskset` around it) with
    /// `--config CONFIG`, its console in `WORK/console.log`, and waits for its addresses.
    pub(crate) fn start(
        mut cmd: Command,
        config: &Path,
        work: &Path,
    ) -> Result<PalisadeProcess, String> {
        let console = work.join("console.log");
        let stderr =
            fs::File::create(&console).map_err(|e| format!("cannot create console log: {e}"))?;
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .arg("--config")
            .arg(config)
            .env_remove("PALISADE_JWT_SECRET")
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
                // Keep draining after the addresses are read so the server never blocks.
                let _ = tx.send(line);
            }
        });
        let (mut echo, mut secure) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while echo.is_none() || secure.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "palisade did not print its addresses; console:\n{}",
                    fs::read_to_string(&console).unwrap_or_default()
                ));
            };
            let addr = |prefix: &str| -> Option<SocketAddr> {
                line.strip_prefix(prefix)?
                    .trim_start_matches("ws://")
                    .trim_end_matches('/')
                    .parse()
                    .ok()
            };
            if let Some(a) = addr("palisade: echo listening on ") {
                echo = Some(a);
            } else if let Some(a) = addr("palisade: secure listening on ") {
                secure = Some(a);
            }
        }
        let (Some(echo), Some(secure)) = (echo, secure) else {
            return Err("palisade did not print its addresses".into());
        };
        Ok(PalisadeProcess { child, echo, secure, console })
    }

    /// Stops the server gracefully (bounded) and returns its console output.
    pub(crate) fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        fs::read_to_string(&self.console).unwrap_or_default()
    }
}
