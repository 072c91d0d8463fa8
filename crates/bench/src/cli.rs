//! Command line of `palisade-load`.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Cheap WebSocket load generator (one thread). Prints one JSON result line.
#[derive(Debug, Parser)]
#[command(name = "palisade-load", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N connections each keep K messages in flight; throughput and latency.
    Echo(EchoArgs),
    /// C loops of connect, upgrade, one message (or token), close.
    Handshake(HandshakeArgs),
    /// Open N connections and hold them (optionally trickling messages).
    Idle(IdleArgs),
    /// N held clients that reconnect on close (full-jitter backoff) plus new connections per
    /// second, while the server restarts; counts attempts, failures and reconnect times.
    Reconnect(ReconnectArgs),
    /// N `palisade.v1` subscribers of one channel (round-robin over the URLs) and R
    /// publications per second through the first node's admin API; deliveries, gaps, latency.
    Fanout(FanoutArgs),
}

/// Options common to every mode.
#[derive(Debug, Args)]
pub struct Common {
    /// Server URL, `ws://host:port/path`.
    #[arg(long)]
    pub url: String,
    /// Send this token as the first text message and require `Authenticated!`.
    #[arg(long)]
    pub token: Option<String>,
    /// Expected reply to a message `m` is `PREFIX + m`.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Source addresses; connection i binds `SOURCES[i % len]:0`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub sources: Vec<IpAddr>,
}

#[derive(Debug, Args)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of connections.
    #[arg(long)]
    pub connections: usize,
    /// Messages kept in flight per connection.
    #[arg(long)]
    pub inflight: usize,
    /// Payload size in bytes (before any prefix).
    #[arg(long)]
    pub size: usize,
    /// Send binary messages (default: text).
    #[arg(long)]
    pub binary: bool,
    /// Measured seconds (fractions allowed).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Duration,
    /// Seconds of load before measuring.
    #[arg(long, value_parser = parse_secs, default_value = "1")]
    pub warmup: Duration,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds to run (fractions allowed).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Duration,
    /// Seconds of cycles before measuring.
    #[arg(long, value_parser = parse_secs, default_value = "1")]
    pub warmup: Duration,
    /// Concurrent connect/close loops.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Number of connections.
    #[arg(long)]
    pub connections: usize,
    /// Seconds to hold them after the ready line (fractions allowed).
    #[arg(long, value_parser = parse_secs)]
    pub hold: Duration,
    /// Each connection sends a 32-byte text message every MS ms (0: none).
    #[arg(long, default_value_t = 0)]
    pub trickle_ms: u64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Held clients that reconnect whenever the server closes them.
    #[arg(long)]
    pub clients: usize,
    /// New short connections (connect, one echo, close) per second.
    #[arg(long, default_value_t = 50)]
    pub new_per_sec: u32,
    /// Seconds to run after the ready line (fractions allowed).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Duration,
    /// Full-jitter backoff base in ms (docs/clients.md).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Full-jitter backoff cap in ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap_ms: u64,
    /// Clients being opened at once at the start.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Secure endpoint URLs, `ws://host:port/path`, comma-separated (one per node);
    /// subscriber i connects to URL i % len.
    #[arg(long = "url", value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    /// Token sent in the `auth` envelope.
    #[arg(long)]
    pub token: String,
    /// The admin API publications go to, `host:port` (of the first node).
    #[arg(long)]
    pub admin: String,
    /// Admin bearer token (`admin.token_file`), if the admin API wants one.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Channel to subscribe and publish to (the token or `channels.public` must allow it).
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Number of subscribers.
    #[arg(long)]
    pub subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Seconds of publishing (fractions allowed).
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    pub duration: Duration,
    /// Longest wait for the last deliveries after the last publication, in seconds.
    #[arg(long, value_parser = parse_secs, default_value = "5")]
    pub drain: Duration,
    /// Source addresses; subscriber i binds `SOURCES[i % len]:0`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub sources: Vec<IpAddr>,
    /// Subscribers being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// Seconds as a non-negative decimal number, e.g. `0.5`.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        let cli = Cli::try_parse_from([
            "palisade-load",
            "echo",
            "--url",
            "ws://127.0.0.1:1/",
            "--connections",
            "4",
            "--inflight",
            "2",
            "--size",
            "32",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--sources",
            "127.0.0.1,127.0.0.2",
        ])
        .unwrap();
        let Command::Echo(a) = cli.command else { panic!("echo") };
        assert_eq!(a.duration, Duration::from_millis(500));
        assert_eq!(a.warmup, Duration::ZERO);
        assert_eq!(a.common.sources.len(), 2);
        assert_eq!(a.common.prefix, "");
        assert_eq!(a.connect_concurrency, 256);
        assert!(!a.binary);

        let cli = Cli::try_parse_from([
            "palisade-load",
            "handshake",
            "--url",
            "ws://x/",
            "--duration",
            "1",
        ])
        .unwrap();
        let Command::Handshake(a) = cli.command else { panic!("handshake") };
        assert_eq!(a.concurrency, 32);

        let cli = Cli::try_parse_from([
            "palisade-load",
            "reconnect",
            "--url",
            "ws://x/",
            "--clients",
            "2000",
            "--duration",
            "30",
        ])
        .unwrap();
        let Command::Reconnect(a) = cli.command else { panic!("reconnect") };
        assert_eq!((a.clients, a.new_per_sec, a.backoff_base_ms), (2000, 50, 500));

        let cli = Cli::try_parse_from([
            "palisade-load",
            "fanout",
            "--url",
            "ws://127.0.0.1:1/,ws://127.0.0.1:2/",
            "--token",
            "t",
            "--admin",
            "127.0.0.1:3",
            "--subscribers",
            "1000",
        ])
        .unwrap();
        let Command::Fanout(a) = cli.command else { panic!("fanout") };
        assert_eq!(a.urls.len(), 2);
        assert_eq!(
            (a.rate, a.duration, a.channel.as_str()),
            (1000, Duration::from_secs(10), "bench")
        );
        assert_eq!(a.admin_token, None);

        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("abc").is_err());
        assert!(Cli::try_parse_from(["palisade-load", "idle", "--url", "ws://x/"]).is_err());
    }
}
