//! `cargo xtask fuzz`: run the cargo-fuzz targets in `fuzz/` one after another, on the stable
//! toolchain (`RUSTC_BOOTSTRAP=1` unlocks the `-Z` flags cargo fuzz passes), one job each.
//!
//! Seeds come from `fuzz/corpus/<target>/` and are never written to; what the fuzzer finds goes
//! to `fuzz/target/corpus/<target>/` (git-ignored), crashes to `fuzz/artifacts/<target>/`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::root;

pub(crate) const USAGE: &str = "\
  fuzz [TARGET] [--secs N] [--list]
                           run the cargo-fuzz targets (all, or TARGET) for N seconds each
                           (default 60); needs `cargo install cargo-fuzz`; see docs/fuzzing.md
";

pub(crate) fn fuzz(args: &[String]) -> Result<(), String> {
    let mut secs: u64 = 60;
    let mut only: Option<String> = None;
    let mut list = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--secs" => {
                let v = it.next().ok_or("--secs needs a number of seconds")?;
                secs = v.parse().map_err(|_| format!("--secs {v:?}: expected a number"))?;
            }
            "--list" => list = true,
            t if !t.starts_with('-') && only.is_none() => only = Some(t.to_owned()),
            other => return Err(format!("fuzz: unknown argument {other:?}\n\nusage:\n{USAGE}")),
        }
    }
    let all = targets()?;
    if list {
        for t in &all {
            println!("{t}");
        }
        return Ok(());
    }
    let chosen: Vec<String> = match only {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => return Err(format!("no fuzz target {t:?}; targets: {}", all.join(", "))),
        None => all,
    };
    let probe = Command::new(cargo_bin()).args(["fuzz", "--version"]).output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        return Err("cargo fuzz is not installed: run `cargo install cargo-fuzz`".into());
    }
    let mut results = Vec::new();
    let mut crashed = Vec::new();
    for target in &chosen {
        let (summary, ok) = run_one(target, secs)?;
        if !ok {
            crashed.push(target.clone());
        }
        results.push(format!("{target:<16} {summary}"));
    }
    println!("xtask fuzz: results ({secs} s per target)\n  {}", results.join("\n  "));
    if crashed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/; reproduce with \
             `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET FILE`)",
            crashed.join(", ")
        ))
    }
}

fn cargo_bin() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The target names, from `fuzz/fuzz_targets/*.rs`.
fn targets() -> Result<Vec<String>, String> {
    let dir = root().join("fuzz/fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Runs one target; returns libFuzzer's last status line and whether it ended without a crash.
fn run_one(target: &str, secs: u64) -> Result<(String, bool), String> {
    let root = root();
    let work = root.join("fuzz/target/corpus").join(target);
    fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let seeds = root.join("fuzz/corpus").join(target);
    // Build first, so the time reported is fuzzing time.
    let mut build = Command::new(cargo_bin());
    build.current_dir(&root).env("RUSTC_BOOTSTRAP", "1").args([
        "fuzz",
        "build",
        "--fuzz-dir",
        "fuzz",
        target,
    ]);
    crate::status(build)?;
    let mut cmd = Command::new(cargo_bin());
    cmd.current_dir(&root)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        // One in-process fuzzer: libFuzzer's -jobs=N (even 1) forks workers that log to files.
        .args(["-print_final_stats=1", "-max_len=8192"])
        .stderr(Stdio::piped());
    println!("xtask fuzz: {target} for {secs} s");
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    let mut last = String::from("no status line");
    let mut execs = String::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains(" cov: ") {
                last = line.clone();
            }
            if line.starts_with("stat::number_of_executed_units:") {
                execs = line.rsplit(' ').next().unwrap_or("").to_owned();
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo fuzz: {e}"))?;
    let status_line = last.split_once(' ').map(|(_, r)| r).unwrap_or(&last).trim().to_owned();
    let summary = format!(
        "{:.0?}, executions {}, {}{}",
        started.elapsed(),
        if execs.is_empty() { "?" } else { &execs },
        status_line,
        if status.success() { String::new() } else { format!(" -- FAILED ({status})") }
    );
    Ok((summary, status.success()))
}
