//! The real `palisade` binary as a child process, for the xtask commands that drive it
//! (autobahn, bench, bench --restart): the scratch folder, secret, start and stop come from
//! `palisade-testkit` (crates/testkit, shared with the server's integration tests); a token comes
//! from the server's own `token` subcommand.

use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use palisade_testkit::Palisade;
pub(crate) use palisade_testkit::{temp_dir, write_secret};

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

/// Starts `cmd` (the `palisade` binary, or a wrapper such as `taskset` around it) with
/// `--config CONFIG` (which names the secret file, so `PALISADE_JWT_SECRET` is removed), its
/// console in `WORK/console.log`, and waits (30 s at most) for the addresses of `listeners`.
pub(crate) fn start(
    mut cmd: Command,
    config: &Path,
    work: &Path,
    listeners: &[&str],
) -> Result<Palisade, String> {
    cmd.env_remove("PALISADE_JWT_SECRET");
    Palisade::start(cmd, config, &work.join("console.log"), listeners, Duration::from_secs(30))
}

/// The server under test with its echo and secure addresses; stopped with SIGTERM, then
/// SIGKILL (and killed if dropped unstopped). Derefs to the [`Palisade`] (its `child`).
pub(crate) struct PalisadeProcess {
    process: Palisade,
    pub(crate) echo: std::net::SocketAddr,
    pub(crate) secure: std::net::SocketAddr,
}

impl PalisadeProcess {
    /// [`start`] waiting for the echo and secure addresses.
    pub(crate) fn start(
        cmd: Command,
        config: &Path,
        work: &Path,
    ) -> Result<PalisadeProcess, String> {
        let process = start(cmd, config, work, &["echo", "secure"])?;
        let (Some(echo), Some(secure)) = (process.addr("echo"), process.addr("secure")) else {
            return Err("palisade did not print its addresses".into());
        };
        Ok(PalisadeProcess { process, echo, secure })
    }

    /// Stops the server gracefully (bounded) and returns its console output.
    pub(crate) fn stop(mut self) -> String {
        self.process.stop(Duration::from_secs(15))
    }
}

impl Deref for PalisadeProcess {
    type Target = Palisade;

    fn deref(&self) -> &Palisade {
        &self.process
    }
}

/// Lines of `out` (a child's stdout), read on a thread.
pub(crate) fn lines_of(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}
