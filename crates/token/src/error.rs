//! The error types: building a codec, decoding a token, encoding claims.

use crate::Algorithm;

/// Why a token was rejected by [`crate::TokenCodec::decode`].
///
/// The messages never contain the token, a key or a claim value.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum TokenError {
    /// The token is longer than the configured cap; nothing was decoded.
    #[error("token is {len} bytes, above the limit of {max} bytes")]
    TooLong {
        /// The token's length in bytes.
        len: usize,
        /// The configured cap.
        max: usize,
    },
    /// The token is not a well-formed compact JWS with a JSON object header
    /// and payload.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `alg` header names an algorithm other than the configured one
    /// (`none` included).
    #[error("token algorithm `{found}` is not the configured one")]
    AlgorithmNotAllowed {
        /// The `alg` header, cut to 32 printable ASCII characters.
        found: String,
    },
    /// The `kid` header names no configured key, or no configured key can verify.
    #[error("token names no configured key")]
    UnknownKey,
    /// The signature does not verify with any candidate key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The `exp` claim is past, beyond the leeway.
    #[error("token has expired")]
    Expired,
    /// The `nbf` claim is in the future, beyond the leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A required claim (or the required `typ` header) is absent. For the
    /// user id the name is `user_id` (either `user_id` or `sub` is needed).
    #[error("token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim (or the `typ` header) has the wrong type or value: `iss` or
    /// `aud` not the configured one, `iat` in the future, `user_id` and `sub`
    /// different, an invalid `email`.
    #[error("token has an invalid `{0}` claim")]
    InvalidClaim(&'static str),
}

impl TokenError {
    /// Whether the token was rejected only because it has expired (the
    /// server answers `Token Expired` rather than `Invalid Token`).
    pub fn is_expired(&self) -> bool {
        matches!(self, TokenError::Expired)
    }

    /// A short, stable snake_case name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::TooLong { .. } => "too_long",
            TokenError::Malformed(_) => "malformed",
            TokenError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim(_) => "invalid_claim",
        }
    }
}

/// Why [`crate::TokenCodec::new`] refused a configuration.
///
/// `key` fields name a key by its `kid`, or by its position (`#1` is the
/// first) when it has none.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum KeyError {
    /// The configuration has no keys.
    #[error("no jwt keys configured")]
    NoKeys,
    /// An HMAC secret is shorter than the hash output of its algorithm.
    #[error(
        "jwt secret {key} is {len} bytes but {algorithm} needs at least {min}: \
         generate one with `openssl rand -base64 48` (`cargo xtask run` generates a dev secret)"
    )]
    SecretTooShort {
        /// Which key.
        key: String,
        /// The configured algorithm.
        algorithm: Algorithm,
        /// The secret's length in bytes.
        len: usize,
        /// The minimum for the algorithm (32, 48 or 64).
        min: usize,
    },
    /// An HMAC secret is a PEM key: the RS256-key-as-HMAC-secret confusion.
    #[error(
        "jwt secret {key} is a pem key: pin RS256, ES256 or EdDSA to use it, \
         or configure a random secret for HMAC"
    )]
    SecretLooksLikePem {
        /// Which key.
        key: String,
    },
    /// A secret for a public-key algorithm, or PEM keys for an HMAC one.
    #[error(
        "jwt key {key} does not fit {algorithm}: HS256, HS384 and HS512 take a secret, \
         RS256, ES256 and EdDSA take pem keys"
    )]
    WrongMaterialForAlgorithm {
        /// Which key.
        key: String,
        /// The configured algorithm.
        algorithm: Algorithm,
    },
    /// PEM key material with neither a public nor a private key.
    #[error("jwt key {key} has neither a public nor a private pem")]
    EmptyPem {
        /// Which key.
        key: String,
    },
    /// A PEM key that does not parse, is of the wrong type or is too weak.
    #[error("jwt key {key} is not a usable {algorithm} pem key: {reason}")]
    BadPem {
        /// Which key.
        key: String,
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What is wrong, without key bytes.
        reason: String,
    },
    /// The public and private PEM of one key do not belong together.
    #[error("the public and private pem of jwt key {key} do not belong together")]
    MismatchedKeyPair {
        /// Which key.
        key: String,
    },
    /// Two keys share a `kid`.
    #[error("two jwt keys share the kid `{0}`")]
    DuplicateKid(String),
    /// The leeway is above [`crate::MAX_LEEWAY_SECS`].
    #[error("jwt leeway of {secs} s is above the maximum of {max} s")]
    LeewayTooLarge {
        /// The configured leeway.
        secs: u64,
        /// The maximum.
        max: u64,
    },
}

/// Why [`crate::TokenCodec::encode`] could not mint a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EncodeError {
    /// No configured key can sign (public PEM keys only verify).
    #[error("no configured jwt key can sign: a secret or a private pem is needed")]
    NoSigningKey,
    /// The user id is empty.
    #[error("the user id is empty")]
    EmptyUserId,
    /// [`crate::Claims::extra`] holds a name that has its own field.
    #[error("extra claim `{0}` is reserved: set the field of the same name instead")]
    ReservedClaim(String),
    /// The signature could not be computed.
    #[error("signing the token failed: {0}")]
    Sign(String),
}
