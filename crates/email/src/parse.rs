//! The parser behind [`Email::parse_with`](crate::Email::parse_with), one rule at a time.

use std::net::{Ipv4Addr, Ipv6Addr};

use email_address::EmailAddress;

use crate::{Email, EmailError, EmailPolicy};

/// Longest accepted input, display name included.
const MAX_INPUT_LEN: usize = 1024;
/// Longest address (RFC 5321 path limit, RFC 3696 erratum 1690).
const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;
/// Longest domain label (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

pub(crate) fn parse(input: &str, policy: &EmailPolicy) -> Result<Email, EmailError> {
    if input.is_empty() {
        return Err(EmailError::Empty);
    }
    if input.len() > MAX_INPUT_LEN {
        return Err(EmailError::TooLong { len: input.len() });
    }
    if input.chars().any(is_control_or_invisible) {
        return Err(EmailError::ControlCharacter);
    }
    let address = match split_display_name(input) {
        None => input,
        Some(_) if !policy.allow_display_name => return Err(EmailError::DisplayNameNotAllowed),
        Some((name, address)) => {
            check_display_name(name)?;
            address
        }
    };
    if address.is_empty() {
        return Err(EmailError::Empty);
    }
    if address.len() > MAX_ADDRESS_LEN {
        return Err(EmailError::TooLong { len: address.len() });
    }
    // A quoted local part may contain `@`; a domain never does.
    let (local, domain) = address.rsplit_once('@').ok_or(EmailError::MissingAt)?;
    check_whitespace(local, domain)?;
    if local.is_empty() {
        return Err(EmailError::EmptyLocalPart);
    }
    if domain.is_empty() {
        return Err(EmailError::EmptyDomain);
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(EmailError::LocalPartTooLong { len: local.len() });
    }
    check_local_part(local)?;
    let domain = parse_domain(domain, policy)?;

    let normalised = format!("{local}@{domain}");
    // Lower-casing can lengthen some non-ASCII characters.
    if normalised.len() > MAX_ADDRESS_LEN {
        return Err(EmailError::TooLong { len: normalised.len() });
    }
    Ok(Email { address: normalised, at: local.len() })
}

/// Control characters, and format characters that are invisible or reorder text when printed.
fn is_control_or_invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'  // soft hyphen
            | '\u{061C}' // Arabic letter mark
            | '\u{180E}' // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
            | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}' // bidi isolates
            | '\u{FEFF}' // byte order mark
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
        )
}

/// Characters that look like `@` or `.` but are not, refused outside quotes.
fn is_lookalike_separator(c: char) -> bool {
    matches!(c, '\u{FF20}' | '\u{FE6B}' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}')
}

/// Splits `Name <address>` into name and address when `input` has that form: it ends with `>`
/// and has an unquoted `<` (the last one is taken).
fn split_display_name(input: &str) -> Option<(&str, &str)> {
    let body = input.strip_suffix('>')?;
    let open = unquoted_positions(body).filter(|&(_, c)| c == '<').last()?.0;
    Some((&body[..open], &body[open + 1..]))
}

/// The characters of `s` that are outside double quotes, with their byte offsets. A backslash
/// inside quotes escapes the next character.
fn unquoted_positions(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut in_quotes = false;
    let mut escaped = false;
    s.char_indices().filter(move |&(_, c)| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            _ => return !in_quotes,
        }
        false
    })
}

/// A display name is free text, but RFC 5322 specials must be quoted. (Quotes are balanced:
/// an unclosed quote would have hidden the `<`, and the input would not have this form.)
fn check_display_name(name: &str) -> Result<(), EmailError> {
    if unquoted_positions(name).any(|(_, c)| "()<>[]:;@\\,".contains(c)) {
        return Err(EmailError::InvalidDisplayName);
    }
    Ok(())
}

/// No whitespace, except ASCII spaces inside a quoted local part.
fn check_whitespace(local: &str, domain: &str) -> Result<(), EmailError> {
    let quoted = is_quoted(local);
    let bad_local = local.chars().any(|c| c.is_whitespace() && !(quoted && c == ' '));
    if bad_local || domain.chars().any(char::is_whitespace) {
        return Err(EmailError::Whitespace);
    }
    Ok(())
}

fn is_quoted(local: &str) -> bool {
    local.len() >= 2 && local.starts_with('"') && local.ends_with('"')
}

/// RFC 5322 dot-atom or quoted string, UTF-8 allowed (RFC 6532); the grammar is the
/// `email_address` crate's.
fn check_local_part(local: &str) -> Result<(), EmailError> {
    if is_quoted(local) {
        let content = &local[1..local.len() - 1];
        if content.is_empty() {
            return Err(EmailError::EmptyLocalPart);
        }
        if content.chars().all(|c| c == ' ') {
            return Err(EmailError::InvalidLocalPart);
        }
    } else if local.chars().any(is_lookalike_separator) {
        return Err(EmailError::InvalidLocalPart);
    }
    if !EmailAddress::is_valid_local_part(local) {
        return Err(EmailError::InvalidLocalPart);
    }
    Ok(())
}

/// Validates the domain and returns its normalised (lower-case) form.
fn parse_domain(domain: &str, policy: &EmailPolicy) -> Result<String, EmailError> {
    if let Some(literal) = domain.strip_prefix('[') {
        if !policy.allow_ip_literal {
            return Err(EmailError::IpLiteralNotAllowed);
        }
        let inner = literal.strip_suffix(']').ok_or(EmailError::InvalidIpLiteral)?;
        return parse_ip_literal(inner);
    }

    let domain = domain.to_lowercase();
    let mut labels = 0;
    for label in domain.split('.') {
        check_label(label)?;
        labels += 1;
    }
    // `split` yields at least one item, so `rsplit` does too.
    let top = domain.rsplit('.').next().unwrap_or_default();
    if top.bytes().all(|b| b.is_ascii_digit()) {
        // Top-level domains are never numeric (RFC 3696 section 2); this refuses `a@127.0.0.1`.
        return Err(EmailError::InvalidDomain);
    }
    if policy.require_dotted_domain && labels < 2 {
        return Err(EmailError::DomainNotDotted);
    }
    Ok(domain)
}

/// One lower-cased label: letters, digits and hyphens, or non-ASCII (an IDN U-label).
fn check_label(label: &str) -> Result<(), EmailError> {
    if label.is_empty() {
        return Err(EmailError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(EmailError::LabelTooLong { len: label.len() });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(EmailError::HyphenAtLabelEdge);
    }
    let valid_char = |c: char| {
        if c.is_ascii() {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        } else {
            !is_lookalike_separator(c)
        }
    };
    if !label.chars().all(valid_char) {
        return Err(EmailError::InvalidDomain);
    }
    Ok(())
}

/// `192.0.2.1` or `IPv6:2001:db8::1` (tag case-insensitive), normalised with brackets.
fn parse_ip_literal(inner: &str) -> Result<String, EmailError> {
    if let Ok(v4) = inner.parse::<Ipv4Addr>() {
        return Ok(format!("[{v4}]"));
    }
    let tag = inner.get(..5).ok_or(EmailError::InvalidIpLiteral)?;
    if !tag.eq_ignore_ascii_case("ipv6:") {
        return Err(EmailError::InvalidIpLiteral);
    }
    let v6 = inner[5..].parse::<Ipv6Addr>().map_err(|_| EmailError::InvalidIpLiteral)?;
    Ok(format!("[ipv6:{v6}]"))
}
