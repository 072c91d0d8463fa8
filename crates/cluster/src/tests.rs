//! Unit tests of the local cache and the memory backend.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::local::Local;
use crate::memory::MemoryState;
use crate::redis_state::{RedisConfig, StartError};
use crate::wire::{Envelope, Wire};
use crate::{Admission, Revocation, SessionEntry, SharedState, TokenFacts};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn entry(id: &str, user_id: &str) -> SessionEntry {
    SessionEntry {
        id: id.into(),
        user_id: user_id.into(),
        node: String::new(),
        conn: "1".into(),
        peer: "127.0.0.1:40000".parse().unwrap(),
        endpoint: "secure".into(),
        started: 1,
        expires: None,
    }
}

fn facts(jti: Option<&str>, iat: Option<u64>) -> TokenFacts {
    TokenFacts { jti: jti.map(str::to_owned), iat }
}

#[test]
fn bans_expire_and_can_be_lifted() {
    let local = Local::default();
    let now = Instant::now();
    local.ban(ip("192.0.2.1"), Duration::from_secs(10), now);
    assert!(local.is_banned(ip("192.0.2.1"), now + Duration::from_secs(9)));
    assert!(!local.is_banned(ip("192.0.2.1"), now + Duration::from_secs(10)));
    assert!(local.unban(ip("192.0.2.1"), now));
    assert!(!local.unban(ip("192.0.2.1"), now), "nothing left to lift");
    assert!(!local.is_banned(ip("192.0.2.1"), now));
}

#[test]
fn sync_reports_added_changed_and_vanished_bans() {
    let local = Local::default();
    let now = Instant::now();
    local.ban(ip("192.0.2.1"), Duration::from_secs(60), now);
    local.ban(ip("192.0.2.2"), Duration::from_secs(60), now);
    local.ban(ip("192.0.2.3"), Duration::from_secs(60), now);
    let redis = [
        (ip("192.0.2.1"), Duration::from_millis(59_800)), // Same ban (within a second).
        (ip("192.0.2.2"), Duration::from_secs(5)),        // Shortened elsewhere.
        (ip("192.0.2.4"), Duration::from_secs(30)),       // New.
    ];
    let (added, removed) = local.replace_bans(&redis, now);
    assert_eq!(
        added,
        vec![(ip("192.0.2.2"), Duration::from_secs(5)), (ip("192.0.2.4"), Duration::from_secs(30))]
    );
    assert_eq!(removed, vec![ip("192.0.2.3")]);
    assert!(!local.is_banned(ip("192.0.2.3"), now));
    assert_eq!(local.bans(now).len(), 3);
}

#[test]
fn ban_cache_is_bounded() {
    let local = Local::default();
    let now = Instant::now();
    for i in 0..crate::local::MAX_ENTRIES as u32 + 10 {
        let addr = IpAddr::from(i.to_be_bytes());
        local.ban(addr, Duration::from_secs(60 + u64::from(i)), now);
    }
    assert_eq!(local.bans(now).len(), crate::local::MAX_ENTRIES);
    // The bans that end first made room.
    assert!(!local.is_banned(IpAddr::from(0u32.to_be_bytes()), now));
    assert!(
        local.is_banned(IpAddr::from((crate::local::MAX_ENTRIES as u32 + 9).to_be_bytes()), now)
    );
}

#[test]
fn token_revocation_matches_its_jti_until_it_expires() {
    let local = Local::default();
    local.add_session(entry("s1", "42"), facts(Some("t1"), Some(100)));
    local.add_session(entry("s2", "42"), facts(Some("t2"), Some(100)));
    let (_, ids) = local.revoke(Revocation::Token { jti: "t1".into(), until: 1_000 }, 500);
    assert_eq!(ids, ["s1"]);
    assert!(local.is_revoked("42", &facts(Some("t1"), None), 999));
    assert!(local.is_revoked("other-user", &facts(Some("t1"), None), 999), "a jti is global");
    assert!(!local.is_revoked("42", &facts(Some("t1"), None), 1_000), "expired with the token");
    assert!(!local.is_revoked("42", &facts(Some("t2"), None), 999));
    assert!(!local.is_revoked("42", &facts(None, None), 999));
}

#[test]
fn user_revocation_refuses_older_tokens_and_tokens_without_iat() {
    let local = Local::default();
    local.add_session(entry("old", "42"), facts(None, Some(100)));
    local.add_session(entry("new", "42"), facts(None, Some(300)));
    local.add_session(entry("noiat", "42"), facts(None, None));
    local.add_session(entry("other", "7"), facts(None, Some(100)));
    let r = Revocation::IssuedBefore { user_id: "42".into(), before: 200, until: 10_000 };
    let (_, ids) = local.revoke(r, 150);
    assert_eq!(ids, ["noiat", "old"]);
    assert!(local.is_revoked("42", &facts(None, Some(199)), 150));
    assert!(!local.is_revoked("42", &facts(None, Some(200)), 150));
    assert!(!local.is_revoked("7", &facts(None, Some(1)), 150));
}

#[test]
fn revocations_of_the_same_user_merge_to_the_widest() {
    let local = Local::default();
    let r1 = Revocation::IssuedBefore { user_id: "42".into(), before: 200, until: 5_000 };
    let r2 = Revocation::IssuedBefore { user_id: "42".into(), before: 100, until: 9_000 };
    local.revoke(r1, 0);
    let (merged, _) = local.revoke(r2, 0);
    assert_eq!(
        merged,
        Revocation::IssuedBefore { user_id: "42".into(), before: 200, until: 9_000 }
    );
    assert_eq!(local.revocations(0), vec![merged]);
}

#[test]
fn revocation_sync_names_only_newly_matched_sessions() {
    let local = Local::default();
    local.add_session(entry("s1", "42"), facts(Some("t1"), None));
    local.add_session(entry("s2", "42"), facts(Some("t2"), None));
    local.revoke(Revocation::Token { jti: "t1".into(), until: 1_000 }, 0);
    let from_redis = vec![
        Revocation::Token { jti: "t1".into(), until: 1_000 },
        Revocation::Token { jti: "t2".into(), until: 1_000 },
        Revocation::Token { jti: "gone".into(), until: 10 },
    ];
    assert_eq!(local.replace_revocations(from_redis, 100), ["s2"]);
    assert_eq!(local.revocations(100).len(), 2, "expired ones are dropped");
}

#[tokio::test]
async fn memory_state_caps_sessions_per_user() {
    let (state, _events) = MemoryState::new("solo");
    let t = TokenFacts::default();
    assert_eq!(state.open_session(entry("a", "42"), t.clone(), 2).await, Admission::Admitted);
    assert_eq!(state.open_session(entry("b", "42"), t.clone(), 2).await, Admission::Admitted);
    assert_eq!(
        state.open_session(entry("c", "42"), t.clone(), 2).await,
        Admission::TooManySessions { max: 2 }
    );
    assert_eq!(state.open_session(entry("d", "7"), t.clone(), 2).await, Admission::Admitted);
    state.close_session("a");
    assert_eq!(state.open_session(entry("c", "42"), t.clone(), 2).await, Admission::Admitted);
    let list = state.sessions().await.unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(|s| s.node == "solo"));
    let report = state.publish("42".into(), "hi".into(), 2).await.unwrap();
    assert_eq!(report.nodes_listening, 0);
    assert!(state.encode_metrics().contains("palisade_cluster_publish_sessions_total 2"));
    assert!(state.status().connected);
}

#[test]
fn wire_messages_are_flat_json() {
    let env =
        Envelope { origin: "node-a".into(), msg: Wire::Ban { ip: ip("192.0.2.1"), ms: 1500 } };
    let json = serde_json::to_string(&env).unwrap();
    assert_eq!(json, r#"{"origin":"node-a","type":"ban","ip":"192.0.2.1","ms":1500}"#);
    assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
    let env = Envelope {
        origin: "node-b".into(),
        msg: Wire::RevokeTokens { revocation: Revocation::Token { jti: "t1".into(), until: 9 } },
    };
    let json = serde_json::to_string(&env).unwrap();
    assert_eq!(
        json,
        r#"{"origin":"node-b","type":"revoke_tokens","revocation":{"kind":"token","jti":"t1","until":9}}"#
    );
    assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), env);
}

fn config(url: &str, node_id: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        node_id: node_id.into(),
        key_prefix: "palisade:".into(),
        command_timeout: Duration::from_millis(250),
        heartbeat: Duration::from_secs(5),
    }
}

#[test]
fn config_is_checked_without_connecting() {
    assert!(config("redis://127.0.0.1:6379/0", "web-1").validate().is_ok());
    assert!(config("rediss://cache.example:6380/0", "web-1").validate().is_ok());
    assert!(matches!(
        config("http://127.0.0.1/", "web-1").validate(),
        Err(StartError::InvalidUrl(_))
    ));
    for bad in ["", "a|b", "has space", &"x".repeat(65)] {
        assert!(
            matches!(config("redis://h/0", bad).validate(), Err(StartError::InvalidNodeId(_))),
            "{bad:?}"
        );
    }
    let mut c = config("redis://h/0", "n");
    c.command_timeout = Duration::ZERO;
    assert!(matches!(c.validate(), Err(StartError::InvalidTimeout)));
}

#[test]
fn logged_url_hides_credentials() {
    let c = config("redis://user:s3cret@cache.example:6379/2?protocol=resp3", "n");
    assert_eq!(c.redacted_url(), "redis://cache.example:6379/2");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn sessions_per_user_are_counted_through_adds_replacements_and_removals() {
    let local = Local::default();
    local.add_session(entry("s1", "alice"), facts(None, None));
    local.add_session(entry("s2", "alice"), facts(None, None));
    local.add_session(entry("s3", "bob"), facts(None, None));
    assert_eq!(local.sessions_of("alice"), 2);
    // The same id again replaces the entry; moving it to another user moves the count.
    local.add_session(entry("s2", "bob"), facts(None, None));
    assert_eq!((local.sessions_of("alice"), local.sessions_of("bob")), (1, 2));
    assert!(local.remove_session("s1").is_some());
    assert!(local.remove_session("s1").is_none(), "already gone");
    assert_eq!((local.sessions_of("alice"), local.sessions_of("bob")), (0, 2));
    local.remove_session("s2");
    local.remove_session("s3");
    assert_eq!(local.sessions_of("bob"), 0);
}
