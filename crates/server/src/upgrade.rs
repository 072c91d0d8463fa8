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
//! old process passes the new main PID on (`MAINPID=`).

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

struct Startup {
    inherited: Mutex<HashMap<String, TcpListener>>,
    /// Where to send `READY=1` (systemd's socket, or the old process's during an upgrade).
    notify_socket: Option<OsString>,
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
    let startup = Startup { inherited: Mutex::new(inherited), notify_socket };
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
    let exe = std::env::current_exe().context("cannot find the running binary's path")?;
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
    let mut command = std::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", listeners.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env("NOTIFY_SOCKET", &notify_path)
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
        if let Some(path) = STARTUP.get().and_then(|s| s.notify_socket.clone()) {
            let _ = sd_notify(&path, &format!("MAINPID={pid}\nREADY=1\n"));
        }
        // Reap it in the background should it ever exit while this process lives.
        std::thread::spawn(move || child.wait());
    }
    outcome
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
    match state.handover.upgrade().await {
        Ok(pid) => axum::Json(serde_json::json!({ "pid": pid })).into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}
