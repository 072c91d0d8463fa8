//! Loading, validity, reload and the development certificates.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use super::{CertPaths, CertStore, dev_cert};

/// Writes a self-signed `localhost` pair valid until `not_after` into `dir/NAME.{crt,key}`.
fn pair(dir: &Path, name: &str, not_after: OffsetDateTime) -> CertPaths {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(40);
    params.not_after = not_after;
    let cert = params.self_signed(&key).unwrap();
    let paths = CertPaths {
        cert_file: dir.join(format!("{name}.crt")),
        key_file: dir.join(format!("{name}.key")),
    };
    std::fs::write(&paths.cert_file, cert.pem()).unwrap();
    std::fs::write(&paths.key_file, key.serialize_pem()).unwrap();
    paths
}

fn in_days(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(days)
}

#[track_caller]
fn check_load_err(paths: CertPaths, expected: &[&str]) {
    let err = format!("{:#}", CertStore::load(paths).unwrap_err());
    for e in expected {
        assert!(err.contains(e), "error {err:?} does not mention {e:?}");
    }
}

#[test]
fn good_pair_loads_and_describes_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::load(pair(dir.path(), "a", in_days(60))).unwrap();
    let info = store.info();
    assert_eq!(info.subject, "CN=rcgen self signed cert");
    assert_eq!(info.chain_len, 1);
    assert_eq!(info.sha256.len(), 64);
    assert_eq!(info.validity_warning(SystemTime::now()), None);
}

#[test]
fn missing_file_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = pair(dir.path(), "a", in_days(60));
    paths.cert_file = dir.path().join("nope.pem");
    check_load_err(paths, &["tls.cert_file", "nope.pem", "no such file", "cargo xtask run --tls"]);
}

#[test]
fn file_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "a", in_days(60));
    std::fs::write(&paths.cert_file, "hello\n").unwrap();
    check_load_err(paths, &["tls.cert_file", "no certificate found", "BEGIN CERTIFICATE"]);
}

#[test]
fn corrupt_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "a", in_days(60));
    std::fs::write(
        &paths.cert_file,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    check_load_err(paths, &["tls.cert_file", "unreadable pem"]);
}

#[test]
fn pem_that_is_not_x509_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "a", in_days(60));
    std::fs::write(
        &paths.cert_file,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    check_load_err(paths, &["tls.cert_file", "unreadable certificate"]);
}

#[test]
fn key_file_without_a_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "a", in_days(60));
    std::fs::copy(&paths.cert_file, &paths.key_file).unwrap();
    check_load_err(paths, &["tls.key_file", "no private key found"]);
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = pair(dir.path(), "a", in_days(60));
    let b = pair(dir.path(), "b", in_days(60));
    let mixed = CertPaths { cert_file: a.cert_file, key_file: b.key_file };
    check_load_err(mixed, &["tls.key_file", "b.key", "does not match", "a.crt"]);
}

#[test]
fn expired_certificate_loads_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::load(pair(dir.path(), "old", in_days(-2))).unwrap();
    let info = store.info();
    assert!(info.is_expired(SystemTime::now()));
    let warning = info.validity_warning(SystemTime::now()).unwrap();
    assert!(warning.contains("expired at"), "{warning}");
}

#[test]
fn certificate_close_to_its_end_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let store = CertStore::load(pair(dir.path(), "soon", in_days(3))).unwrap();
    let warning = store.info().validity_warning(SystemTime::now()).unwrap();
    assert!(warning.contains("expires in"), "{warning}");
}

#[test]
fn reload_swaps_a_good_pair_and_keeps_the_old_one_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "live", in_days(60));
    let store = CertStore::load(paths.clone()).unwrap();
    let first = store.info().sha256;

    std::fs::write(&paths.cert_file, "garbage").unwrap();
    let err = format!("{:#}", store.reload().unwrap_err());
    assert!(err.contains("no certificate found"), "{err}");
    assert_eq!(store.info().sha256, first, "a bad file replaced the certificate");

    pair(dir.path(), "live", in_days(90));
    let second = store.reload().unwrap().sha256;
    assert_ne!(second, first);
    assert_eq!(store.info().sha256, second);
}

#[test]
fn reload_refuses_an_expired_certificate_while_the_current_one_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let paths = pair(dir.path(), "live", in_days(60));
    let store = CertStore::load(paths).unwrap();
    let first = store.info().sha256;
    pair(dir.path(), "live", in_days(-1));
    let err = format!("{:#}", store.reload().unwrap_err());
    assert!(err.contains("expired at"), "{err}");
    assert_eq!(store.info().sha256, first);
}

fn verify_localhost(dir: &Path) {
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap();
    let leaf = CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
        .build()
        .unwrap();
    for name in dev_cert::DEV_NAMES {
        let name = ServerName::try_from(name).unwrap();
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now()).unwrap();
    }
}

#[test]
fn dev_cert_chains_to_its_ca_and_the_ca_survives_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let first = dev_cert::ensure(dir.path(), false).unwrap();
    assert!(first.new_ca && first.issued);
    verify_localhost(dir.path());
    let ca = std::fs::read(&first.ca_file).unwrap();

    let again = dev_cert::ensure(dir.path(), false).unwrap();
    assert!(!again.new_ca && !again.issued, "a current certificate was issued again");

    let cert = std::fs::read(&first.cert_file).unwrap();
    let renewed = dev_cert::ensure(dir.path(), true).unwrap();
    assert!(!renewed.new_ca && renewed.issued);
    assert_eq!(std::fs::read(&renewed.ca_file).unwrap(), ca, "the CA changed");
    assert_ne!(std::fs::read(&renewed.cert_file).unwrap(), cert);
    verify_localhost(dir.path());
    // The pair loads as the server would load it.
    CertStore::load(CertPaths { cert_file: renewed.cert_file, key_file: renewed.key_file })
        .unwrap();
}

#[test]
fn dev_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dev_cert::ensure(dir.path(), false).unwrap();
    for key in [certs.key_file, dir.path().join("ca-key.pem")] {
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
}
