//! Unit tests: round trips, every error variant, and the RFC 8725 checks.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

use crate::{
    Algorithm, Claims, EncodeError, Key, KeyError, KeyMaterial, TokenCodec, TokenConfig, TokenError,
};

const SECRET: &str = "unit-test-secret-that-is-long-enough-for-hs512-0123456789abcdef-x";
const OTHER_SECRET: &str = "another-unit-test-secret-long-enough-for-hs512-0123456789abcdef-x";
const NOW: u64 = 1_700_000_000;

const RSA_PUBLIC: &str = include_str!("../tests/fixtures/rsa-public.pem");
const RSA_PRIVATE: &str = include_str!("../tests/fixtures/rsa-private.pem");
const RSA2_PRIVATE: &str = include_str!("../tests/fixtures/rsa2-private.pem");
const RSA1024_PUBLIC: &str = include_str!("../tests/fixtures/rsa1024-public.pem");
const EC_PUBLIC: &str = include_str!("../tests/fixtures/ec-public.pem");
const EC_PRIVATE: &str = include_str!("../tests/fixtures/ec-private.pem");
const EC384_PUBLIC: &str = include_str!("../tests/fixtures/ec384-public.pem");
const ED_PUBLIC: &str = include_str!("../tests/fixtures/ed25519-public.pem");
const ED_PRIVATE: &str = include_str!("../tests/fixtures/ed25519-private.pem");

fn codec(config: TokenConfig) -> TokenCodec {
    TokenCodec::new(config).expect("test configuration is valid")
}

fn hs256() -> TokenCodec {
    codec(TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]))
}

fn rs256() -> TokenCodec {
    codec(TokenConfig::new(Algorithm::Rs256, vec![Key::pem_pair(RSA_PUBLIC, RSA_PRIVATE)]))
}

fn claims(user_id: &str) -> Claims {
    let mut claims = Claims::new(user_id);
    claims.exp = Some(NOW + 3600);
    claims
}

/// A token with the given header and payload, signed with `key` under `alg`
/// (or unsigned when `key` is `None`), built by hand so that tests can forge
/// what `encode` never writes.
fn forge(header: Value, payload: Value, signing: Option<(&EncodingKey, Algorithm)>) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = match signing {
        Some((key, alg)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg.to_jwt())
            .expect("test key signs"),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

fn hs256_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes()).expect("non-empty secret")
}

/// An HS256 token for `payload` with the default header, signed with `SECRET`.
fn hs256_token(payload: Value) -> String {
    forge(json!({"alg": "HS256", "typ": "JWT"}), payload, Some((&hs256_key(), Algorithm::Hs256)))
}

#[track_caller]
fn check_decode(codec: &TokenCodec, token: &str, now: u64, expected: Result<&str, TokenError>) {
    let got = codec.decode(token, now).map(|c| c.user_id);
    assert_eq!(got.as_deref().map_err(Clone::clone), expected);
}

#[track_caller]
fn check_payload(payload: Value, expected: Result<&str, TokenError>) {
    check_decode(&hs256(), &hs256_token(payload), NOW, expected);
}

#[track_caller]
fn check_build(config: TokenConfig, expected: KeyError) {
    assert_eq!(TokenCodec::new(config).map(|_| ()), Err(expected));
}

#[track_caller]
fn check_round_trip(codec: &TokenCodec) {
    let mut claims = claims("alice");
    claims.iat = Some(NOW - 10);
    claims.nbf = Some(NOW - 10);
    claims.jti = Some("token-1".into());
    claims.email = Some(palisade_email::Email::parse("alice@example.com").expect("valid"));
    claims.extra.insert("role".into(), json!("admin"));
    let token = codec.encode(&claims).expect("encodes");
    assert_eq!(codec.decode(&token, NOW), Ok(claims));
}

// Round trips, one per algorithm and key shape.

#[test]
fn hmac_algorithms_round_trip() {
    for alg in [Algorithm::Hs256, Algorithm::Hs384, Algorithm::Hs512] {
        check_round_trip(&codec(TokenConfig::new(alg, vec![Key::secret(SECRET)])));
    }
}

#[test]
fn rs256_round_trips_with_a_key_pair_and_with_a_private_key_alone() {
    check_round_trip(&rs256());
    check_round_trip(&codec(TokenConfig::new(
        Algorithm::Rs256,
        vec![Key::private_pem(RSA_PRIVATE)],
    )));
}

#[test]
fn es256_round_trips_with_a_key_pair_and_with_a_private_key_alone() {
    check_round_trip(&codec(TokenConfig::new(
        Algorithm::Es256,
        vec![Key::pem_pair(EC_PUBLIC, EC_PRIVATE)],
    )));
    check_round_trip(&codec(TokenConfig::new(
        Algorithm::Es256,
        vec![Key::private_pem(EC_PRIVATE)],
    )));
}

#[test]
fn eddsa_round_trips_with_a_key_pair_and_with_a_private_key_alone() {
    check_round_trip(&codec(TokenConfig::new(
        Algorithm::EdDsa,
        vec![Key::pem_pair(ED_PUBLIC, ED_PRIVATE)],
    )));
    check_round_trip(&codec(TokenConfig::new(
        Algorithm::EdDsa,
        vec![Key::private_pem(ED_PRIVATE)],
    )));
}

#[test]
fn a_public_key_verifies_what_its_private_key_minted() {
    let minter = codec(TokenConfig::new(Algorithm::Rs256, vec![Key::private_pem(RSA_PRIVATE)]));
    let verifier = codec(TokenConfig::new(Algorithm::Rs256, vec![Key::public_pem(RSA_PUBLIC)]));
    let token = minter.encode(&claims("bob")).expect("encodes");
    check_decode(&verifier, &token, NOW, Ok("bob"));
    assert!(!verifier.can_sign());
    assert_eq!(verifier.encode(&claims("bob")), Err(EncodeError::NoSigningKey));
}

// The algorithm names.

#[test]
fn algorithm_names_parse_in_any_case_and_display_as_jose_spells_them() {
    for alg in Algorithm::ALL {
        assert_eq!(alg.to_string().parse::<Algorithm>(), Ok(alg));
        assert_eq!(alg.to_string().to_lowercase().parse::<Algorithm>(), Ok(alg));
    }
    let names: Vec<String> = Algorithm::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"]);
    assert!("none".parse::<Algorithm>().is_err());
    assert!("RS384".parse::<Algorithm>().is_err());
}

// Building a codec: every `KeyError`.

#[test]
fn no_keys_is_refused() {
    check_build(TokenConfig::new(Algorithm::Hs256, vec![]), KeyError::NoKeys);
}

#[test]
fn a_short_secret_is_refused_with_advice_on_making_one() {
    let config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret("secret")]);
    let err = TokenCodec::new(config).unwrap_err();
    assert_eq!(
        err,
        KeyError::SecretTooShort { key: "#1".into(), algorithm: Algorithm::Hs256, len: 6, min: 32 }
    );
    let message = err.to_string();
    assert!(message.contains("openssl rand -base64 48"), "{message}");
    assert!(message.contains("cargo xtask run"), "{message}");
}

#[test]
fn secret_minimums_follow_the_hash_size() {
    let key = || vec![Key::secret([7u8; 40])];
    assert!(TokenCodec::new(TokenConfig::new(Algorithm::Hs256, key())).is_ok());
    check_build(
        TokenConfig::new(Algorithm::Hs384, key()),
        KeyError::SecretTooShort {
            key: "#1".into(),
            algorithm: Algorithm::Hs384,
            len: 40,
            min: 48,
        },
    );
    check_build(
        TokenConfig::new(Algorithm::Hs512, vec![Key::secret([7u8; 63]).with_kid("k")]),
        KeyError::SecretTooShort {
            key: "`k`".into(),
            algorithm: Algorithm::Hs512,
            len: 63,
            min: 64,
        },
    );
}

#[test]
fn a_pem_key_as_hmac_secret_is_refused() {
    check_build(
        TokenConfig::new(Algorithm::Hs256, vec![Key::secret(RSA_PUBLIC)]),
        KeyError::SecretLooksLikePem { key: "#1".into() },
    );
}

#[test]
fn material_that_does_not_fit_the_algorithm_is_refused() {
    check_build(
        TokenConfig::new(Algorithm::Rs256, vec![Key::secret(SECRET)]),
        KeyError::WrongMaterialForAlgorithm { key: "#1".into(), algorithm: Algorithm::Rs256 },
    );
    check_build(
        TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET), Key::public_pem(RSA_PUBLIC)]),
        KeyError::WrongMaterialForAlgorithm { key: "#2".into(), algorithm: Algorithm::Hs256 },
    );
}

#[test]
fn pem_material_without_keys_is_refused() {
    let key = Key { kid: None, material: KeyMaterial::Pem { public: None, private: None } };
    check_build(
        TokenConfig::new(Algorithm::EdDsa, vec![key]),
        KeyError::EmptyPem { key: "#1".into() },
    );
}

#[track_caller]
fn check_bad_pem(algorithm: Algorithm, key: Key, reason_contains: &str) {
    match TokenCodec::new(TokenConfig::new(algorithm, vec![key])) {
        Err(KeyError::BadPem { key, algorithm: alg, reason }) => {
            assert_eq!((key.as_str(), alg), ("#1", algorithm));
            assert!(reason.contains(reason_contains), "{reason}");
        }
        other => panic!("expected BadPem, got {other:?}"),
    }
}

#[test]
fn unusable_pem_keys_are_refused() {
    check_bad_pem(Algorithm::Rs256, Key::public_pem("not a pem"), "does not parse");
    check_bad_pem(Algorithm::Rs256, Key::private_pem("not a pem"), "does not parse");
    check_bad_pem(Algorithm::Rs256, Key::public_pem(RSA1024_PUBLIC), "1024 bits");
    check_bad_pem(Algorithm::Es256, Key::public_pem(EC384_PUBLIC), "not a P-256 key");
    check_bad_pem(Algorithm::Es256, Key::public_pem(RSA_PUBLIC), "does not parse");
    check_bad_pem(Algorithm::EdDsa, Key::private_pem(EC_PRIVATE), "");
    check_bad_pem(Algorithm::Rs256, Key::private_pem(ED_PRIVATE), "");
}

#[test]
fn a_public_and_private_key_of_different_pairs_are_refused() {
    check_build(
        TokenConfig::new(Algorithm::Rs256, vec![Key::pem_pair(RSA_PUBLIC, RSA2_PRIVATE)]),
        KeyError::MismatchedKeyPair { key: "#1".into() },
    );
}

#[test]
fn two_keys_with_one_kid_are_refused() {
    let keys = vec![Key::secret(SECRET).with_kid("a"), Key::secret(OTHER_SECRET).with_kid("a")];
    check_build(TokenConfig::new(Algorithm::Hs256, keys), KeyError::DuplicateKid("a".into()));
}

#[test]
fn a_leeway_above_five_minutes_is_refused() {
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.leeway_secs = 301;
    check_build(config, KeyError::LeewayTooLarge { secs: 301, max: 300 });
}

#[test]
fn defaults_are_the_secure_ones() {
    let config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    assert!(config.require_exp);
    assert_eq!(config.leeway_secs, 30);
    assert_eq!(config.max_token_bytes, 8192);
    assert_eq!((config.issuer, config.audience, config.required_typ), (None, None, None));
}

// Decoding: every `TokenError`, in the order the checks run.

#[test]
fn an_overlong_token_is_rejected_before_decoding() {
    let token = "x".repeat(8193);
    check_decode(&hs256(), &token, NOW, Err(TokenError::TooLong { len: 8193, max: 8192 }));
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.max_token_bytes = 20;
    let valid = hs256().encode(&claims("alice")).expect("encodes");
    let len = valid.len();
    check_decode(&codec(config), &valid, NOW, Err(TokenError::TooLong { len, max: 20 }));
}

#[test]
fn malformed_tokens_are_rejected() {
    let codec = hs256();
    let valid = codec.encode(&claims("alice")).expect("encodes");
    let (_header, rest) = valid.split_once('.').expect("three parts");
    let cases = [
        String::new(),
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{valid}.extra"),
        format!("!!!.{rest}"),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode("[1, 2]")),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode("{not json")),
        format!("{}.!!!", valid.rsplit_once('.').expect("three parts").0),
        format!("{valid}!"),
    ];
    for token in cases {
        let result = codec.decode(&token, NOW);
        assert!(matches!(result, Err(TokenError::Malformed(_))), "{token}: {result:?}");
    }
}

#[test]
fn a_payload_that_is_not_an_object_is_malformed() {
    let token =
        forge(json!({"alg": "HS256"}), json!([1, 2]), Some((&hs256_key(), Algorithm::Hs256)));
    assert!(matches!(hs256().decode(&token, NOW), Err(TokenError::Malformed(_))));
}

#[test]
fn alg_none_is_rejected_signed_or_not() {
    let payload = json!({"user_id": 42, "exp": NOW + 60});
    let found = || TokenError::AlgorithmNotAllowed { found: "none".into() };
    check_decode(
        &hs256(),
        &forge(json!({"alg": "none"}), payload.clone(), None),
        NOW,
        Err(found()),
    );
    let signed = forge(json!({"alg": "none"}), payload, Some((&hs256_key(), Algorithm::Hs256)));
    check_decode(&hs256(), &signed, NOW, Err(found()));
}

#[test]
fn another_algorithm_of_the_same_family_is_rejected() {
    let key = hs256_key();
    let token =
        forge(json!({"alg": "HS512"}), json!({"user_id": 1}), Some((&key, Algorithm::Hs512)));
    check_decode(
        &hs256(),
        &token,
        NOW,
        Err(TokenError::AlgorithmNotAllowed { found: "HS512".into() }),
    );
    let lowercase =
        forge(json!({"alg": "hs256"}), json!({"user_id": 1}), Some((&key, Algorithm::Hs256)));
    check_decode(
        &hs256(),
        &lowercase,
        NOW,
        Err(TokenError::AlgorithmNotAllowed { found: "hs256".into() }),
    );
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_fails_on_an_rs256_codec() {
    // The classic confusion: the verifier's public key PEM used as an HMAC secret.
    let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).expect("non-empty");
    let payload = json!({"user_id": 42, "exp": NOW + 60});
    let token = forge(
        json!({"alg": "HS256", "typ": "JWT"}),
        payload.clone(),
        Some((&confused, Algorithm::Hs256)),
    );
    check_decode(
        &rs256(),
        &token,
        NOW,
        Err(TokenError::AlgorithmNotAllowed { found: "HS256".into() }),
    );
    // Relabelled as RS256, the HMAC tag is not an RSA signature.
    let relabelled = forge(json!({"alg": "RS256"}), payload, Some((&confused, Algorithm::Hs256)));
    check_decode(&rs256(), &relabelled, NOW, Err(TokenError::BadSignature));
}

#[test]
fn a_non_string_or_missing_alg_is_malformed() {
    for header in [json!({"alg": 1}), json!({"typ": "JWT"})] {
        let token = forge(header, json!({"user_id": 1}), None);
        assert!(matches!(hs256().decode(&token, NOW), Err(TokenError::Malformed(_))));
    }
}

#[test]
fn an_unknown_kid_is_rejected() {
    let config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET).with_kid("current")]);
    let header = json!({"alg": "HS256", "kid": "../../etc/passwd"});
    let token = forge(
        header,
        json!({"user_id": 1, "exp": NOW + 60}),
        Some((&hs256_key(), Algorithm::Hs256)),
    );
    check_decode(&codec(config), &token, NOW, Err(TokenError::UnknownKey));
    // A kid does not select a key that has none.
    let header = json!({"alg": "HS256", "kid": "current"});
    let token = forge(
        header,
        json!({"user_id": 1, "exp": NOW + 60}),
        Some((&hs256_key(), Algorithm::Hs256)),
    );
    check_decode(&hs256(), &token, NOW, Err(TokenError::UnknownKey));
}

#[test]
fn a_bad_signature_is_rejected() {
    let other = codec(TokenConfig::new(Algorithm::Hs256, vec![Key::secret(OTHER_SECRET)]));
    let token = other.encode(&claims("alice")).expect("encodes");
    check_decode(&hs256(), &token, NOW, Err(TokenError::BadSignature));

    // A valid signature over a different payload.
    let valid = hs256().encode(&claims("alice")).expect("encodes");
    let (header, rest) = valid.split_once('.').expect("three parts");
    let (_payload, signature) = rest.split_once('.').expect("three parts");
    let payload = URL_SAFE_NO_PAD.encode(json!({"user_id": "admin", "exp": NOW + 60}).to_string());
    let tampered = format!("{header}.{payload}.{signature}");
    check_decode(&hs256(), &tampered, NOW, Err(TokenError::BadSignature));
}

#[test]
fn keys_from_token_headers_are_never_used() {
    // The token carries its own key (jwk), and URLs for keys (jku, x5u): all
    // are ignored, so a token signed with the attacker's key fails.
    let attacker = codec(TokenConfig::new(Algorithm::Rs256, vec![Key::private_pem(RSA2_PRIVATE)]));
    let jwk = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
    let header = json!({
        "alg": "RS256",
        "jku": "http://127.0.0.1:9/keys.json",
        "x5u": "http://127.0.0.1:9/cert.pem",
        "jwk": jwk,
    });
    let payload = json!({"user_id": "mallory", "exp": NOW + 60});
    let private = EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("parses");
    let token = forge(header.clone(), payload.clone(), Some((&private, Algorithm::Rs256)));
    check_decode(&rs256(), &token, NOW, Err(TokenError::BadSignature));
    assert!(attacker.can_sign());

    // The same headers on a token signed with the configured key change nothing.
    let ours = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("parses");
    let token = forge(header, payload, Some((&ours, Algorithm::Rs256)));
    check_decode(&rs256(), &token, NOW, Ok("mallory"));
}

#[test]
fn crit_headers_are_rejected() {
    let header = json!({"alg": "HS256", "crit": ["exp"], "exp": 1});
    let token = forge(
        header,
        json!({"user_id": 1, "exp": NOW + 60}),
        Some((&hs256_key(), Algorithm::Hs256)),
    );
    assert!(matches!(hs256().decode(&token, NOW), Err(TokenError::Malformed(_))));
}

#[test]
fn expiry_allows_the_leeway_and_no_more() {
    let codec = hs256();
    let token = codec.encode(&claims("alice")).expect("encodes");
    let exp = NOW + 3600;
    check_decode(&codec, &token, exp - 1, Ok("alice"));
    check_decode(&codec, &token, exp + 29, Ok("alice"));
    check_decode(&codec, &token, exp + 30, Err(TokenError::Expired));
    assert!(TokenError::Expired.is_expired());
    let claims = codec.decode(&token, NOW).expect("valid");
    assert!(!codec.is_expired(&claims, exp + 29));
    assert!(codec.is_expired(&claims, exp + 30));
}

#[test]
fn exp_is_required_unless_turned_off() {
    check_payload(json!({"user_id": 42}), Err(TokenError::MissingClaim("exp")));
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.require_exp = false;
    check_decode(&codec(config), &hs256_token(json!({"user_id": 42})), NOW, Ok("42"));
}

#[test]
fn not_before_in_the_future_is_rejected_beyond_the_leeway() {
    let exp = NOW + 3600;
    check_payload(json!({"user_id": 1, "exp": exp, "nbf": NOW + 30}), Ok("1"));
    check_payload(json!({"user_id": 1, "exp": exp, "nbf": NOW + 31}), Err(TokenError::NotYetValid));
}

#[test]
fn issued_at_in_the_future_is_rejected_beyond_the_leeway() {
    let exp = NOW + 3600;
    check_payload(json!({"user_id": 1, "exp": exp, "iat": NOW + 30}), Ok("1"));
    check_payload(
        json!({"user_id": 1, "exp": exp, "iat": NOW + 31}),
        Err(TokenError::InvalidClaim("iat")),
    );
}

#[test]
fn numeric_dates_must_be_non_negative_numbers() {
    let exp = NOW + 3600;
    check_payload(json!({"user_id": 1, "exp": "soon"}), Err(TokenError::InvalidClaim("exp")));
    check_payload(json!({"user_id": 1, "exp": -1}), Err(TokenError::InvalidClaim("exp")));
    check_payload(
        json!({"user_id": 1, "exp": exp, "nbf": null}),
        Err(TokenError::InvalidClaim("nbf")),
    );
    check_payload(json!({"user_id": 1, "exp": exp as f64 + 0.5}), Ok("1"));
    check_payload(json!({"user_id": 1, "exp": 1e300}), Err(TokenError::InvalidClaim("exp")));
}

#[test]
fn an_expired_token_reports_expiry_before_other_claim_problems() {
    check_payload(json!({"exp": NOW - 3600}), Err(TokenError::Expired));
}

#[test]
fn the_user_id_comes_from_user_id_or_sub() {
    let exp = NOW + 3600;
    check_payload(json!({"user_id": 42, "exp": exp}), Ok("42"));
    check_payload(json!({"user_id": -7, "exp": exp}), Ok("-7"));
    check_payload(json!({"user_id": u64::MAX, "exp": exp}), Ok("18446744073709551615"));
    check_payload(json!({"user_id": "alice", "exp": exp}), Ok("alice"));
    check_payload(json!({"sub": "bob", "exp": exp}), Ok("bob"));
    check_payload(json!({"user_id": 42, "sub": "42", "exp": exp}), Ok("42"));
}

#[test]
fn a_missing_or_conflicting_user_id_is_rejected() {
    let exp = NOW + 3600;
    check_payload(json!({"exp": exp}), Err(TokenError::MissingClaim("user_id")));
    check_payload(
        json!({"user_id": 42, "sub": "43", "exp": exp}),
        Err(TokenError::InvalidClaim("sub")),
    );
    check_payload(json!({"user_id": 4.2, "exp": exp}), Err(TokenError::InvalidClaim("user_id")));
    check_payload(json!({"user_id": true, "exp": exp}), Err(TokenError::InvalidClaim("user_id")));
    check_payload(json!({"user_id": "", "exp": exp}), Err(TokenError::InvalidClaim("user_id")));
    check_payload(json!({"sub": 42, "exp": exp}), Err(TokenError::InvalidClaim("sub")));
}

#[test]
fn email_is_validated() {
    let exp = NOW + 3600;
    let token = hs256_token(json!({"user_id": 1, "exp": exp, "email": "carol@example.com"}));
    let claims = hs256().decode(&token, NOW).expect("valid");
    assert_eq!(claims.email.as_ref().map(|e| e.as_str()), Some("carol@example.com"));
    check_payload(
        json!({"user_id": 1, "exp": exp, "email": "not an email"}),
        Err(TokenError::InvalidClaim("email")),
    );
    check_payload(
        json!({"user_id": 1, "exp": exp, "email": 5}),
        Err(TokenError::InvalidClaim("email")),
    );
}

#[test]
fn jti_must_be_a_string() {
    let exp = NOW + 3600;
    check_payload(
        json!({"user_id": 1, "exp": exp, "jti": 5}),
        Err(TokenError::InvalidClaim("jti")),
    );
}

#[test]
fn other_claims_are_kept_for_the_application() {
    let token =
        hs256_token(json!({"user_id": 1, "exp": NOW + 60, "role": "admin", "scopes": ["a", "b"]}));
    let claims = hs256().decode(&token, NOW).expect("valid");
    assert_eq!(claims.extra.get("role"), Some(&json!("admin")));
    assert_eq!(claims.extra.get("scopes"), Some(&json!(["a", "b"])));
    assert_eq!(claims.extra.len(), 2);
}

fn with_issuer_and_audience() -> TokenCodec {
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.issuer = Some("https://issuer.example".into());
    config.audience = Some("palisade".into());
    codec(config)
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let codec = with_issuer_and_audience();
    let exp = NOW + 60;
    let iss = "https://issuer.example";
    let check =
        |payload: Value, expected| check_decode(&codec, &hs256_token(payload), NOW, expected);
    check(json!({"user_id": 1, "exp": exp, "iss": iss, "aud": "palisade"}), Ok("1"));
    check(json!({"user_id": 1, "exp": exp, "iss": iss, "aud": ["other", "palisade"]}), Ok("1"));
    check(
        json!({"user_id": 1, "exp": exp, "aud": "palisade"}),
        Err(TokenError::MissingClaim("iss")),
    );
    check(
        json!({"user_id": 1, "exp": exp, "iss": "evil", "aud": "palisade"}),
        Err(TokenError::InvalidClaim("iss")),
    );
    check(json!({"user_id": 1, "exp": exp, "iss": iss}), Err(TokenError::MissingClaim("aud")));
    check(
        json!({"user_id": 1, "exp": exp, "iss": iss, "aud": "other"}),
        Err(TokenError::InvalidClaim("aud")),
    );
    check(
        json!({"user_id": 1, "exp": exp, "iss": iss, "aud": ["other"]}),
        Err(TokenError::InvalidClaim("aud")),
    );
    check(
        json!({"user_id": 1, "exp": exp, "iss": iss, "aud": [1]}),
        Err(TokenError::InvalidClaim("aud")),
    );
}

#[test]
fn an_audience_is_rejected_when_none_is_configured() {
    check_payload(
        json!({"user_id": 1, "exp": NOW + 60, "aud": "someone"}),
        Err(TokenError::InvalidClaim("aud")),
    );
}

#[test]
fn typ_is_checked_when_configured() {
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.required_typ = Some("at+jwt".into());
    let codec = codec(config);
    let payload = json!({"user_id": 1, "exp": NOW + 60});
    let key = hs256_key();
    let token = |header: Value| forge(header, payload.clone(), Some((&key, Algorithm::Hs256)));
    check_decode(&codec, &token(json!({"alg": "HS256", "typ": "at+jwt"})), NOW, Ok("1"));
    check_decode(
        &codec,
        &token(json!({"alg": "HS256", "typ": "application/AT+JWT"})),
        NOW,
        Ok("1"),
    );
    check_decode(
        &codec,
        &token(json!({"alg": "HS256", "typ": "JWT"})),
        NOW,
        Err(TokenError::InvalidClaim("typ")),
    );
    check_decode(
        &codec,
        &token(json!({"alg": "HS256"})),
        NOW,
        Err(TokenError::MissingClaim("typ")),
    );
    // Encoding writes the required typ, so minted tokens verify.
    let minted = codec.encode(&claims("alice")).expect("encodes");
    check_decode(&codec, &minted, NOW, Ok("alice"));
    assert_eq!(header_of(&minted)["typ"], "at+jwt");
}

// Key rotation.

#[test]
fn the_kid_selects_among_several_keys() {
    let old = Key::secret(OTHER_SECRET).with_kid("2024");
    let new = Key::secret(SECRET).with_kid("2025");
    let both = codec(TokenConfig::new(Algorithm::Hs256, vec![new.clone(), old.clone()]));
    let old_only = codec(TokenConfig::new(Algorithm::Hs256, vec![old]));
    let new_only = codec(TokenConfig::new(Algorithm::Hs256, vec![new]));

    let old_token = old_only.encode(&claims("old")).expect("encodes");
    let new_token = new_only.encode(&claims("new")).expect("encodes");
    assert_eq!(header_of(&old_token)["kid"], "2024");
    check_decode(&both, &old_token, NOW, Ok("old"));
    check_decode(&both, &new_token, NOW, Ok("new"));
    // The codec signs with its first key.
    assert_eq!(header_of(&both.encode(&claims("x")).expect("encodes"))["kid"], "2025");
}

#[test]
fn a_token_without_kid_is_tried_against_every_key() {
    let keys = vec![Key::secret(OTHER_SECRET).with_kid("new"), Key::secret(SECRET)];
    let both = codec(TokenConfig::new(Algorithm::Hs256, keys));
    let token = hs256_token(json!({"user_id": 9, "exp": NOW + 60}));
    check_decode(&both, &token, NOW, Ok("9"));
    let stranger = codec(TokenConfig::new(Algorithm::Hs256, vec![Key::secret([1u8; 32])]));
    let token = stranger.encode(&claims("x")).expect("encodes");
    check_decode(&both, &token, NOW, Err(TokenError::BadSignature));
}

#[test]
fn a_codec_with_only_a_secret_for_signing_has_no_kid_header() {
    let token = hs256().encode(&claims("alice")).expect("encodes");
    let header = header_of(&token);
    assert_eq!(header.get("kid"), None);
    assert_eq!(header["alg"], "HS256");
    assert_eq!(header["typ"], "JWT");
}

// Encoding.

fn header_of(token: &str) -> Value {
    part_of(token, 0)
}

fn part_of(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part exists");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

#[test]
fn user_id_is_written_as_a_number_only_when_it_is_a_canonical_integer() {
    let codec = hs256();
    let payload =
        |id: &str| part_of(&codec.encode(&claims(id)).expect("encodes"), 1)["user_id"].clone();
    assert_eq!(payload("42"), json!(42));
    assert_eq!(payload("-42"), json!(-42));
    assert_eq!(payload("042"), json!("042"));
    assert_eq!(payload("+42"), json!("+42"));
    assert_eq!(payload("18446744073709551615"), json!("18446744073709551615"));
    assert_eq!(payload("alice"), json!("alice"));
}

#[test]
fn encode_refuses_what_decode_could_not_give_back() {
    let codec = hs256();
    assert_eq!(codec.encode(&Claims::new("")), Err(EncodeError::EmptyUserId));
    let mut claims = claims("alice");
    claims.extra.insert("sub".into(), json!("bob"));
    assert_eq!(codec.encode(&claims), Err(EncodeError::ReservedClaim("sub".into())));
}

// Error names and hygiene.

#[test]
fn error_kinds_are_distinct_snake_case_names() {
    let errors = [
        TokenError::TooLong { len: 1, max: 0 },
        TokenError::Malformed("x".into()),
        TokenError::AlgorithmNotAllowed { found: "none".into() },
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::MissingClaim("exp"),
        TokenError::InvalidClaim("aud"),
    ];
    let kinds: Vec<&str> = errors.iter().map(TokenError::kind).collect();
    assert_eq!(
        kinds,
        [
            "too_long",
            "malformed",
            "algorithm_not_allowed",
            "unknown_key",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "missing_claim",
            "invalid_claim"
        ]
    );
    assert_eq!(errors.iter().filter(|e| e.is_expired()).count(), 1);
    for error in errors {
        let message = error.to_string();
        assert!(!message.ends_with('.') && message.starts_with(char::is_lowercase), "{message}");
    }
}

#[test]
fn an_attacker_chosen_alg_is_cut_and_made_printable_for_logs() {
    let alg = format!("evil\n{}", "x".repeat(100));
    let token = forge(json!({"alg": alg}), json!({}), None);
    let expected = format!("evil?{}", "x".repeat(27));
    check_decode(&hs256(), &token, NOW, Err(TokenError::AlgorithmNotAllowed { found: expected }));
}

#[test]
fn debug_output_never_shows_key_material() {
    let config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET).with_kid("k1")]);
    let shown = format!("{config:?} {:?}", codec(config.clone()));
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("k1"), "{shown}");
    let pem = Key::pem_pair(RSA_PUBLIC, RSA_PRIVATE);
    let shown = format!("{pem:?}");
    assert!(!shown.contains("BEGIN"), "{shown}");
}

#[test]
fn the_codec_is_cheap_to_share_across_threads() {
    fn is_send_sync_clone<T: Send + Sync + Clone>() {}
    is_send_sync_clone::<TokenCodec>();
    let codec = hs256();
    assert_eq!(codec.clone().algorithm(), Algorithm::Hs256);
    assert_eq!(codec.leeway_secs(), 30);
}

/// Found by the `token_decode` fuzz target: a large number in an extra claim came back one ULP
/// off after a re-mint, because serde_json's default float parser is not correctly rounded.
/// The application must see the number the token carries, however it was written.
#[test]
fn numeric_claims_survive_a_re_mint_exactly() {
    let payload =
        r#"{"user_id": 1, "Aexp": 9999999999000000000000004089650035136839201, "n": 0.1e-300}"#;
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &hs256_key(), Algorithm::Hs256.to_jwt())
            .expect("test key signs");
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
    config.require_exp = false;
    let codec = codec(config);
    let claims = codec.decode(&format!("{message}.{signature}"), NOW).expect("verifies");
    assert_eq!(claims.extra["Aexp"].as_f64(), Some(9.999999999e42));
    let again = codec.decode(&codec.encode(&claims).expect("re-mints"), NOW).expect("verifies");
    assert_eq!(again, claims);
}

/// The raw public components of a private fixture, as a JWKS would carry them.
fn components(pem: &str, alg: jsonwebtoken::Algorithm) -> crate::PublicComponents {
    use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        jsonwebtoken::Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()),
    }
    .unwrap();
    let b = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
    match Jwk::from_encoding_key(&key, alg).unwrap().algorithm {
        AlgorithmParameters::RSA(p) => crate::PublicComponents::Rsa { n: b(&p.n), e: b(&p.e) },
        AlgorithmParameters::EllipticCurve(p) => {
            crate::PublicComponents::EcP256 { x: b(&p.x), y: b(&p.y) }
        }
        AlgorithmParameters::OctetKeyPair(p) => crate::PublicComponents::Ed25519 { x: b(&p.x) },
        other => panic!("unexpected jwk parameters {other:?}"),
    }
}

#[test]
fn public_components_verify_what_the_private_key_signs() {
    use jsonwebtoken::Algorithm as J;
    for (alg, j, pem) in [
        (Algorithm::Rs256, J::RS256, RSA_PRIVATE),
        (Algorithm::Es256, J::ES256, EC_PRIVATE),
        (Algorithm::EdDsa, J::EdDSA, ED_PRIVATE),
    ] {
        let signer = codec(TokenConfig::new(alg, vec![Key::private_pem(pem).with_kid("k")]));
        let mut claims = Claims::new("7");
        claims.exp = Some(NOW + 60);
        let token = signer.encode(&claims).unwrap();
        let parts = components(pem, j);
        assert_eq!(parts.algorithm(), alg);
        let verifier =
            codec(TokenConfig::new(alg, vec![Key::public_components(parts.clone()).with_kid("k")]));
        assert!(!verifier.can_sign());
        assert_eq!(verifier.decode(&token, NOW).unwrap().user_id, "7");
        // Components of one kind never serve another algorithm.
        let other = if alg == Algorithm::Rs256 { Algorithm::Es256 } else { Algorithm::Rs256 };
        let err = TokenCodec::new(TokenConfig::new(other, vec![Key::public_components(parts)]));
        assert!(matches!(err, Err(KeyError::WrongMaterialForAlgorithm { .. })));
    }
    let weak = crate::PublicComponents::Rsa { n: vec![0xff; 128], e: vec![1, 0, 1] };
    assert_eq!(weak.rsa_bits(), Some(1024));
    let err =
        TokenCodec::new(TokenConfig::new(Algorithm::Rs256, vec![Key::public_components(weak)]));
    assert!(matches!(err, Err(KeyError::BadPem { .. })));
    let short = crate::PublicComponents::Ed25519 { x: vec![1; 31] };
    assert!(
        TokenCodec::new(TokenConfig::new(Algorithm::EdDsa, vec![Key::public_components(short)]))
            .is_err()
    );
}

#[test]
fn inspect_reads_header_and_issuer_without_verifying() {
    let b = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.sig",
        b(json!({"alg": "RS256", "kid": "k1", "jku": "http://evil"})),
        b(json!({"iss": "https://idp", "sub": "u"}))
    );
    let u = crate::inspect(&token, 8192).unwrap();
    assert_eq!(u.alg, "RS256");
    assert_eq!(u.kid.as_deref(), Some("k1"));
    assert_eq!(u.iss.as_deref(), Some("https://idp"));
    assert_eq!(u.forbidden_header, Some("jku"));
    let plain = format!("{}.{}.sig", b(json!({"alg": "none"})), b(json!({"iss": 5})));
    let u = crate::inspect(&plain, 8192).unwrap();
    assert_eq!((u.iss, u.forbidden_header), (None, None));
    assert!(matches!(crate::inspect(&token, 10), Err(TokenError::TooLong { .. })));
    assert!(matches!(crate::inspect("a.b", 8192), Err(TokenError::Malformed(_))));
    let bad_payload = format!("{}.!!.sig", b(json!({"alg": "RS256"})));
    assert!(matches!(crate::inspect(&bad_payload, 8192), Err(TokenError::Malformed(_))));
}
