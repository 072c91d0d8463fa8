//! Live configuration reload (`SIGHUP`, `POST /reload`, `palisade reload`): the configuration
//! file is read again and checked whole; what can change while serving is applied (firewall
//! rules, bans settings, connection caps, origins, trusted proxies, the console log level, the
//! TLS certificate files' contents), and every other changed key is named as needing a restart.
//! A configuration with an error is refused whole and the running one stays.
//!
//! Every attempt is counted (`palisade_config_reloads_total{outcome}` on `/metrics`) and
//! written to the audit trail (`config_reload`).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use palisade_firewall::Firewall;
use serde::Serialize;

use crate::audit::Audit;
use crate::config::Config;
use crate::tls::CertStore;

/// What a successful reload did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changed keys that took effect.
    pub applied: Vec<&'static str>,
    /// Changed keys that keep their running value until a restart (or `palisade upgrade`).
    pub restart_required: Vec<&'static str>,
    /// The subject of the certificate now served, when TLS is on (its files are read again on
    /// every reload).
    pub tls_certificate: Option<String>,
}

/// A refused reload: the key at fault when one can be named, and the whole message.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReloadError {
    /// The configuration key at fault, e.g. `firewall.deny`.
    pub key: Option<String>,
    /// What is wrong, as `palisade check` would say it.
    pub error: String,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// Holds the running configuration and the parts of the server that a reload changes.
pub(crate) struct Reloader {
    source: Option<PathBuf>,
    current: Mutex<Config>,
    firewall: Firewall,
    tls: Option<Arc<CertStore>>,
    log_level: OnceLock<palisade_errlog::LevelHandle>,
    audit: Audit,
    ok: AtomicU64,
    refused: AtomicU64,
}

impl Reloader {
    pub(crate) fn new(
        config: &Config,
        firewall: Firewall,
        tls: Option<Arc<CertStore>>,
        audit: Audit,
    ) -> Reloader {
        Reloader {
            source: config.source.clone(),
            current: Mutex::new(config.clone()),
            firewall,
            tls,
            log_level: OnceLock::new(),
            audit,
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Lets reloads change the console level (the binary sets it after logging is up).
    pub(crate) fn set_log_level_handle(&self, handle: palisade_errlog::LevelHandle) {
        let _ = self.log_level.set(handle);
    }

    /// Reads the configuration file again and applies it; logs, counts and audits the outcome.
    pub(crate) fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let outcome = self.try_reload();
        match &outcome {
            Ok(report) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    applied = ?report.applied,
                    restart_required = ?report.restart_required,
                    "configuration reloaded"
                );
                for key in &report.restart_required {
                    tracing::warn!(
                        key,
                        "configuration reload: {key} changed but needs a restart to take effect; the running value stays"
                    );
                }
                let detail = format!(
                    "applied: [{}]; restart required: [{}]",
                    report.applied.join(", "),
                    report.restart_required.join(", ")
                );
                self.audit.record(|| palisade_audit::Event::ConfigReload { ok: true, detail });
            }
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    kind = "config_reload",
                    key = e.key.as_deref().unwrap_or("-"),
                    error = %e.error,
                    "configuration reload refused; the running configuration stays"
                );
                let detail = e.error.clone();
                self.audit.record(|| palisade_audit::Event::ConfigReload { ok: false, detail });
            }
        }
        outcome
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.source else {
            return Err(ReloadError {
                key: None,
                error: "the server was started without a configuration file (--config): \
                        nothing to reload"
                    .into(),
            });
        };
        let refuse = |e: anyhow::Error| {
            let error = format!("{e:#}");
            ReloadError { key: key_in(&error), error }
        };
        let mut new = Config::from_file(path).map_err(refuse)?;
        new.apply_env(std::env::vars());
        crate::server::check(&new).map_err(refuse)?;
        palisade_errlog::LevelHandle::check(&new.log.level)
            .map_err(|e| refuse(anyhow::anyhow!("log.level: {e}")))?;
        let firewall = crate::server::firewall_config(&new).map_err(refuse)?;

        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut report = ReloadReport::default();
        for ((key, live, old), (_, _, now)) in keys(&current).into_iter().zip(keys(&new)) {
            if old != now {
                if live { report.applied.push(key) } else { report.restart_required.push(key) }
            }
        }
        // Everything is checked: apply. The firewall takes the new rules whole.
        self.firewall
            .reconfigure(firewall)
            .map_err(|e| refuse(anyhow::anyhow!("invalid [firewall] section: {e}")))?;
        if let Some(handle) = self.log_level.get()
            && new.log.level != current.log.level
        {
            handle.set(&new.log.level).map_err(|e| refuse(anyhow::anyhow!("log.level: {e}")))?;
        }
        let same_tls_files = new.tls_paths() == current.tls_paths();
        if let (Some(store), true) = (&self.tls, same_tls_files) {
            match store.reload() {
                Ok(info) => {
                    tracing::info!(subject = %info.subject, not_after = %info.not_after_text, sha256 = %info.sha256, "tls certificate reloaded; new connections use it");
                    if let Some(warning) = info.validity_warning(std::time::SystemTime::now()) {
                        tracing::warn!(kind = "tls_certificate", subject = %info.subject, "{warning}");
                    }
                    report.tls_certificate = Some(info.subject.clone());
                    self.audit.record(|| palisade_audit::Event::CertReload {
                        ok: true,
                        detail: info.subject.clone(),
                    });
                }
                Err(e) => {
                    // The files were loadable a moment ago (`check`); the old certificate stays.
                    let detail = format!("{e:#}");
                    tracing::error!(
                        kind = "tls_reload",
                        error = %detail,
                        "tls reload failed; the current certificate stays in use"
                    );
                    self.audit.record(|| palisade_audit::Event::CertReload { ok: false, detail });
                }
            }
        }
        // Keys that did not take effect keep their running value, so a later reload names
        // them again until the restart.
        let mut kept = new;
        restore_restart_only(&mut kept, &current);
        *current = kept;
        Ok(report)
    }

    /// `palisade_config_reloads_total` in OpenMetrics text, added to `/metrics`.
    pub(crate) fn append_metrics(&self, body: &mut String) {
        if let Some(len) = body.strip_suffix("# EOF\n").map(str::len) {
            body.truncate(len);
        }
        body.push_str(
            "# TYPE palisade_config_reloads counter\n\
             # HELP palisade_config_reloads Configuration reloads, by outcome.\n",
        );
        for (outcome, n) in [("ok", &self.ok), ("refused", &self.refused)] {
            body.push_str(&format!(
                "palisade_config_reloads_total{{outcome=\"{outcome}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        body.push_str("# EOF\n");
    }
}

/// `POST /reload`: 200 with the [`ReloadReport`], or 422 with the [`ReloadError`].
pub(crate) async fn admin_reload(
    axum::extract::State(state): axum::extract::State<crate::admin::AdminState>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    // Reads files and compiles rules: off the async workers.
    let reloader = state.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(e)) => (http::StatusCode::UNPROCESSABLE_ENTITY, axum::Json(e)).into_response(),
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `palisade reload` and `palisade upgrade`: `POST path` to the running server's admin API
/// (`admin.listen` of `config`, with the bearer token of `admin.token_file`). Returns the
/// status and the body of the answer.
pub fn ask_running_server(config: &Config, path: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context as _;
    use std::io::{Read as _, Write as _};
    if !config.admin.enabled {
        anyhow::bail!("admin.enabled is false: send the signal instead (kill -HUP / -USR2 <pid>)");
    }
    if config.admin.tls {
        anyhow::bail!(
            "admin.tls is on: send the signal instead (kill -HUP / -USR2 <pid>), or \
             curl --cacert ... -X POST https://{}{path}",
            config.admin.listen
        );
    }
    let addr = config.admin.listen;
    let mut auth = String::new();
    if let Some(file) = &config.admin.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read admin.token_file {}", file.display()))?;
        auth = format!("Authorization: Bearer {}\r\n", token.trim_end());
    }
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| {
            format!("cannot reach the admin API on {addr} (admin.listen): is palisade running?")
        })?;
    // An upgrade answers once the new process serves (up to 30 s).
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).context("reading the admin API's answer")?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// The first `section.key` named in an error message.
fn key_in(message: &str) -> Option<String> {
    // The sections are those of `keys` (one list, which the compiler keeps complete).
    let sections: Vec<&str> = keys(&Config::default())
        .into_iter()
        .map(|(key, _, _)| key.split('.').next().unwrap_or(key))
        .collect();
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .find(|word| {
            word.split_once('.').is_some_and(|(section, key)| {
                sections.contains(&section) && !key.is_empty() && !key.contains('.')
            })
        })
        .map(str::to_owned)
}

/// Every key: its name, whether a reload applies it, and its value as text (for comparing).
fn keys(c: &Config) -> Vec<(&'static str, bool, String)> {
    fn v<T: Debug>(value: &T) -> String {
        format!("{value:?}")
    }
    // Destructured, so that a new section does not compile until it is listed here.
    let Config {
        echo,
        secure,
        admin,
        tls,
        auth,
        subprotocol,
        limits: l,
        firewall: f,
        log,
        audit,
        cluster,
        channels,
        source: _,
    } = c;
    vec![
        ("firewall.allow", true, v(&f.allow)),
        ("firewall.deny", true, v(&f.deny)),
        ("firewall.max_connections_per_ip", true, v(&f.max_connections_per_ip)),
        ("firewall.handshakes_per_sec_per_ip", true, v(&f.handshakes_per_sec_per_ip)),
        ("firewall.handshake_burst", true, v(&f.handshake_burst)),
        ("firewall.messages_per_sec", true, v(&f.messages_per_sec)),
        ("firewall.message_burst", true, v(&f.message_burst)),
        ("firewall.ban_after_auth_failures", true, v(&f.ban_after_auth_failures)),
        ("firewall.ban_window_secs", true, v(&f.ban_window_secs)),
        ("firewall.ban_secs", true, v(&f.ban_secs)),
        ("firewall.allowed_origins", true, v(&f.allowed_origins)),
        ("firewall.require_origin", true, v(&f.require_origin)),
        ("firewall.trusted_proxies", true, v(&f.trusted_proxies)),
        ("limits.max_connections", true, v(&l.max_connections)),
        ("log.level", true, v(&log.level)),
        ("echo", false, v(echo)),
        ("secure", false, v(secure)),
        ("admin", false, v(admin)),
        ("tls.cert_file", false, v(&tls.cert_file)),
        ("tls.key_file", false, v(&tls.key_file)),
        ("auth", false, v(auth)),
        ("subprotocol", false, v(subprotocol)),
        ("limits.max_message_bytes", false, v(&l.max_message_bytes)),
        ("limits.max_frame_bytes", false, v(&l.max_frame_bytes)),
        ("limits.handshake_timeout_secs", false, v(&l.handshake_timeout_secs)),
        ("limits.idle_timeout_secs", false, v(&l.idle_timeout_secs)),
        ("limits.ping_interval_secs", false, v(&l.ping_interval_secs)),
        ("limits.outbound_queue", false, v(&l.outbound_queue)),
        ("limits.write_timeout_secs", false, v(&l.write_timeout_secs)),
        ("limits.drain_timeout_secs", false, v(&l.drain_timeout_secs)),
        ("limits.read_buffer_bytes", false, v(&l.read_buffer_bytes)),
        ("limits.write_buffer_bytes", false, v(&l.write_buffer_bytes)),
        ("log.dir", false, v(&log.dir)),
        ("log.format", false, v(&log.format)),
        ("log.max_file_bytes", false, v(&log.max_file_bytes)),
        ("log.max_files", false, v(&log.max_files)),
        ("audit", false, v(audit)),
        ("cluster", false, v(cluster)),
        ("channels", false, v(channels)),
    ]
}

/// Puts the running values back into the keys a reload does not apply.
fn restore_restart_only(new: &mut Config, running: &Config) {
    let live_firewall = new.firewall.clone();
    let (live_max_connections, live_level) = (new.limits.max_connections, new.log.level.clone());
    let source = new.source.clone();
    *new = running.clone();
    new.firewall = live_firewall;
    new.limits.max_connections = live_max_connections;
    new.log.level = live_level;
    new.source = source;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_at_fault_is_found_in_the_message() {
        assert_eq!(
            key_in("firewall.deny: \"10.0.0.300/8\" is not an IP address or CIDR").as_deref(),
            Some("firewall.deny")
        );
        assert_eq!(
            key_in("invalid config file /x.toml: limits.max_frame_bytes (9) must not exceed")
                .as_deref(),
            Some("limits.max_frame_bytes")
        );
        assert_eq!(key_in("cannot read config file /etc/palisade.toml"), None);
        assert_eq!(
            key_in("channels.history_size (200000) must be at most 100000").as_deref(),
            Some("channels.history_size")
        );
    }

    #[test]
    fn every_key_is_listed_once_and_restart_only_keys_keep_their_running_value() {
        let running = Config::default();
        let names: Vec<_> = keys(&running).into_iter().map(|(k, _, _)| k).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
        let mut new = Config::default();
        new.firewall.deny = vec!["192.0.2.0/24".into()];
        new.echo.listen = ([127, 0, 0, 1], 1).into();
        restore_restart_only(&mut new, &running);
        assert_eq!(new.firewall.deny, vec!["192.0.2.0/24".to_owned()]);
        assert_eq!(new.echo.listen, running.echo.listen);
        // A changed restart-only section is named, not silently dropped.
        let mut changed = Config::default();
        changed.channels.history_size = 7;
        let named: Vec<_> = keys(&running)
            .into_iter()
            .zip(keys(&changed))
            .filter(|((_, _, old), (_, _, now))| old != now)
            .map(|((key, live, _), _)| (key, live))
            .collect();
        assert_eq!(named, [("channels", false)]);
    }
}
