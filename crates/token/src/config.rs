//! What a codec is built from: the pinned algorithm, the keys and the checks.

use std::fmt;

use crate::Algorithm;

/// The leeway [`TokenConfig::new`] sets, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The largest leeway [`crate::TokenCodec::new`] accepts, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// The token length cap [`TokenConfig::new`] sets, in bytes (8 KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;

/// The configuration of a [`crate::TokenCodec`]. Build it with
/// [`TokenConfig::new`], which sets the secure defaults, then adjust the
/// public fields.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    /// The only algorithm accepted; the token's `alg` header must name it.
    pub algorithm: Algorithm,
    /// The keys, at least one. Tokens with a `kid` header are verified only
    /// with the key of that `kid`; tokens without one are tried against every
    /// key in order (key rotation). [`crate::TokenCodec::encode`] signs with
    /// the first key that can sign.
    pub keys: Vec<Key>,
    /// Reject tokens without an `exp` claim (default `true`).
    pub require_exp: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (default 30,
    /// at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// When set, the `iss` claim is required and must equal it.
    pub issuer: Option<String>,
    /// When set, the `aud` claim is required and must be (or contain) it.
    /// When unset, a token that carries an `aud` claim is rejected, as
    /// RFC 7519 section 4.1.3 requires.
    pub audience: Option<String>,
    /// When set, the `typ` header is required and must equal it (compared
    /// without case and with an optional `application/` prefix, as RFC 7515
    /// says), for example `at+jwt`. Encoding writes it as the `typ` header.
    pub required_typ: Option<String>,
    /// Tokens longer than this many bytes are rejected before any decoding
    /// (default 8 KiB).
    pub max_token_bytes: usize,
}

impl TokenConfig {
    /// A configuration with the secure defaults: `exp` required, 30 s of
    /// leeway, an 8 KiB length cap, and no issuer, audience or `typ` checks.
    pub fn new(algorithm: Algorithm, keys: Vec<Key>) -> TokenConfig {
        TokenConfig {
            algorithm,
            keys,
            require_exp: true,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            issuer: None,
            audience: None,
            required_typ: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// One key, with an optional key id (`kid`) for rotation.
#[derive(Clone, Debug)]
pub struct Key {
    /// The key id. A token's `kid` header selects a key only among the
    /// configured keys' ids; it is never used as a path, a URL or a query.
    pub kid: Option<String>,
    /// The key itself.
    pub material: KeyMaterial,
}

impl Key {
    /// A shared HMAC secret without a key id.
    pub fn secret(secret: impl Into<Vec<u8>>) -> Key {
        Key { kid: None, material: KeyMaterial::Secret(secret.into()) }
    }

    /// A PEM public key (verify only) without a key id.
    pub fn public_pem(pem: impl Into<Vec<u8>>) -> Key {
        Key { kid: None, material: KeyMaterial::Pem { public: Some(pem.into()), private: None } }
    }

    /// A PEM private key without a key id: it signs, and verifies with the
    /// public key derived from it.
    pub fn private_pem(pem: impl Into<Vec<u8>>) -> Key {
        Key { kid: None, material: KeyMaterial::Pem { public: None, private: Some(pem.into()) } }
    }

    /// A PEM key pair without a key id; [`crate::TokenCodec::new`] checks that
    /// the two halves belong together.
    pub fn pem_pair(public: impl Into<Vec<u8>>, private: impl Into<Vec<u8>>) -> Key {
        Key {
            kid: None,
            material: KeyMaterial::Pem {
                public: Some(public.into()),
                private: Some(private.into()),
            },
        }
    }

    /// A public key given by its raw components (as a JWKS document carries
    /// them), without a key id: it only verifies.
    pub fn public_components(components: PublicComponents) -> Key {
        Key { kid: None, material: KeyMaterial::Components(components) }
    }

    /// The same key with the key id `kid`.
    pub fn with_kid(self, kid: impl Into<String>) -> Key {
        Key { kid: Some(kid.into()), ..self }
    }
}

/// The bytes of a key. `Debug` never prints them.
#[derive(Clone)]
pub enum KeyMaterial {
    /// A shared HMAC secret, for HS256, HS384 and HS512.
    Secret(Vec<u8>),
    /// PEM keys, for RS256 (RSA, PKCS#1 or PKCS#8), ES256 (P-256, PKCS#8
    /// private key) and EdDSA (Ed25519). The public key verifies; the private
    /// key signs (and verifies when no public key is given).
    Pem {
        /// The public key (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`).
        public: Option<Vec<u8>>,
        /// The private key (`BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`).
        private: Option<Vec<u8>>,
    },
    /// A public key by its raw components (verify only), for keys that
    /// arrive as a JWK rather than a PEM file.
    Components(PublicComponents),
}

/// The raw components of a public key, as RFC 7518 section 6 writes them in a
/// JWK (already decoded from base64url).
#[derive(Clone, PartialEq, Eq)]
pub enum PublicComponents {
    /// An RSA key (`kty: RSA`), for RS256: modulus `n` and exponent `e`,
    /// big-endian. Keys under 2048 bits are refused.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// A P-256 key (`kty: EC`, `crv: P-256`), for ES256: the point's
    /// coordinates, 32 bytes each.
    EcP256 {
        /// The x coordinate.
        x: Vec<u8>,
        /// The y coordinate.
        y: Vec<u8>,
    },
    /// An Ed25519 key (`kty: OKP`, `crv: Ed25519`), for EdDSA: 32 bytes.
    Ed25519 {
        /// The public key.
        x: Vec<u8>,
    },
}

impl PublicComponents {
    /// The one algorithm these components can verify.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicComponents::Rsa { .. } => Algorithm::Rs256,
            PublicComponents::EcP256 { .. } => Algorithm::Es256,
            PublicComponents::Ed25519 { .. } => Algorithm::EdDsa,
        }
    }

    /// The size of an RSA modulus in bits (leading zero bytes and bits not
    /// counted); `None` for other keys.
    pub fn rsa_bits(&self) -> Option<usize> {
        match self {
            PublicComponents::Rsa { n, .. } => Some(crate::codec::bit_len(n)),
            _ => None,
        }
    }
}

impl fmt::Debug for PublicComponents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, bytes): (&str, &[u8]) = match self {
            PublicComponents::Rsa { n, .. } => ("Rsa", n),
            PublicComponents::EcP256 { x, .. } => ("EcP256", x),
            PublicComponents::Ed25519 { x } => ("Ed25519", x),
        };
        f.debug_struct(kind)
            .field("fingerprint", &palisade_digest::Fingerprint::of(bytes).to_string())
            .finish()
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets show only their length; PEM keys only a short fingerprint,
        // enough to tell two keys apart in a log without revealing them.
        match self {
            KeyMaterial::Secret(secret) => {
                f.debug_struct("Secret").field("len", &secret.len()).finish_non_exhaustive()
            }
            KeyMaterial::Pem { public, private } => f
                .debug_struct("Pem")
                .field(
                    "public",
                    &public.as_ref().map(|p| palisade_digest::Fingerprint::of(p).to_string()),
                )
                .field("private", &private.as_ref().map(|_| "[redacted]"))
                .finish(),
            KeyMaterial::Components(components) => components.fmt(f),
        }
    }
}
