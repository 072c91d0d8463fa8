//! The claims of a token, their JSON form and their checks.

use serde_json::{Map, Value};

use crate::{EncodeError, TokenError};

/// The claims of a verified token, or of a token to mint.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// Who the token is for: the `user_id` claim as the original Python
    /// guide writes it (an integer, rendered in decimal, or a string), or
    /// else `sub`. Never empty.
    pub user_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: Option<u64>,
    /// Issuer.
    pub iss: Option<String>,
    /// Audience. When the token lists several, this is the configured one.
    pub aud: Option<String>,
    /// A validated e-mail address.
    pub email: Option<palisade_email::Email>,
    /// Token id.
    pub jti: Option<String>,
    /// Every other claim, untouched, for the application.
    pub extra: Map<String, Value>,
}

impl Claims {
    /// Claims for `user_id` with nothing else set.
    pub fn new(user_id: impl Into<String>) -> Claims {
        Claims {
            user_id: user_id.into(),
            exp: None,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            email: None,
            jti: None,
            extra: Map::new(),
        }
    }

    /// The JSON payload: `user_id` as a number when it is a decimal `i64` in
    /// canonical form (`42`, not `042`), else as a string.
    pub(crate) fn to_json(&self) -> Result<Map<String, Value>, EncodeError> {
        if self.user_id.is_empty() {
            return Err(EncodeError::EmptyUserId);
        }
        if let Some(name) = self.extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
            return Err(EncodeError::ReservedClaim(name.clone()));
        }
        let mut map = self.extra.clone();
        let user_id = match self.user_id.parse::<i64>() {
            Ok(n) if n.to_string() == self.user_id => Value::from(n),
            _ => Value::from(self.user_id.clone()),
        };
        map.insert("user_id".into(), user_id);
        let numbers = [("exp", self.exp), ("nbf", self.nbf), ("iat", self.iat)];
        for (name, value) in numbers {
            if let Some(v) = value {
                map.insert(name.into(), Value::from(v));
            }
        }
        let strings = [
            ("iss", self.iss.as_deref()),
            ("aud", self.aud.as_deref()),
            ("email", self.email.as_ref().map(|e| e.as_str())),
            ("jti", self.jti.as_deref()),
        ];
        for (name, value) in strings {
            if let Some(v) = value {
                map.insert(name.into(), Value::from(v));
            }
        }
        Ok(map)
    }
}

/// Claim names with a field of their own; they never appear in `extra`.
pub(crate) const RESERVED: [&str; 9] =
    ["user_id", "sub", "exp", "nbf", "iat", "iss", "aud", "email", "jti"];

/// The claim checks a codec applies after the signature verified.
#[derive(Debug)]
pub(crate) struct ClaimChecks {
    pub(crate) require_exp: bool,
    pub(crate) leeway_secs: u64,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
}

impl ClaimChecks {
    /// Checks the payload of a verified token and turns it into [`Claims`].
    ///
    /// The order is: times (`exp`, then `nbf`, then `iat`), then `iss` and
    /// `aud`, then the user id, then `email` and `jti`. An expired token is
    /// thus reported as expired even when something else is wrong too.
    pub(crate) fn check(
        &self,
        mut map: Map<String, Value>,
        now: u64,
    ) -> Result<Claims, TokenError> {
        // Rounding is always towards rejection: `exp` down, `nbf` and `iat` up.
        let exp = numeric_date(map.remove("exp"), "exp", false)?;
        let nbf = numeric_date(map.remove("nbf"), "nbf", true)?;
        let iat = numeric_date(map.remove("iat"), "iat", true)?;
        match exp {
            None if self.require_exp => return Err(TokenError::MissingClaim("exp")),
            Some(exp) if now >= exp.saturating_add(self.leeway_secs) => {
                return Err(TokenError::Expired);
            }
            _ => {}
        }
        let latest = now.saturating_add(self.leeway_secs);
        if nbf.is_some_and(|nbf| nbf > latest) {
            return Err(TokenError::NotYetValid);
        }
        if iat.is_some_and(|iat| iat > latest) {
            return Err(TokenError::InvalidClaim("iat"));
        }

        let iss = string_claim(map.remove("iss"), "iss")?;
        if let Some(expected) = &self.issuer {
            match &iss {
                None => return Err(TokenError::MissingClaim("iss")),
                Some(iss) if iss != expected => return Err(TokenError::InvalidClaim("iss")),
                Some(_) => {}
            }
        }
        let aud = self.audience(map.remove("aud"))?;

        let user_id = user_id(map.remove("user_id"), map.remove("sub"))?;
        let email = match string_claim(map.remove("email"), "email")? {
            None => None,
            Some(email) => Some(
                palisade_email::Email::parse(&email)
                    .map_err(|_| TokenError::InvalidClaim("email"))?,
            ),
        };
        let jti = string_claim(map.remove("jti"), "jti")?;

        Ok(Claims { user_id, exp, nbf, iat, iss, aud, email, jti, extra: map })
    }

    fn audience(&self, aud: Option<Value>) -> Result<Option<String>, TokenError> {
        let Some(aud) = aud else {
            return match self.audience {
                Some(_) => Err(TokenError::MissingClaim("aud")),
                None => Ok(None),
            };
        };
        // RFC 7519 section 4.1.3: a recipient that does not identify itself
        // with a value of a present `aud` claim must reject the token.
        let expected = self.audience.as_deref().ok_or(TokenError::InvalidClaim("aud"))?;
        let matches = match &aud {
            Value::String(s) => s == expected,
            Value::Array(items) => {
                if !items.iter().all(Value::is_string) {
                    return Err(TokenError::InvalidClaim("aud"));
                }
                items.iter().any(|item| item.as_str() == Some(expected))
            }
            _ => false,
        };
        if matches { Ok(Some(expected.to_owned())) } else { Err(TokenError::InvalidClaim("aud")) }
    }
}

/// A NumericDate (RFC 7519 section 2): a non-negative number of seconds.
/// Fractions are rounded up when `round_up`, else down.
fn numeric_date(
    value: Option<Value>,
    name: &'static str,
    round_up: bool,
) -> Result<Option<u64>, TokenError> {
    let Some(value) = value else { return Ok(None) };
    let Value::Number(n) = value else { return Err(TokenError::InvalidClaim(name)) };
    if let Some(secs) = n.as_u64() {
        return Ok(Some(secs));
    }
    match n.as_f64() {
        // Numbers past 2^53 seconds are hundreds of millions of years away;
        // refusing them keeps the float-to-integer conversion exact.
        Some(f) if (0.0..9_007_199_254_740_992.0).contains(&f) => {
            let secs = if round_up { f.ceil() } else { f.floor() };
            // The range check above makes this cast exact.
            Ok(Some(secs as u64))
        }
        _ => Err(TokenError::InvalidClaim(name)),
    }
}

fn string_claim(value: Option<Value>, name: &'static str) -> Result<Option<String>, TokenError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

/// The user id from `user_id` (integer or string) and `sub` (string): one of
/// them is needed, and when both are present they must agree.
fn user_id(user_id: Option<Value>, sub: Option<Value>) -> Result<String, TokenError> {
    let user_id = match user_id {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(_) => return Err(TokenError::InvalidClaim("user_id")),
    };
    let sub = string_claim(sub, "sub")?;
    let id = match (user_id, sub) {
        (None, None) => return Err(TokenError::MissingClaim("user_id")),
        (Some(id), None) => id,
        (None, Some(sub)) => sub,
        (Some(id), Some(sub)) if id == sub => id,
        (Some(_), Some(_)) => return Err(TokenError::InvalidClaim("sub")),
    };
    if id.is_empty() {
        return Err(TokenError::InvalidClaim("user_id"));
    }
    Ok(id)
}
