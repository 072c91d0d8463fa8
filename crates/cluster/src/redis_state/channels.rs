//! [`ChannelStore`] in Redis. Keys, per channel `c` under the prefix `p`:
//!
//! - `p` `ch:` `c` `:meta` (hash): `epoch` and `offset`; its loss starts a new epoch.
//! - `p` `ch:` `c` `:hist` (list): the last `history_size` publications, each stored as
//!   `<offset> <ms> <envelope>` (`ms`: Redis's clock when published).
//! - `p` `ch:` `c` `:users` (sorted set): user id -> when their last subscription expires (ms).
//! - `p` `ch:` `c` `:u:` `user` (sorted set): one member per subscription -> its expiry (ms).
//!
//! Both keys of a channel live `history_ttl + 1 day` after the last publish or subscribe.
//! Publications travel on the pub/sub channel `p` `channels` as
//! `P\n<channel>\n<epoch>\n<offset>\n<envelope>`, closes as `C\n<channel>` and admin
//! unsubscribes as `U\n<channel>\n<user id>`.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{Shared, lock};
use crate::channels::{
    ChannelSettings, ChannelStore, Envelope, Published, Remote, Sink, Stream, new_epoch,
};
use crate::{BoxFuture, ClusterError};

/// How long a channel's position outlives its last use, beyond the history TTL.
const POSITION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The scripts, loaded once per node.
pub(super) struct ChannelScripts {
    publish: Script,
    stream: Script,
    history: Script,
    join: Script,
    leave: Script,
    presence: Script,
}

impl ChannelScripts {
    pub(super) fn new() -> ChannelScripts {
        ChannelScripts {
            publish: Script::new(&format!("{}{PUBLISH}", crate::wire::PRELUDE)),
            stream: Script::new(&format!("{}{STREAM}", crate::wire::PRELUDE)),
            history: Script::new(&format!("{}{HISTORY}", crate::wire::PRELUDE)),
            join: Script::new(&format!("{}{JOIN}", crate::wire::PRELUDE)),
            leave: Script::new(&format!("{}{LEAVE}", crate::wire::PRELUDE)),
            presence: Script::new(&format!("{}{PRESENCE}", crate::wire::PRELUDE)),
        }
    }
}

/// Takes (or starts) the channel's epoch and next offset, keeps the publication and publishes
/// it. KEYS: meta, hist. ARGV: pub/sub channel, channel, new epoch, prefix, suffix,
/// history size, position ttl ms. Returns {epoch, offset}.
const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[3]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local json = ARGV[4] .. offset .. ARGV[5]
local size = tonumber(ARGV[6])
local ttl = tonumber(ARGV[7])
if size > 0 then
  redis.call('RPUSH', KEYS[2], offset .. ' ' .. now .. ' ' .. json)
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PUBLISH', ARGV[1], 'P\n' .. ARGV[2] .. '\n' .. epoch .. '\n' .. offset .. '\n' .. json)
return {epoch, offset}
"#;

/// The channel's position, and the publications after `since` when all are held.
/// KEYS: meta, hist. ARGV: new epoch, since epoch ('' for none), since offset, history ttl ms
/// (0: none), position ttl ms. Returns {epoch, offset, recovered (0/1), item...}.
const STREAM: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
if ARGV[2] == '' or ARGV[2] ~= epoch then return {epoch, offset, 0} end
local since = tonumber(ARGV[3])
if since > offset then return {epoch, offset, 0} end
if since == offset then return {epoch, offset, 1} end
local n = offset - since
local items = redis.call('LRANGE', KEYS[2], -n, -1)
if #items < n then return {epoch, offset, 0} end
local first = items[1]
local sp = string.find(first, ' ', 1, true)
local sp2 = string.find(first, ' ', sp + 1, true)
if tonumber(string.sub(first, 1, sp - 1)) ~= since + 1 then return {epoch, offset, 0} end
local hist_ttl = tonumber(ARGV[4])
if hist_ttl > 0 and now - tonumber(string.sub(first, sp + 1, sp2 - 1)) > hist_ttl then
  return {epoch, offset, 0}
end
local out = {epoch, offset, 1}
for i = 1, #items do out[#out + 1] = items[i] end
return out
"#;

/// The epoch and the last `limit` held publications. KEYS: meta, hist. ARGV: limit, history
/// ttl ms (0: none), new epoch. Returns {epoch, now, item...}; an unknown channel gets a new
/// epoch that is not stored (nothing was published in it).
const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {ARGV[3], now} end
local out = {epoch, now}
local limit = tonumber(ARGV[1])
if limit == 0 then return out end
for _, item in ipairs(redis.call('LRANGE', KEYS[2], -limit, -1)) do out[#out + 1] = item end
return out
"#;

/// Adds a subscription. KEYS: users, user set. ARGV: user id, member, ttl ms.
/// Returns 1 when it is the user's first live subscription in the channel.
const JOIN: &str = r#"
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local first = redis.call('ZCARD', KEYS[2]) == 0
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
keep(KEYS[2], ttl)
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) < now + ttl then redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) end
keep(KEYS[1], ttl)
if first then return 1 else return 0 end
"#;

/// Removes a subscription. KEYS: users, user set. ARGV: user id, member.
/// Returns 1 when the user has no live subscription left in the channel.
const LEAVE: &str = r#"
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  if removed == 1 then return 1 end
end
return 0
"#;

/// Live users and their subscription counts. KEYS: users. ARGV: user set key prefix.
/// Returns user, count, user, count, ...
const PRESENCE: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, u in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local k = ARGV[1] .. u
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = redis.call('ZCARD', k)
  if n > 0 then
    out[#out + 1] = u
    out[#out + 1] = n
  end
end
return out
"#;

/// Channels of one Redis-backed node.
pub(crate) struct RedisChannels {
    pub(super) shared: Arc<Shared>,
    pub(super) settings: ChannelSettings,
}

fn key(prefix: &str, channel: &str, part: &str) -> String {
    format!("{prefix}ch:{channel}:{part}")
}

impl RedisChannels {
    fn meta(&self, channel: &str) -> String {
        key(&self.shared.keys.prefix, channel, "meta")
    }

    fn hist(&self, channel: &str) -> String {
        key(&self.shared.keys.prefix, channel, "hist")
    }

    fn users(&self, channel: &str) -> String {
        key(&self.shared.keys.prefix, channel, "users")
    }

    fn user_prefix(&self, channel: &str) -> String {
        key(&self.shared.keys.prefix, channel, "u:")
    }

    /// The sorted set of one user's subscriptions to `channel`.
    fn user_key(&self, channel: &str, user_id: &str) -> String {
        format!("{}{user_id}", self.user_prefix(channel))
    }

    /// Runs [`JOIN`] (with the entry's TTL) or [`LEAVE`] for one subscription; true when the
    /// script answers 1 (the user's first, or last, subscription in the channel).
    fn presence_change<'a>(
        &'a self,
        script: &'a Script,
        channel: &str,
        user_id: &str,
        member: &str,
        ttl_ms: Option<u64>,
    ) -> BoxFuture<'a, Result<bool, ClusterError>> {
        let mut inv = script.prepare_invoke();
        inv.key(self.users(channel)).key(self.user_key(channel, user_id));
        inv.arg(user_id).arg(member);
        if let Some(ttl) = ttl_ms {
            inv.arg(ttl);
        }
        Box::pin(async move {
            self.check_up()?;
            let mut con = self.shared.con.clone();
            let answer: i64 = self.shared.call(inv.invoke_async(&mut con)).await?;
            Ok(answer == 1)
        })
    }

    fn history_ttl_ms(&self) -> u64 {
        self.settings.history_ttl.map_or(0, |t| t.as_millis() as u64)
    }

    fn position_ttl_ms(&self) -> u64 {
        self.history_ttl_ms() + POSITION_TTL.as_millis() as u64
    }

    fn presence_ttl_ms(&self) -> u64 {
        self.shared.cfg.ttl().as_millis() as u64
    }

    /// Fails at once while Redis is known to be unreachable.
    fn check_up(&self) -> Result<(), ClusterError> {
        if self.shared.is_up() {
            Ok(())
        } else {
            Err(ClusterError::Unavailable("redis unreachable".into()))
        }
    }

    async fn broadcast(&self, message: String) -> Result<(), ClusterError> {
        self.check_up()?;
        let mut con = self.shared.con.clone();
        let cmd = redis::cmd("PUBLISH").arg(&self.shared.keys.channels).arg(message).clone();
        self.shared.call(cmd.query_async::<i64>(&mut con)).await.map(|_| ())
    }
}

/// Splits a stored history item `<offset> <ms> <envelope>`: (offset, ms, envelope).
fn split_item(item: &str) -> Option<(u64, u64, &str)> {
    let (offset, rest) = item.split_once(' ')?;
    let (ms, json) = rest.split_once(' ')?;
    Some((offset.parse().ok()?, ms.parse().ok()?, json))
}

/// Parses a message of the `channels` pub/sub channel.
pub(super) fn parse_message(payload: &str) -> Option<Remote> {
    let (kind, rest) = payload.split_once('\n')?;
    match kind {
        "P" => {
            let mut parts = rest.splitn(4, '\n');
            let channel = parts.next()?.to_owned();
            let epoch = parts.next()?.to_owned();
            let offset = parts.next()?.parse().ok()?;
            let json = parts.next()?.to_owned();
            Some(Remote::Publication { channel, epoch, offset, json })
        }
        "C" => Some(Remote::Closed { channel: rest.to_owned() }),
        "U" => {
            let (channel, user_id) = rest.split_once('\n')?;
            Some(Remote::Unsubscribed { channel: channel.to_owned(), user_id: user_id.to_owned() })
        }
        _ => None,
    }
}

impl Shared {
    /// Hands a `channels` pub/sub message to the sink.
    pub(super) fn on_channel_message(&self, payload: &str) {
        let Some(remote) = parse_message(payload) else {
            tracing::warn!(
                kind = "cluster_message",
                "cluster: ignoring a malformed channel message"
            );
            return;
        };
        self.to_sink(remote);
    }

    pub(super) fn to_sink(&self, remote: Remote) {
        let sink = lock(&self.channel_sink).clone();
        if let Some(sink) = sink {
            sink(remote);
        }
    }
}

impl ChannelStore for RedisChannels {
    fn set_sink(&self, sink: Sink) {
        *lock(&self.shared.channel_sink) = Some(sink);
    }

    fn publish(
        &self,
        channel: &str,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Published, ClusterError>> {
        let (meta, hist) = (self.meta(channel), self.hist(channel));
        let channel = channel.to_owned();
        Box::pin(async move {
            self.check_up()?;
            let s = &self.shared;
            let mut inv = s.scripts.channels.publish.prepare_invoke();
            inv.key(meta).key(hist);
            inv.arg(&s.keys.channels).arg(channel).arg(new_epoch());
            inv.arg(envelope.prefix).arg(envelope.suffix);
            inv.arg(self.settings.history_size).arg(self.position_ttl_ms());
            let mut con = s.con.clone();
            let (epoch, offset): (String, u64) = s.call(inv.invoke_async(&mut con)).await?;
            Ok(Published { epoch, offset })
        })
    }

    fn stream(
        &self,
        channel: &str,
        since: Option<(String, u64)>,
    ) -> BoxFuture<'_, Result<Stream, ClusterError>> {
        let (meta, hist) = (self.meta(channel), self.hist(channel));
        Box::pin(async move {
            self.check_up()?;
            let s = &self.shared;
            let (since_epoch, since_offset) = since.unwrap_or_default();
            let mut inv = s.scripts.channels.stream.prepare_invoke();
            inv.key(meta).key(hist);
            inv.arg(new_epoch()).arg(since_epoch).arg(since_offset);
            inv.arg(self.history_ttl_ms()).arg(self.position_ttl_ms());
            let mut con = s.con.clone();
            let reply: Vec<redis::Value> = s.call(inv.invoke_async(&mut con)).await?;
            parse_stream(&reply).ok_or_else(|| {
                ClusterError::Command(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply to the channel stream script",
                )))
            })
        })
    }

    fn history(
        &self,
        channel: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<(String, Vec<String>), ClusterError>> {
        let (meta, hist) = (self.meta(channel), self.hist(channel));
        Box::pin(async move {
            self.check_up()?;
            let s = &self.shared;
            let mut inv = s.scripts.channels.history.prepare_invoke();
            inv.key(meta).key(hist);
            inv.arg(limit).arg(self.history_ttl_ms()).arg(new_epoch());
            let mut con = s.con.clone();
            let reply: Vec<String> = s.call(inv.invoke_async(&mut con)).await?;
            let mut it = reply.into_iter();
            let epoch = it.next().unwrap_or_default();
            let now: u64 = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let ttl = self.history_ttl_ms();
            let items = it
                .filter_map(|item| {
                    let (_, ms, json) = split_item(&item)?;
                    (ttl == 0 || now.saturating_sub(ms) <= ttl).then(|| json.to_owned())
                })
                .collect();
            Ok((epoch, items))
        })
    }

    fn presence(&self, channel: &str) -> BoxFuture<'_, Result<Vec<(String, usize)>, ClusterError>> {
        let (users, prefix) = (self.users(channel), self.user_prefix(channel));
        Box::pin(async move {
            self.check_up()?;
            let s = &self.shared;
            let mut inv = s.scripts.channels.presence.prepare_invoke();
            inv.key(users).arg(prefix);
            let mut con = s.con.clone();
            let flat: Vec<(String, usize)> = s.call(inv.invoke_async(&mut con)).await?;
            Ok(flat)
        })
    }

    fn join(
        &self,
        channel: &str,
        user_id: &str,
        member: &str,
    ) -> BoxFuture<'_, Result<bool, ClusterError>> {
        let ttl = self.presence_ttl_ms();
        let script = &self.shared.scripts.channels.join;
        self.presence_change(script, channel, user_id, member, Some(ttl))
    }

    fn leave(
        &self,
        channel: &str,
        user_id: &str,
        member: &str,
    ) -> BoxFuture<'_, Result<bool, ClusterError>> {
        let script = &self.shared.scripts.channels.leave;
        self.presence_change(script, channel, user_id, member, None)
    }

    fn touch(
        &self,
        entries: Vec<(String, String, String)>,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            self.check_up()?;
            let s = &self.shared;
            let ttl = self.presence_ttl_ms();
            let mut con = s.con.clone();
            // Loads the script once, then sends the refreshes in pipelines of bounded size.
            s.call(s.scripts.channels.join.prepare_invoke().load_async(&mut con)).await?;
            for chunk in entries.chunks(500) {
                let mut pipe = redis::pipe();
                for (channel, user_id, member) in chunk {
                    pipe.cmd("EVALSHA")
                        .arg(s.scripts.channels.join.get_hash())
                        .arg(2)
                        .arg(self.users(channel))
                        .arg(self.user_key(channel, user_id))
                        .arg(user_id)
                        .arg(member)
                        .arg(ttl)
                        .ignore();
                }
                s.call(pipe.query_async::<()>(&mut con)).await?;
            }
            Ok(())
        })
    }

    fn close(&self, channel: &str) -> BoxFuture<'_, Result<(), ClusterError>> {
        let (meta, hist) = (self.meta(channel), self.hist(channel));
        let message = format!("C\n{channel}");
        Box::pin(async move {
            self.check_up()?;
            let s = &self.shared;
            let mut con = s.con.clone();
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("DEL").arg(meta).arg(hist).ignore();
            pipe.cmd("PUBLISH").arg(&s.keys.channels).arg(message).ignore();
            s.call(pipe.query_async::<()>(&mut con)).await
        })
    }

    fn unsubscribe_user(
        &self,
        channel: &str,
        user_id: &str,
    ) -> BoxFuture<'_, Result<(), ClusterError>> {
        let message = format!("U\n{channel}\n{user_id}");
        Box::pin(self.broadcast(message))
    }
}

fn parse_stream(reply: &[redis::Value]) -> Option<Stream> {
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
    let int = |v: &redis::Value| redis::from_redis_value_ref::<u64>(v).ok();
    let epoch = text(reply.first()?)?;
    let offset = int(reply.get(1)?)?;
    let recovered = match int(reply.get(2)?)? {
        0 => None,
        _ => {
            let items: Option<Vec<String>> = reply[3..]
                .iter()
                .map(|v| text(v).and_then(|item| split_item(&item).map(|(_, _, j)| j.to_owned())))
                .collect();
            Some(items?)
        }
    };
    Some(Stream { epoch, offset, recovered })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_parse() {
        let p = parse_message("P\nchat:a\n00ff\n7\n{\"type\":\"publication\",\n\"x\":1}");
        assert_eq!(
            p,
            Some(Remote::Publication {
                channel: "chat:a".into(),
                epoch: "00ff".into(),
                offset: 7,
                json: "{\"type\":\"publication\",\n\"x\":1}".into(),
            })
        );
        assert_eq!(parse_message("C\nnews"), Some(Remote::Closed { channel: "news".into() }));
        assert_eq!(
            parse_message("U\nnews\nuser\nwith newline"),
            Some(Remote::Unsubscribed {
                channel: "news".into(),
                user_id: "user\nwith newline".into()
            })
        );
        assert_eq!(parse_message("P\nchat\nepoch\nnot-a-number\n{}"), None);
        assert_eq!(parse_message("X\nwhatever"), None);
        assert_eq!(parse_message("no newline"), None);
    }

    #[test]
    fn history_items_split() {
        assert_eq!(
            split_item("12 1700000000000 {\"a\": 1}"),
            Some((12, 1_700_000_000_000, "{\"a\": 1}"))
        );
        assert_eq!(split_item("12 x {}"), None);
        assert_eq!(split_item("12"), None);
    }
}
