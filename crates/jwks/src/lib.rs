//! Token verification against identity providers' published keys (JWKS), for several issuers.
//!
//! A [`Verifier`] holds one key cache per configured issuer ([`IssuerConfig`]) and, optionally,
//! a static [`TokenCodec`] for every other token. [`Verifier::verify`] routes a token by its
//! (unverified) `iss` claim: a token of a configured issuer is verified only with that issuer's
//! keys, its audience and its pinned asymmetric algorithms; any other token goes to the static
//! codec, or is refused as [`VerifyError::UnknownIssuer`].
//!
//! What it defends against (docs/identity-providers.md has the whole list):
//! - algorithm confusion: the algorithm is pinned per issuer and asymmetric only; a JWKS key
//!   verifies only the algorithm its `kty` (and `alg`, when given) names; `oct` keys and
//!   `use: enc` keys are never used, RSA keys under 2048 bits are ignored;
//! - cross-issuer keys: the cache is keyed by (issuer, kid), so issuer B's `kid` never verifies
//!   a token of issuer A;
//! - URLs from tokens: `jku`, `x5u`, `x5c` and `jwk` headers are refused
//!   ([`VerifyError::ForbiddenHeader`]) and nothing is fetched because of a token except the
//!   configured URL;
//! - refetch floods: an unknown `kid` triggers at most one fetch per `min_refetch_secs` per
//!   issuer, and at most one fetch is in flight per issuer, shared by every waiting handshake;
//! - hostile or broken providers: 5 s per fetch, 1 MiB per document, redirects not followed;
//!   a failed fetch keeps the previous keys for up to `max_stale_secs`.
//!
//! ```no_run
//! use palisade_jwks::{ClaimRules, IssuerConfig, KeySource, Verifier};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "https://idp.example.com/realms/main/protocol/openid-connect/certs".parse()?;
//! let issuer = IssuerConfig::new(
//!     "https://idp.example.com/realms/main",
//!     KeySource::Jwks(url),
//!     "palisade",
//! );
//! // Fetches every issuer's keys once (at most 5 s), then refreshes them in the background.
//! let verifier = Verifier::start(vec![issuer], ClaimRules::default(), None).await?;
//! # let token = "";
//! let now = 1_700_000_000;
//! match verifier.verify(token, now).await {
//!     Ok(claims) => println!("hello {}", claims.user_id),
//!     Err(e) => println!("refused: {} ({})", e, e.kind()),
//! }
//! # Ok(())
//! # }
//! ```

mod fetch;
mod issuer;
mod jwk;
mod metrics;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::HashMap;
use std::sync::Arc;

use palisade_token::{Algorithm, Claims, TokenCodec, TokenError};
use url::Url;

pub use fetch::{FETCH_TIMEOUT, FetchError, MAX_BODY_BYTES};
pub use issuer::{IssuerStatus, LastFetch};
pub use jwk::{JwksError, KeySet, MAX_KEYS, SkippedKey, VerifyingKey, parse_jwks};

use crate::issuer::{Issuer, Step};

/// The algorithms an issuer accepts when none are configured.
pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa];

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The JWKS document's URL.
    Jwks(Url),
    /// An OpenID Connect discovery document; its `jwks_uri` is read once, and its `issuer` must
    /// equal the configured one.
    Discovery(Url),
}

impl KeySource {
    /// The configured URL.
    pub fn url(&self) -> &Url {
        match self {
            KeySource::Jwks(url) | KeySource::Discovery(url) => url,
        }
    }
}

/// One trusted issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The exact `iss` this entry serves.
    pub issuer: String,
    /// Where its keys come from.
    pub source: KeySource,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// The algorithms accepted, asymmetric only (default RS256, ES256, EdDSA).
    pub algorithms: Vec<Algorithm>,
    /// Refresh period in seconds (default 300); a shorter `Cache-Control: max-age` wins, but
    /// never below `min_refetch_secs`.
    pub cache_secs: u64,
    /// At most one fetch per this many seconds for unknown `kid`s and forced refreshes
    /// (default 30).
    pub min_refetch_secs: u64,
    /// While fetches fail, keys fetched earlier keep verifying this long (default 86400).
    pub max_stale_secs: u64,
}

impl IssuerConfig {
    /// An issuer with the default algorithms and periods.
    pub fn new(issuer: impl Into<String>, source: KeySource, audience: impl Into<String>) -> Self {
        IssuerConfig {
            issuer: issuer.into(),
            source,
            audience: audience.into(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            cache_secs: 300,
            min_refetch_secs: 30,
            max_stale_secs: 86_400,
        }
    }

    /// Checks the entry; the message names the field (without a prefix) and what is expected.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() {
            return Err("issuer must not be empty".into());
        }
        if self.audience.is_empty() {
            return Err("audience must not be empty".into());
        }
        let url = self.source.url();
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("{url} is not an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("the URL must not carry credentials".into());
        }
        if self.algorithms.is_empty() {
            return Err("algorithms must not be empty (default: RS256, ES256, EdDSA)".into());
        }
        if let Some(alg) = self.algorithms.iter().find(|a| a.is_hmac()) {
            return Err(format!(
                "algorithms: {alg} is a shared-secret algorithm; a JWKS issuer takes RS256, \
                 ES256 or EdDSA only"
            ));
        }
        if self.min_refetch_secs == 0 {
            return Err("min_refetch_secs must be at least 1".into());
        }
        if self.cache_secs < self.min_refetch_secs {
            return Err(format!(
                "cache_secs ({}) must not be below min_refetch_secs ({})",
                self.cache_secs, self.min_refetch_secs
            ));
        }
        if self.max_stale_secs < self.cache_secs {
            return Err(format!(
                "max_stale_secs ({}) must not be below cache_secs ({})",
                self.max_stale_secs, self.cache_secs
            ));
        }
        Ok(())
    }

    /// Whether the configured URL is `http://` to a host that is not loopback.
    pub fn is_plain_http_remote(&self) -> bool {
        let url = self.source.url();
        url.scheme() == "http"
            && match url.host() {
                Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
                Some(url::Host::Domain(d)) => !d.eq_ignore_ascii_case("localhost"),
                None => true,
            }
    }
}

/// The claim checks shared by every issuer (and the static key): from `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRules {
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (default 30 s).
    pub leeway_secs: u64,
    /// Required `typ` header, when set.
    pub required_typ: Option<String>,
    /// Longest token accepted, in bytes (default 8 KiB).
    pub max_token_bytes: usize,
}

impl Default for ClaimRules {
    fn default() -> ClaimRules {
        ClaimRules {
            require_exp: true,
            leeway_secs: palisade_token::DEFAULT_LEEWAY_SECS,
            required_typ: None,
            max_token_bytes: palisade_token::DEFAULT_MAX_TOKEN_BYTES,
        }
    }
}

/// Why [`Verifier::verify`] refused a token. Messages never contain the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The token failed a check of its issuer's keys (or the static key).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Its `iss` is no configured issuer, and no static key is configured.
    #[error("token issuer is not a configured issuer")]
    UnknownIssuer,
    /// The header carries a key or a key URL (`jku`, `x5u`, `x5c`, `jwk`).
    #[error("token carries a forbidden `{0}` header")]
    ForbiddenHeader(&'static str),
    /// The issuer's keys have not been fetched yet, or are older than `max_stale_secs`.
    #[error("the issuer's keys are not available (fetch failing)")]
    KeysUnavailable,
}

impl VerifyError {
    /// Whether the token was refused only because it has expired.
    pub fn is_expired(&self) -> bool {
        matches!(self, VerifyError::Token(e) if e.is_expired())
    }

    /// A short, stable snake_case name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Token(e) => e.kind(),
            VerifyError::UnknownIssuer => "unknown_issuer",
            VerifyError::ForbiddenHeader(_) => "forbidden_header",
            VerifyError::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Why [`Verifier::start`] refused the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// An entry does not validate.
    #[error("issuer {issuer:?}: {reason}")]
    Invalid {
        /// The entry's issuer.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
    /// Two entries serve the same issuer.
    #[error("issuer {0:?} is configured twice")]
    Duplicate(String),
    /// A discovery document names another issuer.
    #[error("issuer {issuer:?}: {reason}")]
    Discovery {
        /// The entry's issuer.
        issuer: String,
        /// The mismatch.
        reason: String,
    },
}

/// Verifies tokens for every configured issuer, and with the static codec for the rest.
/// Cheap to clone; background refresh tasks end when the last clone is dropped.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, usize>,
    fallback: Option<TokenCodec>,
    rules: ClaimRules,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Verifier {
    /// Checks the entries, fetches every issuer's keys once (concurrently, each within
    /// [`FETCH_TIMEOUT`] — a provider that is down does not stop the start, its tokens are
    /// refused with [`VerifyError::KeysUnavailable`] until a fetch succeeds) and starts the
    /// background refresh. Fails on a discovery document that names another issuer.
    pub async fn start(
        issuers: Vec<IssuerConfig>,
        rules: ClaimRules,
        fallback: Option<TokenCodec>,
    ) -> Result<Verifier, StartError> {
        let mut by_iss = HashMap::new();
        for (i, config) in issuers.iter().enumerate() {
            config
                .validate()
                .map_err(|reason| StartError::Invalid { issuer: config.issuer.clone(), reason })?;
            if by_iss.insert(config.issuer.clone(), i).is_some() {
                return Err(StartError::Duplicate(config.issuer.clone()));
            }
        }
        let issuers: Vec<Arc<Issuer>> =
            issuers.into_iter().map(|c| Issuer::new(c, rules.clone())).collect();
        let first: Vec<_> = issuers.iter().filter_map(|i| i.refresh(true)).collect();
        for mut rx in first {
            // The fetch task always reports; the sender lives in the issuer held here.
            let _ = rx.changed().await;
        }
        for issuer in &issuers {
            if let Some(e) = issuer.startup_error() {
                return Err(StartError::Discovery {
                    issuer: issuer.config.issuer.clone(),
                    reason: e.to_string(),
                });
            }
        }
        let tasks = issuers
            .iter()
            .map(|i| tokio::spawn(issuer::refresher(Arc::downgrade(i))).abort_handle())
            .collect();
        Ok(Verifier { inner: Arc::new(Inner { issuers, by_iss, fallback, rules, tasks }) })
    }

    /// Verifies `token` at `now_unix_secs`, waiting for at most one fetch of its issuer's keys
    /// (an unknown `kid` within the rate limit, or keys not fetched yet).
    pub async fn verify(&self, token: &str, now_unix_secs: u64) -> Result<Claims, VerifyError> {
        match self.step(token, now_unix_secs, true)? {
            Routed::Done(result) => result,
            Routed::Wait(mut rx) => {
                let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, rx.changed()).await;
                match self.step(token, now_unix_secs, false)? {
                    Routed::Done(result) => result,
                    Routed::Wait(_) => Err(VerifyError::KeysUnavailable),
                }
            }
        }
    }

    /// Like [`Verifier::verify`], but never waits: where a fetch is needed it is started (within
    /// the same limits) and the token is refused. For paths that cannot wait, such as a
    /// synchronous handshake hook.
    pub fn verify_now(&self, token: &str, now_unix_secs: u64) -> Result<Claims, VerifyError> {
        match self.step(token, now_unix_secs, true)? {
            Routed::Done(result) => result,
            Routed::Wait(_) => match self.step(token, now_unix_secs, false)? {
                Routed::Done(result) => result,
                Routed::Wait(_) => Err(VerifyError::KeysUnavailable),
            },
        }
    }

    fn step(&self, token: &str, now: u64, may_fetch: bool) -> Result<Routed, VerifyError> {
        let inner = &*self.inner;
        let unverified = palisade_token::inspect(token, inner.rules.max_token_bytes)?;
        if let Some(header) = unverified.forbidden_header {
            return Err(VerifyError::ForbiddenHeader(header));
        }
        let issuer = unverified.iss.as_deref().and_then(|iss| inner.by_iss.get(iss));
        let Some(&index) = issuer else {
            return match &inner.fallback {
                Some(codec) => {
                    Ok(Routed::Done(codec.decode(token, now).map_err(VerifyError::from)))
                }
                None => Err(VerifyError::UnknownIssuer),
            };
        };
        Ok(match inner.issuers[index].step(token, &unverified, now, may_fetch) {
            Step::Done(result) => Routed::Done(result),
            Step::Wait(rx) => Routed::Wait(rx),
        })
    }

    /// The leeway of the claim checks, in seconds (sessions end this long after `exp`).
    pub fn leeway_secs(&self) -> u64 {
        self.inner.rules.leeway_secs
    }

    /// Whether a static codec verifies tokens of other issuers.
    pub fn has_fallback(&self) -> bool {
        self.inner.fallback.is_some()
    }

    /// Every issuer's state, in configuration order.
    pub fn status(&self) -> Vec<IssuerStatus> {
        self.inner.issuers.iter().map(|i| i.status()).collect()
    }

    /// Refetches every issuer's keys now, unless one was fetched within `min_refetch_secs`
    /// (a fetch already running is waited for instead), and returns the states afterwards.
    pub async fn refresh(&self) -> Vec<IssuerStatus> {
        let waits: Vec<_> = self.inner.issuers.iter().filter_map(|i| i.refresh(true)).collect();
        for mut rx in waits {
            let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, rx.changed()).await;
        }
        self.status()
    }

    /// The issuers' metrics as OpenMetrics text ending in `# EOF` (empty without issuers):
    /// `palisade_jwks_fetches_total{issuer,outcome}`, `palisade_jwks_keys{issuer}` and
    /// `palisade_jwks_seconds_since_last_good_fetch{issuer}`.
    pub fn encode_metrics(&self) -> String {
        let samples: Vec<_> = self
            .inner
            .issuers
            .iter()
            .map(|i| {
                let (fetches, keys, age) = i.sample();
                (i.config.issuer.as_str(), fetches, keys, age)
            })
            .collect();
        metrics::encode(&samples)
    }
}

enum Routed {
    Done(Result<Claims, VerifyError>),
    Wait(tokio::sync::watch::Receiver<u64>),
}

#[cfg(test)]
mod tests;
