//! Channel names, channel patterns and the rights a token grants on them.
//!
//! A grant claim maps patterns to rights:
//! `{"news":["subscribe"],"chat:*":["subscribe","publish"],"user:{user_id}":["subscribe"]}`.
//! Patterns are split into `:`-separated segments. A `*` segment matches exactly one non-empty
//! segment, or, when it is the pattern's last segment, the whole (non-empty) rest of the name.
//! `{user_id}` inside a segment stands for the session's user id, matched literally.

use serde_json::Value;

/// Longest channel name, in bytes.
pub(crate) const MAX_CHANNEL_BYTES: usize = 255;

/// Why a channel name is refused; the `detail` of a `bad_channel` error.
pub(crate) fn validate_channel(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a channel name is 1 to 255 bytes; this one is empty".into());
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err(format!(
            "a channel name is at most {MAX_CHANNEL_BYTES} bytes; this one has {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "a channel name is printable ASCII without spaces; it holds {:?}",
            c.escape_default().to_string()
        ));
    }
    Ok(())
}

/// The things a session may do on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Right {
    Subscribe,
    Publish,
    Presence,
    History,
}

impl Right {
    fn bit(self) -> u8 {
        match self {
            Right::Subscribe => 1,
            Right::Publish => 2,
            Right::Presence => 4,
            Right::History => 8,
        }
    }

    fn parse(name: &str) -> Option<Right> {
        match name {
            "subscribe" => Some(Right::Subscribe),
            "publish" => Some(Right::Publish),
            "presence" => Some(Right::Presence),
            "history" => Some(Right::History),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Right::Subscribe => "subscribe",
            Right::Publish => "publish",
            Right::Presence => "presence",
            Right::History => "history",
        }
    }
}

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Literal text, possibly holding `{user_id}`.
    Literal(String),
    /// `*`.
    Star,
}

/// A channel pattern such as `chat:*` or `user:{user_id}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses a pattern; its text obeys the channel-name rules.
    pub(crate) fn parse(text: &str) -> Result<Pattern, String> {
        validate_channel(text)?;
        let segments = text
            .split(':')
            .map(|s| if s == "*" { Segment::Star } else { Segment::Literal(s.to_owned()) })
            .collect();
        Ok(Pattern { segments })
    }

    /// Whether `channel` matches, with `{user_id}` standing for `user_id`.
    pub(crate) fn matches(&self, channel: &str, user_id: &str) -> bool {
        let mut rest = channel;
        let last = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            let is_last = i == last;
            match seg {
                Segment::Star if is_last => return !rest.is_empty(),
                Segment::Star => match rest.split_once(':') {
                    Some((one, after)) if !one.is_empty() => rest = after,
                    _ => return false,
                },
                Segment::Literal(lit) => {
                    let lit = lit.replace("{user_id}", user_id);
                    let Some(after) = rest.strip_prefix(lit.as_str()) else { return false };
                    if is_last {
                        return after.is_empty();
                    }
                    match after.strip_prefix(':') {
                        Some(after) => rest = after,
                        None => return false,
                    }
                }
            }
        }
        false
    }
}

/// The grants of one session: patterns with rights, from its token's grant claim.
#[derive(Clone, Debug, Default)]
pub(crate) struct Grants {
    rules: Vec<(Pattern, u8)>,
}

impl Grants {
    /// Reads a grant claim's value; entries that do not parse are skipped (and named in the
    /// returned list, for the log).
    pub(crate) fn from_claim(value: Option<&Value>) -> (Grants, Vec<String>) {
        let mut grants = Grants::default();
        let mut skipped = Vec::new();
        let Some(value) = value else { return (grants, skipped) };
        let Some(map) = value.as_object() else {
            skipped.push("the claim is not an object".into());
            return (grants, skipped);
        };
        for (pattern, rights) in map {
            let pattern_parsed = match Pattern::parse(pattern) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push(format!("{pattern:?}: {e}"));
                    continue;
                }
            };
            let mut bits = 0u8;
            match rights.as_array() {
                Some(list) => {
                    for r in list {
                        match r.as_str().and_then(Right::parse) {
                            Some(right) => bits |= right.bit(),
                            None => skipped.push(format!("{pattern:?}: unknown right {r}")),
                        }
                    }
                }
                None => skipped.push(format!("{pattern:?}: rights are not a list")),
            }
            if bits != 0 {
                grants.rules.push((pattern_parsed, bits));
            }
        }
        (grants, skipped)
    }

    /// Whether any grant gives `right` on `channel` to `user_id`.
    pub(crate) fn allows(&self, channel: &str, user_id: &str, right: Right) -> bool {
        self.rules.iter().any(|(p, bits)| bits & right.bit() != 0 && p.matches(channel, user_id))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn m(pattern: &str, channel: &str) -> bool {
        Pattern::parse(pattern).expect("pattern").matches(channel, "42")
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(m("news", "news"));
        assert!(!m("news", "news:x"));
        assert!(!m("news", "new"));
        assert!(!m("news", "newsx"));
        assert!(m("a:b:c", "a:b:c"));
        assert!(!m("a:b:c", "a:b"));
    }

    #[test]
    fn star_matches_one_segment_or_the_rest_at_the_end() {
        assert!(m("chat:*", "chat:room1"));
        assert!(m("chat:*", "chat:room1:thread"));
        assert!(!m("chat:*", "chat:"));
        assert!(!m("chat:*", "chat"));
        assert!(!m("chat:*", "chatter:x"));
        assert!(m("a:*:c", "a:x:c"));
        assert!(!m("a:*:c", "a:x:y:c"));
        assert!(!m("a:*:c", "a::c"));
        assert!(m("*", "anything:at:all"));
        assert!(m("*:log", "x:log"));
        assert!(!m("*:log", "x:y:log"));
    }

    #[test]
    fn user_id_placeholder_is_the_sessions_user() {
        assert!(m("user:{user_id}", "user:42"));
        assert!(!m("user:{user_id}", "user:43"));
        assert!(!m("user:{user_id}", "user:42:x"));
        assert!(m("user:{user_id}:*", "user:42:inbox"));
        assert!(m("dm-{user_id}", "dm-42"));
        // A user id holding `:` is matched literally, not as segments.
        let p = Pattern::parse("user:{user_id}").expect("pattern");
        assert!(p.matches("user:a:b", "a:b"));
        assert!(!p.matches("user:a:b", "a"));
    }

    #[test]
    fn channel_names_are_printable_ascii_without_spaces() {
        assert!(validate_channel("chat:room1").is_ok());
        assert!(validate_channel("a").is_ok());
        assert!(validate_channel(&"x".repeat(255)).is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel(&"x".repeat(256)).is_err());
        assert!(validate_channel("chat room").is_err());
        assert!(validate_channel("tab\there").is_err());
        assert!(validate_channel("caf\u{e9}").is_err());
        assert!(validate_channel("nul\0").is_err());
        assert!(validate_channel("new\nline").is_err());
    }

    #[test]
    fn grants_from_a_claim() {
        let claim = json!({
            "news": ["subscribe"],
            "chat:*": ["subscribe", "publish", "presence", "history"],
            "user:{user_id}": ["subscribe", "fly"],
            "bad name": ["subscribe"],
            "odd": "subscribe"
        });
        let (g, skipped) = Grants::from_claim(Some(&claim));
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(g.allows("news", "42", Right::Subscribe));
        assert!(!g.allows("news", "42", Right::Publish));
        assert!(g.allows("chat:room1", "42", Right::Publish));
        assert!(g.allows("chat:room1", "42", Right::History));
        assert!(g.allows("user:42", "42", Right::Subscribe));
        assert!(!g.allows("user:43", "42", Right::Subscribe));
        assert!(!g.allows("odd", "42", Right::Subscribe));
        let (none, skipped) = Grants::from_claim(Some(&json!(["news"])));
        assert!(!none.allows("news", "42", Right::Subscribe));
        assert_eq!(skipped.len(), 1);
        let (none, skipped) = Grants::from_claim(None);
        assert!(!none.allows("news", "42", Right::Subscribe));
        assert!(skipped.is_empty());
    }
}
