//! The security posture report: every weak setting, with the key that controls it and why it
//! matters. Shown by `palisade check`, logged at start, served at `GET /posture`.

use std::net::SocketAddr;

use serde::Serialize;

use crate::config::Config;

/// One weak setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The configuration key that controls it.
    pub key: &'static str,
    /// What is weak and why it matters.
    pub why: String,
}

/// Lists the weak settings of `config` (empty for the secure defaults).
pub fn findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |key: &'static str, why: String| out.push(Finding { key, why });
    let fw = &config.firewall;
    let l = &config.limits;

    if fw.allowed_origins.iter().any(|o| o.trim() == "*") {
        add(
            "firewall.allowed_origins",
            "a `*` origin lets any web page open connections with a visitor's cookies and \
             credentials (cross-site WebSocket hijacking)"
                .into(),
        );
    }
    for (key, enabled, addr) in [
        ("echo.listen", config.echo.enabled, config.echo.listen),
        ("secure.listen", config.secure.enabled, config.secure.listen),
    ] {
        if enabled && !is_loopback(addr) && !config.tls_enabled() {
            add(
                key,
                format!(
                    "{addr} is reachable from the network without TLS: tokens and messages travel \
                     in clear; configure [tls] or terminate TLS in front"
                ),
            );
        }
    }
    if config.admin.enabled && config.admin.token_file.is_none() {
        add(
            "admin.token_file",
            "the admin API (sessions, bans, metrics) needs no token: any local user can revoke \
             sessions and lift bans"
                .into(),
        );
    }
    for url in crate::issuers::plain_http_urls(&config.auth) {
        add(
            "auth.issuers",
            format!(
                "{url} fetches signing keys over plain http from a host that is not loopback:                  anyone on the path can substitute keys and mint tokens; use https://"
            ),
        );
    }
    if config.secure.enabled && !config.auth.require_exp {
        add(
            "auth.require_exp",
            "tokens without `exp` never expire; a stolen token works forever".into(),
        );
    }
    if config.secure.enabled && config.auth.issuer.is_none() {
        add(
            "auth.issuer",
            "`iss` is not checked: a token minted by another issuer sharing the key is accepted"
                .into(),
        );
    }
    if config.secure.enabled && config.auth.audience.is_none() {
        add(
            "auth.audience",
            "`aud` is not checked: a token minted for another service sharing the key is accepted"
                .into(),
        );
    }
    if config.auth.leeway_secs > 60 {
        add(
            "auth.leeway_secs",
            format!("{} s of clock leeway keeps expired tokens alive", config.auth.leeway_secs),
        );
    }
    if config.secure.enabled
        && config.auth.algorithm.to_ascii_uppercase().starts_with("HS")
        && let Some(secret) = config.auth.secret.as_ref()
        && secret.0.len() < 48
    {
        add(
            "PALISADE_JWT_SECRET",
            format!(
                "the HMAC secret is {} bytes; 48 or more random bytes are recommended",
                secret.0.len()
            ),
        );
    }
    if l.max_message_bytes > 1024 * 1024 {
        add(
            "limits.max_message_bytes",
            format!(
                "{} bytes per message lets a few clients use a lot of memory",
                l.max_message_bytes
            ),
        );
    }
    if fw.handshakes_per_sec_per_ip == 0 {
        add(
            "firewall.handshakes_per_sec_per_ip",
            "handshakes are not rate limited per address".into(),
        );
    }
    if fw.messages_per_sec == 0 {
        add("firewall.messages_per_sec", "messages are not rate limited per connection".into());
    }
    if config.secure.enabled && fw.ban_after_auth_failures == 0 {
        add(
            "firewall.ban_after_auth_failures",
            "token guessing is never answered with a ban".into(),
        );
    }
    if config.secure.enabled && config.secure.max_sessions_per_user == 0 {
        add("secure.max_sessions_per_user", "one user may open unlimited sessions".into());
    }
    out
}

/// True for loopback addresses (127.0.0.0/8, ::1).
pub(crate) fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(toml: &str, expected_keys: &[&str]) {
        let mut config = Config::from_toml(toml).unwrap();
        config.admin.token_file = Some("admin-token".into());
        config.auth.issuer = Some("iss".into());
        config.auth.audience = Some("aud".into());
        let keys: Vec<&str> = findings(&config).iter().map(|f| f.key).collect();
        assert_eq!(keys, expected_keys);
    }

    #[test]
    fn hardened_defaults_have_no_findings() {
        check("", &[]);
    }

    #[test]
    fn wildcard_origin_is_flagged() {
        check("[firewall]\nallowed_origins = [\"*\"]\n", &["firewall.allowed_origins"]);
    }

    #[test]
    fn public_listener_without_tls_is_flagged() {
        check("[echo]\nlisten = \"0.0.0.0:8765\"\n", &["echo.listen"]);
    }

    #[test]
    fn unbounded_settings_are_flagged() {
        check(
            "[auth]\nrequire_exp = false\n[firewall]\nmessages_per_sec = 0\nhandshakes_per_sec_per_ip = 0\n",
            &[
                "auth.require_exp",
                "firewall.handshakes_per_sec_per_ip",
                "firewall.messages_per_sec",
            ],
        );
    }

    #[test]
    fn missing_admin_token_and_claim_checks_are_flagged_by_default() {
        let keys: Vec<&str> = findings(&Config::default()).iter().map(|f| f.key).collect();
        assert_eq!(keys, ["admin.token_file", "auth.issuer", "auth.audience"]);
    }
}
