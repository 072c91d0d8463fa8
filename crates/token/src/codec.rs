//! The codec: keys checked once at build time, then `encode` and `decode`.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::EllipticCurve;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::claims::ClaimChecks;
use crate::{
    Algorithm, Claims, EncodeError, Key, KeyError, KeyMaterial, MAX_LEEWAY_SECS, PublicComponents,
    TokenConfig, TokenError,
};

/// Verifies (`decode`) and mints (`encode`) tokens for one pinned algorithm.
///
/// Cloning is cheap (the keys sit behind an [`Arc`]); the codec is `Send`
/// and `Sync`.
#[derive(Clone)]
pub struct TokenCodec {
    inner: Arc<Inner>,
}

struct Inner {
    algorithm: Algorithm,
    verifiers: Vec<Verifier>,
    signer: Option<Signer>,
    validation: Validation,
    checks: ClaimChecks,
    required_typ: Option<String>,
    max_token_bytes: usize,
}

struct Verifier {
    kid: Option<String>,
    key: DecodingKey,
}

struct Signer {
    kid: Option<String>,
    key: EncodingKey,
}

impl TokenCodec {
    /// Checks the configuration and the keys, and builds the codec.
    ///
    /// Refused: no keys, a leeway above [`MAX_LEEWAY_SECS`], two keys with
    /// one `kid`, an HMAC secret shorter than the hash output (32 bytes for
    /// HS256) or that is a PEM key, a secret for a public-key algorithm or PEM
    /// keys for HMAC, a PEM key that does not parse or does not sign, an RSA
    /// key under 2048 bits, and a public and private PEM that do not match.
    pub fn new(config: TokenConfig) -> Result<TokenCodec, KeyError> {
        if config.keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(KeyError::LeewayTooLarge {
                secs: config.leeway_secs,
                max: MAX_LEEWAY_SECS,
            });
        }
        for (i, key) in config.keys.iter().enumerate() {
            if let Some(kid) = &key.kid
                && config.keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(KeyError::DuplicateKid(kid.clone()));
            }
        }

        let algorithm = config.algorithm;
        let mut verifiers = Vec::new();
        let mut signer = None;
        for (i, key) in config.keys.iter().enumerate() {
            let (decoding, encoding) = build_key(algorithm, key, &key_label(i, key))?;
            if let Some(key) = decoding {
                verifiers.push(Verifier { kid: key_kid(&config.keys[i]), key });
            }
            if let (None, Some(key)) = (&signer, encoding) {
                signer = Some(Signer { kid: key_kid(&config.keys[i]), key });
            }
        }

        // jsonwebtoken checks the signature and the header's `alg` (again);
        // the claim checks are ours, so that the clock is a parameter.
        let mut validation = Validation::new(algorithm.to_jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;

        Ok(TokenCodec {
            inner: Arc::new(Inner {
                algorithm,
                verifiers,
                signer,
                validation,
                checks: ClaimChecks {
                    require_exp: config.require_exp,
                    leeway_secs: config.leeway_secs,
                    issuer: config.issuer,
                    audience: config.audience,
                },
                required_typ: config.required_typ,
                max_token_bytes: config.max_token_bytes,
            }),
        })
    }

    /// Verifies `token` at the time `now_unix_secs` and returns its claims.
    ///
    /// The order of the checks: the length cap; the header (it must be a
    /// JSON object whose `alg` is the pinned algorithm, and whose `typ` is
    /// the required one when one is configured); the key (the one whose `kid`
    /// the header names, or every key in order when the header has no `kid`;
    /// `jku`, `x5u`, `jwk` and `x5c` headers are ignored); the signature; then
    /// the claims (`exp`, `nbf`, `iat`, `iss`, `aud`, the user id, `email`, `jti`).
    pub fn decode(&self, token: &str, now_unix_secs: u64) -> Result<Claims, TokenError> {
        let inner = &*self.inner;
        if token.len() > inner.max_token_bytes {
            return Err(TokenError::TooLong { len: token.len(), max: inner.max_token_bytes });
        }
        let header = parse_header(token)?;
        match header.get("alg") {
            Some(Value::String(alg)) if alg == inner.algorithm.name() => {}
            Some(Value::String(alg)) => {
                return Err(TokenError::AlgorithmNotAllowed { found: sanitize(alg) });
            }
            Some(_) => return Err(malformed("the alg header is not a string")),
            None => return Err(malformed("the header has no alg")),
        }
        if let Some(required) = &inner.required_typ {
            match header.get("typ") {
                None => return Err(TokenError::MissingClaim("typ")),
                Some(Value::String(typ)) if same_typ(typ, required) => {}
                Some(_) => return Err(TokenError::InvalidClaim("typ")),
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(malformed("the kid header is not a string")),
        };

        let mut candidates =
            inner.verifiers.iter().filter(|v| kid.is_none() || v.kid.as_deref() == kid).peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        let mut payload = None;
        for verifier in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(
                token,
                &verifier.key,
                &inner.validation,
            ) {
                Ok(data) => {
                    payload = Some(data.claims);
                    break;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(map_jwt_error(e.kind())),
            }
        }
        let payload = payload.ok_or(TokenError::BadSignature)?;
        inner.checks.check(payload, now_unix_secs)
    }

    /// Mints a token for `claims`, signed with the first configured key that
    /// can sign. The header carries that key's `kid` when it has one, and the
    /// required `typ` when one is configured (else `JWT`).
    pub fn encode(&self, claims: &Claims) -> Result<String, EncodeError> {
        let inner = &*self.inner;
        let signer = inner.signer.as_ref().ok_or(EncodeError::NoSigningKey)?;
        let mut header = Header::new(inner.algorithm.to_jwt());
        header.kid.clone_from(&signer.kid);
        if let Some(typ) = &inner.required_typ {
            header.typ = Some(typ.clone());
        }
        let payload = claims.to_json()?;
        jsonwebtoken::encode(&header, &payload, &signer.key)
            .map_err(|e| EncodeError::Sign(e.to_string()))
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.algorithm
    }

    /// The configured leeway, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.inner.checks.leeway_secs
    }

    /// Whether verified `claims` have expired by `now_unix_secs`, with the
    /// same rule and leeway as [`TokenCodec::decode`]: for a session that
    /// outlives the check at its start. Claims without `exp` never expire.
    pub fn is_expired(&self, claims: &Claims, now_unix_secs: u64) -> bool {
        claims.exp.is_some_and(|exp| now_unix_secs >= exp.saturating_add(self.leeway_secs()))
    }

    /// Whether some configured key can sign, so that [`TokenCodec::encode`]
    /// can work.
    pub fn can_sign(&self) -> bool {
        self.inner.signer.is_some()
    }
}

impl fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("TokenCodec")
            .field("algorithm", &inner.algorithm)
            .field("verifying_kids", &inner.verifiers.iter().map(|v| &v.kid).collect::<Vec<_>>())
            .field("signing_kid", &inner.signer.as_ref().map(|s| &s.kid))
            .field("checks", &inner.checks)
            .field("required_typ", &inner.required_typ)
            .field("max_token_bytes", &inner.max_token_bytes)
            .finish()
    }
}

fn key_kid(key: &Key) -> Option<String> {
    key.kid.clone()
}

fn key_label(index: usize, key: &Key) -> String {
    match &key.kid {
        Some(kid) => format!("`{kid}`"),
        None => format!("#{}", index + 1),
    }
}

/// The verifying and signing halves of one configured key.
fn build_key(
    algorithm: Algorithm,
    key: &Key,
    label: &str,
) -> Result<(Option<DecodingKey>, Option<EncodingKey>), KeyError> {
    match &key.material {
        KeyMaterial::Secret(secret) => {
            let Some(min) = algorithm.min_secret_len() else {
                return Err(KeyError::WrongMaterialForAlgorithm { key: label.into(), algorithm });
            };
            if secret.len() < min {
                return Err(KeyError::SecretTooShort {
                    key: label.into(),
                    algorithm,
                    len: secret.len(),
                    min,
                });
            }
            if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
                return Err(KeyError::SecretLooksLikePem { key: label.into() });
            }
            let bad = |e: jsonwebtoken::errors::Error| KeyError::BadPem {
                key: label.into(),
                algorithm,
                reason: e.to_string(),
            };
            Ok((
                Some(DecodingKey::from_secret(secret).map_err(bad)?),
                Some(EncodingKey::from_secret(secret).map_err(bad)?),
            ))
        }
        KeyMaterial::Components(components) => {
            if components.algorithm() != algorithm {
                return Err(KeyError::WrongMaterialForAlgorithm { key: label.into(), algorithm });
            }
            let bad = |reason: String| KeyError::BadPem { key: label.into(), algorithm, reason };
            let key = match components {
                PublicComponents::Rsa { n, e } => {
                    check_rsa_size(n).map_err(bad)?;
                    if e.is_empty() || e.len() > 8 {
                        return Err(bad("the rsa exponent is not a usable number".into()));
                    }
                    DecodingKey::from_rsa_raw_components(n, e)
                }
                PublicComponents::EcP256 { x, y } => {
                    if x.len() != 32 || y.len() != 32 {
                        return Err(bad("the public key is not a P-256 key".into()));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(4);
                    point.extend_from_slice(x);
                    point.extend_from_slice(y);
                    DecodingKey::from_ec_der(&point)
                }
                PublicComponents::Ed25519 { x } => {
                    if x.len() != 32 {
                        return Err(bad("the public key is not an Ed25519 key".into()));
                    }
                    DecodingKey::from_ed_der(x)
                }
            };
            Ok((Some(key), None))
        }
        KeyMaterial::Pem { public, private } => {
            if algorithm.is_hmac() {
                return Err(KeyError::WrongMaterialForAlgorithm { key: label.into(), algorithm });
            }
            let bad = |reason: String| KeyError::BadPem { key: label.into(), algorithm, reason };
            let public = public
                .as_deref()
                .map(|pem| public_key(algorithm, pem).map_err(&bad))
                .transpose()?;
            let Some(private) = private else {
                return match public {
                    Some(public) => Ok((Some(public), None)),
                    None => Err(KeyError::EmptyPem { key: label.into() }),
                };
            };
            let private = private_key(algorithm, private).map_err(&bad)?;
            // Sign once now, so that a key that parses but cannot sign (an EC
            // key not in PKCS#8, say) fails at start rather than at first use.
            let probe = b"palisade-token key check";
            let signature = jsonwebtoken::crypto::sign(probe, &private, algorithm.to_jwt())
                .map_err(|e| bad(format!("the private key cannot sign: {e}")))?;
            let verifying = match public {
                Some(public) => public,
                None => derive_public(algorithm, &private).map_err(&bad)?,
            };
            let verifies =
                jsonwebtoken::crypto::verify(&signature, probe, &verifying, algorithm.to_jwt())
                    .unwrap_or(false);
            if !verifies {
                return Err(KeyError::MismatchedKeyPair { key: label.into() });
            }
            Ok((Some(verifying), Some(private)))
        }
    }
}

fn public_key(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let key = match algorithm {
        Algorithm::Rs256 => DecodingKey::from_rsa_pem(pem),
        Algorithm::Es256 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDsa => DecodingKey::from_ed_pem(pem),
        Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => {
            return Err("hmac takes no pem".into());
        }
    }
    .map_err(|e| format!("the public key does not parse: {e}"))?;
    let bytes = key.try_get_as_bytes().map_err(|e| e.to_string())?;
    match algorithm {
        Algorithm::Rs256 => {
            let (n, _e) = (DEFAULT_PROVIDER.key_utils.rsa_pub_components_from_public_key)(bytes)
                .map_err(|e| format!("the public key does not parse: {e}"))?;
            check_rsa_size(&n)?;
        }
        // An uncompressed P-256 point: 0x04, x, y.
        Algorithm::Es256 if bytes.len() != 65 || bytes[0] != 4 => {
            return Err("the public key is not a P-256 key".into());
        }
        Algorithm::EdDsa if bytes.len() != 32 => {
            return Err("the public key is not an Ed25519 key".into());
        }
        _ => {}
    }
    Ok(key)
}

fn private_key(algorithm: Algorithm, pem: &[u8]) -> Result<EncodingKey, String> {
    match algorithm {
        Algorithm::Rs256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::Es256 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDsa => EncodingKey::from_ed_pem(pem),
        Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => {
            return Err("hmac takes no pem".into());
        }
    }
    .map_err(|e| format!("the private key does not parse: {e}"))
}

/// The public key of a private key, for keys configured without one.
fn derive_public(algorithm: Algorithm, private: &EncodingKey) -> Result<DecodingKey, String> {
    let der = private.as_bytes();
    let utils = &DEFAULT_PROVIDER.key_utils;
    let cannot = |e: jsonwebtoken::errors::Error| {
        format!("no public key can be derived from the private key: {e}")
    };
    match algorithm {
        Algorithm::Rs256 => {
            let (n, e) = (utils.rsa_pub_components_from_private_key)(der).map_err(cannot)?;
            check_rsa_size(&n)?;
            Ok(DecodingKey::from_rsa_raw_components(&n, &e))
        }
        Algorithm::Es256 => {
            let (_curve, x, y) =
                (utils.ec_pub_components_from_private_key)(der, algorithm.to_jwt())
                    .map_err(cannot)?;
            // An uncompressed point, the form `DecodingKey::from_ec_pem` yields.
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(DecodingKey::from_ec_der(&point))
        }
        Algorithm::EdDsa => {
            let x = (utils.ed_pub_components_from_private_key)(der, &EllipticCurve::Ed25519)
                .map_err(cannot)?;
            Ok(DecodingKey::from_ed_der(&x))
        }
        Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => Err("hmac takes no pem".into()),
    }
}

/// RFC 7518 section 3.3: RSA keys of 2048 bits or more.
fn check_rsa_size(modulus: &[u8]) -> Result<(), String> {
    let bits = bit_len(modulus);
    if bits < 2048 {
        return Err(format!("the rsa key has {bits} bits, at least 2048 are needed"));
    }
    Ok(())
}

/// The length in bits of a big-endian unsigned number.
pub(crate) fn bit_len(number: &[u8]) -> usize {
    let leading_zeros = number.iter().take_while(|b| **b == 0).count();
    let significant = &number[leading_zeros..];
    match significant.first() {
        None => 0,
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
    }
}

/// Header parameters that carry or point at a key (RFC 7515 section 4.1):
/// a verifier that takes its keys from configuration must never use them.
pub const FORBIDDEN_HEADERS: [&str; 4] = ["jku", "x5u", "jwk", "x5c"];

/// What a token says about itself before any signature is checked: enough to
/// route it to the right issuer's keys, and nothing to trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unverified {
    /// The `alg` header, cut to 32 printable ASCII characters.
    pub alg: String,
    /// The `kid` header.
    pub kid: Option<String>,
    /// The `iss` claim of the (unverified) payload, when it is a string.
    pub iss: Option<String>,
    /// The first of [`FORBIDDEN_HEADERS`] the header carries, if any.
    pub forbidden_header: Option<&'static str>,
}

/// Reads the header and the `iss` claim of `token` without verifying it, for
/// routing only: the caller must still verify the token with
/// [`TokenCodec::decode`] before trusting any of it. Tokens longer than
/// `max_token_bytes` are rejected unread.
pub fn inspect(token: &str, max_token_bytes: usize) -> Result<Unverified, TokenError> {
    if token.len() > max_token_bytes {
        return Err(TokenError::TooLong { len: token.len(), max: max_token_bytes });
    }
    let header = parse_header(token)?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => sanitize(alg),
        Some(_) => return Err(malformed("the alg header is not a string")),
        None => return Err(malformed("the header has no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("the kid header is not a string")),
    };
    let forbidden_header = FORBIDDEN_HEADERS.into_iter().find(|h| header.contains_key(*h));
    // parse_header checked that there are three parts.
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes =
        URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed("the payload is not base64url"))?;
    let iss = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut map)) => match map.remove("iss") {
            Some(Value::String(iss)) => Some(iss),
            _ => None,
        },
        Ok(_) => return Err(malformed("the payload is not a json object")),
        Err(_) => return Err(malformed("the payload is not json")),
    };
    Ok(Unverified { alg, kid, iss, forbidden_header })
}

/// Parses the protected header of a compact JWS: three base64url segments,
/// the first a JSON object. No key is consulted.
fn parse_header(token: &str) -> Result<Map<String, Value>, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a token has three dot-separated parts"));
    };
    let bytes =
        URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed("the header is not base64url"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed("the header is not a json object")),
        Err(_) => Err(malformed("the header is not json")),
    }
}

fn malformed(what: &str) -> TokenError {
    TokenError::Malformed(what.to_owned())
}

/// An attacker-chosen `alg` value made safe for a log line.
fn sanitize(alg: &str) -> String {
    alg.chars().take(32).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// RFC 7515 section 4.1.9: `typ` compares without case, and `application/`
/// may be left out.
fn same_typ(found: &str, required: &str) -> bool {
    fn strip(typ: &str) -> &str {
        match typ.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        }
    }
    strip(found).eq_ignore_ascii_case(strip(required))
}

fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::AlgorithmNotAllowed { found: "unknown".into() }
        }
        ErrorKind::Base64(_) => malformed("a part is not base64url"),
        ErrorKind::Json(_) => malformed("the header or payload is not the expected json"),
        ErrorKind::Utf8(_) => malformed("a part is not utf-8"),
        ErrorKind::InvalidToken => malformed("unsupported header parameters (crit or b64)"),
        _ => malformed("the token could not be decoded"),
    }
}
