//! A JWKS document (RFC 7517) to verifying keys, skipping every key that does not fit.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use palisade_token::{Algorithm, Key, PublicComponents, TokenCodec, TokenConfig};
use serde_json::{Map, Value};

use crate::ClaimRules;

/// Keys beyond this many in one document are ignored (a set is a handful of keys).
pub const MAX_KEYS: usize = 64;

/// One usable key of a set: its id, the algorithm it verifies and a codec for it.
#[derive(Clone, Debug)]
pub struct VerifyingKey {
    /// The `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub algorithm: Algorithm,
    pub(crate) codec: TokenCodec,
}

/// A key of the document that was not taken, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedKey {
    /// The `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// Why it was skipped, e.g. `use is "enc", not "sig"`.
    pub reason: String,
    /// True for an RSA key under 2048 bits (the server logs a warning for those).
    pub weak: bool,
}

/// A parsed set: the usable keys, in document order, and the skipped ones.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// The keys that verify.
    pub keys: Vec<VerifyingKey>,
    /// The keys that do not.
    pub skipped: Vec<SkippedKey>,
}

/// Why a document yields no key set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The body is not a JSON object.
    #[error("the JWKS document is not a JSON object")]
    NotJson,
    /// The object has no `keys` array.
    #[error("the JWKS document has no \"keys\" array")]
    NoKeysArray,
    /// No key fits the configured algorithms.
    #[error("the JWKS document has no usable key ({skipped} skipped)")]
    NoUsableKey {
        /// How many keys were skipped.
        skipped: usize,
    },
}

/// Parses a JWKS document for one issuer: every key must be a signature key (`use` absent or
/// `sig`, `key_ops` absent or holding `verify`) of a configured algorithm, RSA of at least 2048
/// bits, EC on P-256 or OKP on Ed25519. `oct` (shared-secret) keys are never taken.
pub fn parse_jwks(
    body: &[u8],
    issuer: &str,
    audience: &str,
    algorithms: &[Algorithm],
    rules: &ClaimRules,
) -> Result<KeySet, JwksError> {
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
        return Err(JwksError::NotJson);
    };
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err(JwksError::NoKeysArray);
    };
    let mut set = KeySet { keys: Vec::new(), skipped: Vec::new() };
    for entry in entries.iter().take(MAX_KEYS) {
        let Value::Object(jwk) = entry else {
            set.skipped.push(SkippedKey {
                kid: None,
                reason: "not a JSON object".into(),
                weak: false,
            });
            continue;
        };
        let kid = match jwk.get("kid") {
            Some(Value::String(kid)) => Some(kid.clone()),
            _ => None,
        };
        match one_key(jwk, algorithms) {
            Ok((algorithm, components)) => {
                let mut config = TokenConfig::new(
                    algorithm,
                    vec![Key { kid: kid.clone(), ..Key::public_components(components) }],
                );
                config.issuer = Some(issuer.to_owned());
                config.audience = Some(audience.to_owned());
                config.require_exp = rules.require_exp;
                config.leeway_secs = rules.leeway_secs;
                config.required_typ.clone_from(&rules.required_typ);
                config.max_token_bytes = rules.max_token_bytes;
                match TokenCodec::new(config) {
                    Ok(codec) => set.keys.push(VerifyingKey { kid, algorithm, codec }),
                    Err(e) => {
                        set.skipped.push(SkippedKey { kid, reason: e.to_string(), weak: false })
                    }
                }
            }
            Err(Skip { reason, weak }) => set.skipped.push(SkippedKey { kid, reason, weak }),
        }
    }
    if entries.len() > MAX_KEYS {
        set.skipped.push(SkippedKey {
            kid: None,
            reason: format!(
                "{} keys beyond the first {MAX_KEYS} ignored",
                entries.len() - MAX_KEYS
            ),
            weak: false,
        });
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKey { skipped: set.skipped.len() });
    }
    Ok(set)
}

struct Skip {
    reason: String,
    weak: bool,
}

fn skip(reason: impl Into<String>) -> Skip {
    Skip { reason: reason.into(), weak: false }
}

fn one_key(
    jwk: &Map<String, Value>,
    algorithms: &[Algorithm],
) -> Result<(Algorithm, PublicComponents), Skip> {
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(u)) => return Err(skip(format!("use is {u:?}, not \"sig\""))),
        Some(_) => return Err(skip("use is not a string")),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops.as_array().is_some_and(|ops| ops.iter().any(|op| op == "verify"));
        if !verifies {
            return Err(skip("key_ops does not include \"verify\""));
        }
    }
    let kty = jwk.get("kty").and_then(Value::as_str).ok_or_else(|| skip("no kty"))?;
    let crv = jwk.get("crv").and_then(Value::as_str);
    let components = match kty {
        "RSA" => PublicComponents::Rsa { n: b64(jwk, "n")?, e: b64(jwk, "e")? },
        "EC" if crv == Some("P-256") => {
            PublicComponents::EcP256 { x: b64(jwk, "x")?, y: b64(jwk, "y")? }
        }
        "OKP" if crv == Some("Ed25519") => PublicComponents::Ed25519 { x: b64(jwk, "x")? },
        "EC" | "OKP" => {
            return Err(skip(format!("curve {:?} is not supported", crv.unwrap_or("none"))));
        }
        "oct" => return Err(skip("shared-secret (oct) keys are never taken from a JWKS")),
        other => return Err(skip(format!("kty {other:?} is not supported"))),
    };
    let implied = components.algorithm();
    let algorithm = match jwk.get("alg") {
        None => implied,
        Some(Value::String(alg)) => match alg.parse::<Algorithm>() {
            Ok(alg) if alg == implied => alg,
            Ok(alg) => return Err(skip(format!("alg {alg} does not fit kty {kty}"))),
            Err(_) => return Err(skip("alg is not supported")),
        },
        Some(_) => return Err(skip("alg is not a string")),
    };
    if !algorithms.contains(&algorithm) {
        return Err(skip(format!("alg {algorithm} is not configured for this issuer")));
    }
    if let Some(bits) = components.rsa_bits()
        && bits < 2048
    {
        return Err(Skip {
            reason: format!("rsa key of {bits} bits, at least 2048 are needed"),
            weak: true,
        });
    }
    Ok((algorithm, components))
}

fn b64(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, Skip> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| skip(format!("no {name}")))?;
    // Some providers pad; the alphabet must still be base64url.
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| skip(format!("{name} is not base64url")))
}
