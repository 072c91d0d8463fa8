//! `[[auth.issuers]]`: tokens from identity providers' JWKS key sets (docs/identity-providers.md).
//!
//! The configuration entries, their validation, building the [`Verifier`] every token path uses
//! (the JWKS issuers plus the static `[auth]` key), `palisade check`'s issuer report and the
//! admin routes `GET /issuers` and `POST /issuers/refresh`.

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use palisade_jwks::{ClaimRules, IssuerConfig, KeySource, Verifier};
use palisade_token::Algorithm;
use serde::Deserialize;

use crate::admin::AdminState;
use crate::config::{AuthConfig, Config};

/// One `[[auth.issuers]]` entry. The key names are pinned (docs/configuration.md).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IssuerEntry {
    /// The exact `iss` this entry serves.
    pub issuer: String,
    /// The JWKS document's URL (or set `discovery_url`).
    pub jwks_url: Option<String>,
    /// An OpenID Connect discovery document; `jwks_uri` is read from it and its `issuer` must
    /// equal `issuer`.
    pub discovery_url: Option<String>,
    /// The `aud` this issuer's tokens must carry (required).
    pub audience: String,
    /// Asymmetric algorithms accepted (default RS256, ES256, EdDSA).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Refresh period in seconds.
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
    /// An unknown `kid` (or `POST /issuers/refresh`) fetches at most once per this interval.
    #[serde(default = "default_min_refetch_secs")]
    pub min_refetch_secs: u64,
    /// While the provider is down, keys fetched earlier keep verifying this long.
    #[serde(default = "default_max_stale_secs")]
    pub max_stale_secs: u64,
}

fn default_algorithms() -> Vec<String> {
    palisade_jwks::DEFAULT_ALGORITHMS.iter().map(|a| a.name().to_owned()).collect()
}
fn default_cache_secs() -> u64 {
    300
}
fn default_min_refetch_secs() -> u64 {
    30
}
fn default_max_stale_secs() -> u64 {
    86_400
}

impl IssuerEntry {
    /// The jwks crate's form of this entry; errors name the key.
    fn to_config(&self, index: usize) -> anyhow::Result<IssuerConfig> {
        let key = |field: &str| format!("auth.issuers[{index}].{field}");
        let parse_url = |field: &str, text: &str| -> anyhow::Result<url::Url> {
            url::Url::parse(text)
                .map_err(|e| anyhow::anyhow!("{}: {text:?} is not a URL ({e})", key(field)))
        };
        let source = match (&self.jwks_url, &self.discovery_url) {
            (Some(url), None) => KeySource::Jwks(parse_url("jwks_url", url)?),
            (None, Some(url)) => KeySource::Discovery(parse_url("discovery_url", url)?),
            (Some(_), Some(_)) => anyhow::bail!(
                "auth.issuers[{index}] ({:?}) sets both jwks_url and discovery_url: set one",
                self.issuer
            ),
            (None, None) => anyhow::bail!(
                "auth.issuers[{index}] ({:?}) needs jwks_url or discovery_url",
                self.issuer
            ),
        };
        let algorithms = self
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>().map_err(|e| anyhow::anyhow!("{}: {e}", key("algorithms")))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = IssuerConfig {
            issuer: self.issuer.clone(),
            source,
            audience: self.audience.clone(),
            algorithms,
            cache_secs: self.cache_secs,
            min_refetch_secs: self.min_refetch_secs,
            max_stale_secs: self.max_stale_secs,
        };
        config
            .validate()
            .map_err(|why| anyhow::anyhow!("auth.issuers[{index}] ({:?}): {why}", self.issuer))?;
        Ok(config)
    }
}

/// Checks every entry (called by `Config::validate`).
pub(crate) fn validate(auth: &AuthConfig) -> anyhow::Result<()> {
    configs(auth).map(|_| ())
}

fn configs(auth: &AuthConfig) -> anyhow::Result<Vec<IssuerConfig>> {
    let mut out: Vec<IssuerConfig> = Vec::new();
    for (i, entry) in auth.issuers.iter().enumerate() {
        let config = entry.to_config(i)?;
        if out.iter().any(|c| c.issuer == config.issuer) {
            anyhow::bail!("auth.issuers[{i}]: issuer {:?} is configured twice", config.issuer);
        }
        out.push(config);
    }
    Ok(out)
}

/// Whether `[auth]` names a static key (secret, secret file or public key file).
fn static_key_configured(auth: &AuthConfig) -> bool {
    match auth.algorithm.parse::<Algorithm>() {
        Ok(alg) if alg.is_hmac() => auth.secret.is_some() || auth.secret_file.is_some(),
        Ok(_) => auth.public_key_file.is_some(),
        // Let token_codec name the bad algorithm.
        Err(_) => true,
    }
}

/// Builds the verifier of every token path: the JWKS issuers (fetched once now, each within
/// 5 s; a provider that is down does not stop the start) and the static `[auth]` key, which is
/// required only when no issuer is configured.
pub(crate) async fn verifier(auth: &AuthConfig) -> anyhow::Result<Verifier> {
    let issuers = configs(auth)?;
    let fallback = if issuers.is_empty() || static_key_configured(auth) {
        Some(crate::server::token_codec(auth)?)
    } else {
        None
    };
    let rules = ClaimRules {
        require_exp: auth.require_exp,
        leeway_secs: auth.leeway_secs,
        required_typ: auth.typ.clone(),
        max_token_bytes: auth.max_token_bytes,
    };
    Verifier::start(issuers, rules, fallback).await.context("invalid [[auth.issuers]]")
}

/// `palisade check`: fetches every issuer's keys once and describes each, one line per issuer.
/// Fails on a discovery document that names another issuer, as the start would.
pub fn report(config: &Config) -> anyhow::Result<Vec<String>> {
    if !config.secure.enabled || config.auth.issuers.is_empty() {
        return Ok(Vec::new());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime to fetch the issuers' keys")?;
    let verifier = runtime.block_on(verifier(&config.auth))?;
    Ok(verifier
        .status()
        .into_iter()
        .map(|s| {
            let url = s.jwks_url.or(s.discovery_url).unwrap_or_default();
            match (&s.last_fetch, s.usable) {
                (_, true) => format!(
                    "issuer {}: {} key(s) [{}] from {url}",
                    s.issuer,
                    s.keys.len(),
                    s.keys.join(", ")
                ),
                (Some(last), false) => format!(
                    "issuer {}: keys unavailable, its tokens will be refused until a fetch \
                     succeeds ({}: {}) from {url}",
                    s.issuer,
                    last.outcome,
                    last.error.as_deref().unwrap_or("")
                ),
                (None, false) => format!("issuer {}: not fetched", s.issuer),
            }
        })
        .collect())
}

/// Posture: a JWKS or discovery URL over plain `http://` to a host that is not loopback lets
/// anyone on the path substitute the keys.
pub(crate) fn plain_http_urls(auth: &AuthConfig) -> Vec<String> {
    configs(auth)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.is_plain_http_remote())
        .map(|c| c.source.url().to_string())
        .collect()
}

/// `GET /issuers`: every issuer with its key ids and last fetch.
pub(crate) async fn list(State(state): State<AdminState>) -> Response {
    let status = state.issuers.as_ref().map(Verifier::status).unwrap_or_default();
    Json(status).into_response()
}

/// `POST /issuers/refresh`: refetch now (still at most once per `min_refetch_secs`), then list.
pub(crate) async fn refresh(State(state): State<AdminState>) -> Response {
    let status = match &state.issuers {
        Some(verifier) => verifier.refresh().await,
        None => Vec::new(),
    };
    Json(status).into_response()
}

/// Appends the issuers' metrics to the `/metrics` body.
pub(crate) fn append_metrics(body: &mut String, issuers: Option<&Verifier>) {
    if let Some(issuers) = issuers {
        crate::admin::append_exposition(body, &issuers.encode_metrics());
    }
}
