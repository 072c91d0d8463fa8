//! JWT verification and minting for Palisade, with strict validation.
//!
//! A [`TokenCodec`] is built once from a [`TokenConfig`]: one pinned
//! [`Algorithm`] (HS256, HS384, HS512 with a shared secret; RS256, ES256,
//! EdDSA with PEM keys) and one or more [`Key`]s. [`TokenCodec::decode`]
//! verifies a compact JWS at a given time and returns its [`Claims`] or a
//! [`TokenError`]; [`TokenCodec::encode`] mints one. Tokens minted the way the
//! original Python guide does it (PyJWT, HS256, an integer `user_id` and an
//! `exp`) verify.
//!
//! RFC 8725 is the verifier's checklist:
//! - the algorithm comes from the configuration, never from the token: a
//!   token whose `alg` header names any other algorithm, `none` included, is
//!   rejected, and so is an HMAC token signed with an RSA public key;
//! - keys come only from the configuration: `jku`, `x5u`, `jwk` and `x5c`
//!   headers are ignored and never fetched, and a `kid` header only selects
//!   among the configured keys' ids;
//! - HMAC secrets shorter than the hash (32 bytes for HS256) and RSA keys
//!   under 2048 bits are refused when the codec is built;
//! - `exp` is required (unless turned off), `nbf` and `iat` are checked with
//!   a bounded leeway, `iss`, `aud` and the `typ` header when configured;
//! - tokens longer than a cap (8 KiB by default) are rejected unread.
//!
//! Key choice: a token with a `kid` is verified only with the key of that id
//! ([`TokenError::UnknownKey`] when there is none); a token without a `kid` is
//! tried against every configured key in order, so tokens minted before a key
//! rotation keep working while both keys are configured.
//!
//! Keys may also arrive as raw public components ([`PublicComponents`], what
//! a JWK carries), and [`inspect`] reads a token's header and `iss` without
//! verifying it, so that a caller holding several issuers' keys (the
//! `palisade-jwks` crate) can route a token to the right ones.
//!
//! This crate does no I/O and reads no clock: keys arrive as bytes and the
//! time is a parameter. It does not fetch JWKS, does not do JWE (encrypted
//! tokens), and keeps no revocation list (that is the server's job).
//!
//! ```
//! use palisade_token::{Algorithm, Claims, Key, TokenCodec, TokenConfig};
//!
//! // In production the secret comes from configuration (`openssl rand -base64 48`).
//! let secret = "an example secret that is at least 32 bytes long";
//! let config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(secret)]);
//! let codec = TokenCodec::new(config)?;
//!
//! let now = 1_700_000_000;
//! let mut claims = Claims::new("42");
//! claims.exp = Some(now + 3600);
//! let token = codec.encode(&claims)?;
//!
//! let verified = codec.decode(&token, now)?;
//! assert_eq!(verified.user_id, "42");
//! assert_eq!(verified, claims);
//!
//! // An hour and a half later it has expired.
//! let err = codec.decode(&token, now + 5400).unwrap_err();
//! assert!(err.is_expired());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod algorithm;
mod claims;
mod codec;
mod config;
mod error;

pub use algorithm::{Algorithm, UnknownAlgorithm};
pub use claims::Claims;
pub use codec::{FORBIDDEN_HEADERS, TokenCodec, Unverified, inspect};
pub use config::{
    DEFAULT_LEEWAY_SECS, DEFAULT_MAX_TOKEN_BYTES, Key, KeyMaterial, MAX_LEEWAY_SECS,
    PublicComponents, TokenConfig,
};
pub use error::{EncodeError, KeyError, TokenError};

#[cfg(test)]
mod tests;
