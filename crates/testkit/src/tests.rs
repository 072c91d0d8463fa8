use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Palisade, listening, temp_dir, write_secret};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// A stand-in for `palisade`: `sh -c SCRIPT` (the `--config PATH` arguments become `$0 $1`).
fn fake(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    cmd
}

#[test]
fn listening_lines_give_name_and_address_for_every_scheme() {
    for (line, name, a) in [
        ("palisade: echo listening on ws://127.0.0.1:9001/", "echo", "127.0.0.1:9001"),
        ("palisade: secure listening on wss://127.0.0.1:9002/", "secure", "127.0.0.1:9002"),
        ("palisade: admin listening on http://[::1]:9003/", "admin", "[::1]:9003"),
        ("palisade: admin listening on https://127.0.0.1:9004/", "admin", "127.0.0.1:9004"),
        ("palisade: echo listening on 127.0.0.1:9005", "echo", "127.0.0.1:9005"),
    ] {
        assert_eq!(listening(line), Some((name, Ok(addr(a)))), "{line}");
    }
    assert_eq!(listening("palisade: errors are logged to /tmp/x.log"), None);
    assert_eq!(listening("echo listening on ws://127.0.0.1:1/"), None);
    assert!(matches!(
        listening("palisade: echo listening on ws://nowhere/"),
        Some(("echo", Err(_)))
    ));
}

#[test]
fn temp_dir_has_a_log_folder_and_the_secret_is_256_bits_of_hex() {
    let dir = temp_dir("testkit-unit").expect("temp dir");
    assert!(dir.join("log").is_dir());
    let secret = std::fs::read_to_string(write_secret(&dir).expect("secret")).expect("read");
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn start_waits_for_the_listeners_asked_for_and_stop_returns_the_console() {
    let dir = temp_dir("testkit-start").expect("temp dir");
    let console = dir.join("console.log");
    // The trap and the console line come first: the test signals as soon as it has the lines.
    let script = "trap 'echo stopping >&2; exit 0' TERM; \
                  echo \"config $1\" >&2; \
                  echo 'palisade: echo listening on ws://127.0.0.1:7001/'; \
                  echo 'palisade: secure listening on ws://127.0.0.1:7002/'; \
                  echo 'palisade: admin listening on http://127.0.0.1:7003/'; \
                  echo 'palisade: errors are logged to x'; \
                  while :; do sleep 0.05; done";
    let config = dir.join("palisade.toml");
    let mut p = Palisade::start(
        fake(script),
        &config,
        &console,
        &["secure", "admin"],
        Duration::from_secs(10),
    )
    .expect("start");
    assert_eq!(p.addr("secure"), Some(addr("127.0.0.1:7002")));
    assert_eq!(p.addr("admin"), Some(addr("127.0.0.1:7003")));
    assert_eq!(p.addr("echo"), Some(addr("127.0.0.1:7001")), "printed before the others");
    let lines = p.take_lines().expect("the rest of stdout");
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(5)).as_deref(),
        Ok("palisade: errors are logged to x")
    );
    assert!(p.take_lines().is_none());
    let shown = p.stop(Duration::from_secs(5));
    assert!(shown.contains(&format!("config {}", config.display())), "{shown}");
    assert!(shown.contains("stopping"), "SIGTERM first: {shown}");
    assert!(p.child.try_wait().expect("try_wait").is_some(), "reaped");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_server_that_exits_or_stays_silent_is_an_error_with_its_console() {
    let dir = temp_dir("testkit-fail").expect("temp dir");
    let console = dir.join("console.log");
    let config = dir.join("palisade.toml");
    let exits = "echo 'palisade: echo listening on ws://127.0.0.1:7001/'; echo 'bad key' >&2";
    let started = Instant::now();
    let err = Palisade::start(
        fake(exits),
        &config,
        &console,
        &["echo", "secure"],
        Duration::from_secs(10),
    )
    .err()
    .expect("an error");
    assert!(started.elapsed() < Duration::from_secs(5), "no wait once stdout is closed");
    assert!(err.contains("missing: secure") && err.contains("bad key"), "{err}");

    let silent = "sleep 30";
    let started = Instant::now();
    let err =
        Palisade::start(fake(silent), &config, &console, &["echo"], Duration::from_millis(300))
            .err()
            .expect("an error");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the deadline");
    assert!(err.contains("missing: echo"), "{err}");

    let garbled = "echo 'palisade: echo listening on ws://nowhere/'; sleep 30";
    let err = Palisade::start(fake(garbled), &config, &console, &["echo"], Duration::from_secs(10))
        .err()
        .expect("an error");
    assert!(err.contains("does not parse"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
