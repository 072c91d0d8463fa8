//! Measures the audit trail: the cost of `record`, the writer's rate, what a full queue drops,
//! and the rate of `verify`. `cargo run --release -p palisade-audit --example throughput [N]`.

#![allow(clippy::print_stdout)] // A measuring tool: its output is for a person.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use palisade_audit::{AuditConfig, AuditLog, Event, Head, Summary, verify};
use palisade_digest::Fingerprint;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let n: u64 = std::env::args().nth(1).map_or(Ok(200_000), |s| s.parse())?;
    // A queue that holds everything: the writer's own rate.
    let dir = tempfile::tempdir()?;
    let (queued, written, head) = run(dir.path(), n, n as usize)?;
    let chain = files(dir.path())?;
    let bytes: u64 =
        chain.iter().map(|f| std::fs::metadata(f).map(|m| m.len())).sum::<std::io::Result<_>>()?;
    let started = Instant::now();
    let summary = verify(&chain, &[head])?;
    let verified = started.elapsed();
    println!("{n} records, {bytes} bytes ({} per record), {} file(s)", bytes / n, chain.len());
    println!("record():  {:>9.0} calls/s, {:.2} us each", rate(n, queued), us(queued, n));
    println!(
        "writer:    {:>9.0} records/s (queue {n}, nothing dropped: {})",
        rate(n, written),
        summary.dropped == 0
    );
    println!(
        "verify:    {:>9.0} records/s, {:.0} MB/s",
        rate(summary.records, verified),
        bytes as f64 / 1e6 / verified.as_secs_f64()
    );

    // The default queue under a producer that never pauses: drops, never waits.
    let dir = tempfile::tempdir()?;
    let (queued, _, head) = run(dir.path(), n, 4096)?;
    let Summary { records, dropped, .. } = verify(&files(dir.path())?, &[head])?;
    println!(
        "queue 4096, producer flat out: {:.2} us per record(), {} written, {dropped} dropped into {} `dropped` record(s)",
        us(queued, n),
        n - dropped,
        records - (n - dropped)
    );
    Ok(())
}

/// Records `n` events as fast as possible; returns the time to queue them, the time until the
/// writer had written them all, and the head.
fn run(dir: &Path, n: u64, queue: usize) -> Result<(Duration, Duration, Head)> {
    let config = AuditConfig {
        file: dir.join("audit.log"),
        max_file_bytes: 16 << 20,
        max_files: 100,
        queue,
    };
    let log = AuditLog::open(&config, |_| {})?;
    let token = Fingerprint::of("token");
    let started = Instant::now();
    for i in 0..n {
        log.record(Event::AuthOk {
            conn: i,
            endpoint: "secure".into(),
            ip: [203, 0, 113, 9].into(),
            user_id: format!("user{i}"),
            token,
            email: None,
        });
    }
    let queued = started.elapsed();
    let head = log.close().ok_or("nothing written")?;
    Ok((queued, started.elapsed(), head))
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    palisade_audit::chain_order(&mut files);
    Ok(files)
}

fn rate(count: u64, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

fn us(d: Duration, count: u64) -> f64 {
    d.as_secs_f64() * 1e6 / count as f64
}
