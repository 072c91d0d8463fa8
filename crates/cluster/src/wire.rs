//! What travels through Redis: pub/sub messages (JSON), the Lua scripts, and key names.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::Revocation;

/// A message on the `<prefix>events` channel: which node sent it, and what happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) origin: String,
    #[serde(flatten)]
    pub(crate) msg: Wire,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Wire {
    /// `ms`: the ban's remaining time when it was sent (relative, so clocks need not agree).
    Ban {
        ip: IpAddr,
        ms: u64,
    },
    Unban {
        ip: IpAddr,
    },
    RevokeSession {
        id: String,
    },
    RevokeUser {
        user_id: String,
    },
    RevokeTokens {
        revocation: Revocation,
    },
    /// Deliver `data` to `user_id`; answer on `<prefix>reply:<origin>` with `id`.
    Publish {
        id: String,
        user_id: String,
        data: String,
    },
}

/// A message on `<prefix>reply:<node>`: how many sessions of `node` received publish `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) delivered: usize,
}

/// Every key and channel name, under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    /// Pub/sub channel of [`Envelope`]s.
    pub(crate) events: String,
    /// This node's reply channel.
    pub(crate) reply: String,
    /// Pub/sub channel of channel publications, closes and admin unsubscribes.
    pub(crate) channels: String,
    /// Sorted set: node id -> when its heartbeat runs out (Redis clock, ms).
    pub(crate) nodes: String,
    /// Hash: this node's session id -> session JSON.
    pub(crate) node: String,
    /// Set of banned addresses (the index of the `ban:<ip>` keys).
    pub(crate) bans: String,
    /// Set of revocation keys (`jti:<jti>`, `user:<user_id>`; the index of `revoked:*`).
    pub(crate) revocations: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, node_id: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            events: format!("{prefix}events"),
            reply: format!("{prefix}reply:{node_id}"),
            channels: format!("{prefix}channels"),
            nodes: format!("{prefix}nodes"),
            node: format!("{prefix}node:{node_id}"),
            bans: format!("{prefix}bans"),
            revocations: format!("{prefix}revocations"),
        }
    }

    /// String with the ban's details, expiring with the ban.
    pub(crate) fn ban(&self, ip: IpAddr) -> String {
        format!("{}ban:{ip}", self.prefix)
    }

    /// `<prefix>revoked:jti:<jti>` or `<prefix>revoked:user:<user_id>`, expiring with it.
    pub(crate) fn revoked(&self, key: &str) -> String {
        format!("{}revoked:{key}", self.prefix)
    }

    /// Sorted set of one user's sessions on every node: `<node>|<session>` -> expiry (ms).
    pub(crate) fn user(&self, user_id: &str) -> String {
        format!("{}user:{user_id}", self.prefix)
    }

    pub(crate) fn reply_to(&self, node_id: &str) -> String {
        format!("{}reply:{node_id}", self.prefix)
    }
}

/// A member of a user's sorted set.
pub(crate) fn user_member(node_id: &str, session_id: &str) -> String {
    format!("{node_id}|{session_id}")
}

/// Scripts take Redis's own clock (`TIME`) so that nodes' clocks need not agree, and extend a
/// key's TTL without ever shortening it.
pub(crate) const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, ttl)
  local cur = redis.call('PTTL', key)
  if cur < ttl then redis.call('PEXPIRE', key, ttl) end
end
"#;

/// Registers a session if its user is under the cap on all nodes together.
/// KEYS: user set, node hash, nodes set. ARGV: member, max (0: none), ttl ms, session id,
/// session JSON, node id. Returns 1 when registered, 0 when the cap is reached.
pub(crate) fn open_session_script() -> String {
    format!(
        "{PRELUDE}{}",
        r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if max > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= max then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
keep(KEYS[1], ttl)
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
keep(KEYS[2], ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[6])
return 1
"#
    )
}

/// Keeps this node's sessions alive for another TTL; `full` rewrites the node's hash first
/// (after an outage or a Redis restart).
/// KEYS: node hash, nodes set. ARGV: ttl ms, node id, prefix, full (0/1), n, then n times
/// session id, user id, session JSON. Returns -1 when not `full` and the hash does not hold
/// exactly n sessions (missing after a Redis restart, or out of step after a race): the caller
/// then sends a full heartbeat. Else n.
pub(crate) fn heartbeat_script() -> String {
    format!(
        "{PRELUDE}{}",
        r#"
local ttl = tonumber(ARGV[1])
local node = ARGV[2]
local full = ARGV[4] == '1'
local n = tonumber(ARGV[5])
if not full and redis.call('HLEN', KEYS[1]) ~= n then return -1 end
if full then redis.call('DEL', KEYS[1]) end
local i = 6
for s = 1, n do
  local sid, uid = ARGV[i], ARGV[i + 1]
  if full then redis.call('HSET', KEYS[1], sid, ARGV[i + 2]) end
  local uk = ARGV[3] .. 'user:' .. uid
  redis.call('ZADD', uk, now + ttl, node .. '|' .. sid)
  keep(uk, ttl)
  i = i + 3
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('ZADD', KEYS[2], now + ttl, node)
return n
"#
    )
}

/// Every live node's sessions. KEYS: nodes set. ARGV: `<prefix>node:`. Returns session JSONs.
pub(crate) fn list_sessions_script() -> String {
    format!(
        "{PRELUDE}{}",
        r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  for _, v in ipairs(redis.call('HVALS', ARGV[1] .. n)) do out[#out + 1] = v end
end
return out
"#
    )
}

/// Active bans. KEYS: bans set. ARGV: `<prefix>ban:`. Returns ip, remaining ms, ip, ...
/// (-1 for a ban without expiry), and drops index entries whose key has expired.
pub(crate) const LIST_BANS: &str = r#"
local out = {}
for _, ip in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local left = redis.call('PTTL', ARGV[1] .. ip)
  if left == -2 then
    redis.call('SREM', KEYS[1], ip)
  else
    out[#out + 1] = ip
    out[#out + 1] = left
  end
end
return out
"#;

/// Active revocations. KEYS: revocations set. ARGV: `<prefix>revoked:`. Returns their JSONs and
/// drops index entries whose key has expired.
pub(crate) const LIST_REVOCATIONS: &str = r#"
local out = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. k)
  if v then out[#out + 1] = v else redis.call('SREM', KEYS[1], k) end
end
return out
"#;
