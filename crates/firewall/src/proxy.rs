//! Client address from `X-Forwarded-For` / `Forwarded`, trusted only from configured proxies.
//!
//! Headers are read right to left: each trusted proxy appends the address it saw, so the
//! right-most address that is not itself a trusted proxy is the client. Anything to the left of
//! it was written by the client and is never parsed.

use std::net::{IpAddr, SocketAddr};

use crate::ip_rules::{NetList, canonical};

/// One hop of a forwarding header.
#[derive(Debug, PartialEq, Eq)]
enum Hop {
    Ip(IpAddr),
    /// `unknown`, an obfuscated identifier (`_hidden`), or an element without `for=`.
    Unknown,
}

/// See [`crate::Firewall::client_ip`].
pub(crate) fn client_ip(
    trusted: &NetList,
    peer: IpAddr,
    x_forwarded_for: Option<&str>,
    forwarded: Option<&str>,
) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let hops = match (non_blank(x_forwarded_for), non_blank(forwarded)) {
        (Some(xff), _) => xff_hops(xff),
        (None, Some(fwd)) => forwarded_hops(fwd),
        (None, None) => return peer,
    };
    let Some(hops) = hops else {
        return peer;
    };
    // Right to left; stop at the first hop that is not a trusted proxy.
    let mut left_most = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(Hop::Ip(ip)) => {
                let ip = canonical(ip);
                if !trusted.contains(ip) {
                    return ip;
                }
                left_most = ip;
            }
            // An unusable hop where the client should be: fall back to the peer.
            Some(Hop::Unknown) | None => return peer,
        }
    }
    // Every hop is a trusted proxy: the left-most one is where the request came from.
    left_most
}

fn non_blank(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

/// Each entry: `Some(hop)` when well-formed, `None` when malformed. `None` overall when the
/// header cannot even be split.
fn xff_hops(header: &str) -> Option<Vec<Option<Hop>>> {
    Some(header.split(',').map(|entry| parse_node(entry.trim()).map(Hop::Ip)).collect())
}

/// RFC 7239: `for=192.0.2.60;proto=http, for="[2001:db8::17]:4711"`.
fn forwarded_hops(header: &str) -> Option<Vec<Option<Hop>>> {
    let elements = split_outside_quotes(header, ',')?;
    Some(elements.into_iter().map(forwarded_element).collect())
}

fn forwarded_element(element: &str) -> Option<Hop> {
    let pairs = split_outside_quotes(element, ';')?;
    let mut hop = Hop::Unknown;
    for pair in pairs {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"').filter(|v| !v.contains(['"', '\\']))?,
            None => value,
        };
        hop = if value.eq_ignore_ascii_case("unknown") || value.starts_with('_') {
            Hop::Unknown
        } else {
            Hop::Ip(parse_node(value).or_else(|| parse_obfuscated_port(value))?)
        };
    }
    Some(hop)
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// `1.2.3.4:_port` or `[v6]:_port` (RFC 7239 obfuscated port).
fn parse_obfuscated_port(text: &str) -> Option<IpAddr> {
    let (host, port) = text.rsplit_once(':')?;
    if !port.starts_with('_') {
        return None;
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.parse().ok()
}

/// Splits on `sep` outside double quotes; `None` on an unbalanced quote.
fn split_outside_quotes(text: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c == sep && !in_quotes => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if in_quotes {
        return None;
    }
    parts.push(&text[start..]);
    Some(parts)
}

#[cfg(test)]
mod tests;
