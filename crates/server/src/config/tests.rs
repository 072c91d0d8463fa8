//! Config parsing: defaults, unknown keys and bad values are refused with the key's name.

use super::Config;

#[track_caller]
fn check_err(toml: &str, expected: &str) {
    let err = format!("{:#}", Config::from_toml(toml).unwrap_err());
    assert!(err.contains(expected), "error {err:?} does not mention {expected:?}");
}

#[test]
fn empty_file_gives_secure_defaults() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.echo.listen.to_string(), "127.0.0.1:8765");
    assert_eq!(c.secure.listen.to_string(), "127.0.0.1:8888");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9100");
    assert_eq!(c.auth.algorithm, "HS256");
    assert!(c.auth.require_exp);
    assert_eq!(c.limits.max_message_bytes, 65536);
    assert_eq!(c.echo.prefix, "Server received: ");
}

#[test]
fn unknown_key_is_refused_with_its_name() {
    check_err("[limits]\nmax_mesage_bytes = 10\n", "max_mesage_bytes");
    check_err("[nope]\n", "nope");
}

#[test]
fn wrong_type_names_the_key() {
    check_err("[limits]\nmax_message_bytes = \"big\"\n", "max_message_bytes");
}

#[test]
fn bad_listen_address_is_refused() {
    check_err("[echo]\nlisten = \"localhost\"\n", "listen");
}

#[test]
fn zero_limits_are_refused() {
    check_err("[limits]\nmax_connections = 0\n", "limits.max_connections must be greater than 0");
}

#[test]
fn frame_larger_than_message_is_refused() {
    check_err("[limits]\nmax_frame_bytes = 100000\n", "limits.max_frame_bytes");
}

#[test]
fn unknown_log_format_is_refused() {
    check_err("[log]\nformat = \"xml\"\n", "log.format");
}

#[test]
fn ping_must_be_shorter_than_idle() {
    check_err("[limits]\nping_interval_secs = 60\nidle_timeout_secs = 30\n", "ping_interval_secs");
}

#[test]
fn env_overrides_log_level() {
    let mut c = Config::from_toml("").unwrap();
    c.apply_env([("PALISADE_LOG_LEVEL".to_string(), "debug".to_string())]);
    assert_eq!(c.log.level, "debug");
}

#[test]
fn tls_needs_both_files() {
    check_err("[tls]\ncert_file = \"c.pem\"\n", "tls.key_file is not");
    check_err("[tls]\nkey_file = \"k.pem\"\n", "tls.cert_file is not");
}

#[test]
fn admin_tls_needs_a_certificate() {
    check_err("[admin]\ntls = true\n", "admin.tls = true needs tls.cert_file");
}

#[test]
fn audit_is_off_by_default_and_its_zero_sizes_are_refused() {
    let c = Config::from_toml("").unwrap();
    assert_eq!(c.audit.file, None);
    let c = Config::from_toml("[audit]\nfile = \"audit.log\"\nmax_files = 3\n").unwrap();
    assert_eq!(c.audit.file.as_deref(), Some(std::path::Path::new("audit.log")));
    assert_eq!((c.audit.max_files, c.audit.queue), (3, 4096));
    check_err("[audit]\nqueue = 0\n", "audit.queue must be greater than 0");
    check_err("[audit]\nmax_files = 0\n", "audit.max_files must be greater than 0");
    check_err("[audit]\nmax_file_bytes = 0\n", "audit.max_file_bytes must be greater than 0");
    check_err("[audit]\nfiles = \"x\"\n", "files");
}

#[test]
fn cluster_defaults_to_memory() {
    let c = Config::from_toml("").unwrap();
    assert!(c.cluster.redis_url.is_none());
    assert_eq!(c.cluster.key_prefix, "palisade:");
    assert_eq!(c.cluster.command_timeout_ms, 250);
    assert_eq!(c.cluster.heartbeat_secs, 5);
}

#[test]
fn cluster_keys_are_checked_by_name() {
    check_err("[cluster]\nredis_url = \"http://127.0.0.1/\"\n", "cluster.redis_url");
    check_err(
        "[cluster]\nredis_url = \"redis://127.0.0.1/0\"\nnode_id = \"a b\"\n",
        "cluster.node_id",
    );
    check_err(
        "[cluster]\nredis_url = \"redis://127.0.0.1/0\"\ncommand_timeout_ms = 0\n",
        "cluster.command_timeout_ms",
    );
    check_err("[cluster]\nredis = \"redis://127.0.0.1/0\"\n", "redis");
}

#[test]
fn redis_url_comes_from_the_environment_and_never_prints() {
    let mut c = Config::from_toml("").unwrap();
    c.apply_env([(super::env::REDIS_URL.to_owned(), "redis://:hunter2@10.0.0.5/0".to_owned())]);
    assert_eq!(
        c.cluster.redis_url.as_ref().map(|u| u.0.as_str()),
        Some("redis://:hunter2@10.0.0.5/0")
    );
    c.validate().unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn issuer_entries_are_checked_with_their_index() {
    let entry = |extra: &str| {
        format!(
            "[[auth.issuers]]\nissuer = \"https://idp.example.com\"\naudience = \"palisade\"\n{extra}"
        )
    };
    let ok = Config::from_toml(&entry("jwks_url = \"https://idp.example.com/certs\"\n")).unwrap();
    let i = &ok.auth.issuers[0];
    assert_eq!((i.cache_secs, i.min_refetch_secs, i.max_stale_secs), (300, 30, 86_400));
    assert_eq!(i.algorithms, ["RS256", "ES256", "EdDSA"]);
    check_err(&entry("jwks_url = \"https://x/c\"\nrefetch = 1\n"), "unknown field `refetch`");
    check_err("[[auth.issuers]]\nissuer = \"i\"\njwks_url = \"https://x/c\"\n", "audience");
    check_err(
        &entry(""),
        "auth.issuers[0] (\"https://idp.example.com\") needs jwks_url or discovery_url",
    );
    check_err(
        &entry("jwks_url = \"https://x/c\"\ndiscovery_url = \"https://x/d\"\n"),
        "sets both jwks_url and discovery_url",
    );
    check_err(&entry("jwks_url = \"ftp://x/c\"\n"), "not an http:// or https:// URL");
    check_err(&entry("jwks_url = \"https://x/c\"\nalgorithms = [\"HS256\"]\n"), "shared-secret");
    check_err(
        &entry("jwks_url = \"https://x/c\"\nalgorithms = [\"PS256\"]\n"),
        "auth.issuers[0].algorithms",
    );
    check_err(
        &entry("jwks_url = \"https://x/c\"\ncache_secs = 10\n"),
        "must not be below min_refetch_secs",
    );
    let twice = format!(
        "{}{}",
        entry("jwks_url = \"https://x/c\"\n"),
        entry("jwks_url = \"https://x/d\"\n")
    );
    check_err(&twice, "auth.issuers[1]: issuer \"https://idp.example.com\" is configured twice");
}

#[test]
fn plain_http_to_a_remote_idp_is_a_posture_finding() {
    let with = |url: &str| {
        let text =
            format!("[[auth.issuers]]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"{url}\"\n");
        crate::posture::findings(&Config::from_toml(&text).unwrap())
            .into_iter()
            .filter(|f| f.key == "auth.issuers")
            .count()
    };
    assert_eq!(with("http://idp.example.com/certs"), 1);
    assert_eq!(with("http://127.0.0.1:8080/certs"), 0);
    assert_eq!(with("http://localhost:8080/certs"), 0);
    assert_eq!(with("https://idp.example.com/certs"), 0);
}
