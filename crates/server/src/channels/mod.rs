//! Channels on one node, in memory: publish/subscribe over `palisade.v1` with grants from the
//! token, history with recovery after a reconnect, and presence (docs/subprotocol.md#channels).
//!
//! - [`grants`]: channel names, patterns (`chat:*`, `user:{user_id}`) and rights.
//! - [`hub`]: the channels themselves: offsets, subscribers, fan-out, history, presence.
//! - [`admin`]: `POST /channels/{channel}/publish`, `GET /channels`, `GET /channels/{channel}/presence`,
//!   `DELETE /channels/{channel}` and `DELETE /channels/{channel}/subscribers/{user_id}`.
//!
//! The connection side (requests, replies, re-checks on refresh) is `endpoints/channels.rs`.

pub(crate) mod admin;
pub(crate) mod grants;
pub(crate) mod hub;

use std::sync::Arc;

use palisade_transport::{Message, PushKind, Utf8Bytes};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::ChannelsConfig;
pub(crate) use grants::{Grants, Pattern, Right};
pub(crate) use hub::{Hub, HubSettings, Position};

/// A channel request refused by the application's [`crate::app::Handler`] (or by the grants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    /// The `detail` of the `permission_denied` error the client gets.
    pub detail: String,
}

impl Denied {
    /// A refusal with this detail.
    pub fn new(detail: impl Into<String>) -> Denied {
        Denied { detail: detail.into() }
    }
}

/// The outcome of a channel authorisation: `Ok(())` allows.
pub type Authorization = Result<(), Denied>;

/// Checks `[channels]`, naming the key.
pub(crate) fn validate(c: &ChannelsConfig) -> anyhow::Result<()> {
    if c.max_subscriptions_per_session == 0 {
        anyhow::bail!("channels.max_subscriptions_per_session must be greater than 0");
    }
    if c.history_size > 100_000 {
        anyhow::bail!("channels.history_size ({}) must be at most 100000", c.history_size);
    }
    if c.history_max_bytes == 0 {
        anyhow::bail!("channels.history_max_bytes must be greater than 0");
    }
    if c.grants_claim.is_empty() {
        anyhow::bail!("channels.grants_claim must not be empty");
    }
    if RESERVED_CLAIMS.contains(&c.grants_claim.as_str()) {
        anyhow::bail!(
            "channels.grants_claim ({:?}) names a registered claim; use another name such as \"channels\"",
            c.grants_claim
        );
    }
    for p in &c.public {
        Pattern::parse(p).map_err(|e| anyhow::anyhow!("channels.public: {p:?}: {e}"))?;
    }
    Ok(())
}

/// Claims with a field of their own in `Claims`; never in its `extra` map.
const RESERVED_CLAIMS: [&str; 9] =
    ["user_id", "sub", "exp", "nbf", "iat", "iss", "aud", "email", "jti"];

/// What the connection side needs besides the hub's own settings.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) grants_claim: String,
    pub(crate) public: Vec<Pattern>,
    pub(crate) max_subscriptions: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::new(&ChannelsConfig::default())
    }
}

impl Policy {
    pub(crate) fn new(c: &ChannelsConfig) -> Policy {
        Policy {
            grants_claim: c.grants_claim.clone(),
            public: c.public.iter().filter_map(|p| Pattern::parse(p).ok()).collect(),
            max_subscriptions: c.max_subscriptions_per_session,
        }
    }
}

/// The hub and policy of a server, from its configuration; the hub shares its channels
/// through the cluster when it offers a channel store (cluster mode), and then receives what
/// the store delivers.
pub(crate) fn build(
    config: &crate::config::Config,
    cluster: &dyn palisade_cluster::SharedState,
) -> (Arc<Hub>, Arc<Policy>) {
    let settings = HubSettings::new(&config.channels, config.limits.max_message_bytes);
    let hub = match cluster.channel_store(settings.store_settings()) {
        Some(store) => {
            let hub = Arc::new(Hub::clustered(settings, store.clone(), cluster.node_id()));
            let weak = Arc::downgrade(&hub);
            store.set_sink(Arc::new(move |remote| {
                if let Some(hub) = weak.upgrade() {
                    hub.deliver(remote);
                }
            }));
            hub
        }
        None => Arc::new(Hub::new(settings)),
    };
    (hub, Arc::new(Policy::new(&config.channels)))
}

impl Default for Hub {
    fn default() -> Hub {
        Hub::new(HubSettings::default())
    }
}

impl Default for HubSettings {
    fn default() -> HubSettings {
        HubSettings::new(&ChannelsConfig::default(), 64 * 1024)
    }
}

// ---- pushes ----

/// The [`PushKind`] of a publication pushed to a subscriber: `on_push` sends it as it is
/// instead of wrapping it in a `message` envelope like an application push.
pub(crate) const PUBLICATION: PushKind = PushKind(1);

/// The [`PushKind`] of an `unsubscribed` notice the node pushes (an admin ended the
/// subscription): sent as it is, and the connection forgets the subscription.
pub(crate) const UNSUBSCRIBED: PushKind = PushKind(2);

// ---- requests ----

/// A client's channel request.
#[derive(Debug)]
pub(crate) enum Request {
    Subscribe { channel: String, id: Option<Value>, since: Option<Position> },
    Unsubscribe { channel: String, id: Option<Value> },
    Publish { channel: String, id: Option<Value>, data: Box<RawValue> },
    Presence { channel: String, id: Option<Value> },
    History { channel: String, id: Option<Value>, limit: Option<usize> },
}

/// A channel request that cannot be served as sent: answered with an `error` envelope carrying
/// its `id`, and the connection stays open.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub(crate) id: Option<Value>,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// The envelope types this module serves.
pub(crate) const TYPES: [&str; 5] = ["subscribe", "unsubscribe", "publish", "presence", "history"];

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    channel: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    since: Option<Value>,
    #[serde(default)]
    limit: Option<Value>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses a channel envelope of type `kind` (one of [`TYPES`]).
pub(crate) fn parse(kind: &str, text: &str) -> Result<Request, BadRequest> {
    let f: Fields = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        reason: "bad_envelope",
        detail: format!("invalid envelope: {e}"),
    })?;
    let id = f.id;
    let bad =
        |id: &Option<Value>, reason, detail: String| BadRequest { id: id.clone(), reason, detail };
    if let Some(v) = &id
        && !(v.is_u64() || v.is_string())
    {
        return Err(bad(
            &None,
            "bad_envelope",
            format!("`id` is a non-negative integer or a string, not {v}"),
        ));
    }
    let channel = match &f.channel {
        Some(Value::String(c)) => c.clone(),
        Some(_) => return Err(bad(&id, "bad_channel", "`channel` is a string".into())),
        None => {
            return Err(bad(&id, "bad_channel", format!("a `{kind}` envelope needs a `channel`")));
        }
    };
    if let Err(detail) = grants::validate_channel(&channel) {
        return Err(bad(&id, "bad_channel", detail));
    }
    match kind {
        "subscribe" => {
            let since = match &f.since {
                None | Some(Value::Null) => None,
                Some(v) => {
                    let epoch = v.get("epoch").and_then(Value::as_str);
                    let offset = v.get("offset").and_then(Value::as_u64);
                    match (epoch, offset) {
                        (Some(e), Some(o)) if !e.is_empty() && e.len() <= 64 => {
                            Some(Position { epoch: e.to_owned(), offset: o })
                        }
                        _ => {
                            let detail = "`since` is {\"epoch\": \"<from subscribed>\", \"offset\": <integer>}";
                            return Err(bad(&id, "bad_envelope", detail.into()));
                        }
                    }
                }
            };
            Ok(Request::Subscribe { channel, id, since })
        }
        "unsubscribe" => Ok(Request::Unsubscribe { channel, id }),
        "publish" => match f.data {
            Some(data) => Ok(Request::Publish { channel, id, data }),
            None => Err(bad(&id, "bad_envelope", "a `publish` envelope needs `data`".into())),
        },
        "presence" => Ok(Request::Presence { channel, id }),
        "history" => {
            let limit = match &f.limit {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                    None => {
                        return Err(bad(
                            &id,
                            "bad_envelope",
                            "`limit` is a non-negative integer".into(),
                        ));
                    }
                },
            };
            Ok(Request::History { channel, id, limit })
        }
        other => Err(bad(&id, "bad_envelope", format!("unknown channel envelope {other:?}"))),
    }
}

// ---- replies ----

fn put_id(out: &mut String, id: Option<&Value>) {
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(&id.to_string());
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn list(out: &mut String, items: &[Utf8Bytes]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
}

/// `{"type":"error","id":..,"reason":..,"detail":..}`.
pub(crate) fn error_reply(id: Option<&Value>, reason: &str, detail: &str) -> Message {
    let mut out = String::from("{\"type\":\"error\"");
    put_id(&mut out, id);
    out.push_str(&format!(",\"reason\":{},\"detail\":{}}}", json_str(reason), json_str(detail)));
    Message::Text(out.into())
}

/// `{"type":"subscribed",..}`.
pub(crate) fn subscribed_reply(channel: &str, id: Option<&Value>, s: &hub::Subscribed) -> Message {
    let mut out = format!("{{\"type\":\"subscribed\",\"channel\":{}", json_str(channel));
    put_id(&mut out, id);
    out.push_str(&format!(
        ",\"epoch\":{},\"offset\":{},\"recovered\":{},\"publications\":",
        json_str(&s.epoch),
        s.offset,
        s.recovered
    ));
    list(&mut out, &s.publications);
    out.push('}');
    Message::Text(out.into())
}

/// `{"type":"unsubscribed",..}`.
pub(crate) fn unsubscribed_reply(channel: &str, id: Option<&Value>, reason: &str) -> Message {
    Message::Text(unsubscribed_text(channel, id, reason).into())
}

/// The text of [`unsubscribed_reply`].
pub(crate) fn unsubscribed_text(channel: &str, id: Option<&Value>, reason: &str) -> String {
    let mut out = format!("{{\"type\":\"unsubscribed\",\"channel\":{}", json_str(channel));
    put_id(&mut out, id);
    out.push_str(&format!(",\"reason\":{}}}", json_str(reason)));
    out
}

/// The channel of an `unsubscribed` push made by the hub (an admin call ended the
/// subscription), so the connection can forget it; `None` for any other push.
pub(crate) fn unsubscribed_channel(msg: &Message) -> Option<String> {
    #[derive(Deserialize)]
    struct Notice {
        channel: String,
    }
    match msg {
        Message::Text(t) if t.starts_with("{\"type\":\"unsubscribed\",") => {
            serde_json::from_str::<Notice>(t).ok().map(|n| n.channel)
        }
        _ => None,
    }
}

/// `{"type":"ok","id":..,"offset":..}`.
pub(crate) fn ok_reply(id: Option<&Value>, offset: Option<u64>) -> Message {
    let mut out = String::from("{\"type\":\"ok\"");
    put_id(&mut out, id);
    if let Some(o) = offset {
        out.push_str(&format!(",\"offset\":{o}"));
    }
    out.push('}');
    Message::Text(out.into())
}

/// `{"type":"presence",..}`.
pub(crate) fn presence_reply(
    channel: &str,
    id: Option<&Value>,
    users: &[hub::PresenceRow],
) -> Message {
    let mut out = String::from("{\"type\":\"presence\"");
    put_id(&mut out, id);
    let users = serde_json::to_string(users).unwrap_or_else(|_| "[]".into());
    out.push_str(&format!(",\"channel\":{},\"users\":{users}}}", json_str(channel)));
    Message::Text(out.into())
}

/// `{"type":"history",..}`.
pub(crate) fn history_reply(
    channel: &str,
    id: Option<&Value>,
    epoch: &str,
    items: &[Utf8Bytes],
) -> Message {
    let mut out = String::from("{\"type\":\"history\"");
    put_id(&mut out, id);
    out.push_str(&format!(
        ",\"channel\":{},\"epoch\":{},\"publications\":",
        json_str(channel),
        json_str(epoch)
    ));
    list(&mut out, items);
    out.push('}');
    Message::Text(out.into())
}

// ---- metrics ----

/// Appends the channel counters and gauges to an OpenMetrics exposition.
pub(crate) fn append_metrics(body: &mut String, hub: &Hub) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let s = &hub.stats;
    let (channels, subs, bytes) = hub.totals();
    let mut m = String::new();
    let _ = write!(
        m,
        "# TYPE palisade_channel_subscriptions counter\n\
         # HELP palisade_channel_subscriptions Channel subscriptions made.\n\
         palisade_channel_subscriptions_total {}\n\
         # TYPE palisade_channel_publications counter\n\
         # HELP palisade_channel_publications Publications to channels (clients, admin and presence events).\n\
         palisade_channel_publications_total {}\n\
         # TYPE palisade_channel_recoveries counter\n\
         # HELP palisade_channel_recoveries Subscribes with `since`, by outcome.\n\
         palisade_channel_recoveries_total{{outcome=\"recovered\"}} {}\n\
         palisade_channel_recoveries_total{{outcome=\"not_recovered\"}} {}\n\
         # TYPE palisade_channel_state_lost counter\n\
         # HELP palisade_channel_state_lost Cluster mode: subscriptions closed with insufficient_state because this node missed publications.\n\
         palisade_channel_state_lost_total {}\n",
        s.subscriptions.load(Relaxed),
        s.publications.load(Relaxed),
        s.recovered.load(Relaxed),
        s.not_recovered.load(Relaxed),
        s.state_lost.load(Relaxed),
    );
    m.push_str(
        "# TYPE palisade_channel_denials counter\n\
         # HELP palisade_channel_denials Channel requests refused, by reason.\n",
    );
    for (reason, n) in s.denials.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(m, "palisade_channel_denials_total{{reason=\"{reason}\"}} {n}");
    }
    let _ = write!(
        m,
        "# TYPE palisade_channels_active gauge\n\
         # HELP palisade_channels_active Channels with subscribers or history on this node.\n\
         palisade_channels_active {channels}\n\
         # TYPE palisade_channel_subscribers gauge\n\
         # HELP palisade_channel_subscribers Subscriptions open on this node.\n\
         palisade_channel_subscribers {subs}\n\
         # TYPE palisade_channel_history_bytes gauge\n\
         # HELP palisade_channel_history_bytes Bytes of publications held for history.\n\
         palisade_channel_history_bytes {bytes}\n\
         # EOF\n"
    );
    crate::admin::append_exposition(body, &m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_channels_section_is_parsed_and_validated() {
        let c = Config::from_toml("[channels]\nhistory_size = 10\npublic = [\"news\", \"s:*\"]")
            .expect("valid");
        assert_eq!((c.channels.history_size, c.channels.max_subscriptions_per_session), (10, 128));
        assert!(Config::from_toml("[channels]\nbogus = 1").is_err());
        for bad in [
            "max_subscriptions_per_session = 0",
            "history_max_bytes = 0",
            "grants_claim = \"\"",
            "grants_claim = \"exp\"",
            "public = [\"a b\"]",
            "history_size = 100001",
        ] {
            let err = Config::from_toml(&format!("[channels]\n{bad}")).expect_err(bad);
            assert!(err.to_string().contains("channels."), "{bad}: {err}");
        }
    }

    #[test]
    fn requests_parse_with_typed_errors() {
        let r = parse(
            "subscribe",
            r#"{"type":"subscribe","channel":"a","id":1,"since":{"epoch":"e","offset":3}}"#,
        );
        assert!(matches!(
            r,
            Ok(Request::Subscribe { since: Some(Position { offset: 3, .. }), .. })
        ));
        let e =
            parse("publish", r#"{"type":"publish","channel":"a","id":"x"}"#).expect_err("no data");
        assert_eq!((e.reason, e.id), ("bad_envelope", Some(Value::from("x"))));
        let e =
            parse("presence", r#"{"type":"presence","channel":"a b","id":2}"#).expect_err("space");
        assert_eq!((e.reason, e.id), ("bad_channel", Some(Value::from(2))));
        assert!(matches!(
            parse("publish", r#"{"type":"publish","channel":"a","data":null}"#),
            Ok(Request::Publish { .. })
        ));
    }

    #[test]
    fn unsubscribed_pushes_name_their_channel() {
        let notice = unsubscribed_reply("chat:a", None, "channel_closed");
        assert_eq!(unsubscribed_channel(&notice).as_deref(), Some("chat:a"));
        let publication = Message::Text(r#"{"type":"publication","channel":"chat:a"}"#.into());
        assert_eq!(unsubscribed_channel(&publication), None);
    }
}
