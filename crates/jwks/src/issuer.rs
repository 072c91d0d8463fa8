//! One issuer's key cache: single-flight fetches, rate limits, refresh and staleness.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use palisade_token::{Claims, TokenError, Unverified};
use serde_json::Value;
use tokio::sync::watch;
use url::Url;

use crate::fetch::{self, FetchError};
use crate::jwk::{self, JwksError, VerifyingKey};
use crate::{ClaimRules, IssuerConfig, KeySource, VerifyError};

/// Why one fetch of an issuer's keys failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Jwks(#[from] JwksError),
    #[error("the discovery document is not JSON or has no usable \"jwks_uri\"")]
    BadDiscovery,
    #[error(
        "the discovery document names issuer {found:?}, but this entry is for {expected:?}: \
         set `issuer` to the provider's exact issuer string, or fix discovery_url"
    )]
    IssuerMismatch { expected: String, found: String },
}

impl LoadError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            LoadError::Fetch(e) => e.kind(),
            LoadError::Jwks(JwksError::NotJson | JwksError::NoKeysArray) => "not_jwks",
            LoadError::Jwks(JwksError::NoUsableKey { .. }) => "no_usable_key",
            LoadError::BadDiscovery => "bad_discovery",
            LoadError::IssuerMismatch { .. } => "issuer_mismatch",
        }
    }
}

/// What the last fetch did, for `GET /issuers`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LastFetch {
    /// Unix seconds when it ended.
    pub at: u64,
    /// `ok` or the failure kind (`timeout`, `status`, `too_large`, `not_jwks`, ...).
    pub outcome: String,
    /// The failure, when it failed.
    pub error: Option<String>,
}

/// One issuer as the admin API lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IssuerStatus {
    /// The `iss` this entry serves.
    pub issuer: String,
    /// The JWKS URL (read from discovery once it has been).
    pub jwks_url: Option<String>,
    /// The discovery URL, when configured.
    pub discovery_url: Option<String>,
    /// The key ids held, each as `kid (alg)`; keys without a kid show as `-`.
    pub keys: Vec<String>,
    /// Whether the keys may verify now (fetched, and not older than `max_stale_secs`).
    pub usable: bool,
    /// Unix seconds of the last good fetch.
    pub last_good_fetch: Option<u64>,
    /// The last fetch, good or not.
    pub last_fetch: Option<LastFetch>,
    /// Fetches so far by outcome.
    pub fetches: BTreeMap<String, u64>,
}

pub(crate) struct Issuer {
    pub(crate) config: IssuerConfig,
    rules: ClaimRules,
    cache: Mutex<Cache>,
    /// Bumped when a fetch ends; waiters subscribe before it starts.
    done: watch::Sender<u64>,
}

struct Cache {
    keys: Arc<[VerifyingKey]>,
    jwks_url: Option<Url>,
    last_good: Option<(Instant, u64)>,
    last_attempt: Option<Instant>,
    in_flight: bool,
    next_refresh: Instant,
    last_fetch: Option<LastFetch>,
    /// A failure has been logged at ERROR and no fetch has succeeded since.
    failing: bool,
    fetches: BTreeMap<&'static str, u64>,
    /// A fatal configuration error found by the first fetch (discovery issuer mismatch).
    mismatch: Option<LoadError>,
}

/// The next step of one verification.
pub(crate) enum Step {
    Done(Result<Claims, VerifyError>),
    /// A fetch is running (or was just started); verify again when it ends.
    Wait(watch::Receiver<u64>),
}

impl Issuer {
    pub(crate) fn new(config: IssuerConfig, rules: ClaimRules) -> Arc<Issuer> {
        let jwks_url = match &config.source {
            KeySource::Jwks(url) => Some(url.clone()),
            KeySource::Discovery(_) => None,
        };
        Arc::new(Issuer {
            config,
            rules,
            cache: Mutex::new(Cache {
                keys: Arc::from(Vec::new()),
                jwks_url,
                last_good: None,
                last_attempt: None,
                in_flight: false,
                next_refresh: Instant::now(),
                last_fetch: None,
                failing: false,
                fetches: BTreeMap::new(),
                mismatch: None,
            }),
            done: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, cache: &Cache, now: Instant) -> bool {
        let max_stale = Duration::from_secs(self.config.max_stale_secs);
        !cache.keys.is_empty()
            && cache.last_good.is_some_and(|(at, _)| now.saturating_duration_since(at) < max_stale)
    }

    /// One verification step for a token whose `iss` is this issuer. `may_fetch` is false once
    /// the caller has already waited for a fetch (or cannot wait at all).
    pub(crate) fn step(
        self: &Arc<Self>,
        token: &str,
        unverified: &Unverified,
        now_unix: u64,
        may_fetch: bool,
    ) -> Step {
        let Some(algorithm) =
            self.config.algorithms.iter().copied().find(|a| a.name() == unverified.alg)
        else {
            let found = unverified.alg.clone();
            return Step::Done(Err(VerifyError::Token(TokenError::AlgorithmNotAllowed { found })));
        };
        let kid = unverified.kid.as_deref();
        let keys = {
            let mut cache = self.lock();
            let now = Instant::now();
            let usable = self.usable(&cache, now);
            let kid_known = !usable
                || kid.is_none_or(|kid| cache.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
            if !usable || !kid_known {
                let failure = if usable {
                    VerifyError::Token(TokenError::UnknownKey)
                } else {
                    VerifyError::KeysUnavailable
                };
                if !may_fetch {
                    return Step::Done(Err(failure));
                }
                if cache.in_flight {
                    return Step::Wait(self.done.subscribe());
                }
                if !self.may_refetch(&cache, now) {
                    return Step::Done(Err(failure));
                }
                return Step::Wait(self.start_fetch(&mut cache, now));
            }
            cache.keys.clone()
        };
        let mut candidates = keys
            .iter()
            .filter(|k| k.algorithm == algorithm && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            return Step::Done(Err(VerifyError::Token(TokenError::UnknownKey)));
        }
        let mut last = TokenError::BadSignature;
        for key in candidates {
            match key.codec.decode(token, now_unix) {
                Ok(claims) => return Step::Done(Ok(claims)),
                Err(TokenError::BadSignature) => last = TokenError::BadSignature,
                Err(e) => return Step::Done(Err(VerifyError::Token(e))),
            }
        }
        Step::Done(Err(VerifyError::Token(last)))
    }

    fn may_refetch(&self, cache: &Cache, now: Instant) -> bool {
        let min = Duration::from_secs(self.config.min_refetch_secs);
        cache.last_attempt.is_none_or(|at| now.saturating_duration_since(at) >= min)
    }

    /// Marks a fetch in flight and runs it on its own task (a handshake that gives up does
    /// not cancel it). The receiver is subscribed before the task starts.
    fn start_fetch(self: &Arc<Self>, cache: &mut Cache, now: Instant) -> watch::Receiver<u64> {
        let rx = self.done.subscribe();
        cache.in_flight = true;
        cache.last_attempt = Some(now);
        let issuer = self.clone();
        tokio::spawn(async move { issuer.run_fetch().await });
        rx
    }

    /// Starts a fetch unless one is running or the rate limit forbids it; returns a receiver
    /// that changes when the running (or started) fetch ends, or `None` when rate-limited.
    pub(crate) fn refresh(self: &Arc<Self>, force: bool) -> Option<watch::Receiver<u64>> {
        let mut cache = self.lock();
        let now = Instant::now();
        if cache.in_flight {
            return Some(self.done.subscribe());
        }
        let due = now >= cache.next_refresh;
        if !(force || due) || !self.may_refetch(&cache, now) {
            return None;
        }
        Some(self.start_fetch(&mut cache, now))
    }

    async fn run_fetch(self: Arc<Self>) {
        let jwks_url = self.lock().jwks_url.clone();
        let result = self.load(jwks_url).await;
        let now = Instant::now();
        let unix = unix_now();
        let min = self.config.min_refetch_secs;
        let log;
        {
            let mut cache = self.lock();
            cache.in_flight = false;
            match result {
                Ok((url, set, max_age)) => {
                    let period = max_age.map_or(self.config.cache_secs, |age| {
                        age.min(self.config.cache_secs).max(min)
                    });
                    cache.next_refresh = now + Duration::from_secs(period);
                    cache.jwks_url = Some(url.clone());
                    let weak: Vec<_> = set.skipped.iter().filter(|s| s.weak).cloned().collect();
                    let recovered = std::mem::take(&mut cache.failing);
                    cache.keys = Arc::from(set.keys);
                    cache.last_good = Some((now, unix));
                    cache.last_fetch =
                        Some(LastFetch { at: unix, outcome: "ok".into(), error: None });
                    *cache.fetches.entry("ok").or_default() += 1;
                    let kids: Vec<String> = cache.keys.iter().map(key_label).collect();
                    log = Ok((kids, weak, recovered, url.to_string()));
                }
                Err((url, e)) => {
                    cache.next_refresh = now + Duration::from_secs(min);
                    cache.last_fetch = Some(LastFetch {
                        at: unix,
                        outcome: e.kind().into(),
                        error: Some(e.to_string()),
                    });
                    *cache.fetches.entry(e.kind()).or_default() += 1;
                    let first = !std::mem::replace(&mut cache.failing, true);
                    if matches!(e, LoadError::IssuerMismatch { .. }) && cache.last_good.is_none() {
                        cache.mismatch = Some(e.clone());
                    }
                    log = Err((e, first, self.usable(&cache, now), url));
                }
            }
        }
        let issuer = &self.config.issuer;
        match log {
            Ok((kids, weak, recovered, url)) => {
                for w in weak {
                    let kid = w.kid.as_deref().unwrap_or("-");
                    tracing::warn!(
                        issuer,
                        url,
                        kid,
                        kind = "weak_jwks_key",
                        "JWKS key ignored: {}",
                        w.reason
                    );
                }
                if recovered {
                    tracing::warn!(issuer, url, keys = ?kids, "JWKS fetch succeeded again");
                } else {
                    tracing::info!(issuer, url, keys = ?kids, "JWKS keys loaded");
                }
            }
            Err((e, first, usable, url)) => {
                let kind = e.kind();
                if first {
                    tracing::error!(issuer, url, kind = "jwks_fetch_failed", reason = kind, error = %e, keys_still_usable = usable, "JWKS fetch failed; the previous keys stay in place (logged once until a fetch succeeds)");
                } else {
                    tracing::debug!(issuer, url, reason = kind, error = %e, "JWKS fetch failed again");
                }
            }
        }
        self.done.send_modify(|n| *n += 1);
    }

    /// Fetches (discovery first when needed) and parses. Errors carry the URL they concern.
    async fn load(
        &self,
        jwks_url: Option<Url>,
    ) -> Result<(Url, jwk::KeySet, Option<u64>), (String, LoadError)> {
        let url = match jwks_url {
            Some(url) => url,
            None => {
                let KeySource::Discovery(discovery) = &self.config.source else {
                    return Err((String::new(), LoadError::BadDiscovery));
                };
                let at = |e: LoadError| (discovery.to_string(), e);
                let response = fetch::get(discovery).await.map_err(|e| at(e.into()))?;
                self.jwks_uri(discovery, &response.body).map_err(at)?
            }
        };
        let response = fetch::get(&url).await.map_err(|e| (url.to_string(), e.into()))?;
        let c = &self.config;
        let set =
            jwk::parse_jwks(&response.body, &c.issuer, &c.audience, &c.algorithms, &self.rules)
                .map_err(|e| (url.to_string(), e.into()))?;
        Ok((url, set, response.max_age))
    }

    fn jwks_uri(&self, discovery: &Url, body: &[u8]) -> Result<Url, LoadError> {
        let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) else {
            return Err(LoadError::BadDiscovery);
        };
        let found = doc.get("issuer").and_then(Value::as_str).unwrap_or_default();
        if found != self.config.issuer {
            return Err(LoadError::IssuerMismatch {
                expected: self.config.issuer.clone(),
                found: found.chars().take(200).collect(),
            });
        }
        let uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or(LoadError::BadDiscovery)?;
        let url = Url::parse(uri).map_err(|_| LoadError::BadDiscovery)?;
        // No downgrade: an https discovery document may not send keys over plain http.
        let allowed = match discovery.scheme() {
            "https" => url.scheme() == "https",
            _ => matches!(url.scheme(), "http" | "https"),
        };
        if !allowed {
            return Err(LoadError::BadDiscovery);
        }
        Ok(url)
    }

    /// The fatal error the first fetch found, if any (a discovery issuer mismatch).
    pub(crate) fn startup_error(&self) -> Option<LoadError> {
        self.lock().mismatch.clone()
    }

    pub(crate) fn status(&self) -> IssuerStatus {
        let cache = self.lock();
        IssuerStatus {
            issuer: self.config.issuer.clone(),
            jwks_url: cache.jwks_url.as_ref().map(Url::to_string),
            discovery_url: match &self.config.source {
                KeySource::Discovery(url) => Some(url.to_string()),
                KeySource::Jwks(_) => None,
            },
            keys: cache.keys.iter().map(key_label).collect(),
            usable: self.usable(&cache, Instant::now()),
            last_good_fetch: cache.last_good.map(|(_, unix)| unix),
            last_fetch: cache.last_fetch.clone(),
            fetches: cache.fetches.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    /// For the metrics: fetches by outcome, keys held, seconds since the last good fetch.
    pub(crate) fn sample(&self) -> (Vec<(&'static str, u64)>, usize, Option<f64>) {
        let cache = self.lock();
        let fetches = cache.fetches.iter().map(|(k, v)| (*k, *v)).collect();
        let age = cache.last_good.map(|(at, _)| at.elapsed().as_secs_f64());
        (fetches, cache.keys.len(), age)
    }
}

/// Refreshes the issuer every `cache_secs` (or a shorter `max-age`), and every
/// `min_refetch_secs` while fetches fail; ends when the issuer is dropped.
pub(crate) async fn refresher(issuer: Weak<Issuer>) {
    loop {
        let (next, mut rx) = {
            let Some(issuer) = issuer.upgrade() else { return };
            let next = issuer.lock().next_refresh;
            (next, issuer.done.subscribe())
        };
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let Some(issuer) = issuer.upgrade() else { return };
        let wait = issuer.refresh(false);
        drop(issuer);
        match wait {
            Some(mut rx) => {
                if rx.changed().await.is_err() {
                    return;
                }
            }
            // Rate-limited: try again at the end of the interval.
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn key_label(key: &VerifyingKey) -> String {
    format!("{} ({})", key.kid.as_deref().unwrap_or("-"), key.algorithm)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
