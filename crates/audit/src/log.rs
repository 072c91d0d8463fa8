//! The writer: a bounded queue, one thread that appends records to the file, size rotation, and
//! the head of the chain.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use palisade_digest::{Digest, sha256};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::refusals::Refusals;
use crate::time::rfc3339_millis;

/// The `prev` of the very first record of a chain: 64 zeros.
pub const GENESIS: Digest = Digest::from_bytes([0; 32]);

/// How often the writer wakes without records, to write finished refusal minutes and the count
/// of dropped records.
const TICK: Duration = Duration::from_secs(1);

/// Records taken from the queue before they are written out together.
const BATCH: usize = 1024;

/// Where and how the audit trail is written.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The active file. Rotated files are `FILE.1` (the newest) to `FILE.<max_files>`.
    pub file: PathBuf,
    /// The active file is rotated before a record would take it past this size (a single record
    /// larger than this gets a file of its own).
    pub max_file_bytes: u64,
    /// Rotated files kept; at least 1, since a rotation that kept nothing would cut the chain.
    pub max_files: usize,
    /// Records that may wait for the writer; past that, records are counted as dropped.
    pub queue: usize,
}

/// The last record written: its sequence number and the SHA-256 of its bytes (without the
/// newline). `Display` and `FromStr` use `SEQ:HEX`, e.g. `41:9f86d0…`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Head {
    /// Sequence number of the record.
    pub seq: u64,
    /// SHA-256 of the record's bytes.
    pub hash: Digest,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for Head {
    type Err = ParseHeadError;

    fn from_str(s: &str) -> Result<Head, ParseHeadError> {
        let (seq, hash) = s.trim().split_once(':').ok_or(ParseHeadError)?;
        Ok(Head {
            seq: seq.parse().map_err(|_| ParseHeadError)?,
            hash: Digest::from_hex(hash).ok_or(ParseHeadError)?,
        })
    }
}

/// A head that is not `SEQ:HEX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected SEQ:HEX, a sequence number and 64 hex digits")]
pub struct ParseHeadError;

/// Something the writer thread reports to the program, which decides how to log it.
#[derive(Debug)]
pub enum Notice<'a> {
    /// The active file was renamed to `rotated_to`; `head` is its last record, which the next
    /// file's first record links to. Anchor it somewhere the host's users cannot rewrite.
    Rotated {
        /// The last record of the rotated file.
        head: Head,
        /// The rotated file's new name (`FILE.1`).
        rotated_to: &'a Path,
    },
    /// Writing (or rotating) failed; the records concerned are counted as dropped, and the
    /// file is cut back to its last whole record. Reported once until writing works again.
    WriteFailed {
        /// The cause.
        error: &'a io::Error,
    },
    /// Writing works again after [`Notice::WriteFailed`].
    Recovered,
}

/// Why the audit trail could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `queue` is 0.
    #[error("the audit queue must hold at least 1 record")]
    ZeroQueue,
    /// `max_file_bytes` is 0.
    #[error("the audit max_file_bytes must be at least 1")]
    ZeroMaxFileBytes,
    /// `max_files` is 0.
    #[error("the audit max_files must be at least 1, or rotation would cut the chain")]
    ZeroMaxFiles,
    /// The file or its folder could not be read, created or opened.
    #[error("cannot open audit file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The existing file does not end with a whole record, so the chain cannot be continued.
    #[error("audit file {} cannot be continued: {reason}; check it with verify and move it aside", path.display())]
    BadTail {
        /// The file.
        path: PathBuf,
        /// What is wrong with its last line.
        reason: &'static str,
    },
    /// The writer thread could not be started.
    #[error("cannot start the audit writer thread")]
    Spawn(#[source] io::Error),
}

/// The audit trail: cheap to clone, shared by every connection.
///
/// [`record`](AuditLog::record) never blocks: it puts the event on a bounded queue that one
/// thread writes out. When the queue is full the event is counted, and the writer puts one
/// [`Event::Dropped`] record with the count into the chain.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

struct Shared {
    tx: SyncSender<Msg>,
    core: Arc<Core>,
    path: PathBuf,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// What the callers and the writer thread share.
struct Core {
    /// Records lost since the last `dropped` record.
    dropped: AtomicU64,
    /// The last record written to the file.
    head: Mutex<Option<Head>>,
    refusals: Mutex<Refusals>,
}

enum Msg {
    Record(SystemTime, Event),
    Close,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the active file, continues the chain from its last record
    /// (or from the last record of `FILE.1` when the active file is empty), and starts the
    /// writer thread. `notify` runs on that thread; it must not block for long.
    pub fn open(
        config: &AuditConfig,
        notify: impl FnMut(Notice<'_>) + Send + 'static,
    ) -> Result<AuditLog, OpenError> {
        if config.queue == 0 {
            return Err(OpenError::ZeroQueue);
        }
        if config.max_file_bytes == 0 {
            return Err(OpenError::ZeroMaxFileBytes);
        }
        if config.max_files == 0 {
            return Err(OpenError::ZeroMaxFiles);
        }
        let path = config.file.clone();
        let io_err = |source| OpenError::Io { path: path.clone(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let tail = match last_record(&path)? {
            Some(tail) => Some(tail),
            None => last_record(&rotated(&path, 1))?,
        };
        let file = open_append(&path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        let core = Arc::new(Core {
            dropped: AtomicU64::new(0),
            head: Mutex::new(tail),
            refusals: Mutex::new(Refusals::default()),
        });
        let writer = Writer {
            path: path.clone(),
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files,
            file: Some(file),
            size,
            next_seq: tail.map_or(0, |h| h.seq.saturating_add(1)),
            prev: tail.map_or(GENESIS, |h| h.hash),
            head: tail,
            batch: Vec::new(),
            batch_records: 0,
            undo: (0, GENESIS, None),
            core: core.clone(),
            notify: Box::new(notify),
            failing: false,
        };
        let (tx, rx) = mpsc::sync_channel(config.queue);
        let worker = std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Spawn)?;
        Ok(AuditLog {
            shared: Arc::new(Shared { tx, core, path, worker: Mutex::new(Some(worker)) }),
        })
    }

    /// Queues `event`; never blocks. When the queue is full (or the log is closed), the event
    /// is counted as dropped instead.
    pub fn record(&self, event: Event) {
        if self.shared.tx.try_send(Msg::Record(SystemTime::now(), event)).is_err() {
            self.shared.core.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a firewall refusal of `ip` for `reason` (e.g. `banned`). One
    /// [`Event::FirewallRefused`] per address per minute is written after the minute ends, for
    /// at most 1000 addresses a minute; the rest are counted together.
    pub fn refused(&self, ip: IpAddr, reason: &'static str) {
        let lost = lock(&self.shared.core.refusals).add(ip, reason, SystemTime::now());
        if lost > 0 {
            self.shared.core.dropped.fetch_add(lost, Ordering::Relaxed);
        }
    }

    /// The last record written to the file, if any (including records of earlier runs).
    pub fn head(&self) -> Option<Head> {
        *lock(&self.shared.core.head)
    }

    /// The active file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Writes what is queued, the refusals counted so far and the dropped count, syncs the file
    /// and stops the writer; returns the final head. Records made afterwards are lost. Later
    /// calls only return the head.
    pub fn close(&self) -> Option<Head> {
        let worker = lock(&self.shared.worker).take();
        if let Some(worker) = worker {
            // Behind every record queued so far; waits while the queue is full.
            if self.shared.tx.send(Msg::Close).is_ok() {
                // A panicked writer has nothing more to write; the head says where it stopped.
                let _ = worker.join();
            }
        }
        self.head()
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.shared.path)
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

/// One record as written: `seq`, `ts`, the event's name and fields, `prev`.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts: &'a str,
    #[serde(flatten)]
    event: &'a Event,
    prev: &'a str,
}

/// The fields every record has, as read back.
#[derive(Deserialize)]
pub(crate) struct Fields {
    pub(crate) seq: u64,
    #[allow(dead_code)] // Required to be present; its value is not checked.
    pub(crate) ts: serde::de::IgnoredAny,
    pub(crate) event: String,
    pub(crate) prev: String,
    /// Only in `dropped` records.
    pub(crate) count: Option<u64>,
}

/// Owns the file; runs on the writer thread.
struct Writer {
    path: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    file: Option<File>,
    /// Bytes in the active file.
    size: u64,
    next_seq: u64,
    prev: Digest,
    head: Option<Head>,
    /// Serialized records not yet written.
    batch: Vec<u8>,
    batch_records: u64,
    /// `next_seq`, `prev` and `head` before the batch, to roll back a failed write.
    undo: (u64, Digest, Option<Head>),
    core: Arc<Core>,
    notify: Box<dyn FnMut(Notice<'_>) + Send>,
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let mut closing = false;
            match rx.recv_timeout(TICK) {
                Ok(Msg::Record(ts, event)) => {
                    self.push(ts, &event);
                    for _ in 0..BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Record(ts, event)) => self.push(ts, &event),
                            Ok(Msg::Close) => {
                                closing = true;
                                break;
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => closing = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = SystemTime::now();
            let (refusals, lost) = lock(&self.core.refusals).take((!closing).then_some(now));
            self.core.dropped.fetch_add(lost, Ordering::Relaxed);
            for event in &refusals {
                self.push(now, event);
            }
            let dropped = self.core.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                self.push(now, &Event::Dropped { count: dropped });
            }
            self.flush();
            if closing {
                if let Some(file) = &self.file {
                    // Best effort: there is nobody left to tell.
                    let _ = file.sync_all();
                }
                return;
            }
        }
    }

    /// Appends one record to the batch, rotating first when it would not fit the file.
    fn push(&mut self, ts: SystemTime, event: &Event) {
        let ts = rfc3339_millis(ts);
        let prev = self.prev.to_hex();
        let line = Line { seq: self.next_seq, ts: &ts, event, prev: &prev };
        let Ok(line) = serde_json::to_vec(&line) else {
            // Events hold only strings, numbers and maps with string keys: this cannot fail.
            self.core.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let used = self.size + self.batch.len() as u64;
        if used > 0 && used + line.len() as u64 + 1 > self.max_file_bytes {
            self.flush();
            self.rotate();
        }
        if self.batch.is_empty() {
            self.undo = (self.next_seq, self.prev, self.head);
            self.batch_records = 0;
        }
        self.batch.extend_from_slice(&line);
        self.batch.push(b'\n');
        self.batch_records += 1;
        self.prev = sha256(&line);
        self.head = Some(Head { seq: self.next_seq, hash: self.prev });
        self.next_seq += 1;
        if self.batch.len() >= 64 * 1024 {
            self.flush();
        }
    }

    /// Writes the batch. On failure, cuts the file back to its last whole record, rolls the
    /// chain back and counts the batch as dropped.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let result = self.write_batch();
        match result {
            Ok(()) => {
                self.size += self.batch.len() as u64;
                *lock(&self.core.head) = self.head;
                if self.failing {
                    self.failing = false;
                    (self.notify)(Notice::Recovered);
                }
            }
            Err(error) => {
                if let Some(file) = &self.file {
                    // Best effort: if even this fails, verify will show the torn line.
                    let _ = file.set_len(self.size);
                }
                (self.next_seq, self.prev, self.head) = self.undo;
                self.core.dropped.fetch_add(self.batch_records, Ordering::Relaxed);
                self.report(&error);
            }
        }
        self.batch.clear();
        self.batch_records = 0;
    }

    fn write_batch(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = open_append(&self.path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(&self.batch),
            None => Err(io::Error::other("audit file is not open")),
        }
    }

    /// Renames `FILE` to `FILE.1` (shifting older ones, dropping the oldest) and opens a new
    /// `FILE`.
    fn rotate(&mut self) {
        if let Some(file) = self.file.take() {
            // Best effort: the rename below does not depend on it.
            let _ = file.sync_all();
        }
        match shift(&self.path, self.max_files) {
            Ok(rotated_to) => {
                if let Some(head) = self.head {
                    (self.notify)(Notice::Rotated { head, rotated_to: &rotated_to });
                }
            }
            Err(error) => self.report(&error),
        }
        match open_append(&self.path).and_then(|f| Ok((f.metadata()?.len(), f))) {
            Ok((size, file)) => {
                self.size = size;
                self.file = Some(file);
            }
            Err(error) => {
                self.size = 0;
                self.report(&error);
            }
        }
    }

    fn report(&mut self, error: &io::Error) {
        if !self.failing {
            self.failing = true;
            (self.notify)(Notice::WriteFailed { error });
        }
    }
}

/// `FILE.n`.
pub(crate) fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn shift(path: &Path, max_files: usize) -> io::Result<PathBuf> {
    ignore_missing(fs::remove_file(rotated(path, max_files)))?;
    for n in (1..max_files).rev() {
        ignore_missing(fs::rename(rotated(path, n), rotated(path, n + 1)))?;
    }
    let to = rotated(path, 1);
    fs::rename(path, &to)?;
    Ok(to)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The head of an existing file: its last record's sequence number and hash.
fn last_record(path: &Path) -> Result<Option<Head>, OpenError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(OpenError::Io { path: path.to_owned(), source }),
    };
    let Some(body) = bytes.strip_suffix(b"\n") else {
        if bytes.is_empty() {
            return Ok(None);
        }
        let reason = "its last line is incomplete";
        return Err(OpenError::BadTail { path: path.to_owned(), reason });
    };
    let line = &body[body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)..];
    match serde_json::from_slice::<Fields>(line) {
        Ok(fields) => Ok(Some(Head { seq: fields.seq, hash: sha256(line) })),
        Err(_) => {
            let reason = "its last line is not an audit record";
            Err(OpenError::BadTail { path: path.to_owned(), reason })
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked: every update is a single step.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
