//! The signature algorithms a codec can be pinned to.

use std::fmt;
use std::str::FromStr;

/// A JWS signature algorithm. A [`crate::TokenCodec`] accepts exactly one.
///
/// `none` is deliberately not representable. [`FromStr`] accepts the JOSE
/// names (`HS256`, `HS384`, `HS512`, `RS256`, `ES256`, `EdDSA`) in any case;
/// [`fmt::Display`] writes them as JOSE spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256 and a shared secret of at least 32 bytes.
    Hs256,
    /// HMAC with SHA-384 and a shared secret of at least 48 bytes.
    Hs384,
    /// HMAC with SHA-512 and a shared secret of at least 64 bytes.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256; RSA keys of at least 2048 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// EdDSA on Ed25519.
    EdDsa,
}

impl Algorithm {
    /// Every supported algorithm, in the order of the enum.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Hs256,
        Algorithm::Hs384,
        Algorithm::Hs512,
        Algorithm::Rs256,
        Algorithm::Es256,
        Algorithm::EdDsa,
    ];

    /// The JOSE name, as it appears in a token's `alg` header.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    /// Whether this is an HMAC algorithm (shared secret) rather than a
    /// public-key one (PEM keys).
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512)
    }

    /// The shortest secret accepted for an HMAC algorithm: the size of the
    /// hash output, as RFC 7518 section 3.2 requires. `None` for public-key
    /// algorithms.
    pub fn min_secret_len(self) -> Option<usize> {
        match self {
            Algorithm::Hs256 => Some(32),
            Algorithm::Hs384 => Some(48),
            Algorithm::Hs512 => Some(64),
            Algorithm::Rs256 | Algorithm::Es256 | Algorithm::EdDsa => None,
        }
    }

    pub(crate) fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::Hs256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::Hs384 => jsonwebtoken::Algorithm::HS384,
            Algorithm::Hs512 => jsonwebtoken::Algorithm::HS512,
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Algorithm, UnknownAlgorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Algorithm, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The error of [`Algorithm::from_str`]: the name is not a supported algorithm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown jwt algorithm `{0}`, expected one of HS256, HS384, HS512, RS256, ES256, EdDSA")]
pub struct UnknownAlgorithm(String);
