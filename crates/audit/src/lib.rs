//! A tamper-evident security audit trail: typed events written as JSON lines, each record
//! linked to the one before it by SHA-256, and a verifier that finds the first broken link.
//!
//! [`AuditLog`] takes [`Event`]s (authentication, sessions, bans, revocations, admin calls,
//! firewall refusals counted per address per minute, reloads) without ever blocking the caller:
//! a bounded queue feeds one writer thread, and when the queue is full the lost records are
//! counted and replaced by one `dropped` record. Each record carries `seq`, `ts`, `event`, the
//! event's fields and `prev`, the SHA-256 of the previous record's exact bytes; the first record
//! of a rotated file links to the last record of the file before it, so rotation keeps one
//! chain. [`AuditLog::head`] and [`Notice::Rotated`] give the head to anchor elsewhere, and
//! [`verify`] walks the files and checks them against those anchors.
//!
//! Tokens and e-mail addresses can only enter a record as a `palisade_digest::Fingerprint`, and
//! strings are JSON-escaped, so a claim holding a newline cannot forge a record.
//!
//! What it deliberately does not do: sign records (whoever holds the host can rewrite the
//! whole chain; only an anchor kept elsewhere shows that), ship records anywhere, or log through
//! `tracing` (the program decides what to do with a [`Notice`]). It uses no async runtime.
//!
//! ```
//! use palisade_audit::{AuditConfig, AuditLog, Event, verify};
//!
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("audit.log");
//! let config = AuditConfig { file: file.clone(), max_file_bytes: 1 << 20, max_files: 5, queue: 1024 };
//! let log = AuditLog::open(&config, |_notice| {})?;
//! log.record(Event::Ban { ip: [192, 0, 2, 1].into(), secs: 600, cause: "admin".into() });
//! let head = log.close().expect("one record written");
//!
//! let text = std::fs::read_to_string(&file)?;
//! assert!(text.starts_with(r#"{"seq":0,"ts":""#));
//! assert!(text.contains(r#""event":"ban","ip":"192.0.2.1","secs":600,"cause":"admin","prev":"0000"#));
//!
//! let summary = verify(&[&file], &[head])?;
//! assert_eq!((summary.records, summary.head), (1, Some(head)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod event;
mod log;
mod refusals;
mod time;
mod verify;

pub use event::Event;
pub use log::{AuditConfig, AuditLog, GENESIS, Head, Notice, OpenError, ParseHeadError};
pub use verify::{Break, BreakKind, Summary, VerifyError, chain_order, verify};

#[cfg(test)]
mod tests;
