//! Token decoding. The first byte picks the input's form: a raw token string; a payload signed
//! here with the right key under a fixed HS256 header (so the fuzzer gets past the signature to
//! the claim checks); or a header and a payload, split at the first newline, signed here.
//! No panic; a token that verifies re-mints to a token that verifies to the same claims.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use libfuzzer_sys::fuzz_target;
use palisade_token::{Algorithm, Key, TokenCodec, TokenConfig};

const SECRET: &[u8] = b"fuzzing-secret-that-is-long-enough-0123456789";
const NOW: u64 = 1_700_000_000;

fn codec() -> &'static TokenCodec {
    static CODEC: OnceLock<TokenCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let mut config = TokenConfig::new(Algorithm::Hs256, vec![Key::secret(SECRET)]);
        config.require_exp = false;
        TokenCodec::new(config).expect("codec")
    })
}

fn signed(header: &[u8], payload: &[u8]) -> String {
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let key = EncodingKey::from_secret(SECRET).expect("hmac key");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("hmac signing");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let token = match mode % 3 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => signed(br#"{"alg":"HS256","typ":"JWT"}"#, rest),
        _ => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            signed(&rest[..cut], rest.get(cut + 1..).unwrap_or_default())
        }
    };
    let Ok(claims) = codec().decode(&token, NOW) else { return };
    assert!(!claims.user_id.is_empty(), "verified claims without a user id");
    let again =
        codec().encode(&claims).unwrap_or_else(|e| panic!("verified claims do not re-mint: {e}"));
    let decoded =
        codec().decode(&again, NOW).unwrap_or_else(|e| panic!("re-minted token refused: {e}"));
    assert_eq!(decoded, claims, "claims changed through a re-mint");
});
