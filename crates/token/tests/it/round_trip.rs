//! Property test: `decode(encode(c)) == c` for any claims the codec accepts.

use palisade_token::{Algorithm, Claims, Key, TokenCodec, TokenConfig};
use proptest::prelude::*;
use serde_json::{Map, Value};

const SECRET: &str = "property-test-secret-0123456789abcdef-0123456789";
const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "palisade";

/// A codec that expects `audience`: a token with an `aud` is only accepted by
/// a codec configured with it (RFC 7519 section 4.1.3), one without by one without.
fn codec(audience: Option<&str>) -> TokenCodec {
    let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET).with_kid("k")]);
    config.audience = audience.map(str::to_owned);
    TokenCodec::new(config).expect("valid config")
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn extra() -> impl Strategy<Value = Map<String, Value>> {
    // Names with a leading `x_` can never collide with a reserved claim.
    prop::collection::btree_map("x_[a-z_]{0,8}", json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn user_id() -> impl Strategy<Value = String> {
    prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "0[0-9]{1,5}", "\\PC{1,20}",]
}

fn email() -> impl Strategy<Value = Option<palisade_email::Email>> {
    prop::option::of("[a-z]{1,10}@[a-z]{1,10}\\.(com|org|net)").prop_map(|e| {
        e.map(|e| palisade_email::Email::parse(&e).expect("generated address is valid"))
    })
}

prop_compose! {
    fn claims()(
        user_id in user_id(),
        exp in prop::option::of(NOW..NOW + 10_000_000),
        nbf in prop::option::of(0..=NOW),
        iat in prop::option::of(0..=NOW),
        iss in prop::option::of(prop_oneof![Just(ISSUER.to_owned()), "\\PC{0,20}"]),
        aud in prop::option::of(Just(AUDIENCE.to_owned())),
        email in email(),
        jti in prop::option::of("[A-Za-z0-9-]{0,24}"),
        extra in extra(),
    ) -> Claims {
        Claims { user_id, exp: exp.or(Some(NOW + 1)), nbf, iat, iss, aud, email, jti, extra }
    }
}

proptest! {
    #[test]
    fn decode_inverts_encode(claims in claims()) {
        let codec = codec(claims.aud.as_deref());
        let token = codec.encode(&claims).expect("encodes");
        prop_assert_eq!(codec.decode(&token, NOW), Ok(claims));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_input(token in "\\PC{0,200}") {
        let result = codec(None).decode(&token, NOW);
        prop_assert!(result.is_err());
    }
}
