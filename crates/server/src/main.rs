//! The `palisade` binary: run the server (SIGHUP reloads the configuration, SIGUSR2 upgrades
//! to the binary on disk), check the configuration, or mint a token for testing.

#![allow(clippy::print_stdout)] // The binary talks to a person (and to tests) on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use palisade_errlog::{LogConfig, LogFormat};
use palisade_server::app::Echo;
use palisade_server::config::Config;
use palisade_server::server::Server;

/// Palisade: a secure, robust WebSocket server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (every key is optional; see docs/configuration.md).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Print a token signed with the configured key (`iss`/`aud` from `[auth] issuer`/`audience`).
    Token {
        /// The `user_id` claim.
        #[arg(long)]
        user_id: String,
        /// Lifetime, e.g. `90s`, `15m`, `1h`, `2d`.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// An optional `email` claim (validated).
        #[arg(long)]
        email: Option<String>,
    },
    /// Check the configuration, list weak settings (security posture) and exit.
    Check {
        /// Treat every posture finding as an error (for deployment pipelines).
        #[arg(long)]
        strict: bool,
    },
    /// Write a development CA and a `localhost` certificate signed by it (for `cargo xtask run
    /// --tls`; never for production).
    #[command(hide = true)]
    DevCert {
        /// Folder for `ca.pem`, `ca-key.pem`, `cert.pem` and `key.pem`.
        #[arg(long)]
        out: PathBuf,
        /// Issue a new server certificate even if the current one is still good.
        #[arg(long)]
        renew: bool,
    },
    /// Ask the running server (through its admin API) to reload its configuration file.
    Reload {
        /// The admin API's address, when not `admin.listen` (e.g. that is port 0).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Ask the running server to start the binary on disk with its listening sockets and drain.
    Upgrade {
        /// The admin API's address, when not `admin.listen` (e.g. that is port 0).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Check or read the audit trail (docs/audit.md); needs no configuration.
    Audit {
        #[command(subcommand)]
        command: palisade_server::audit::AuditCommand,
    },
}

fn main() -> ExitCode {
    // Before any thread exists: it takes LISTEN_FDS and clears it from the environment.
    if let Err(e) = palisade_server::upgrade::inherit_listeners() {
        eprintln!("palisade: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    if let Some(Command::Audit { command }) = &cli.command {
        return palisade_server::audit::run(command);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    config.apply_env(std::env::vars());
    config.validate()?;
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::DevCert { out, renew }) = &cli.command {
        let certs = palisade_server::tls::dev_cert::ensure(out, *renew)?;
        if certs.new_ca {
            println!("palisade: new development CA in {}", certs.ca_file.display());
        }
        if certs.issued {
            println!("palisade: new localhost certificate in {}", certs.cert_file.display());
        }
        println!("ca_file = {}", certs.ca_file.display());
        println!("cert_file = {}", certs.cert_file.display());
        println!("key_file = {}", certs.key_file.display());
        return Ok(());
    }
    let config = load_config(cli.config.as_ref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => serve(config),
        Command::Check { strict } => {
            palisade_server::server::check(&config)?;
            for line in palisade_server::issuers::report(&config)? {
                println!("{line}");
            }
            let findings = palisade_server::posture::findings(&config);
            for f in &findings {
                println!("weak: {}: {}", f.key, f.why);
            }
            if strict && !findings.is_empty() {
                anyhow::bail!("{} weak setting(s) found and --strict is set", findings.len());
            }
            println!("configuration ok ({} posture finding(s))", findings.len());
            Ok(())
        }
        Command::DevCert { .. } => Ok(()),
        Command::Reload { admin } => ask(config, admin, "/reload"),
        Command::Upgrade { admin } => ask(config, admin, "/upgrade"),
        // Run by `main` before any configuration is loaded.
        Command::Audit { .. } => Ok(()),
        Command::Token { user_id, ttl, email } => {
            let ttl = parse_ttl(&ttl)?;
            let token = palisade_server::server::mint(&config, &user_id, ttl, email.as_deref())?;
            println!("{token}");
            Ok(())
        }
    }
}

/// `palisade reload | upgrade`: prints the running server's answer.
fn ask(mut config: Config, admin: Option<std::net::SocketAddr>, path: &str) -> anyhow::Result<()> {
    if let Some(addr) = admin {
        config.admin.listen = addr;
    }
    let (status, body) = palisade_server::reload::ask_running_server(&config, path)?;
    println!("{}", body.trim_end());
    if !(200..300).contains(&status) {
        anyhow::bail!("{path} refused (HTTP {status})");
    }
    Ok(())
}

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        num.parse().with_context(|| format!("--ttl {s:?}: expected e.g. 90s, 15m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--ttl {s:?}: unknown unit {unit:?}; use s, m, h or d"),
    };
    Ok(Duration::from_secs(secs))
}

fn serve(config: Config) -> anyhow::Result<()> {
    let format: LogFormat =
        config.log.format.parse().map_err(|e| anyhow::anyhow!("log.format: {e}"))?;
    let log = palisade_errlog::init(&LogConfig {
        level: config.log.level.clone(),
        format,
        dir: Some(config.log.dir.clone()),
        max_file_bytes: config.log.max_file_bytes,
        max_files: config.log.max_files,
    })
    .context("cannot set up logging (log.dir, log.level)")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // Listen for signals before printing the addresses: whoever reads them (a supervisor,
        // a test) may send SIGTERM at once.
        let signals = Signals::listen()?;
        let server = Server::start(&config, Echo).await?;
        if let Some(handle) = log.level_handle() {
            server.set_log_level_handle(handle);
        }
        let ws = if server.tls_enabled() { "wss" } else { "ws" };
        for (name, addr) in [("echo", server.echo_addr), ("secure", server.secure_addr)] {
            if let Some(a) = addr {
                println!("palisade: {name} listening on {ws}://{a}/");
            }
        }
        if let Some(a) = server.admin_addr {
            let http = if server.tls_enabled() && config.admin.tls { "https" } else { "http" };
            println!("palisade: admin listening on {http}://{a}/");
        }
        if let Some(p) = log.error_log_path() {
            println!("palisade: errors are logged to {}", p.display());
        }
        tracing::info!(pid = std::process::id(), "palisade started");
        // Systemd (Type=notify) or the predecessor of an upgrade learns that this one serves.
        palisade_server::upgrade::notify_ready();
        signals.wait(&server).await;
        if server.handed_over().is_cancelled() {
            tracing::info!(
                "draining after the upgrade: closing connections spread over the drain time"
            );
        } else {
            tracing::info!(
                "shutting down: closing connections with 1001, spread over the drain time"
            );
        }
        let drained = server.shutdown().await;
        if !drained {
            tracing::warn!("drain timeout reached with connections still open");
        }
        tracing::info!("palisade stopped");
        anyhow::Ok(())
    })?;
    drop(log);
    Ok(())
}

/// SIGTERM, SIGINT, SIGHUP and SIGUSR2, listened for from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let usr2 = signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?;
        Ok(Signals { term, int, hup, usr2 })
    }

    /// Waits for SIGTERM or SIGINT, or for an upgrade's successor to serve; on SIGHUP reloads
    /// the configuration, on SIGUSR2 starts the upgrade, and waits on.
    async fn wait(mut self, server: &Server) {
        let handed_over = server.handed_over();
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                () = handed_over.cancelled() => return,
                _ = self.hup.recv() => {
                    // The outcome is logged, counted and audited by the reload itself.
                    let _ = server.reload();
                }
                _ = self.usr2.recv() => {
                    // Logged by the upgrade; on success `handed_over` ends the wait.
                    let _ = server.upgrade().await;
                }
            }
        }
    }
}
