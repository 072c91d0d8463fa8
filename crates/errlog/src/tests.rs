//! Tests for the subscriber: what reaches the error log and the console.

use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing::{debug, error, info, info_span, trace, warn};
use tracing_subscriber::fmt::MakeWriter;

use super::{ERROR_LOG_FILE, LogConfig, LogError, LogFormat, LogGuard, build_with_console};

/// A console that the test can read back.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Console {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Console {
    type Writer = Console;
    fn make_writer(&'w self) -> Console {
        self.clone()
    }
}

fn config(level: &str, format: LogFormat, dir: Option<&Path>) -> LogConfig {
    LogConfig {
        level: level.to_owned(),
        format,
        dir: dir.map(Path::to_owned),
        max_file_bytes: 1024 * 1024,
        max_files: 3,
    }
}

/// Runs `emit` under a subscriber built from `config`, drops the guard, and
/// returns the console output and the error log's lines parsed as JSON.
#[track_caller]
fn run(config: &LogConfig, emit: impl FnOnce()) -> (String, Vec<Value>) {
    let console = Console::default();
    let (subscriber, guard) = build_with_console(config, console.clone(), false).unwrap();
    let path = guard.error_log_path().map(Path::to_owned);
    tracing::subscriber::with_default(subscriber, emit);
    drop(guard);
    let lines = match path {
        Some(path) => std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        None => Vec::new(),
    };
    (console.text(), lines)
}

fn build_err(config: &LogConfig) -> LogError {
    match build_with_console(config, Console::default(), false) {
        Ok(_) => panic!("expected an error for {config:?}"),
        Err(e) => e,
    }
}

#[test]
fn error_event_reaches_file_with_structured_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (_, lines) = run(&config("info", LogFormat::Text, Some(dir.path())), || {
        error!(conn_id = 42_u64, peer = "127.0.0.1:50000", kind = "reset", "connection lost");
    });
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["message"], "connection lost");
    assert_eq!(line["conn_id"], 42);
    assert_eq!(line["peer"], "127.0.0.1:50000");
    assert_eq!(line["kind"], "reset");
    assert_eq!(line["target"], module_path!());
    assert!(line["timestamp"].is_string(), "no timestamp in {line}");
}

#[test]
fn warn_info_debug_and_trace_do_not_reach_file() {
    let dir = tempfile::tempdir().unwrap();
    let (console, lines) = run(&config("trace", LogFormat::Text, Some(dir.path())), || {
        trace!("t");
        debug!("d");
        info!("i");
        warn!("w");
        error!("e");
    });
    let messages: Vec<&Value> = lines.iter().map(|l| &l["message"]).collect();
    assert_eq!(messages, ["e"]);
    // The console at "trace" did get them all.
    for level in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"] {
        assert!(console.contains(level), "{level} missing from console: {console}");
    }
}

#[test]
fn anchor_events_reach_file_at_info_and_warn_even_when_console_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (console, lines) = run(&config("off", LogFormat::Text, Some(dir.path())), || {
        debug!(target: super::ANCHOR_TARGET, "too low");
        info!(target: super::ANCHOR_TARGET, audit_seq = 41u64, "audit chain head");
        warn!(target: super::ANCHOR_TARGET, "anchor at warn");
        info!(target: "palisade::other", "not an anchor");
    });
    assert_eq!(console, "");
    let messages: Vec<&Value> = lines.iter().map(|l| &l["message"]).collect();
    assert_eq!(messages, ["audit chain head", "anchor at warn"]);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["audit_seq"], 41);
    assert_eq!(lines[0]["target"], "palisade::anchor");
}

#[test]
fn errors_reach_file_even_when_console_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let (console, lines) = run(&config("off", LogFormat::Text, Some(dir.path())), || {
        error!("still logged");
    });
    assert_eq!(console, "");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["message"], "still logged");
}

#[test]
fn file_lines_carry_the_fields_of_enclosing_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (_, lines) = run(&config("warn", LogFormat::Text, Some(dir.path())), || {
        let span = info_span!("conn", id = 9_u64, endpoint = "secure");
        let _entered = span.enter();
        error!(kind = "protocol", "bad frame");
    });
    assert_eq!(lines.len(), 1);
    let spans = lines[0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "conn");
    assert_eq!(spans[0]["id"], 9);
    assert_eq!(spans[0]["endpoint"], "secure");
}

#[test]
fn console_text_respects_its_level_and_directives() {
    let (console, _) =
        run(&config("warn,palisade_errlog::tests=debug", LogFormat::Text, None), || {
            trace!("hidden trace");
            debug!("shown debug");
            info!(target: "elsewhere", "hidden info");
            warn!(target: "elsewhere", "shown warn");
        });
    assert!(console.contains("shown debug"), "{console}");
    assert!(console.contains("shown warn"), "{console}");
    assert!(!console.contains("hidden"), "{console}");
    assert!(!console.starts_with('{'), "text console printed JSON: {console}");
}

#[test]
fn console_json_prints_one_object_per_event() {
    let (console, _) = run(&config("info", LogFormat::Json, None), || {
        info!(user_id = "u1", "authenticated");
        warn!("over capacity");
    });
    let lines: Vec<Value> = console.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["message"], "authenticated");
    assert_eq!(lines[0]["user_id"], "u1");
    assert_eq!(lines[1]["level"], "WARN");
}

#[test]
fn no_dir_means_no_error_log() {
    let console = Console::default();
    let (_, guard) =
        build_with_console(&config("info", LogFormat::Text, None), console, false).unwrap();
    assert_eq!(guard.error_log_path(), None);
    assert_eq!(guard.dropped_lines(), 0);
}

#[test]
fn missing_log_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let (_, lines) = run(&config("info", LogFormat::Text, Some(&nested)), || error!("x"));
    assert_eq!(lines.len(), 1);
    assert!(nested.join(ERROR_LOG_FILE).is_file());
}

#[test]
fn uncreatable_log_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let bad = file.join("logs");
    let err = build_err(&config("info", LogFormat::Text, Some(&bad)));
    assert!(matches!(&err, LogError::CreateDir { dir, .. } if *dir == bad), "{err:?}");
    assert_eq!(err.to_string(), format!("cannot create log directory {}", bad.display()));
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn unopenable_error_log_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the log file should be.
    std::fs::create_dir(dir.path().join(ERROR_LOG_FILE)).unwrap();
    let err = build_err(&config("info", LogFormat::Text, Some(dir.path())));
    assert!(
        matches!(&err, LogError::OpenFile { path, .. } if path.ends_with(ERROR_LOG_FILE)),
        "{err:?}"
    );
}

#[track_caller]
fn check_bad_level(directive: &str, reason_contains: &str) {
    let err = build_err(&config(directive, LogFormat::Text, None));
    let LogError::BadLevel { directive: named, reason } = &err else {
        panic!("expected BadLevel for {directive:?}, got {err:?}");
    };
    assert_eq!(named, directive);
    assert!(reason.contains(reason_contains), "reason {reason:?} lacks {reason_contains:?}");
    assert!(err.to_string().contains(&format!("{directive:?}")), "{err}");
}

#[test]
fn bad_level_directives_are_rejected_by_name() {
    check_bad_level("", "empty");
    check_bad_level("   ", "empty");
    check_bad_level("inof", "\"inof\" is not a level");
    check_bad_level("palisade=debug,verbose", "\"verbose\" is not a level");
    check_bad_level("palisade=loud", "");
}

#[test]
fn level_names_and_target_directives_are_accepted() {
    for directive in ["info", "WARN", "off", "palisade=debug,info", "a::b=trace", " error "] {
        assert!(
            build_with_console(
                &config(directive, LogFormat::Text, None),
                Console::default(),
                false
            )
            .is_ok(),
            "{directive:?} was rejected"
        );
    }
}

#[test]
fn zero_max_file_bytes_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("info", LogFormat::Text, Some(dir.path()));
    cfg.max_file_bytes = 0;
    assert!(matches!(build_err(&cfg), LogError::ZeroMaxFileBytes));
}

#[test]
fn dropping_the_guard_flushes_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, lines) = run(&config("off", LogFormat::Text, Some(dir.path())), || {
        for i in 0..500_u32 {
            error!(i, "burst");
        }
    });
    assert_eq!(lines.len(), 500);
    assert_eq!(lines[499]["i"], 499);
}

#[test]
fn rotation_through_the_subscriber_keeps_at_most_max_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config("off", LogFormat::Text, Some(dir.path()));
    cfg.max_file_bytes = 1024;
    cfg.max_files = 2;
    let console = Console::default();
    let (subscriber, guard) = build_with_console(&cfg, console, false).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        // Each line is ~150 bytes: 300 lines is ~45 files' worth.
        for i in 0..300_u32 {
            error!(i, padding = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "rotating");
        }
    });
    assert_eq!(guard.dropped_lines(), 0);
    drop(guard);

    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [ERROR_LOG_FILE, "websocket_errors.log.1", "websocket_errors.log.2"]);
    for name in &names {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.len() <= 1024, "{name} has {} bytes", text.len());
        // Every line is whole JSON.
        for line in text.lines() {
            serde_json::from_str::<Value>(line).unwrap();
        }
    }
    // The newest line is in the active file.
    let active = std::fs::read_to_string(dir.path().join(ERROR_LOG_FILE)).unwrap();
    assert!(active.contains(r#""i":299"#), "{active}");
}

#[test]
fn log_format_parses_text_and_json_only() {
    assert_eq!("text".parse(), Ok(LogFormat::Text));
    assert_eq!(" JSON ".parse(), Ok(LogFormat::Json));
    let err = "xml".parse::<LogFormat>().unwrap_err();
    assert_eq!(err.to_string(), r#"unknown log format "xml": expected "text" or "json""#);
    assert_eq!(LogFormat::Json.to_string(), "json");
}

#[test]
fn guard_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LogGuard>();
    assert_send_sync::<LogError>();
}
