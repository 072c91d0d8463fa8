//! Integration test: `init` installs the global subscriber once (own process).

use palisade_errlog::{ERROR_LOG_FILE, LogConfig, LogError, LogFormat};

#[test]
fn init_installs_once_and_logs_errors_to_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        level: "off".to_owned(),
        format: LogFormat::Json,
        dir: Some(dir.path().to_owned()),
        max_file_bytes: 4096,
        max_files: 1,
    };
    let guard = palisade_errlog::init(&config).unwrap();
    assert_eq!(guard.error_log_path(), Some(dir.path().join(ERROR_LOG_FILE).as_path()));

    let again = palisade_errlog::init(&LogConfig { dir: None, ..config });
    assert!(matches!(again, Err(LogError::AlreadyInitialised)), "{again:?}");

    tracing::error!(code = 1011, "internal error");
    drop(guard);
    let log = std::fs::read_to_string(dir.path().join(ERROR_LOG_FILE)).unwrap();
    assert!(log.contains(r#""code":1011"#), "{log}");
    assert!(log.contains(r#""message":"internal error""#), "{log}");
}
