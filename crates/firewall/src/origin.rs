//! Origin allow-list: exact origins, `*.domain` subdomain patterns, `:*` port patterns.
//!
//! Patterns are parsed once, at construction. Scheme and host compare case-insensitively,
//! and an explicit default port (`:80` for http/ws, `:443` for https/wss) equals no port.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{ConfigError, Decision, DenyReason};

/// The parsed `allowed_origins` list plus `require_origin`.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    patterns: Vec<Pattern>,
    allow_any: bool,
    allow_null: bool,
    require_origin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: one or more labels before it, never the bare domain.
    Subdomains(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port, or the scheme's default port.
    Default,
    Exact(u16),
    Any,
}

/// A serialised origin from an `Origin` header, lowercased, with a default port removed.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl OriginPolicy {
    pub(crate) fn new(
        patterns: &[String],
        require_origin: bool,
    ) -> Result<OriginPolicy, ConfigError> {
        let mut policy = OriginPolicy {
            patterns: Vec::new(),
            allow_any: false,
            allow_null: false,
            require_origin,
        };
        for raw in patterns {
            let text = raw.trim();
            if text == "*" {
                policy.allow_any = true;
            } else if text.eq_ignore_ascii_case("null") {
                policy.allow_null = true;
            } else {
                let pattern = parse_pattern(text).map_err(|reason| ConfigError::InvalidOrigin {
                    pattern: raw.clone(),
                    reason,
                })?;
                policy.patterns.push(pattern);
            }
        }
        Ok(policy)
    }

    pub(crate) fn check(&self, origin: Option<&str>) -> Decision {
        let Some(origin) = origin else {
            return if self.require_origin {
                Decision::Deny(DenyReason::OriginMissing)
            } else {
                Decision::Allow
            };
        };
        let origin = origin.trim();
        let allowed = if origin.eq_ignore_ascii_case("null") {
            self.allow_null
        } else {
            match parse_origin(origin) {
                Some(origin) => self.allow_any || self.patterns.iter().any(|p| p.matches(&origin)),
                None => false,
            }
        };
        if allowed { Decision::Allow } else { Decision::Deny(DenyReason::OriginNotAllowed) }
    }
}

impl Pattern {
    fn matches(&self, origin: &Origin) -> bool {
        let host_ok = match &self.host {
            HostPattern::Exact(host) => origin.host == *host,
            HostPattern::Subdomains(suffix) => {
                origin.host.len() > suffix.len() && origin.host.ends_with(suffix.as_str())
            }
        };
        let port_ok = match self.port {
            PortPattern::Default => origin.port.is_none(),
            PortPattern::Exact(port) => origin.port == Some(port),
            PortPattern::Any => true,
        };
        self.scheme == origin.scheme && host_ok && port_ok
    }
}

/// Parses `scheme://host[:port]`, exactly as browsers serialise an origin (no path, no slash).
fn parse_origin(text: &str) -> Option<Origin> {
    let (scheme, authority) = split_scheme(text).ok()?;
    let (host, port) = split_host_port(authority).ok()?;
    let host = parse_host(host).ok()?;
    let port = match port {
        None => None,
        Some(port) => parse_port(port).ok()?,
    };
    let port = port.filter(|p| Some(*p) != default_port(&scheme));
    Some(Origin { scheme, host, port })
}

fn parse_pattern(text: &str) -> Result<Pattern, &'static str> {
    let (scheme, authority) = split_scheme(text)?;
    // Operators often write a trailing slash; accept exactly one.
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let (host, port) = split_host_port(authority)?;
    let host = match host.strip_prefix("*.") {
        Some(suffix) => {
            let suffix = parse_host(suffix)?;
            if suffix.starts_with('[') || suffix.parse::<Ipv4Addr>().is_ok() {
                return Err("a wildcard needs a domain name after `*.`");
            }
            HostPattern::Subdomains(format!(".{suffix}"))
        }
        None => HostPattern::Exact(parse_host(host)?),
    };
    let port = match port {
        None => PortPattern::Default,
        Some("*") => PortPattern::Any,
        Some(port) => match parse_port(port)? {
            Some(port) if Some(port) != default_port(&scheme) => PortPattern::Exact(port),
            _ => PortPattern::Default,
        },
    };
    Ok(Pattern { scheme, host, port })
}

fn split_scheme(text: &str) -> Result<(String, &str), &'static str> {
    let (scheme, rest) = text.split_once("://").ok_or("missing `scheme://`")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err("invalid scheme");
    }
    Ok((scheme.to_ascii_lowercase(), rest))
}

/// Splits `host[:port]` or `[v6][:port]`; rejects paths, queries, user info and whitespace.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), &'static str> {
    if authority.contains(['/', '?', '#', '@', ' ', '\t', ',']) {
        return Err("an origin has no path, query, user info or list");
    }
    if authority.starts_with('[') {
        let end = authority.find(']').ok_or("unclosed `[`")?;
        let (host, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if rest.is_empty() => Ok((host, None)),
            None => Err("unexpected text after `]`"),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => Ok((host, Some(port))),
            None => Ok((authority, None)),
        }
    }
}

/// Validates a host and lowercases it: a bracketed IPv6 address or dot-separated non-empty labels.
fn parse_host(host: &str) -> Result<String, &'static str> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let addr: Ipv6Addr = inner.parse().map_err(|_| "invalid IPv6 address")?;
        return Ok(format!("[{addr}]"));
    }
    if host.is_empty() {
        return Err("empty host");
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    });
    if !labels_ok {
        return Err("invalid host");
    }
    Ok(host.to_ascii_lowercase())
}

fn parse_port(port: &str) -> Result<Option<u16>, &'static str> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid port");
    }
    port.parse::<u16>().map(Some).map_err(|_| "invalid port")
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
