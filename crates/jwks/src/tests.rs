use std::time::Duration;

use palisade_token::{Algorithm, TokenError};
use serde_json::{Value, json};

use crate::testing::{Idp, Mode, TestKey, mint_hs256};
use crate::{ClaimRules, IssuerConfig, KeySource, StartError, Verifier, VerifyError, parse_jwks};

const NOW: u64 = 1_900_000_000;

fn claims(iss: &str, user: &str) -> Value {
    json!({"iss": iss, "aud": "palisade", "sub": user, "exp": NOW + 600})
}

fn entry(idp: &Idp, issuer: &str) -> IssuerConfig {
    let mut c =
        IssuerConfig::new(issuer, KeySource::Jwks(idp.jwks_url().parse().unwrap()), "palisade");
    c.cache_secs = 2;
    c.min_refetch_secs = 1;
    c.max_stale_secs = 60;
    c
}

fn now_real() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn keys_that_do_not_fit_are_skipped() {
    let mut enc = TestKey::rsa().jwk("enc");
    enc["use"] = json!("enc");
    let mut wrong_alg = TestKey::ec().jwk("wrong");
    wrong_alg["alg"] = json!("RS256");
    let doc = json!({"keys": [
        enc,
        TestKey::rsa1024().jwk("weak"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "oct"},
        wrong_alg,
        TestKey::rsa().jwk("rsa"),
        TestKey::ec().jwk("ec"),
        TestKey::ed25519().jwk("ed"),
    ]});
    let all = [Algorithm::Rs256, Algorithm::Es256, Algorithm::EdDsa];
    let set =
        parse_jwks(doc.to_string().as_bytes(), "iss", "palisade", &all, &ClaimRules::default())
            .unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| (k.kid.clone().unwrap(), k.algorithm)).collect();
    assert_eq!(
        kids,
        [
            ("rsa".into(), Algorithm::Rs256),
            ("ec".into(), Algorithm::Es256),
            ("ed".into(), Algorithm::EdDsa)
        ]
    );
    let skipped: Vec<_> = set.skipped.iter().map(|s| (s.kid.clone().unwrap(), s.weak)).collect();
    assert_eq!(
        skipped,
        [
            ("enc".into(), false),
            ("weak".into(), true),
            ("oct".into(), false),
            ("wrong".into(), false)
        ]
    );
    // Only RS256 configured: the EC and Ed25519 keys do not fit either.
    let set = parse_jwks(
        doc.to_string().as_bytes(),
        "iss",
        "palisade",
        &[Algorithm::Rs256],
        &ClaimRules::default(),
    )
    .unwrap();
    assert_eq!(set.keys.len(), 1);
    assert!(parse_jwks(b"[]", "iss", "a", &all, &ClaimRules::default()).is_err());
    assert!(parse_jwks(b"{\"keys\":[]}", "iss", "a", &all, &ClaimRules::default()).is_err());
}

#[test]
fn validation_names_the_field() {
    let url: url::Url = "https://idp.example.com/certs".parse().unwrap();
    let mut c = IssuerConfig::new("https://idp.example.com", KeySource::Jwks(url), "palisade");
    assert_eq!(c.validate(), Ok(()));
    assert!(!c.is_plain_http_remote());
    c.algorithms = vec![Algorithm::Hs256];
    assert!(c.validate().unwrap_err().contains("shared-secret"));
    c.algorithms = vec![Algorithm::Rs256];
    c.min_refetch_secs = 600;
    assert!(c.validate().unwrap_err().contains("min_refetch_secs"));
    c.source = KeySource::Jwks("http://idp.example.com/certs".parse().unwrap());
    assert!(c.is_plain_http_remote());
    c.source = KeySource::Jwks("http://127.0.0.1:9/certs".parse().unwrap());
    assert!(!c.is_plain_http_remote());
}

#[tokio::test]
async fn each_algorithm_verifies_and_a_shared_kid_never_crosses_issuers() {
    let (a_key, b_key) = (TestKey::rsa(), TestKey::rsa2());
    let idp_a =
        Idp::start(vec![a_key.jwk("k1"), TestKey::ec().jwk("e1"), TestKey::ed25519().jwk("d1")])
            .await;
    let idp_b = Idp::start(vec![b_key.jwk("k1")]).await;
    let v = Verifier::start(
        vec![entry(&idp_a, "https://a.example"), entry(&idp_b, "https://b.example")],
        ClaimRules::default(),
        None,
    )
    .await
    .unwrap();
    let ok = a_key.mint(Some("k1"), &claims("https://a.example", "alice"), &[]);
    assert_eq!(v.verify(&ok, NOW).await.unwrap().user_id, "alice");
    for (key, kid) in [(TestKey::ec(), "e1"), (TestKey::ed25519(), "d1")] {
        let t = key.mint(Some(kid), &claims("https://a.example", "al"), &[]);
        assert_eq!(v.verify(&t, NOW).await.unwrap().user_id, "al");
    }
    // Signed by B's key with B's kid, but claiming issuer A: A's `k1` does not verify it.
    let cross = b_key.mint(Some("k1"), &claims("https://a.example", "mallory"), &[]);
    assert_eq!(v.verify(&cross, NOW).await, Err(VerifyError::Token(TokenError::BadSignature)));
    let b_ok = b_key.mint(Some("k1"), &claims("https://b.example", "bob"), &[]);
    assert_eq!(v.verify(&b_ok, NOW).await.unwrap().user_id, "bob");
    // Wrong audience, unknown issuer without a static key.
    let mut c = claims("https://a.example", "x");
    c["aud"] = json!("other");
    let t = a_key.mint(Some("k1"), &c, &[]);
    assert_eq!(v.verify(&t, NOW).await, Err(VerifyError::Token(TokenError::InvalidClaim("aud"))));
    let t = a_key.mint(Some("k1"), &claims("https://c.example", "x"), &[]);
    assert_eq!(v.verify(&t, NOW).await, Err(VerifyError::UnknownIssuer));
    let status = v.status();
    assert_eq!(status[0].keys, ["k1 (RS256)", "e1 (ES256)", "d1 (EdDSA)"]);
    assert!(v.encode_metrics().contains("palisade_jwks_keys{issuer=\"https://b.example\"} 1\n"));
}

#[tokio::test]
async fn hs256_and_forbidden_headers_are_refused_without_a_fetch() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let elsewhere = Idp::start(vec![key.jwk("k1")]).await;
    let v = Verifier::start(vec![entry(&idp, "https://a.example")], ClaimRules::default(), None)
        .await
        .unwrap();
    let before = idp.total_requests();
    let hs = mint_hs256(
        b"0123456789abcdef0123456789abcdef",
        Some("k1"),
        &claims("https://a.example", "x"),
    );
    assert!(matches!(
        v.verify(&hs, NOW).await,
        Err(VerifyError::Token(TokenError::AlgorithmNotAllowed { .. }))
    ));
    for header in ["jku", "x5u"] {
        let t = key.mint(
            Some("unknown"),
            &claims("https://a.example", "x"),
            &[(header, &elsewhere.jwks_url())],
        );
        assert_eq!(v.verify(&t, NOW).await, Err(VerifyError::ForbiddenHeader(header)));
    }
    assert_eq!(elsewhere.total_requests(), 0);
    assert_eq!(idp.total_requests(), before);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_fetch() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let v = Verifier::start(vec![entry(&idp, "https://a.example")], ClaimRules::default(), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = idp.requests("/jwks");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let v = v.clone();
            let t = key.mint(Some(&format!("random-{i}")), &claims("https://a.example", "x"), &[]);
            tokio::spawn(async move { v.verify(&t, NOW).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(VerifyError::Token(TokenError::UnknownKey)));
    }
    let fetches = idp.requests("/jwks") - before;
    assert!((1..=2).contains(&fetches), "{fetches} fetches");
}

#[tokio::test]
async fn a_failing_provider_leaves_the_keys_in_place() {
    let key = TestKey::rsa();
    let idp = Idp::start(vec![key.jwk("k1")]).await;
    let v = Verifier::start(vec![entry(&idp, "https://a.example")], ClaimRules::default(), None)
        .await
        .unwrap();
    let t = key.mint(Some("k1"), &claims("https://a.example", "x"), &[]);
    let redirect = Mode::Redirect(idp.jwks_url());
    for (mode, outcome) in [
        (Mode::Garbage, "not_jwks"),
        (Mode::Huge, "too_large"),
        (redirect, "redirect"),
        (Mode::Status(500), "status"),
        (Mode::Down, "io"),
    ] {
        idp.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let status = v.refresh().await;
        assert_eq!(status[0].last_fetch.as_ref().unwrap().outcome, outcome);
        assert!(status[0].usable);
        assert_eq!(v.verify(&t, NOW).await.unwrap().user_id, "x");
    }
    // Recovery with a rotated set: the old kid goes, the new one verifies.
    let new_key = TestKey::ec();
    idp.set_keys(vec![new_key.jwk("k2")]);
    idp.set_mode(Mode::Serve);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let status = v.refresh().await;
    assert_eq!(status[0].keys, ["k2 (ES256)"]);
    assert_eq!(v.verify(&t, NOW).await, Err(VerifyError::Token(TokenError::UnknownKey)));
    let t2 = new_key.mint(Some("k2"), &claims("https://a.example", "y"), &[]);
    assert_eq!(v.verify(&t2, NOW).await.unwrap().user_id, "y");
}

#[tokio::test]
async fn a_hanging_provider_times_out_and_start_still_succeeds() {
    let idp = Idp::start(vec![]).await;
    idp.set_mode(Mode::Hang);
    let started = std::time::Instant::now();
    let v = Verifier::start(vec![entry(&idp, "https://a.example")], ClaimRules::default(), None)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(9));
    assert_eq!(v.status()[0].last_fetch.as_ref().unwrap().outcome, "timeout");
    let t = TestKey::rsa().mint(Some("k1"), &claims("https://a.example", "x"), &[]);
    assert_eq!(v.verify_now(&t, now_real()), Err(VerifyError::KeysUnavailable));
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let idp = Idp::start(vec![TestKey::rsa().jwk("k1")]).await;
    let source = KeySource::Discovery(idp.discovery_url().parse().unwrap());
    let good = IssuerConfig::new(idp.issuer(), source.clone(), "palisade");
    let v = Verifier::start(vec![good], ClaimRules::default(), None).await.unwrap();
    assert_eq!(v.status()[0].jwks_url.as_deref(), Some(idp.jwks_url().as_str()));
    let bad = IssuerConfig::new("https://someone-else.example", source, "palisade");
    let err = Verifier::start(vec![bad], ClaimRules::default(), None).await.err().unwrap();
    assert!(matches!(&err, StartError::Discovery { .. }), "{err}");
    assert!(err.to_string().contains("names issuer"), "{err}");
}
