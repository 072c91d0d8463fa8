//! E-mail address validation and normalisation: parse, don't validate.
//!
//! [`Email::parse`] turns untrusted text into a typed [`Email`] under [`EmailPolicy::strict`];
//! [`Email::parse_with`] takes another [`EmailPolicy`]. A refusal is an [`EmailError`] naming the
//! rule that failed. An accepted address is normalised: the local part is kept exactly as given
//! (it is case-sensitive by RFC 5321), the domain is lower-cased, a display name is dropped.
//!
//! [`Email`]'s `Display` and `Debug` print [`Email::redacted`] (`j***@example.com`), never the
//! full address, so a `{}` or `{:?}` in a log line cannot leak it; use [`Email::as_str`] for the
//! real value and [`Email::fingerprint`] to correlate log lines.
//!
//! The rules, checked in this order (the first failure is reported):
//!
//! - the input is not empty and at most 1024 bytes, the address itself (without display name)
//!   at most 254 bytes, the local part at most 64;
//! - no control characters, and no invisible format characters (zero-width, bidi overrides,
//!   soft hyphen, BOM) anywhere, not even in a quoted local part or a display name;
//! - no whitespace anywhere, with one exception: an ASCII space inside a quoted local part
//!   (`"john doe"@example.com`), which RFC 5322 allows; nothing is trimmed;
//! - the display-name form `Name <a@b.c>` (and the bare `<a@b.c>`) only when the policy allows;
//! - the local part is an RFC 5322 dot-atom (no leading, trailing or consecutive dots) or a
//!   quoted string, with UTF-8 allowed as in RFC 6532;
//! - the domain is a host name of labels separated by dots: no empty label, none longer than 63
//!   bytes, none starting or ending with a hyphen, ASCII letters, digits and hyphens or non-ASCII
//!   (IDN) characters, and a top-level label that is not all digits (a bare IP address is
//!   refused); at least two labels unless the policy says otherwise;
//! - an IP literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) only when the policy allows, and then
//!   it must hold a valid address; it is normalised to `[192.0.2.1]` or `[ipv6:2001:db8::1]`.
//!
//! What it deliberately does not do: look up DNS or MX records, send mail, convert IDN domains to
//! punycode or apply IDNA2008/UTS 46 mapping (labels are lower-cased and their length is counted
//! in UTF-8 bytes), Unicode-normalise local parts, or accept comments (`(...)`), obsolete syntax
//! and lists of addresses.
//!
//! ```
//! use palisade_email::{Email, EmailError, EmailPolicy};
//!
//! let email = Email::parse("John.Doe@Example.COM")?;
//! assert_eq!(email.as_str(), "John.Doe@example.com");
//! assert_eq!(email.local_part(), "John.Doe");
//! assert_eq!(email.domain(), "example.com");
//! assert_eq!(email.to_string(), "J***@example.com"); // what a log line shows
//! assert_eq!(email.fingerprint(), palisade_digest::Fingerprint::of("John.Doe@example.com"));
//!
//! assert_eq!(Email::parse("john..doe@example.com"), Err(EmailError::InvalidLocalPart));
//! assert_eq!(Email::parse("John <john@example.com>"), Err(EmailError::DisplayNameNotAllowed));
//!
//! let policy = EmailPolicy { allow_display_name: true, ..EmailPolicy::strict() };
//! let email = Email::parse_with("John <john@example.com>", &policy)?;
//! assert_eq!(email.as_str(), "john@example.com");
//! # Ok::<(), EmailError>(())
//! ```

mod parse;

use std::fmt;
use std::str::FromStr;

use palisade_digest::Fingerprint;

/// A syntactically valid, normalised e-mail address.
///
/// `Display` and `Debug` print the [redacted](Email::redacted) form so that formatting an `Email`
/// into a log cannot leak it; [`as_str`](Email::as_str) gives the real value. Two `Email`s are
/// equal when their normalised forms are equal (same local part, case included; same domain).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email {
    /// The normalised address, `local@domain`.
    address: String,
    /// Byte index of the `@` separating local part and domain in `address`.
    at: usize,
}

impl Email {
    /// Parses `input` under [`EmailPolicy::strict`].
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        Email::parse_with(input, &EmailPolicy::strict())
    }

    /// Parses `input` under `policy`.
    pub fn parse_with(input: &str, policy: &EmailPolicy) -> Result<Email, EmailError> {
        parse::parse(input, policy)
    }

    /// The normalised address: the local part as given, `@`, the lower-cased domain; without any
    /// display name. This is the real value: don't log it, log the `Email` itself or its
    /// [`fingerprint`](Email::fingerprint).
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The part before the `@`, exactly as given (case and any quotes kept).
    pub fn local_part(&self) -> &str {
        &self.address[..self.at]
    }

    /// The part after the `@`, lower-cased (a host name, or an IP literal in brackets).
    pub fn domain(&self) -> &str {
        &self.address[self.at + 1..]
    }

    /// A form safe for logs: at most the first character of the local part, then `***`, `@` and
    /// the domain, e.g. `j***@example.com`.
    ///
    /// The first character is shown only when it is alphanumeric and the local part has at least
    /// three characters (quotes not counted); otherwise the local part is just `***`. The output
    /// never contains the full local part.
    pub fn redacted(&self) -> String {
        let local = self.local_part();
        let content = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')).unwrap_or(local);
        let mut chars = content.chars();
        let shown = match chars.next() {
            Some(first) if first.is_alphanumeric() && content.chars().count() >= 3 => Some(first),
            _ => None,
        };
        let mut out = String::with_capacity(self.domain().len() + 8);
        out.extend(shown);
        out.push_str("***@");
        out.push_str(self.domain());
        out
    }

    /// The [`Fingerprint`] of [`as_str`](Email::as_str), to tell addresses apart in logs.
    ///
    /// This is an unkeyed hash: anyone holding a list of candidate addresses can find which one
    /// it names, so it hides the address from a casual reader only.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.as_str())
    }
}

/// Prints [`Email::redacted`], never the full address; use [`Email::as_str`] for that.
impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Prints the redacted form and the fingerprint, never the full address.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("redacted", &self.redacted())
            .field("fingerprint", &format_args!("{}", self.fingerprint()))
            .finish()
    }
}

/// Parses under [`EmailPolicy::strict`], like [`Email::parse`].
impl FromStr for Email {
    type Err = EmailError;

    fn from_str(s: &str) -> Result<Email, EmailError> {
        Email::parse(s)
    }
}

/// What [`Email::parse_with`] accepts beyond the strict rules.
#[derive(Clone, Debug)]
pub struct EmailPolicy {
    /// Accept `Display Name <local@domain>` and `<local@domain>`; the name is dropped.
    pub allow_display_name: bool,
    /// Require at least two domain labels (`example.com`, not `localhost`).
    pub require_dotted_domain: bool,
    /// Accept an IP literal domain such as `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    pub allow_ip_literal: bool,
}

impl EmailPolicy {
    /// No display name, a dotted domain, no IP literal.
    pub fn strict() -> EmailPolicy {
        EmailPolicy {
            allow_display_name: false,
            require_dotted_domain: true,
            allow_ip_literal: false,
        }
    }
}

/// Why an input is not an acceptable e-mail address. Messages never include the input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EmailError {
    /// The input (or the address inside `<...>`) is empty.
    #[error("e-mail address is empty")]
    Empty,
    /// The address is longer than 254 bytes, or the whole input longer than 1024.
    #[error("e-mail address is too long ({len} bytes, at most 254)")]
    TooLong {
        /// Length in bytes of what was measured.
        len: usize,
    },
    /// The local part is longer than 64 bytes.
    #[error("e-mail local part is too long ({len} bytes, at most 64)")]
    LocalPartTooLong {
        /// Length of the local part in bytes.
        len: usize,
    },
    /// There is no `@`.
    #[error("e-mail address has no @")]
    MissingAt,
    /// Nothing before the `@`.
    #[error("e-mail local part is empty")]
    EmptyLocalPart,
    /// Nothing after the `@`.
    #[error("e-mail domain is empty")]
    EmptyDomain,
    /// The input has the display-name form (`Name <a@b.c>`), which the policy refuses.
    #[error("e-mail display name form is not allowed")]
    DisplayNameNotAllowed,
    /// The display name has an unquoted RFC 5322 special character such as `,` `@` `<` `:`.
    #[error("e-mail display name is invalid")]
    InvalidDisplayName,
    /// The domain has a single label (`localhost`), which the policy refuses.
    #[error("e-mail domain must contain a dot")]
    DomainNotDotted,
    /// The domain is an IP literal (`[192.0.2.1]`), which the policy refuses.
    #[error("e-mail ip literal domain is not allowed")]
    IpLiteralNotAllowed,
    /// The IP literal holds no valid IPv4 or `IPv6:` address.
    #[error("e-mail ip literal domain is invalid")]
    InvalidIpLiteral,
    /// A control character or an invisible format character (zero-width, bidi) appears.
    #[error("e-mail address contains a control or invisible character")]
    ControlCharacter,
    /// Whitespace appears outside a quoted local part (or other than a space inside one).
    #[error("e-mail address contains whitespace")]
    Whitespace,
    /// The local part is neither a dot-atom nor a quoted string (bad character, or a leading,
    /// trailing or doubled dot).
    #[error("e-mail local part is invalid")]
    InvalidLocalPart,
    /// The domain has a leading, trailing or doubled dot.
    #[error("e-mail domain has an empty label")]
    EmptyLabel,
    /// A domain label is longer than 63 bytes.
    #[error("e-mail domain label is too long ({len} bytes, at most 63)")]
    LabelTooLong {
        /// Length of the label in bytes.
        len: usize,
    },
    /// A domain label starts or ends with a hyphen.
    #[error("e-mail domain label starts or ends with a hyphen")]
    HyphenAtLabelEdge,
    /// The domain has a character not allowed in a host name, or an all-numeric top-level label.
    #[error("e-mail domain is invalid")]
    InvalidDomain,
}

#[cfg(test)]
mod tests;
