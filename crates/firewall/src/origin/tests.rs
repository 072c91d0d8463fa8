use super::OriginPolicy;
use crate::{ConfigError, Decision, DenyReason};

fn policy(patterns: &[&str], require_origin: bool) -> OriginPolicy {
    let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
    OriginPolicy::new(&patterns, require_origin).expect("valid patterns")
}

#[track_caller]
fn check(patterns: &[&str], origin: Option<&str>, allowed: bool) {
    let expected =
        if allowed { Decision::Allow } else { Decision::Deny(DenyReason::OriginNotAllowed) };
    assert_eq!(
        policy(patterns, false).check(origin),
        expected,
        "patterns={patterns:?} origin={origin:?}"
    );
}

const EXAMPLE: &[&str] = &["https://example.com", "https://*.example.com"];
const LOCAL: &[&str] = &["http://localhost:*", "http://127.0.0.1:*"];

#[test]
fn origin_table() {
    // Exact and wildcard matches.
    check(EXAMPLE, Some("https://example.com"), true);
    check(EXAMPLE, Some("https://app.example.com"), true);
    check(EXAMPLE, Some("https://a.b.example.com"), true);
    // Case-insensitive scheme and host.
    check(EXAMPLE, Some("HTTPS://APP.Example.COM"), true);
    // Explicit default port equals no port; another port does not.
    check(EXAMPLE, Some("https://example.com:443"), true);
    check(EXAMPLE, Some("https://app.example.com:443"), true);
    check(EXAMPLE, Some("https://example.com:8443"), false);
    // Scheme must match.
    check(EXAMPLE, Some("http://example.com"), false);
    check(EXAMPLE, Some("wss://example.com"), false);
    // Look-alike domains.
    check(EXAMPLE, Some("https://example.com.evil.com"), false);
    check(EXAMPLE, Some("https://evilexample.com"), false);
    check(EXAMPLE, Some("https://evil-example.com"), false);
    check(EXAMPLE, Some("https://.example.com"), false);
    check(EXAMPLE, Some("https://example.com."), false);
    // A serialised origin has no path, not even a slash, and no user info.
    check(EXAMPLE, Some("https://example.com/"), false);
    check(EXAMPLE, Some("https://example.com/path"), false);
    check(EXAMPLE, Some("https://user@example.com"), false);
    check(EXAMPLE, Some("https://example.com, https://evil.com"), false);
    // Malformed values.
    check(EXAMPLE, Some(""), false);
    check(EXAMPLE, Some("example.com"), false);
    check(EXAMPLE, Some("https://"), false);
    check(EXAMPLE, Some("https://example.com:"), false);
    check(EXAMPLE, Some("https://example.com:99999"), false);
    // `null` only when listed.
    check(EXAMPLE, Some("null"), false);
    check(&["null"], Some("null"), true);
    // Surrounding whitespace is ignored.
    check(EXAMPLE, Some("  https://example.com "), true);
}

#[test]
fn bare_domain_wildcard_does_not_match_the_bare_domain() {
    check(&["https://*.example.com"], Some("https://example.com"), false);
    check(&["https://*.example.com"], Some("https://x.example.com"), true);
}

#[test]
fn localhost_patterns_match_any_port_but_nothing_else() {
    check(LOCAL, Some("http://localhost"), true);
    check(LOCAL, Some("http://localhost:8765"), true);
    check(LOCAL, Some("http://LOCALHOST:3000"), true);
    check(LOCAL, Some("http://127.0.0.1:8888"), true);
    check(LOCAL, Some("https://localhost:8765"), false);
    check(LOCAL, Some("http://localhost.evil.com"), false);
    check(LOCAL, Some("http://127.0.0.2:8888"), false);
    check(LOCAL, Some("http://[::1]:8888"), false);
}

#[test]
fn explicit_ports_and_ipv6_hosts_match_exactly() {
    let patterns = &["http://example.com:8080", "https://example.com:443/", "http://[::1]:3000"];
    check(patterns, Some("http://example.com:8080"), true);
    check(patterns, Some("http://example.com"), false);
    check(patterns, Some("https://example.com"), true);
    check(patterns, Some("http://[0:0::1]:3000"), true);
    check(patterns, Some("http://[::2]:3000"), false);
}

#[test]
fn star_allows_any_well_formed_origin_but_not_null() {
    check(&["*"], Some("https://anything.test:1234"), true);
    check(&["*"], Some("not an origin"), false);
    check(&["*"], Some("null"), false);
}

#[test]
fn missing_origin_is_allowed_unless_required() {
    assert_eq!(policy(EXAMPLE, false).check(None), Decision::Allow);
    assert_eq!(policy(EXAMPLE, true).check(None), Decision::Deny(DenyReason::OriginMissing));
    assert_eq!(
        policy(&[], false).check(Some("https://example.com")),
        Decision::Deny(DenyReason::OriginNotAllowed)
    );
}

#[test]
fn bad_patterns_are_config_errors() {
    for bad in [
        "example.com",
        "https://",
        "https://*",
        "https://*.",
        "https://a.*.example.com",
        "https://example.com/path",
        "https://example.com:http",
        "https://*.127.0.0.1",
        "https://[::1",
        "://example.com",
    ] {
        let result = OriginPolicy::new(&[bad.to_string()], false);
        assert!(
            matches!(&result, Err(ConfigError::InvalidOrigin { pattern, .. }) if pattern == bad),
            "{bad}: {result:?}"
        );
    }
}
