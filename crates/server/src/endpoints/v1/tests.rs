//! Envelope parsing and wrapping, the close-to-error mapping and the session clock.

use palisade_transport::{Close, Message};

use super::{End, Envelope, Event, Settings, V1State, parse, wrap_reply};
use crate::close_cause::Failure;

fn settings(max_session_secs: u64, expiry_warning_secs: u64) -> Settings {
    Settings { max_session_secs, expiry_warning_secs, close_after_bad_envelopes: 3 }
}

#[track_caller]
fn check_bad(text: &str, detail_contains: &str) {
    match parse(text) {
        Ok(e) => panic!("{text:?} parsed as {e:?}; expected a bad envelope"),
        Err(detail) => {
            assert!(detail.contains(detail_contains), "detail {detail:?} lacks {detail_contains:?}")
        }
    }
}

#[test]
fn envelopes_parse() {
    assert!(matches!(parse(r#"{"type":"auth","token":"t"}"#), Ok(Envelope::Auth(t)) if t == "t"));
    assert!(
        matches!(parse(r#" {"token":"r","type":"refresh"}"#), Ok(Envelope::Refresh(t)) if t == "r")
    );
    match parse(r#"{"type":"message","data": {"a": [1, 2.50, "x"]} }"#) {
        Ok(Envelope::Message(data)) => assert_eq!(data.get(), r#"{"a": [1, 2.50, "x"]}"#),
        other => panic!("{other:?}"),
    }
    match parse(r#"{"type":"message","data":null}"#) {
        Ok(Envelope::Message(data)) => assert_eq!(data.get(), "null"),
        other => panic!("{other:?}"),
    }
    // Unknown fields are ignored, for forward compatibility.
    assert!(matches!(parse(r#"{"type":"auth","token":"t","v":2}"#), Ok(Envelope::Auth(_))));
}

#[test]
fn bad_envelopes_say_what_is_wrong() {
    check_bad("hello", "JSON object");
    check_bad(r#"["auth","t"]"#, "JSON object");
    check_bad(r#"{"type":"auth""#, "invalid envelope");
    check_bad(r#"{"token":"t"}"#, "invalid envelope");
    check_bad(r#"{"type":"watch"}"#, "unknown type \"watch\"");
    check_bad(r#"{"type":"auth"}"#, "`auth` envelope needs a string `token`");
    check_bad(r#"{"type":"auth","token":42}"#, "invalid envelope");
    check_bad(r#"{"type":"refresh","token":null}"#, "`refresh` envelope needs a string `token`");
    check_bad(r#"{"type":"message"}"#, "`message` envelope needs `data`");
    check_bad(r#"{"type":"auth","token":"a","token":"b"}"#, "duplicate field");
}

#[test]
fn replies_are_wrapped_as_json_when_they_are_json() {
    let wrap = |t: &str| match wrap_reply(Message::Text(t.into())) {
        Message::Text(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(wrap(r#"{"n": 1}"#), r#"{"type":"message","data":{"n": 1}}"#);
    assert_eq!(wrap("42"), r#"{"type":"message","data":42}"#);
    assert_eq!(wrap(r#""hi""#), r#"{"type":"message","data":"hi"}"#);
    assert_eq!(
        wrap(r#"Server received: "hi""#),
        r#"{"type":"message","data":"Server received: \"hi\""}"#
    );
    assert_eq!(wrap("{not json"), r#"{"type":"message","data":"{not json"}"#);
    assert_eq!(wrap_reply(Message::Binary(vec![1, 2].into())), Message::Binary(vec![1, 2].into()));
}

#[test]
fn closes_map_to_error_reasons() {
    let reason =
        |code, text: &'static str| Failure::for_close(&Close::new(code, text)).cause.error_name();
    assert_eq!(reason(1001, "server shutting down"), "shutting_down");
    assert_eq!(reason(1001, "idle timeout"), "idle_timeout");
    assert_eq!(reason(1002, "protocol error"), "protocol_error");
    assert_eq!(reason(1007, "invalid utf-8"), "invalid_utf8");
    assert_eq!(reason(1009, "message too big"), "message_too_big");
    assert_eq!(reason(1008, "rate limit exceeded"), "rate_limited");
    assert_eq!(reason(1008, "session revoked"), "revoked");
    assert_eq!(reason(1008, "authentication timeout"), "auth_timeout");
    assert_eq!(reason(1008, "something else"), "policy");
    assert_eq!(reason(1003, "chat accepts text only"), "closed");
    let f = Failure::for_close(&Close::new(1003, "chat accepts text only"));
    assert_eq!(f.detail, "chat accepts text only");
}

#[test]
fn session_clock_warns_then_expires() {
    let mut v1 = V1State::new(settings(3600, 60));
    v1.start(1000, Some(1300), 30);
    assert_eq!(v1.next_event(), Some((1240, Event::Warn)));
    v1.warned = true;
    assert_eq!(v1.next_event(), Some((1330, Event::End(End::TokenExpired))));
    // A refresh warns again for the new token.
    v1.set_token(Some(2000));
    assert_eq!(v1.next_event(), Some((1940, Event::Warn)));
}

#[test]
fn session_clock_ends_at_the_limit_without_warning() {
    let mut v1 = V1State::new(settings(100, 60));
    v1.start(1000, Some(5000), 0);
    assert_eq!(v1.next_event(), Some((1100, Event::End(End::SessionTooLong))));
    let mut v1 = V1State::new(settings(0, 0));
    v1.start(1000, None, 0);
    assert_eq!(v1.next_event(), None);
    let mut v1 = V1State::new(settings(0, 0));
    v1.start(1000, Some(1010), 5);
    assert_eq!(v1.next_event(), Some((1015, Event::End(End::TokenExpired))));
}

#[test]
fn defaults_are_documented_values() {
    let c = crate::config::Config::from_toml("").expect("defaults");
    assert_eq!(c.auth.max_session_secs, 86_400);
    assert_eq!(c.auth.expiry_warning_secs, 60);
    assert!(c.subprotocol.enabled);
    assert_eq!(c.subprotocol.close_after_bad_envelopes, 3);
    let err = crate::config::Config::from_toml("[subprotocol]\nclose_after_bad_envelopes = 0\n")
        .expect_err("zero is refused");
    assert!(format!("{err:#}").contains("subprotocol.close_after_bad_envelopes"));
    let off = crate::config::Config::from_toml("[subprotocol]\nenabled = false\n").expect("off");
    assert!(Settings::from_config(&off).is_none());
}
