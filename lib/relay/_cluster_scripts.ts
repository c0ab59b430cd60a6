/**
 * The Lua scripts that keep a relay cluster's shared state in Redis. Each
 * runs atomically in Redis, so two relays can never give out one nickname
 * twice, and every room's messages get one order (their offsets) that every
 * relay sees in the same way: a script's PUBLISH happens in script order.
 *
 * Keys, per room (the room id hex-encoded as `R`, under the prefix `P`):
 * - `P r:R:m` hash nickname -> `role,relay,tokenHash,nodeId,claimHash`: the members;
 * - `P r:R:n` hash role -> count: who could hear a broadcast;
 * - `P r:R:s` hash nickname -> the highest `seq` taken from that member;
 * - `P r:R:v` hash nickname -> `tokenHash,until,lastSeq,claimHash`: reservations;
 * - `P r:R:e` the history's epoch; `P r:R:o` its latest offset; `P r:R:p`
 *   the latest presence number; `P r:R:h` the history, a stream whose entry
 *   ids are `offset-0`.
 *
 * Per cluster: `P relays`, a sorted set of relay ids scored by the time their
 * heartbeat runs out; `P relay:ID`, the set of `R\nnickname` a relay holds;
 * `P rooms`, the set of rooms with members (for the room limit); `P urls`,
 * a hash relay id -> the URL other relays open pipes at; `P key`, the key a
 * relay shows another to open a pipe there.
 *
 * Published on channel `P c:R`, one line per field:
 * - `m offset epoch from role to data`: a message (`to` empty for a broadcast);
 * - `j presence nickname role`, `l presence nickname reason`: presence;
 * - `r nickname relay`: a member moved its connection to `relay`;
 * - `o id from to relay`: node `from`, on relay `relay`, asks `to` for pipe `id`;
 * - `q id relay reason`: the node asked refused pipe `id` of relay `relay`.
 *
 * @module
 */

/** Helpers every script starts with. */
const PRELUDE = `
local function split(s)
  local out = {}
  for part in string.gmatch(s .. ',', '([^,]*),') do out[#out + 1] = part end
  return out
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local P = ARGV[1]
-- Removes member 'nick' of room R (hex) if 'relay' holds it (or any relay if relay is ''),
-- reserving its nickname for its token until 'untilMs' unless it 'left' (said bye: the
-- name is free at once), and announces 'reason'.
local function leave(R, nick, relay, reason, untilMs, roomTtl)
  local m = P .. 'r:' .. R .. ':m'
  local rec = redis.call('HGET', m, nick)
  if not rec then return 0 end
  local f = split(rec)
  if relay ~= '' and f[2] ~= relay then return 0 end
  redis.call('HDEL', m, nick)
  redis.call('HINCRBY', P .. 'r:' .. R .. ':n', f[1], -1)
  local seq = redis.call('HGET', P .. 'r:' .. R .. ':s', nick) or '0'
  redis.call('HDEL', P .. 'r:' .. R .. ':s', nick)
  local v = P .. 'r:' .. R .. ':v'
  if reason == 'left' then
    redis.call('HDEL', v, nick)
  else
    redis.call('HSET', v, nick, f[3] .. ',' .. untilMs .. ',' .. seq .. ',' .. (f[5] or ''))
  end
  -- Reservations run out but stay until a join reads them: in a long-lived
  -- room with many nicknames, sweep the expired ones now and then — at most
  -- once per room per 10 s, so that many leaves (a dead relay's sweep) stay linear.
  if redis.call('HLEN', v) > 1000 and
      redis.call('SET', P .. 'r:' .. R .. ':vs', '1', 'NX', 'PX', 10000) then
    local all = redis.call('HGETALL', v)
    local t = now_ms()
    for i = 1, #all, 2 do
      if tonumber(split(all[i + 1])[2]) < t then redis.call('HDEL', v, all[i]) end
    end
  end
  redis.call('SREM', P .. 'relay:' .. f[2], R .. '\\n' .. nick)
  local presence = redis.call('INCR', P .. 'r:' .. R .. ':p')
  redis.call('PUBLISH', P .. 'c:' .. R, 'l\\n' .. presence .. '\\n' .. nick .. '\\n' .. reason)
  if redis.call('HLEN', m) == 0 then
    -- An empty room lingers for its history and reservations, then expires.
    redis.call('SREM', P .. 'rooms', R)
    for _, suffix in ipairs({'n', 's', 'v', 'e', 'o', 'p', 'h'}) do
      redis.call('PEXPIRE', P .. 'r:' .. R .. ':' .. suffix, roomTtl)
    end
  end
  return 1
end
`;

/**
 * Joins a node. ARGV: prefix, room (hex), wanted nickname, token hash (or
 * ''), role, relay id, node id, new token hash, max nodes, max rooms, new
 * epoch, whether the wanted nickname ends in (n), claim hash (or ''): a
 * reservation is free for its token's or its claim's holder; and the epoch
 * of the node's position (or ''): a node back from the room's earlier life
 * (Redis lost the room, and the key `rejoin` says so) may take the
 * suffixed nickname it had, if it is free, as on a relay of its own (2.10);
 * and the incarnation of the cluster's data the relay knows (or ''). Returns
 * `{kind, nickname, tokenHash, lastSeq, epoch, offset, presence,
 * members...}` with kind `join` or `replace`, or `{refusal}`: `bad-suffix`,
 * `max-nodes`, `max-sessions`; `lost` (Redis lost the cluster's data since
 * the relay's last heartbeat: it has not reserved its nodes' nicknames yet),
 * or `{rejoining, ms}` (Redis lost it a moment ago, the relays are still
 * reserving, and the node is not one coming back to a nickname kept for
 * it): either way, try again, `ms` later for the second.
 */
export const JOIN = PRELUDE + `
local R, wanted, token, role, relay, node = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local m = P .. 'r:' .. R .. ':m'
local v = P .. 'r:' .. R .. ':v'
local now = now_ms()
-- Redis lost the cluster's data, and this relay has not noticed yet: the
-- nicknames of its nodes, still connected, are not reserved. A newcomer
-- asking for one now would take it from its holder.
if ARGV[15] ~= '' and redis.call('GET', P .. 'incarnation') ~= ARGV[15] then return {'lost'} end
local function snapshot(result)
  local all = redis.call('HGETALL', m)
  for i = 1, #all, 2 do
    result[#result + 1] = all[i]
    result[#result + 1] = split(all[i + 1])[1]
  end
  return result
end
local function position(kind, nick, tokenHash, lastSeq)
  local epoch = redis.call('GET', P .. 'r:' .. R .. ':e')
  local offset = redis.call('GET', P .. 'r:' .. R .. ':o') or '0'
  local presence = redis.call('GET', P .. 'r:' .. R .. ':p') or '0'
  return snapshot({kind, nick, tokenHash, lastSeq, epoch, offset, presence})
end
-- The same node back (maybe through another relay): it keeps its membership.
local current = redis.call('HGET', m, wanted)
if current and token ~= '' then
  local f = split(current)
  if f[3] == token and f[1] == role then
    redis.call('SREM', P .. 'relay:' .. f[2], R .. '\\n' .. wanted)
    redis.call('HSET', m, wanted, role .. ',' .. relay .. ',' .. token .. ',' .. node .. ',' .. (f[5] or ''))
    redis.call('SADD', P .. 'relay:' .. relay, R .. '\\n' .. wanted)
    redis.call('PUBLISH', P .. 'c:' .. R, 'r\\n' .. wanted .. '\\n' .. relay)
    return position('replace', wanted, token, redis.call('HGET', P .. 'r:' .. R .. ':s', wanted) or '0')
  end
end
local function reservedFor(name)
  local r = redis.call('HGET', v, name)
  if not r then return nil end
  local f = split(r)
  if tonumber(f[2]) < now then return nil end
  return f
end
local claim = ARGV[13]
local function mine(r)
  return (token ~= '' and r[1] == token) or (claim ~= '' and r[4] == claim)
end
local function free(name)
  if redis.call('HEXISTS', m, name) == 1 then return false end
  local r = reservedFor(name)
  return r == nil or mine(r)
end
local earlier = ARGV[14] or ''
local fromEarlierLife = earlier ~= '' and earlier ~= (redis.call('GET', P .. 'r:' .. R .. ':e') or '')
-- Redis lost the data a moment ago (the key settle lives, a heartbeat's
-- lifetime), and the relays are reserving their nodes' nicknames, one
-- heartbeat after another: only a node coming back to one kept for it, or
-- from the room's earlier life, joins now. A newcomer waits, or it might
-- take a name whose holder's relay had not reserved it yet.
if redis.call('EXISTS', P .. 'settle') == 1 and not fromEarlierLife then
  local r = reservedFor(wanted)
  if not (r and mine(r)) then return {'rejoining', redis.call('PTTL', P .. 'settle')} end
end
if ARGV[12] == '1' then
  local given = false
  if current and token ~= '' and split(current)[3] == token then given = true end
  local r = reservedFor(wanted)
  if r and token ~= '' and r[1] == token then given = true end
  -- Back from the room's earlier life, whose nicknames Redis forgot: without
  -- this, max(1) came back as max, and max as max(1), as they happened to arrive.
  -- Only while Redis's loss is fresh (the key rejoin lives): a position from
  -- another epoch is easy to make up, and nobody picks a suffix by hand.
  if fromEarlierLife and redis.call('EXISTS', P .. 'rejoin') == 1 and free(wanted) then
    given = true
  end
  if not given then return {'bad-suffix'} end
end
local count = redis.call('HLEN', m)
if count == 0 and redis.call('SISMEMBER', P .. 'rooms', R) == 0 then
  if redis.call('SCARD', P .. 'rooms') >= tonumber(ARGV[10]) then return {'max-sessions'} end
end
if count >= tonumber(ARGV[9]) then return {'max-nodes'} end
local nick = wanted
local i = 0
while not free(nick) do
  i = i + 1
  nick = wanted .. '(' .. i .. ')'
end
local lastSeq = '0'
local r = reservedFor(nick)
if r and token ~= '' and r[1] == token then lastSeq = r[3] end
redis.call('HDEL', v, nick)
redis.call('HSET', m, nick, role .. ',' .. relay .. ',' .. ARGV[8] .. ',' .. node .. ',' .. claim)
redis.call('HSET', P .. 'r:' .. R .. ':s', nick, lastSeq)
redis.call('HINCRBY', P .. 'r:' .. R .. ':n', role, 1)
redis.call('SADD', P .. 'rooms', R)
redis.call('SADD', P .. 'relay:' .. relay, R .. '\\n' .. nick)
redis.call('SETNX', P .. 'r:' .. R .. ':e', ARGV[11])
for _, suffix in ipairs({'n', 's', 'v', 'e', 'o', 'p', 'h'}) do
  redis.call('PERSIST', P .. 'r:' .. R .. ':' .. suffix)
end
local presence = redis.call('INCR', P .. 'r:' .. R .. ':p')
redis.call('PUBLISH', P .. 'c:' .. R, 'j\\n' .. presence .. '\\n' .. nick .. '\\n' .. role)
return position('join', nick, ARGV[8], lastSeq)
`;

/**
 * A message. ARGV: prefix, room (hex), from, role, seq (or ''), to (or ''),
 * frame text before the offset, frame text after it, history length, and
 * `prev`: the seq the relay sent before this one on the node's connection.
 * Returns `{ok, offset}`, `{dup}`, `{gap}` (a message before it did not get
 * here: it is not taken either, so that the node's resend keeps the order),
 * `{alone}`, `{no-such-node}` or `{not-allowed}`; while the key `rejoin`
 * lives (set for `rejoinGrace` once Redis lost the cluster's data), a message
 * nobody hears yet is numbered and kept instead of `alone`/`no-such-node`.
 */
export const MESSAGE = PRELUDE + `
local R, from, role, seq, to = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local s = P .. 'r:' .. R .. ':s'
if seq ~= '' then
  -- Resent through another relay, and taken already: an ack is all it needs.
  local taken = tonumber(redis.call('HGET', s, from) or '0')
  if taken >= tonumber(seq) then return {'dup'} end
  -- An earlier message of this connection failed on its way (a Redis
  -- reconnect in between): taking this one would make the resend of the
  -- earlier one look like a duplicate.
  if taken < tonumber(ARGV[10]) then return {'gap'} end
  redis.call('HSET', s, from, seq)
end
local function hears(receiver, sender)
  if sender == 'agent' then return receiver == 'bridge' end
  if receiver == 'agent' then return sender == 'bridge' end
  return true
end
-- Redis lost the cluster's data moments ago, and the nodes are on their way
-- back: what nobody hears yet is kept for them (they recover it), not refused.
local rejoining = redis.call('EXISTS', P .. 'rejoin') == 1
if to ~= '' then
  local rec = redis.call('HGET', P .. 'r:' .. R .. ':m', to)
  if to == from or not (rec or rejoining) then return {'no-such-node'} end
  if rec and not hears(split(rec)[1], role) then return {'not-allowed'} end
else
  local n = P .. 'r:' .. R .. ':n'
  local counts = {}
  for _, r in ipairs({'peer', 'bridge', 'agent'}) do
    counts[r] = tonumber(redis.call('HGET', n, r) or '0')
  end
  counts[role] = counts[role] - 1
  local heard
  if role == 'agent' then heard = counts.bridge > 0
  elseif role == 'bridge' then heard = counts.peer + counts.bridge + counts.agent > 0
  else heard = counts.peer + counts.bridge > 0 end
  if not heard and not rejoining then return {'alone'} end
end
local offset = redis.call('INCR', P .. 'r:' .. R .. ':o')
local epoch = redis.call('GET', P .. 'r:' .. R .. ':e') or ''
local data = ARGV[7] .. offset .. ARGV[8]
redis.call('XADD', P .. 'r:' .. R .. ':h', 'MAXLEN', '~', ARGV[9], offset .. '-0',
  'd', data, 'f', from, 'r', role, 't', to, 'a', now_ms())
redis.call('PUBLISH', P .. 'c:' .. R,
  'm\\n' .. offset .. '\\n' .. epoch .. '\\n' .. from .. '\\n' .. role .. '\\n' .. to .. '\\n' .. data)
return {'ok', offset}
`;

/**
 * A node leaves. ARGV: prefix, room (hex), nickname, relay id, reason,
 * reserved until (ms), room ttl (ms). Returns 1 if it was a member held by
 * that relay.
 */
export const LEAVE = PRELUDE + `
return leave(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
`;

/**
 * A relay's heartbeat, and the sweep of relays whose heartbeat ran out: their
 * members are gone. Only a relay whose own heartbeat had not run out
 * sweeps. ARGV: prefix, relay id, heartbeat ttl (ms), reclaim window (ms),
 * room ttl (ms), the relay's pipe URL (or ''), the incarnation it knows (or
 * ''). Returns `{wasKnown, swept,
 * names, incarnation}`: `wasKnown` 0 means the cluster had given this relay
 * up (its members are gone from it); `names`, the nicknames of the first 20
 * swept; `incarnation`, the id of the cluster's data, made by the first
 * heartbeat to find none: another than before, and Redis lost its data.
 */
export const HEARTBEAT = PRELUDE + `
local relays = P .. 'relays'
local now = now_ms()
local swept = 0
local names = {}
local known = redis.call('ZSCORE', relays, ARGV[2])
local ttl = tonumber(ARGV[3])
-- No heartbeat from any relay for two thirds of a lifetime: Redis (or every
-- relay) stalled, and every lifetime may have run out. The heartbeats queued
-- meanwhile now run back to back, so being on time says nothing: nobody
-- sweeps until every relay has had a whole lifetime to beat again.
local last = tonumber(redis.call('GET', P .. 'lastbeat') or '0')
redis.call('SET', P .. 'lastbeat', now)
if last > 0 and now - last > ttl * 2 / 3 then redis.call('SET', P .. 'calm', now + ttl) end
local calm = tonumber(redis.call('GET', P .. 'calm') or '0')
-- And only a relay that beat in time sweeps (it was not cut off itself).
local onTime = known and tonumber(known) >= now and now >= calm
for _, dead in ipairs(onTime and redis.call('ZRANGEBYSCORE', relays, '-inf', now) or {}) do
  if dead ~= ARGV[2] then
    for _, entry in ipairs(redis.call('SMEMBERS', P .. 'relay:' .. dead)) do
      local R, nick = string.match(entry, '^([^\\n]*)\\n(.*)$')
      local left = leave(R, nick, dead, 'gone', now + tonumber(ARGV[4]), ARGV[5])
      swept = swept + left
      if left > 0 and #names < 20 then names[#names + 1] = nick end
    end
    redis.call('DEL', P .. 'relay:' .. dead)
    redis.call('ZREM', relays, dead)
    redis.call('HDEL', P .. 'urls', dead)
  end
end
redis.call('ZADD', relays, now + tonumber(ARGV[3]), ARGV[2])
if ARGV[6] ~= '' then redis.call('HSET', P .. 'urls', ARGV[2], ARGV[6]) end
local incarnation = redis.call('GET', P .. 'incarnation')
if not incarnation then
  incarnation = ARGV[2] .. '@' .. now
  redis.call('SET', P .. 'incarnation', incarnation)
end
-- This relay knew the data before: Redis lost it. For a heartbeat's lifetime
-- after each relay notices (in this same step), newcomers wait (JOIN) while
-- it reserves its nodes' nicknames. Each that notices: the first to beat
-- may be a relay just started, which knew nothing to lose.
if ARGV[7] ~= '' and ARGV[7] ~= incarnation then
  redis.call('SET', P .. 'settle', '1', 'PX', ARGV[3])
end
return {known and 1 or 0, swept, names, incarnation}
`;

/**
 * Reserves nicknames after Redis lost the cluster's data, each for its
 * node's token, as a `gone` does. ARGV: prefix, room (hex), expiry (ms) of
 * a room nobody is in, then nickname and reservation value pairs. A room
 * with members keeps its reservations (a join lifted the expiry); an empty
 * one loses them with the window, as after any leave.
 */
export const RESERVE = PRELUDE + `
local R = ARGV[2]
local v = P .. 'r:' .. R .. ':v'
for i = 4, #ARGV, 2 do redis.call('HSET', v, ARGV[i], ARGV[i + 1]) end
if redis.call('HLEN', P .. 'r:' .. R .. ':m') == 0 then redis.call('PEXPIRE', v, ARGV[3]) end
return 1
`;

/**
 * The history after an offset. ARGV: prefix, room (hex), offset. Returns
 * `{epoch, latest, id1, data1, from1, role1, to1, at1, ...}`.
 */
export const SINCE = PRELUDE + `
local R = ARGV[2]
local result = {
  redis.call('GET', P .. 'r:' .. R .. ':e') or '',
  redis.call('GET', P .. 'r:' .. R .. ':o') or '0',
}
local entries = redis.call('XRANGE', P .. 'r:' .. R .. ':h', '(' .. ARGV[3] .. '-0', '+')
for _, entry in ipairs(entries) do
  local fields = {}
  for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
  result[#result + 1] = entry[1]
  result[#result + 1] = fields.d
  result[#result + 1] = fields.f
  result[#result + 1] = fields.r
  result[#result + 1] = fields.t
  result[#result + 1] = fields.a
end
return result
`;
