//! TLS for the WebSocket endpoints and the admin listener: load the PEM certificate chain and
//! private key with errors that name the file and the fix, build the rustls configuration
//! (TLS 1.2 and 1.3, the `ring` provider), and swap the certificate on reload without touching
//! the connections already open.
//!
//! [`CertStore`] is the certificate resolver every handshake asks; [`CertStore::reload`] reads
//! the files again and swaps only when the new pair is good. [`dev_cert`] writes the development
//! CA and `localhost` certificate that `cargo xtask run --tls` uses.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode as _;

pub mod dev_cert;
pub(crate) mod listener;

/// Certificates that expire within this window are warned about at load.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The crypto provider: rustls on `ring` (no aws-lc-rs, so no cmake or C toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a loaded certificate is, for logs: the leaf's subject, validity and fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The leaf certificate's subject, e.g. `CN=localhost`.
    pub subject: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// End of validity as RFC 3339 text.
    pub not_after_text: String,
    /// SHA-256 of the leaf certificate's DER, hex (what `openssl x509 -fingerprint -sha256`
    /// prints, without the colons).
    pub sha256: String,
    /// Certificates in the chain, leaf first.
    pub chain_len: usize,
}

impl CertInfo {
    /// True when `now` is after the end of validity.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// A warning to log about validity at `now`: expired, not yet valid, or expiring soon.
    pub fn validity_warning(&self, now: SystemTime) -> Option<String> {
        if self.is_expired(now) {
            return Some(format!(
                "the tls certificate expired at {}: clients will refuse it; renew it and send SIGHUP",
                self.not_after_text
            ));
        }
        if now < self.not_before {
            return Some(
                "the tls certificate is not valid yet (check the clock or the certificate)".into(),
            );
        }
        let left = self.not_after.duration_since(now).unwrap_or_default();
        if left < EXPIRY_WARNING {
            return Some(format!(
                "the tls certificate expires in {} hours (at {}); renew it and send SIGHUP",
                left.as_secs() / 3600,
                self.not_after_text
            ));
        }
        None
    }
}

/// Where the PEM files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// The certificate chain, leaf first (`tls.cert_file`).
    pub cert_file: PathBuf,
    /// The leaf's private key (`tls.key_file`): PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key_file: PathBuf,
}

/// The server's certificate, swappable while connections are open: every new handshake asks
/// it for the current certificate; established connections keep the one they started with.
pub struct CertStore {
    paths: CertPaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Arc<CertifiedKey>, CertInfo)>,
}

impl CertStore {
    /// Loads the pair named by `paths`; the error names the file and what is wrong with it.
    pub fn load(paths: CertPaths) -> anyhow::Result<CertStore> {
        let provider = provider();
        let loaded = load_pair(&paths, &provider)?;
        Ok(CertStore { paths, provider, current: RwLock::new(loaded) })
    }

    /// Reads the files again and, when the new pair is good, serves it to new handshakes.
    /// On any error the current certificate stays in use. A new certificate that has already
    /// expired is refused while the current one is still valid.
    pub fn reload(&self) -> anyhow::Result<CertInfo> {
        let (key, info) = load_pair(&self.paths, &self.provider)?;
        let now = SystemTime::now();
        if info.is_expired(now) && !self.info().is_expired(now) {
            bail!(
                "the new certificate in tls.cert_file {} expired at {}",
                self.paths.cert_file.display(),
                info.not_after_text
            );
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (key, info.clone());
        Ok(info)
    }

    /// The certificate being served now.
    pub fn info(&self) -> CertInfo {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// The files this store reads.
    pub fn paths(&self) -> &CertPaths {
        &self.paths
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("paths", &self.paths).field("info", &self.info()).finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone())
    }
}

/// The rustls server configuration: TLS 1.3 and 1.2 only, no client certificates, the
/// certificate from `store` (so a reload reaches every listener that shares it).
pub fn server_config(store: Arc<CertStore>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the tls provider supports neither tls 1.3 nor 1.2")?
        .with_no_client_auth()
        .with_cert_resolver(store);
    Ok(Arc::new(config))
}

fn load_pair(
    paths: &CertPaths,
    provider: &CryptoProvider,
) -> anyhow::Result<(Arc<CertifiedKey>, CertInfo)> {
    let (cert_file, key_file) = (&paths.cert_file, &paths.key_file);
    let chain = read_chain(cert_file)?;
    let key = read_key(key_file)?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        anyhow::anyhow!(
            "tls.key_file {}: unsupported private key ({e}); use an RSA, ECDSA P-256/P-384 or Ed25519 key",
            key_file.display()
        )
    })?;
    let mut info = describe(&chain[0]).with_context(|| {
        format!("tls.cert_file {}: unreadable certificate", cert_file.display())
    })?;
    info.chain_len = chain.len();
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => bail!(
            "tls.key_file {} does not match the certificate in tls.cert_file {}: \
             use the key the certificate was issued for",
            key_file.display(),
            cert_file.display()
        ),
        Err(e) => bail!("tls.cert_file {}: unreadable certificate: {e}", cert_file.display()),
    }
    Ok((Arc::new(certified), info))
}

fn read_file(path: &Path, key: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{key} {}: no such file (for development, `cargo xtask run --tls` generates one)",
            path.display()
        ),
        _ => anyhow::anyhow!("cannot read {key} {}: {e}", path.display()),
    })
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read_file(path, "tls.cert_file")?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert_file {}: unreadable pem: {e}", path.display()))?;
    if chain.is_empty() {
        bail!(
            "tls.cert_file {}: no certificate found; expected PEM blocks \
             `-----BEGIN CERTIFICATE-----`, the server's certificate first",
            path.display()
        );
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = read_file(path, "tls.key_file")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "tls.key_file {}: no private key found; expected a PEM block \
             `-----BEGIN PRIVATE KEY-----` (PKCS#8), `RSA PRIVATE KEY` or `EC PRIVATE KEY`",
            path.display()
        ),
        other => anyhow::anyhow!("tls.key_file {}: unreadable pem: {other}", path.display()),
    })
}

/// Subject, validity and fingerprint of a DER certificate.
pub(crate) fn describe(der: &CertificateDer<'_>) -> anyhow::Result<CertInfo> {
    let cert = x509_cert::Certificate::from_der(der.as_ref())
        .map_err(|e| anyhow::anyhow!("not an x.509 certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let validity = tbs.validity();
    Ok(CertInfo {
        subject: tbs.subject().to_string(),
        not_before: validity.not_before.to_system_time(),
        not_after: validity.not_after.to_system_time(),
        not_after_text: validity.not_after.to_string(),
        sha256: palisade_digest::sha256(der.as_ref()).to_hex(),
        chain_len: 1,
    })
}

#[cfg(test)]
mod tests;
