//! Logging setup for Palisade: console output plus the error log file.
//!
//! [`init`] installs a global [`tracing`] subscriber with two independent outputs:
//!
//! - the console (stderr; stdout is left to the program), as text or JSON lines
//!   ([`LogFormat`]), filtered by an `EnvFilter` directive string such as
//!   `"info"` or `"palisade=debug,info"` ([`LogConfig::level`]);
//! - the error log [`ERROR_LOG_FILE`] (`websocket_errors.log`) in
//!   [`LogConfig::dir`], which receives ERROR events only, whatever the console
//!   level (plus [`ANCHOR_TARGET`] events at INFO and WARN), as one JSON object per line. It is written by tracing-appender's
//!   non-blocking worker and rotated by size into `websocket_errors.log.1`,
//!   `.2`, ... keeping at most [`LogConfig::max_files`] old files, so the error
//!   log never takes more than `(max_files + 1) * max_file_bytes` bytes.
//!
//! [`init`] returns a [`LogGuard`] that must be held (in `main`) until the end:
//! dropping it flushes the error log. [`build`] returns the subscriber without
//! installing it, for tests and embedders (`tracing::subscriber::with_default`).
//!
//! Each error-log line has `timestamp`, `level`, `target`, `message`, the
//! event's own fields flattened beside them, and `spans`: the INFO-or-more
//! severe spans the event is in (outermost first), each with its `name` and
//! fields. So a connection span such as `info_span!("conn", id, peer)` puts the
//! connection's context on every error line.
//!
//! Under a flood the error-log queue ([`ERROR_LOG_QUEUE_LINES`]) can fill up;
//! then lines are dropped rather than blocking the server, and counted
//! ([`LogGuard::dropped_lines`]). A record longer than `max_file_bytes` is cut
//! to that size.
//!
//! What it deliberately does not do: read `RUST_LOG` or any other environment
//! variable or config file (the caller passes the directive it wants), rotate
//! by time, compress old files, or log anything itself.
//!
//! ```
//! use palisade_errlog::{LogConfig, LogFormat, ERROR_LOG_FILE};
//!
//! let dir = tempfile::tempdir()?;
//! let config = LogConfig {
//!     level: "warn".to_owned(),
//!     format: LogFormat::Text,
//!     dir: Some(dir.path().to_owned()),
//!     max_file_bytes: 10 * 1024 * 1024,
//!     max_files: 5,
//! };
//! // A server calls `palisade_errlog::init(&config)?` once, in `main`, and holds the guard.
//! let (subscriber, guard) = palisade_errlog::build(&config)?;
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::error!(conn_id = 7, "peer vanished without a close frame");
//!     tracing::warn!("this goes to the console only");
//! });
//! drop(guard); // flushes
//!
//! let log = std::fs::read_to_string(dir.path().join(ERROR_LOG_FILE))?;
//! assert_eq!(log.lines().count(), 1);
//! assert!(log.contains(r#""conn_id":7"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod rotate;

use std::fmt;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tracing::Level;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{self, EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt;

use crate::rotate::SizeRotatingFile;

/// The name of the error log inside [`LogConfig::dir`].
pub const ERROR_LOG_FILE: &str = "websocket_errors.log";

/// Events with this target reach the error log at INFO and WARN too, not only at ERROR: facts
/// that an operator must find there later but that are not errors, such as the head of the
/// audit chain (`tracing::info!(target: palisade_errlog::ANCHOR_TARGET, ...)`).
pub const ANCHOR_TARGET: &str = "palisade::anchor";

/// How many error lines may wait for the writer thread; past that, new lines
/// are dropped (and counted) rather than blocking the server.
pub const ERROR_LOG_QUEUE_LINES: usize = 16_384;

/// Logging configuration; see the crate docs.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Console filter, an `EnvFilter` directive string: `"info"`,
    /// `"palisade=debug,info"`, `"off"`. Has no effect on the error log.
    pub level: String,
    /// Console format.
    pub format: LogFormat,
    /// Directory of the error log (created if missing); `None`: no error log.
    pub dir: Option<PathBuf>,
    /// Rotate when the active file would exceed this many bytes (at least 1).
    pub max_file_bytes: u64,
    /// Rotated files kept (`websocket_errors.log.1` is the newest); 0 keeps none.
    pub max_files: usize,
}

/// Console output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields flattened (as in the error log).
    Json,
}

impl LogFormat {
    /// The name accepted by [`FromStr`]: `"text"` or `"json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    /// Parses `"text"` or `"json"` (ASCII case-insensitive, surrounding spaces ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.eq_ignore_ascii_case("text") {
            Ok(LogFormat::Text)
        } else if trimmed.eq_ignore_ascii_case("json") {
            Ok(LogFormat::Json)
        } else {
            Err(UnknownLogFormat { given: s.to_owned() })
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name other than `text` or `json`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {given:?}: expected \"text\" or \"json\"")]
pub struct UnknownLogFormat {
    /// What was given.
    pub given: String,
}

/// Keeps the error-log writer alive; dropping it flushes pending lines to the
/// file (waiting up to about a second). Hold it in `main` until exit.
#[must_use = "dropping the guard stops the error log; hold it until the program ends"]
pub struct LogGuard {
    error_log: Option<PathBuf>,
    level: Option<LevelHandle>,
    dropped: Option<ErrorCounter>,
    // Dropped last among the fields that matter: its drop drains the queue.
    _worker: Option<WorkerGuard>,
}

impl LogGuard {
    /// The active error log file (`DIR/websocket_errors.log`), if there is one.
    pub fn error_log_path(&self) -> Option<&Path> {
        self.error_log.as_deref()
    }

    /// A handle that changes the console level while the program runs (configuration reload).
    pub fn level_handle(&self) -> Option<LevelHandle> {
        self.level.clone()
    }

    /// How many error-log lines were dropped because the queue was full.
    pub fn dropped_lines(&self) -> usize {
        self.dropped.as_ref().map_or(0, ErrorCounter::dropped_lines)
    }
}

impl fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogGuard")
            .field("error_log", &self.error_log)
            .field("dropped_lines", &self.dropped_lines())
            .finish_non_exhaustive()
    }
}

/// Changes the console level of a running subscriber (from [`LogGuard::level_handle`]); the
/// error log's filter does not change.
#[derive(Clone)]
pub struct LevelHandle(tracing_subscriber::reload::Handle<EnvFilter, Registry>);

impl LevelHandle {
    /// Sets a new console level directive (same syntax as [`LogConfig::level`]). A bad
    /// directive is refused and the current level stays.
    pub fn set(&self, directive: &str) -> Result<(), LogError> {
        let filter = parse_level(directive)?;
        self.0.reload(filter).map_err(|e| LogError::BadLevel {
            directive: directive.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Checks a directive without applying it.
    pub fn check(directive: &str) -> Result<(), LogError> {
        parse_level(directive).map(drop)
    }
}

impl fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LevelHandle")
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The error log directory could not be created.
    #[error("cannot create log directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The error log file could not be opened for appending.
    #[error("cannot open error log {}", path.display())]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The console level directive is not valid.
    #[error("bad log level directive {directive:?}: {reason}")]
    BadLevel {
        /// The whole directive string as given.
        directive: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `max_file_bytes` is 0.
    #[error("max_file_bytes must be at least 1")]
    ZeroMaxFileBytes,
    /// A global subscriber (or `log` logger) is already installed.
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

/// A subscriber ready to be installed, as returned by [`build`].
pub type BoxedSubscriber = Box<dyn tracing::Subscriber + Send + Sync>;

/// Builds the subscriber (see [`build`]) and installs it as the global default,
/// also routing `log` records into it. Call once; a second call returns
/// [`LogError::AlreadyInitialised`].
pub fn init(config: &LogConfig) -> Result<LogGuard, LogError> {
    let (subscriber, guard) = build(config)?;
    subscriber.try_init().map_err(|_| LogError::AlreadyInitialised)?;
    Ok(guard)
}

/// Builds the subscriber without installing it: validates the level, creates
/// the log directory, opens the error log and starts its writer thread.
pub fn build(config: &LogConfig) -> Result<(BoxedSubscriber, LogGuard), LogError> {
    build_with_console(config, io::stderr, io::stderr().is_terminal())
}

/// [`build`] with the console going to `console` (tests capture it).
fn build_with_console<W>(
    config: &LogConfig,
    console: W,
    ansi: bool,
) -> Result<(BoxedSubscriber, LogGuard), LogError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let console_filter = parse_level(&config.level)?;
    if config.max_file_bytes == 0 {
        return Err(LogError::ZeroMaxFileBytes);
    }

    let console_layer = match config.format {
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_writer(console).with_ansi(ansi).boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(console)
            .boxed(),
    };
    let (console_filter, level) = tracing_subscriber::reload::Layer::new(console_filter);
    let mut layers = vec![console_layer.with_filter(console_filter).boxed()];

    let mut guard =
        LogGuard { error_log: None, level: Some(LevelHandle(level)), dropped: None, _worker: None };
    if let Some(dir) = &config.dir {
        create_dir(dir)?;
        let path = dir.join(ERROR_LOG_FILE);
        let file = SizeRotatingFile::open(path.clone(), config.max_file_bytes, config.max_files)
            .map_err(|source| LogError::OpenFile { path: path.clone(), source })?;
        let (writer, worker) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(ERROR_LOG_QUEUE_LINES)
            .thread_name("palisade-errlog")
            .finish(file);
        guard.dropped = Some(writer.error_counter());
        guard._worker = Some(worker);
        guard.error_log = Some(path);
        layers.push(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(error_file_filter())
                .boxed(),
        );
    }

    let subscriber = Registry::default().with(layers);
    Ok((Box::new(subscriber), guard))
}

/// ERROR events, and [`ANCHOR_TARGET`] events at INFO or more severe; spans at
/// INFO or more severe, so their fields give the error lines context.
fn error_file_filter() -> impl Filter<Registry> + Send + Sync + 'static {
    filter::filter_fn(|meta| {
        if meta.is_event() && meta.target() != ANCHOR_TARGET {
            *meta.level() == Level::ERROR
        } else {
            *meta.level() <= Level::INFO
        }
    })
    .with_max_level_hint(LevelFilter::INFO)
}

/// Parses the console directive. Beyond what `EnvFilter` checks, a directive
/// without `=` must be a level: `EnvFilter` would read a typo like `inof` as a
/// target name and silently drop everything else.
fn parse_level(directive: &str) -> Result<EnvFilter, LogError> {
    let bad = |reason: String| LogError::BadLevel { directive: directive.to_owned(), reason };
    if directive.trim().is_empty() {
        return Err(bad("empty directive".to_owned()));
    }
    for part in directive.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let is_bare = !part.contains(['=', '[', ']', '{', '}']);
        if is_bare && part.parse::<LevelFilter>().is_err() {
            return Err(bad(format!(
                "{part:?} is not a level (trace, debug, info, warn, error, off); \
                 write target=level for a target"
            )));
        }
    }
    EnvFilter::builder().parse(directive).map_err(|e| bad(e.to_string()))
}

fn create_dir(dir: &Path) -> Result<(), LogError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o750);
    }
    builder.create(dir).map_err(|source| LogError::CreateDir { dir: dir.to_owned(), source })
}

#[cfg(test)]
mod tests;
