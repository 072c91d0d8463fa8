//! The audit trail in the server (docs/audit.md): opening it from `[audit]`, the records built
//! from the server's types, the admin-call middleware, the chain head written to the error log,
//! and the `palisade audit verify | tail` subcommands.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use palisade_audit::{AuditConfig, AuditLog, Event, Head, Notice, VerifyError};
use palisade_digest::Fingerprint;
use palisade_token::Claims;
use palisade_transport::Outcome;
use serde_json::Value;

use crate::admin::AdminState;
use crate::app::Peer;
use crate::config::AuditSection;
use crate::sessions::SessionInfo;

/// The message of the error-log line that carries the chain head.
pub const HEAD_MESSAGE: &str = "audit chain head";

/// The audit trail, or nothing when `audit.file` is unset. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Audit(Option<AuditLog>);

impl Audit {
    /// Opens `audit.file`, continuing its chain, and writes the head to the error log.
    pub(crate) fn open(section: &AuditSection) -> anyhow::Result<Audit> {
        let Some(file) = &section.file else { return Ok(Audit(None)) };
        let config = AuditConfig {
            file: file.clone(),
            max_file_bytes: section.max_file_bytes,
            max_files: section.max_files,
            queue: section.queue,
        };
        let log =
            AuditLog::open(&config, notice).context("cannot open the audit trail (audit.file)")?;
        log_head(log.head(), log.path(), "start");
        Ok(Audit(Some(log)))
    }

    /// Records the event built by `event`, when the trail is on.
    pub(crate) fn record(&self, event: impl FnOnce() -> Event) {
        if let Some(log) = &self.0 {
            log.record(event());
        }
    }

    /// Counts a firewall refusal (one record per address per minute).
    pub(crate) fn refused(&self, ip: IpAddr, reason: &'static str) {
        if let Some(log) = &self.0 {
            log.refused(ip, reason);
        }
    }

    /// Writes what is pending, stops the writer and logs the final head.
    pub(crate) fn close(&self) {
        if let Some(log) = &self.0 {
            let head = log.close();
            log_head(head, log.path(), "shutdown");
        }
    }
}

/// The writer thread's reports. Rotation heads are anchors; write failures are errors.
fn notice(notice: Notice<'_>) {
    match notice {
        Notice::Rotated { head, rotated_to } => log_head(Some(head), rotated_to, "rotation"),
        Notice::WriteFailed { error } => {
            tracing::error!(kind = "audit", error = %error, "cannot write the audit trail: records are counted as dropped until it works again");
        }
        Notice::Recovered => tracing::warn!(kind = "audit", "audit trail writable again"),
    }
}

/// Writes the head to the error log (and the console at INFO). It is not an error, so it is an
/// INFO event with the anchor target, which the error log takes at any level.
fn log_head(head: Option<Head>, file: &Path, at: &'static str) {
    match head {
        Some(h) => {
            tracing::info!(target: palisade_errlog::ANCHOR_TARGET, audit_seq = h.seq, audit_head = %h.hash, audit_file = %file.display(), at, "{HEAD_MESSAGE}")
        }
        None => {
            tracing::info!(target: palisade_errlog::ANCHOR_TARGET, audit_file = %file.display(), at, "audit trail empty")
        }
    }
}

// ---- records from the server's types ----

pub(crate) fn auth_ok(peer: &Peer, claims: &Claims, token: Fingerprint) -> Event {
    Event::AuthOk {
        conn: peer.conn.id.0,
        endpoint: peer.conn.endpoint.to_string(),
        ip: peer.client_ip,
        user_id: claims.user_id.clone(),
        token,
        email: claims.email.as_ref().map(|e| e.fingerprint()),
    }
}

pub(crate) fn auth_failed(peer: &Peer, reason: &str, token: Option<Fingerprint>) -> Event {
    Event::AuthFailed {
        conn: peer.conn.id.0,
        endpoint: peer.conn.endpoint.to_string(),
        ip: peer.client_ip,
        reason: reason.to_owned(),
        token,
    }
}

pub(crate) fn ban(ip: IpAddr, duration: Duration, cause: &str) -> Event {
    Event::Ban { ip, secs: duration.as_secs(), cause: cause.to_owned() }
}

pub(crate) fn session_start(s: &SessionInfo, ip: IpAddr) -> Event {
    Event::SessionStart {
        session: s.id.as_str().to_owned(),
        conn: s.conn.0,
        endpoint: s.endpoint.clone(),
        ip,
        user_id: s.user_id.clone(),
    }
}

pub(crate) fn session_end(s: &SessionInfo, outcome: &Outcome) -> Event {
    let by = match outcome {
        Outcome::PeerClosed { .. } => "client",
        Outcome::ServerClosed(_) => "server",
        Outcome::Failed { .. } => "error",
    };
    Event::SessionEnd {
        session: s.id.as_str().to_owned(),
        conn: s.conn.0,
        user_id: s.user_id.clone(),
        by: by.to_owned(),
        close_code: outcome.close_code_sent(),
    }
}

pub(crate) fn revoked(session: Option<&str>, user_id: Option<&str>, sessions: usize) -> Event {
    Event::Revoked {
        session: session.map(str::to_owned),
        user_id: user_id.map(str::to_owned),
        sessions: sessions as u64,
        cause: "admin".to_owned(),
    }
}

/// Admin middleware: one `admin_call` record per call (refused ones too), naming the caller by
/// the fingerprint of the bearer token it presented.
pub(crate) async fn admin_calls(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Response {
    let admin = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::http_auth::bearer_token)
        .filter(|t| !t.is_empty())
        .map(Fingerprint::of);
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    state.audit.record(|| Event::AdminCall { admin, method, path, status });
    response
}

// ---- `palisade audit` ----

/// `palisade audit ...`
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and report the first broken link (exit 1), or that it holds (exit 0).
    Verify {
        /// The audit files; rotated files (FILE.N) are put oldest first, so `FILE*` works.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// A head anchored elsewhere, as SEQ:HEX (repeatable).
        #[arg(long = "head", value_name = "SEQ:HEX")]
        heads: Vec<Head>,
        /// Error logs to take anchors from: every `audit chain head` line in them.
        #[arg(long = "anchors", value_name = "ERROR_LOG")]
        anchors: Vec<PathBuf>,
    },
    /// Print records readably: the last N, then (with -f) new ones as they come.
    Tail {
        /// Keep printing records as they are written, across rotations.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// The audit file.
        file: PathBuf,
    },
}

/// Runs a `palisade audit` subcommand. Exit codes: 0 done (chain intact), 1 chain broken,
/// 2 could not run (a file unreadable).
pub fn run(command: &AuditCommand) -> ExitCode {
    let mut out = io::stdout().lock();
    let result = match command {
        AuditCommand::Verify { files, heads, anchors } => {
            let mut files = files.clone();
            palisade_audit::chain_order(&mut files);
            verify(&files, heads.clone(), anchors, &mut out)
        }
        AuditCommand::Tail { follow, lines, file } => {
            tail(file, *lines, *follow, &mut out).map(|()| ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        // The binary's own error format.
        let _ = writeln!(io::stderr(), "palisade: error: {e:#}");
        ExitCode::from(2)
    })
}

fn verify(
    files: &[PathBuf],
    mut heads: Vec<Head>,
    anchor_logs: &[PathBuf],
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    for log in anchor_logs {
        heads.extend(anchors_in(log)?);
    }
    match palisade_audit::verify(files, &heads) {
        Ok(s) => {
            let range = match (s.first_seq, s.head) {
                (Some(first), Some(head)) => format!("seq {first}..={}, head {head}", head.seq),
                _ => "no records".to_owned(),
            };
            writeln!(
                out,
                "audit chain intact: {} records in {} file(s), {range}",
                s.records, s.files
            )?;
            writeln!(
                out,
                "anchors: {} checked, {} older than these files; records dropped under load: {}",
                s.anchors_checked, s.anchors_unchecked, s.dropped
            )?;
            if heads.is_empty() {
                writeln!(
                    out,
                    "warning: no anchor given, so a cut-off tail cannot be detected (pass --anchors websocket_errors.log or --head SEQ:HEX)"
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(VerifyError::Broken(b)) => {
            writeln!(out, "audit chain BROKEN at {}:{}: {}", b.file.display(), b.line, b.kind)?;
            Ok(ExitCode::FAILURE)
        }
        Err(e @ VerifyError::Io { .. }) => Err(e.into()),
    }
}

/// The heads written to an error log (JSON lines) by this server.
fn anchors_in(path: &Path) -> anyhow::Result<Vec<Head>> {
    let file =
        File::open(path).with_context(|| format!("cannot read --anchors {}", path.display()))?;
    let mut heads = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("cannot read --anchors {}", path.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        if v["message"] != HEAD_MESSAGE {
            continue;
        }
        let seq = v["audit_seq"].as_u64();
        let hash = v["audit_head"].as_str().and_then(palisade_digest::Digest::from_hex);
        if let (Some(seq), Some(hash)) = (seq, hash) {
            heads.push(Head { seq, hash });
        }
    }
    Ok(heads)
}

/// One record, readably: `TS #SEQ EVENT key=value ...`; strings are quoted with control
/// characters escaped, so a record cannot move the terminal's cursor or fake another line.
pub(crate) fn readable(line: &[u8]) -> String {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) else {
        return format!("(not an audit record: {:?})", String::from_utf8_lossy(line));
    };
    let field = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or("?");
    let seq = map.get("seq").and_then(Value::as_u64).map_or("?".to_owned(), |s| s.to_string());
    let mut out = format!("{} #{seq} {}", field("ts"), field("event"));
    for (k, v) in &map {
        if ["seq", "ts", "event", "prev"].contains(&k.as_str()) {
            continue;
        }
        let shown = match v {
            Value::String(s) => format!("{s:?}"),
            Value::Object(_) | Value::Array(_) => format!("{:?}", v.to_string()),
            other => other.to_string(),
        };
        out.push_str(&format!(" {k}={shown}"));
    }
    out
}

fn tail(path: &Path, last: usize, follow: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let open = || File::open(path).with_context(|| format!("cannot read {}", path.display()));
    let mut file = open()?;
    let mut all = Vec::new();
    file.read_to_end(&mut all)?;
    let whole = all.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<&[u8]> = all[..whole].split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
    for line in &lines[lines.len().saturating_sub(last)..] {
        writeln!(out, "{}", readable(line))?;
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    let mut pos = whole as u64;
    let mut partial: Vec<u8> = Vec::new();
    let mut id = file_id(&file.metadata()?);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        follow_from(&mut file, &mut pos, &mut partial, out)?;
        let Ok(meta) = std::fs::metadata(path) else { continue };
        if file_id(&meta) != id {
            // Rotated: finish the old file (still open under its new name), then the new one.
            follow_from(&mut file, &mut pos, &mut partial, out)?;
            file = open()?;
            id = file_id(&file.metadata()?);
            pos = 0;
            partial.clear();
        } else if meta.len() < pos {
            // Cut shorter: start again at its beginning.
            pos = 0;
            partial.clear();
        }
    }
}

/// Prints the whole records written to `file` after `pos`.
fn follow_from(
    file: &mut File,
    pos: &mut u64,
    partial: &mut Vec<u8>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    file.seek(SeekFrom::Start(*pos))?;
    let mut fresh = Vec::new();
    *pos += file.read_to_end(&mut fresh)? as u64;
    partial.extend_from_slice(&fresh);
    while let Some(end) = partial.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = partial.drain(..=end).collect();
        writeln!(out, "{}", readable(&line[..line.len() - 1]))?;
    }
    out.flush()?;
    Ok(())
}

/// Device and inode: a rotation puts a new file under the same name.
fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}
