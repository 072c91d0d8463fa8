//! The address table (strict and relaxed policies), redaction, formatting and a no-panic property.

use proptest::prelude::*;

use super::*;

fn relaxed() -> EmailPolicy {
    EmailPolicy { allow_display_name: true, require_dotted_domain: false, allow_ip_literal: true }
}

/// Parses under the strict policy; `Ok` holds the expected `as_str()`.
#[track_caller]
fn check(input: &str, expected: Result<&str, EmailError>) {
    check_with(&EmailPolicy::strict(), input, expected);
}

/// Parses under `policy`; `Ok` holds the expected `as_str()`.
#[track_caller]
fn check_with(policy: &EmailPolicy, input: &str, expected: Result<&str, EmailError>) {
    let got = Email::parse_with(input, policy);
    assert_eq!(got.as_ref().map(Email::as_str).map_err(Clone::clone), expected, "input {input:?}");
    if let Ok(email) = got {
        // Normalisation is idempotent and local part + `@` + domain is the whole.
        assert_eq!(Email::parse_with(email.as_str(), policy).as_ref(), Ok(&email));
        assert_eq!(format!("{}@{}", email.local_part(), email.domain()), email.as_str());
    }
}

#[test]
fn address_table_under_strict_policy() {
    use EmailError as E;
    // Plain, valid.
    check("user@example.com", Ok("user@example.com"));
    check("first.last@example.com", Ok("first.last@example.com"));
    check("user+tag@example.co.uk", Ok("user+tag@example.co.uk"));
    check("x@example.com", Ok("x@example.com"));
    check("!#$%&'*+-/=?^_`{|}~@example.com", Ok("!#$%&'*+-/=?^_`{|}~@example.com"));
    check("user@sub-domain.example.com", Ok("user@sub-domain.example.com"));
    check("user@123.example.com", Ok("user@123.example.com"));
    check("user@xn--bcher-kva.example", Ok("user@xn--bcher-kva.example"));
    // Normalisation: the local part keeps its case, the domain is lower-cased.
    check("John.Doe@Example.COM", Ok("John.Doe@example.com"));
    check("user@BÜCHER.DE", Ok("user@bücher.de"));
    // Quoted local parts (RFC 5322), space allowed inside quotes only.
    check("\"john doe\"@example.com", Ok("\"john doe\"@example.com"));
    check("\"john..doe\"@example.com", Ok("\"john..doe\"@example.com"));
    check("\"a@b\"@example.com", Ok("\"a@b\"@example.com"));
    check("\"a\\\"b\"@example.com", Ok("\"a\\\"b\"@example.com"));
    check("\"\"@example.com", Err(E::EmptyLocalPart));
    check("\"   \"@example.com", Err(E::InvalidLocalPart));
    check("\"unclosed@example.com", Err(E::InvalidLocalPart));
    check("a\"b\"c@example.com", Err(E::InvalidLocalPart));
    check("\"a\tb\"@example.com", Err(E::ControlCharacter));
    check("\"a\u{a0}b\"@example.com", Err(E::Whitespace));
    // Dots in the local part.
    check(".user@example.com", Err(E::InvalidLocalPart));
    check("user.@example.com", Err(E::InvalidLocalPart));
    check("us..er@example.com", Err(E::InvalidLocalPart));
    // Unicode local parts (RFC 6532) and IDN domains.
    check("josé@example.com", Ok("josé@example.com"));
    check("用户@例子.广告", Ok("用户@例子.广告"));
    check("пользователь@пример.рф", Ok("пользователь@пример.рф"));
    check("user@müller.example", Ok("user@müller.example"));
    check("admin\u{ff20}evil.com@example.com", Err(E::InvalidLocalPart));
    check("user@example\u{3002}com", Err(E::InvalidDomain));
    // Invisible and control characters, whitespace: never trimmed.
    check("us\u{200b}er@example.com", Err(E::ControlCharacter));
    check("user@exa\u{202e}mple.com", Err(E::ControlCharacter));
    check("user@example.com\r\nBcc: x@evil.com", Err(E::ControlCharacter));
    check("user\0@example.com", Err(E::ControlCharacter));
    check(" user@example.com", Err(E::Whitespace));
    check("user@example.com ", Err(E::Whitespace));
    check("john doe@example.com", Err(E::Whitespace));
    check("user@exam ple.com", Err(E::Whitespace));
    check("user@example.com\u{3000}", Err(E::Whitespace));
    // Missing parts.
    check("", Err(E::Empty));
    check("user", Err(E::MissingAt));
    check("user.example.com", Err(E::MissingAt));
    check("@example.com", Err(E::EmptyLocalPart));
    check("user@", Err(E::EmptyDomain));
    check("@", Err(E::EmptyLocalPart));
    check("a@b@example.com", Err(E::InvalidLocalPart));
    // Domain labels.
    check("user@localhost", Err(E::DomainNotDotted));
    check("user@.example.com", Err(E::EmptyLabel));
    check("user@example.com.", Err(E::EmptyLabel));
    check("user@example..com", Err(E::EmptyLabel));
    check("user@-example.com", Err(E::HyphenAtLabelEdge));
    check("user@example-.com", Err(E::HyphenAtLabelEdge));
    check("user@example.-com", Err(E::HyphenAtLabelEdge));
    check("user@exa_mple.com", Err(E::InvalidDomain));
    check("user@exa!mple.com", Err(E::InvalidDomain));
    check("user@example.com>", Err(E::InvalidDomain));
    check("user@127.0.0.1", Err(E::InvalidDomain));
    check("user@example.123", Err(E::InvalidDomain));
    // Display names and IP literals are off by default.
    check("John Doe <john@example.com>", Err(E::DisplayNameNotAllowed));
    check("<john@example.com>", Err(E::DisplayNameNotAllowed));
    check("user@[192.0.2.1]", Err(E::IpLiteralNotAllowed));
    check("user@[IPv6:2001:db8::1]", Err(E::IpLiteralNotAllowed));
}

#[test]
fn length_limits() {
    use EmailError as E;
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    check(&format!("user@{label63}.com"), Ok(&format!("user@{label63}.com")));
    check(&format!("user@{label64}.com"), Err(E::LabelTooLong { len: 64 }));
    // A label's limit is in UTF-8 bytes: 32 two-byte letters are 64 bytes.
    check(&format!("user@{}.com", "é".repeat(32)), Err(E::LabelTooLong { len: 64 }));

    let local64 = "a".repeat(64);
    let local65 = "a".repeat(65);
    check(&format!("{local64}@example.com"), Ok(&format!("{local64}@example.com")));
    check(&format!("{local65}@example.com"), Err(E::LocalPartTooLong { len: 65 }));

    // 64 + 1 + 189 = 254 bytes is the longest address.
    let domain189 = format!("{label63}.{label63}.{}.com", "a".repeat(57));
    assert_eq!(domain189.len(), 189);
    let longest = format!("{local64}@{domain189}");
    assert_eq!(longest.len(), 254);
    check(&longest, Ok(&longest));
    check(&format!("{longest}m"), Err(E::TooLong { len: 255 }));
    check(&"a".repeat(2000), Err(E::TooLong { len: 2000 }));
}

#[test]
fn relaxed_policy_accepts_display_names_bare_hosts_and_ip_literals() {
    use EmailError as E;
    let p = relaxed();
    check_with(&p, "John Doe <john@Example.com>", Ok("john@example.com"));
    check_with(&p, "\"Doe, John\" <john@example.com>", Ok("john@example.com"));
    check_with(&p, "<john@example.com>", Ok("john@example.com"));
    check_with(&p, "John<john@example.com>", Ok("john@example.com"));
    check_with(&p, "Name <\"a<b\"@example.com>", Ok("\"a<b\"@example.com"));
    check_with(&p, "Doe, John <john@example.com>", Err(E::InvalidDisplayName));
    check_with(&p, "a@b.c <john@example.com>", Err(E::InvalidDisplayName));
    check_with(&p, "a\\b <john@example.com>", Err(E::InvalidDisplayName));
    // An unclosed quote swallows the `<`, so this is not the display-name form at all.
    check_with(&p, "\"unbalanced <john@example.com>", Err(E::Whitespace));
    check_with(&p, "John <>", Err(E::Empty));
    check_with(&p, "John < john@example.com>", Err(E::Whitespace));
    check_with(&p, "John <john@example.com", Err(E::Whitespace));
    check_with(&p, "user@localhost", Ok("user@localhost"));
    check_with(&p, "user@LocalHost", Ok("user@localhost"));
    check_with(&p, "user@123", Err(E::InvalidDomain));
    check_with(&p, "user@[192.0.2.1]", Ok("user@[192.0.2.1]"));
    check_with(&p, "user@[IPv6:2001:DB8:0:0::1]", Ok("user@[ipv6:2001:db8::1]"));
    check_with(&p, "user@[ipv6:::1]", Ok("user@[ipv6:::1]"));
    check_with(&p, "user@[192.0.2.256]", Err(E::InvalidIpLiteral));
    check_with(&p, "user@[2001:db8::1]", Err(E::InvalidIpLiteral));
    check_with(&p, "user@[IPv6:2001:db8::1%eth0]", Err(E::InvalidIpLiteral));
    check_with(&p, "user@[example.com]", Err(E::InvalidIpLiteral));
    check_with(&p, "user@[192.0.2.1", Err(E::InvalidIpLiteral));
    check_with(&p, "user@[]", Err(E::InvalidIpLiteral));
}

#[test]
fn dotted_domain_is_required_only_by_that_policy_flag() {
    let policy = EmailPolicy { require_dotted_domain: false, ..EmailPolicy::strict() };
    check_with(&policy, "root@localhost", Ok("root@localhost"));
    check_with(&policy, "Root <root@localhost>", Err(EmailError::DisplayNameNotAllowed));
}

#[test]
fn strict_policy_is_all_off_but_dotted_domain() {
    let p = EmailPolicy::strict();
    assert!(!p.allow_display_name && p.require_dotted_domain && !p.allow_ip_literal);
}

#[test]
fn accessors_split_at_the_last_at() {
    let email = Email::parse("\"a@b\"@Example.com").unwrap();
    assert_eq!(email.local_part(), "\"a@b\"");
    assert_eq!(email.domain(), "example.com");
}

#[track_caller]
fn check_redacted(input: &str, expected: &str) {
    let email = Email::parse_with(input, &relaxed()).unwrap();
    assert_eq!(email.redacted(), expected);
    assert_eq!(email.to_string(), expected);
}

#[test]
fn redacted_shows_at_most_the_first_character() {
    check_redacted("john.doe@Example.com", "j***@example.com");
    check_redacted("José@example.com", "J***@example.com");
    check_redacted("用户名@例子.广告", "用***@例子.广告");
    check_redacted("ab@example.com", "***@example.com");
    check_redacted("a@example.com", "***@example.com");
    check_redacted("+tag@example.com", "***@example.com");
    check_redacted("\"john doe\"@example.com", "j***@example.com");
    check_redacted("\"ab\"@example.com", "***@example.com");
    check_redacted("x@[192.0.2.1]", "***@[192.0.2.1]");
}

#[test]
fn display_and_debug_never_print_the_address() {
    let email = Email::parse("secret.person@example.com").unwrap();
    let debug = format!("{email:?}");
    let display = format!("{email}");
    for shown in [&debug, &display] {
        assert!(!shown.contains("secret"), "{shown}");
    }
    assert_eq!(
        debug,
        format!("Email {{ redacted: \"s***@example.com\", fingerprint: {} }}", email.fingerprint())
    );
}

#[test]
fn fingerprint_is_of_the_normalised_address() {
    let a = Email::parse("John@Example.com").unwrap();
    let b = Email::parse("John@example.COM").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint(), Fingerprint::of("John@example.com"));
    assert_ne!(a.fingerprint(), Email::parse("john@example.com").unwrap().fingerprint());
}

#[test]
fn from_str_uses_the_strict_policy() {
    assert_eq!("a.b@example.com".parse::<Email>().unwrap().as_str(), "a.b@example.com");
    assert_eq!("a@localhost".parse::<Email>(), Err(EmailError::DomainNotDotted));
}

#[test]
fn error_messages_are_lowercase_without_period_or_input() {
    let errors = [
        EmailError::Empty,
        EmailError::TooLong { len: 300 },
        EmailError::LocalPartTooLong { len: 65 },
        EmailError::MissingAt,
        EmailError::DisplayNameNotAllowed,
        EmailError::LabelTooLong { len: 64 },
        EmailError::InvalidDomain,
    ];
    for e in errors {
        let msg = e.to_string();
        assert!(msg.starts_with(char::is_lowercase) && !msg.ends_with('.'), "{msg}");
    }
    assert_eq!(
        EmailError::TooLong { len: 300 }.to_string(),
        "e-mail address is too long (300 bytes, at most 254)"
    );
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_input(input in any::<String>()) {
        let _ = Email::parse(&input);
        let _ = Email::parse_with(&input, &relaxed());
    }

    #[test]
    fn parse_never_panics_on_address_like_input(input in "[a-zA-Z0-9.@<>\"\\[\\]:\\\\ \u{e9}\u{130}-]{0,80}") {
        for policy in [EmailPolicy::strict(), relaxed()] {
            if let Ok(email) = Email::parse_with(&input, &policy) {
                prop_assert!(email.as_str().len() <= 254);
                prop_assert_eq!(Email::parse_with(email.as_str(), &policy), Ok(email.clone()));
                let full_local = format!("{}@", email.local_part());
                prop_assert!(!email.redacted().contains(&full_local));
            }
        }
    }

    #[test]
    fn simple_addresses_round_trip(
        local in "[a-z0-9]{1,20}(\\.[a-z0-9+_-]{1,10}){0,3}",
        domain in "[a-z0-9]{1,10}(-[a-z0-9]{1,5})?(\\.[a-z]{2,10}){1,3}",
    ) {
        let address = format!("{local}@{domain}");
        let email = Email::parse(&address.to_uppercase()).unwrap();
        prop_assert_eq!(email.local_part(), local.to_uppercase());
        prop_assert_eq!(email.domain(), domain);
    }
}
