//! Socket hand-over: socket activation (`LISTEN_FDS`, as systemd passes listening sockets) and
//! the binary upgrade (`SIGUSR2`, `POST /upgrade`, `palisade upgrade`).
//!
//! An upgrade starts the binary at the path the running one was started from, with the same
//! arguments, handing it the listening sockets the systemd way: the sockets at fds 3, 4, ...,
//! `LISTEN_FDS` their count and `LISTEN_FDNAMES` their names (`echo:secure:admin`). The new
//! process takes them instead of binding, and says it serves by sending `READY=1` to the
//! `NOTIFY_SOCKET` the old one made for it (the `sd_notify` protocol). Only then does the old
//! process stop accepting and drain; the sockets never close, so no connection attempt is
//! refused. A new process that exits, or is not ready within the wait, is stopped and the old
//! one serves on.
//!
//! Under systemd (`Type=notify`) the same `READY=1` tells systemd the service is up, and the
//! old process passes the new main PID on (`MAINPID=`). The successor's `NOTIFY_SOCKET` is the
//! old process's private socket, so the service manager's socket travels alongside in
//! [`MANAGER_NOTIFY_ENV`]: the successor passes its own successor's PID on there, and a second,
//! third, ... upgrade keeps systemd's idea of the main process right. The unit files in
//! `deploy/systemd/` and docs/deployment.md show the setup.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use command_fds::{CommandFdExt, FdMapping};

/// The listener names of `LISTEN_FDNAMES`, in the order used when the names are not given.
pub const LISTENER_NAMES: [&str; 3] = ["echo", "secure", "admin"];

/// Set by an upgrading process for its successor: the service manager's `NOTIFY_SOCKET` (empty
/// when there is none), since the successor's own `NOTIFY_SOCKET` is the predecessor's.
pub const MANAGER_NOTIFY_ENV: &str = "PALISADE_MANAGER_NOTIFY_SOCKET";

struct Startup {
    inherited: Mutex<HashMap<String, TcpListener>>,
    /// Where to send `READY=1` (systemd's socket, or the old process's during an upgrade).
    notify_socket: Option<OsString>,
    /// The service manager's socket (systemd's), where a successor's `MAINPID=` goes.
    manager_socket: Option<OsString>,
}

/// The service manager's notify socket: the one a predecessor passed on in
/// [`MANAGER_NOTIFY_ENV`] (empty: none), else `NOTIFY_SOCKET` itself (started by the manager).
fn manager_socket(notify: Option<&OsString>, passed: Option<OsString>) -> Option<OsString> {
    match passed {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p),
        None => notify.cloned(),
    }
}

static STARTUP: OnceLock<Startup> = OnceLock::new();

/// Takes the listening sockets passed by systemd socket activation or by an upgrading
/// predecessor (`LISTEN_FDS`, `LISTEN_PID` when set must be this process, `LISTEN_FDNAMES`),
/// and remembers `NOTIFY_SOCKET`. Call it once, first thing in `main`, before any thread is
/// started: it clears those variables from the environment, so children do not see them.
/// Returns the names of the sockets taken.
pub fn inherit_listeners() -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let notify_socket = std::env::var_os("NOTIFY_SOCKET");
    let manager_socket =
        manager_socket(notify_socket.as_ref(), std::env::var_os(MANAGER_NOTIFY_ENV));
    // `ListenFd::from_env` clears LISTEN_FDS and LISTEN_PID itself.
    let mut fds = listenfd::ListenFd::from_env();
    let mut inherited = HashMap::new();
    for i in 0..fds.len() {
        let name = names
            .get(i)
            .cloned()
            .or_else(|| LISTENER_NAMES.get(i).map(|s| (*s).to_owned()))
            .unwrap_or_else(|| format!("fd{}", 3 + i));
        let listener = fds
            .take_tcp_listener(i)
            .with_context(|| format!("LISTEN_FDS: fd {} ({name}) is not a TCP listener", 3 + i))?;
        if let Some(l) = listener {
            l.set_nonblocking(true)?;
            inherited.insert(name, l);
        }
    }
    let taken = inherited.keys().cloned().collect();
    let startup = Startup { inherited: Mutex::new(inherited), notify_socket, manager_socket };
    if STARTUP.set(startup).is_err() {
        bail!("inherit_listeners called twice");
    }
    Ok(taken)
}

/// The inherited listener named `name` (`echo`, `secure`, `admin`), once.
pub(crate) fn take_inherited(name: &str) -> Option<TcpListener> {
    let startup = STARTUP.get()?;
    startup.inherited.lock().unwrap_or_else(PoisonError::into_inner).remove(name)
}

/// Tells whoever started this process (systemd with `Type=notify`, or the predecessor of an
/// upgrade) that it serves. Does nothing without `NOTIFY_SOCKET`.
pub fn notify_ready() {
    let Some(path) = STARTUP.get().and_then(|s| s.notify_socket.clone()) else { return };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(e) = sd_notify(&path, &message) {
        tracing::warn!(kind = "notify", error = %e, "cannot send READY=1 to NOTIFY_SOCKET");
    }
}

fn sd_notify(path: &OsString, message: &str) -> std::io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(PathBuf::from(path))?,
    };
    socket.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

/// Starts the successor with the listening sockets `listeners` (name, a duplicate of the fd)
/// and waits up to `wait` for its `READY=1`. Returns its process id. On failure the successor
/// has been stopped and the error says why.
pub(crate) async fn start_successor(
    listeners: &[(&'static str, OwnedFd)],
    wait: Duration,
) -> anyhow::Result<u32> {
    let exe =
        successor_binary(std::env::current_exe().context("cannot find the running binary's path")?);
    let dir = tempfile_dir()?;
    let notify_path = dir.join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path)
        .with_context(|| format!("cannot bind {}", notify_path.display()))?;
    let mut mappings = Vec::new();
    for (i, (_, fd)) in listeners.iter().enumerate() {
        let parent_fd = fd.try_clone().context("cannot duplicate a listening socket")?;
        mappings.push(FdMapping { parent_fd, child_fd: 3 + i as i32 });
    }
    let names: Vec<&str> = listeners.iter().map(|(n, _)| *n).collect();
    let manager = STARTUP.get().and_then(|s| s.manager_socket.clone()).unwrap_or_default();
    let mut command = std::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", listeners.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env("NOTIFY_SOCKET", &notify_path)
        .env(MANAGER_NOTIFY_ENV, manager)
        .stdin(std::process::Stdio::null());
    command.fd_mappings(mappings).context("listener fd mapping")?;
    let mut child = command.spawn().with_context(|| format!("cannot start {}", exe.display()))?;
    let pid = child.id();
    tracing::info!(pid, binary = %exe.display(), "upgrade: new process started; waiting for it to serve");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 512];
    let outcome = loop {
        tokio::select! {
            received = notify.recv(&mut buf) => {
                let text = String::from_utf8_lossy(&buf[..received.unwrap_or(0)]).into_owned();
                if text.lines().any(|l| l == "READY=1") {
                    break Ok(pid);
                }
            }
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Some(status) = child.try_wait()? {
                    break Err(anyhow::anyhow!("the new process exited with {status} before serving (see its error output)"));
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(anyhow::anyhow!("the new process was not ready within {} s; stopped it", wait.as_secs()));
                }
            }
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    if outcome.is_ok() {
        // Under systemd the service's main process is now the successor.
        if let Some(path) = STARTUP.get().and_then(|s| s.manager_socket.clone()) {
            let _ = sd_notify(&path, &format!("MAINPID={pid}\nREADY=1\n"));
        }
        // Reap it in the background should it ever exit while this process lives.
        std::thread::spawn(move || child.wait());
    }
    outcome
}

/// The binary to start: the path the running one was started from. When a package manager
/// (or `install`) has renamed a new file over it, Linux names the running, now deleted, file
/// `PATH (deleted)`; the new binary is at `PATH`.
fn successor_binary(exe: PathBuf) -> PathBuf {
    match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// A fresh private folder for the notify socket.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!("palisade-upgrade-{}-{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The server's side of an upgrade: duplicates of its listening sockets, and the token that
/// tells the binary's main loop that a successor serves (so this process drains with 1012).
pub(crate) struct Handover {
    listeners: Mutex<Vec<(&'static str, OwnedFd)>>,
    busy: std::sync::atomic::AtomicBool,
    succeeded: tokio_util::sync::CancellationToken,
    wait: Duration,
}

impl Handover {
    pub(crate) fn new(wait: Duration) -> Handover {
        Handover {
            listeners: Mutex::new(Vec::new()),
            busy: std::sync::atomic::AtomicBool::new(false),
            succeeded: tokio_util::sync::CancellationToken::new(),
            wait,
        }
    }

    /// Adds a listening socket to hand over.
    pub(crate) fn add(&self, name: &'static str, fd: OwnedFd) {
        self.listeners.lock().unwrap_or_else(PoisonError::into_inner).push((name, fd));
    }

    /// Starts the successor; on success this process is to drain (see [`Handover::done`]).
    pub(crate) async fn upgrade(&self) -> anyhow::Result<u32> {
        use std::sync::atomic::Ordering;
        if self.succeeded.is_cancelled() {
            bail!("this process has already handed over to a successor and is draining");
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            bail!("an upgrade is already under way");
        }
        let listeners = {
            let held = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
            held.iter()
                .map(|(n, fd)| fd.try_clone().map(|fd| (*n, fd)))
                .collect::<Result<Vec<_>, _>>()
        };
        let outcome = match listeners {
            Ok(listeners) => start_successor(&listeners, self.wait).await,
            Err(e) => Err(anyhow::Error::new(e).context("cannot duplicate a listening socket")),
        };
        match &outcome {
            Ok(pid) => {
                tracing::info!(
                    pid,
                    "upgrade: the new process serves; this one stops accepting and drains"
                );
                self.succeeded.cancel();
            }
            Err(e) => {
                tracing::error!(
                    kind = "upgrade",
                    error = format!("{e:#}"),
                    "upgrade failed; this process serves on"
                );
            }
        }
        self.busy.store(false, Ordering::Release);
        outcome
    }

    /// Cancelled once a successor serves.
    pub(crate) fn done(&self) -> tokio_util::sync::CancellationToken {
        self.succeeded.clone()
    }
}

/// `POST /upgrade`: 200 `{"pid": N}` once the successor serves (this process then drains), or
/// 500 `{"error": ...}` when it failed (this process serves on).
pub(crate) async fn admin_upgrade(
    axum::extract::State(state): axum::extract::State<crate::admin::AdminState>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if state.shutdown.is_cancelled() {
        return (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "error": "shutting down: no upgrade" })),
        )
            .into_response();
    }
    match state.handover.upgrade().await {
        Ok(pid) => axum::Json(serde_json::json!({ "pid": pid })).into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_managers_socket_survives_upgrades() {
        let systemd = OsString::from("/run/systemd/notify");
        let predecessor = OsString::from("/tmp/palisade-upgrade-1/notify.sock");
        // Started by systemd: NOTIFY_SOCKET is the manager's.
        assert_eq!(manager_socket(Some(&systemd), None), Some(systemd.clone()));
        // Started by an upgrade under systemd: the predecessor passed the manager's on.
        assert_eq!(manager_socket(Some(&predecessor), Some(systemd.clone())), Some(systemd));
        // Started by an upgrade without a manager.
        assert_eq!(manager_socket(Some(&predecessor), Some(OsString::new())), None);
        assert_eq!(manager_socket(None, None), None);
    }

    #[test]
    fn a_binary_replaced_on_disk_is_started_from_its_path() {
        let replaced = PathBuf::from("/usr/local/bin/palisade (deleted)");
        assert_eq!(successor_binary(replaced), PathBuf::from("/usr/local/bin/palisade"));
        let same = PathBuf::from("/usr/local/bin/palisade");
        assert_eq!(successor_binary(same.clone()), same);
    }

    /// `key=value` lines of a unit file (or `key: value` of YAML), values trimmed.
    fn values(text: &str, key: &str, sep: char) -> Vec<String> {
        text.lines()
            .filter_map(|l| {
                l.trim().strip_prefix(key)?.strip_prefix(sep).map(|v| v.trim().to_owned())
            })
            .collect()
    }

    fn one(text: &str, key: &str, sep: char) -> String {
        let v = values(text, key, sep);
        assert_eq!(v.len(), 1, "exactly one {key}{sep} expected, found {v:?}");
        v[0].clone()
    }

    /// The files in deploy/ name only what exists: the listener names of `LISTEN_FDNAMES`,
    /// configuration keys (parsed and validated as the binary does), the admin routes, and
    /// stop timeouts longer than the drain. They cannot rot unnoticed.
    #[test]
    fn the_deploy_files_match_the_code() {
        use crate::config::Config;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let read = |p: &str| {
            std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("deploy/{p}: {e}"))
        };
        let admin_rs = include_str!("admin.rs");
        for route in ["/healthz", "/readyz"] {
            assert!(admin_rs.contains(&format!(".route(\"{route}\"")), "no admin route {route}");
        }

        // systemd: the units and the configuration they expect.
        let config = Config::from_toml(&read("systemd/palisade.toml")).expect("palisade.toml");
        config.validate().expect("deploy/systemd/palisade.toml validates");
        let service = read("systemd/palisade.service");
        assert_eq!(one(&service, "Type", '='), "notify");
        assert_eq!(one(&service, "ExecReload", '='), "/bin/kill -HUP $MAINPID");
        let stop: u64 = one(&service, "TimeoutStopSec", '=').parse().expect("TimeoutStopSec");
        assert!(stop > config.limits.drain_timeout_secs + 2, "TimeoutStopSec {stop} vs the drain");
        for exec in
            values(&service, "ExecStart", '=').iter().chain(&values(&service, "ExecStartPre", '='))
        {
            assert!(exec.contains("--config /etc/palisade/palisade.toml "), "{exec}");
        }
        assert_eq!(one(&service, "LogsDirectory", '='), "palisade");
        assert_eq!(config.log.dir, PathBuf::from("/var/log/palisade"));
        let units: Vec<String> =
            one(&service, "Sockets", '=').split_whitespace().map(str::to_owned).collect();
        let mut names = Vec::new();
        for unit in &units {
            let socket = read(&format!("systemd/{unit}"));
            let name = one(&socket, "FileDescriptorName", '=');
            assert!(
                LISTENER_NAMES.contains(&name.as_str()),
                "{unit}: {name} not in LISTENER_NAMES"
            );
            let listen: std::net::SocketAddr =
                one(&socket, "ListenStream", '=').parse().expect("ListenStream address");
            let key = match name.as_str() {
                "echo" => config.echo.listen,
                "secure" => config.secure.listen,
                _ => config.admin.listen,
            };
            assert_eq!(listen, key, "{unit}: ListenStream differs from {name}.listen");
            assert_eq!(one(&socket, "Service", '='), "palisade.service");
            names.push(name);
        }
        names.sort();
        let mut all = LISTENER_NAMES.map(str::to_owned).to_vec();
        all.sort();
        assert_eq!(names, all, "one socket unit per listener");

        // Kubernetes: the ConfigMap's configuration, the probes and the grace period.
        let yaml = read("kubernetes/palisade.yaml");
        let toml: String = yaml
            .lines()
            .skip_while(|l| !l.trim_end().ends_with("palisade.toml: |"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
            .collect();
        let k8s = Config::from_toml(&toml).expect("the ConfigMap's palisade.toml");
        k8s.validate().expect("the ConfigMap's palisade.toml validates");
        let grace: u64 =
            one(&yaml, "terminationGracePeriodSeconds", ':').parse().expect("grace period");
        let pre_stop: u64 = one(&yaml, "seconds", ':').parse().expect("preStop sleep");
        assert!(
            grace > pre_stop + k8s.limits.drain_timeout_secs + 2,
            "terminationGracePeriodSeconds {grace} vs preStop {pre_stop} + drain"
        );
        let mut paths = values(&yaml, "path", ':');
        paths.sort();
        paths.dedup();
        assert_eq!(paths, ["/healthz", "/readyz"]);
        let ports = values(&yaml, "containerPort", ':');
        for (port, listen) in
            ports.iter().zip([k8s.echo.listen, k8s.secure.listen, k8s.admin.listen])
        {
            assert_eq!(port.parse::<u16>().ok(), Some(listen.port()), "containerPort vs listen");
        }
        assert_eq!(ports.len(), 3);
    }
}
