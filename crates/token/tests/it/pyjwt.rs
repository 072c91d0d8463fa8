//! Tokens minted by PyJWT (checked in by `fixtures/make_pyjwt_fixtures.py`) verify.

use palisade_token::{Algorithm, Key, TokenCodec, TokenConfig};
use serde_json::Value;

const FIXTURES: &str = include_str!("../fixtures/pyjwt-tokens.json");
/// 2030-01-01: after the fixtures' `iat`, before their far-future `exp`.
const NOW: u64 = 1_893_456_000;

fn pem(name: &str) -> &'static str {
    match name {
        "rsa-public.pem" => include_str!("../fixtures/rsa-public.pem"),
        "ec-public.pem" => include_str!("../fixtures/ec-public.pem"),
        "ed25519-public.pem" => include_str!("../fixtures/ed25519-public.pem"),
        other => panic!("no fixture key {other}"),
    }
}

fn codec_for(fixtures: &Value, fixture: &Value) -> TokenCodec {
    let alg: Algorithm = fixture["alg"].as_str().expect("alg").parse().expect("known alg");
    let key = match fixture["key"].as_str().expect("key") {
        "secret" => Key::secret(fixtures["secret"].as_str().expect("secret")),
        "hs512_secret" => Key::secret(fixtures["hs512_secret"].as_str().expect("secret")),
        name => Key::public_pem(pem(name)),
    };
    let key = match fixture["kid"].as_str() {
        Some(kid) => key.with_kid(kid),
        None => key,
    };
    TokenCodec::new(TokenConfig::new(alg, vec![key])).expect("fixture key is valid")
}

#[track_caller]
fn check(fixtures: &Value, fixture: &Value) {
    let name = fixture["name"].as_str().expect("name");
    let token = fixture["token"].as_str().expect("token");
    let result = codec_for(fixtures, fixture).decode(token, NOW);
    let expect = &fixture["expect"];
    if let Some(kind) = expect.get("err") {
        let kind = kind.as_str().expect("err kind");
        assert_eq!(result.as_ref().map_err(|e| e.kind()).err(), Some(kind), "{name}: {result:?}");
        return;
    }
    let claims = result.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    let ok = &expect["ok"];
    assert_eq!(claims.user_id, ok["user_id"].as_str().expect("user_id"), "{name}");
    assert_eq!(claims.exp, Some(4_102_444_800), "{name}: exp is 2100-01-01");
    let email = ok["email"].as_str().map(|e| palisade_email::Email::parse(e).expect("valid"));
    assert_eq!(claims.email, email, "{name}");
    assert_eq!(&Value::Object(claims.extra), &ok["extra"], "{name}");
}

#[test]
fn every_pyjwt_fixture_decodes_as_recorded() {
    let fixtures: Value = serde_json::from_str(FIXTURES).expect("fixture file is json");
    let list = fixtures["fixtures"].as_array().expect("fixture list");
    assert!(list.len() >= 17, "{} fixtures", list.len());
    for fixture in list {
        check(&fixtures, fixture);
    }
}

#[test]
fn the_guide_token_is_an_integer_user_id_with_hs256() {
    let fixtures: Value = serde_json::from_str(FIXTURES).expect("fixture file is json");
    let guide = fixtures["fixtures"]
        .as_array()
        .expect("fixture list")
        .iter()
        .find(|f| f["name"] == "guide_hs256_int_user_id")
        .expect("guide fixture");
    let codec = codec_for(&fixtures, guide);
    let claims = codec.decode(guide["token"].as_str().expect("token"), NOW).expect("verifies");
    assert_eq!(claims.user_id, "42");
    // Past its 2100 expiry it is rejected as expired, which the server answers with `Token Expired`.
    let err =
        codec.decode(guide["token"].as_str().expect("token"), 4_102_444_800 + 30).unwrap_err();
    assert!(err.is_expired());
}
