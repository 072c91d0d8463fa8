//! Static checks of the embedded page: no inline code the policy would have to allow, no HTML
//! sinks in the script, and every asset the page names is served.

use super::{CONTENT_SECURITY_POLICY, PAGE, SCRIPT, STYLE};

#[test]
fn policy_allows_no_inline_code_and_no_foreign_origin() {
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "policy lacks {directive:?}");
    }
    for loose in ["unsafe-inline", "unsafe-eval", "http:", "https:", "data:", "*"] {
        assert!(!CONTENT_SECURITY_POLICY.contains(loose), "policy allows {loose:?}");
    }
}

#[test]
fn page_has_no_inline_script_or_style() {
    let lower = PAGE.to_ascii_lowercase();
    assert_eq!(lower.matches("<script").count(), 1, "one external script only");
    assert!(lower.contains(r#"<script src="/dashboard/app.js" defer></script>"#));
    assert!(!lower.contains("<style"), "inline <style> element");
    assert!(!lower.contains(" style="), "inline style attribute");
    assert!(!lower.contains("javascript:"), "javascript: URL");
    for handler in [" onclick=", " onload=", " onerror=", " onsubmit=", " oninput="] {
        assert!(!lower.contains(handler), "inline event handler {handler:?}");
    }
    assert!(lower.contains(r#"href="/dashboard/app.css""#));
    assert!(lower.contains(r#"href="/dashboard/favicon.svg""#));
}

#[test]
fn script_inserts_values_as_text_only() {
    for sink in
        ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("]
    {
        assert!(!SCRIPT.contains(sink), "dashboard.js uses {sink}");
    }
    assert!(SCRIPT.contains("textContent"));
}

#[test]
fn page_carries_the_stable_test_ids() {
    for id in [
        "connections-open",
        "messages-in-total",
        "errors-total",
        "sessions-active",
        "bans-active",
        "channels-table",
    ] {
        assert!(PAGE.contains(&format!(r#"data-testid="{id}""#)), "page lacks data-testid {id}");
    }
}

#[test]
fn style_loads_nothing_from_elsewhere() {
    assert!(!STYLE.contains("url("), "the stylesheet fetches something");
    assert!(!STYLE.contains("@import"), "the stylesheet imports something");
}
