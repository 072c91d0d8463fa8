//! The development certificates: a local CA and a `localhost` certificate it signs, written as
//! PEM files into a folder (`palisade dev-cert`, which `cargo xtask run --tls` calls).
//!
//! The CA is kept across runs, so a client told once to trust `ca.pem` keeps trusting it; the
//! server certificate is issued again when it is missing or close to its end. Never use these
//! files outside development: the CA's key sits next to them.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use time::OffsetDateTime;

/// Days the development CA is valid.
const CA_DAYS: i64 = 3650;
/// Days a development server certificate is valid.
const CERT_DAYS: i64 = 90;
/// The names the development server certificate is valid for.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files of the development certificates.
#[derive(Clone, Debug)]
pub struct DevCerts {
    /// The CA certificate, for clients to trust (`ca.pem`).
    pub ca_file: PathBuf,
    /// The server certificate for `localhost`, `127.0.0.1` and `::1` (`cert.pem`).
    pub cert_file: PathBuf,
    /// The server certificate's private key, mode 0600 (`key.pem`).
    pub key_file: PathBuf,
    /// True when this call created a new CA (clients must trust the new `ca.pem`).
    pub new_ca: bool,
    /// True when this call issued a new server certificate.
    pub issued: bool,
}

/// Makes sure `dir` holds a development CA and a current `localhost` certificate signed by it.
/// With `renew`, the server certificate is issued again even when the current one is fine.
pub fn ensure(dir: &Path, renew: bool) -> anyhow::Result<DevCerts> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let ca_file = dir.join("ca.pem");
    let ca_key_file = dir.join("ca-key.pem");
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");

    let (ca_key, new_ca) = if ca_file.exists() && ca_key_file.exists() {
        let pem = fs::read_to_string(&ca_key_file)
            .with_context(|| format!("cannot read {}", ca_key_file.display()))?;
        let key = KeyPair::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM private key", ca_key_file.display()))?;
        (key, false)
    } else {
        let key = KeyPair::generate().context("cannot generate the development CA key")?;
        let cert = ca_params()?.self_signed(&key).context("cannot sign the development CA")?;
        write_file(&ca_key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_file, cert.pem().as_bytes(), 0o644)?;
        (key, true)
    };

    let issued = new_ca || renew || !is_current(&cert_file) || !key_file.exists();
    if issued {
        let issuer = Issuer::new(ca_params()?, ca_key);
        let key = KeyPair::generate().context("cannot generate the development server key")?;
        let cert = server_params(OffsetDateTime::now_utc())?
            .signed_by(&key, &issuer)
            .context("cannot sign the development server certificate")?;
        write_file(&key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_file, cert.pem().as_bytes(), 0o644)?;
    }
    Ok(DevCerts { ca_file, cert_file, key_file, new_ca, issued })
}

/// The CA's parameters. Issuing again from a stored CA key rebuilds the same name, so the
/// certificates it signs chain to the `ca.pem` written the first time.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Palisade development CA (do not trust in production)");
    dn.push(DnType::OrganizationName, "Palisade development");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(CA_DAYS);
    Ok(p)
}

/// The server certificate's parameters, valid from a day before `now` for [`CERT_DAYS`].
pub(crate) fn server_params(now: OffsetDateTime) -> anyhow::Result<CertificateParams> {
    let names: Vec<String> = DEV_NAMES.iter().map(|n| (*n).to_owned()).collect();
    let mut p = CertificateParams::new(names)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "localhost");
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(CERT_DAYS);
    Ok(p)
}

/// True when `cert_file` holds a certificate valid for at least the expiry-warning window.
fn is_current(cert_file: &Path) -> bool {
    let Ok(cert) = CertificateDer::from_pem_file(cert_file) else { return false };
    let Ok(info) = super::describe(&cert) else { return false };
    let soon = SystemTime::now() + super::EXPIRY_WARNING;
    info.not_after > soon
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a server reloading at the
/// same moment never reads half a file; `mode` applies from creation.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
