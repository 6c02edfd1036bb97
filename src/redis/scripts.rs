//! The Lua functions of the store's library (see `library`), called
//! "scripts" throughout: every change to a session is one of them, atomic,
//! and each first checks that the session is alive, so no write or touch
//! ever recreates a deleted session. Their shared helpers are in `lua`.
//!
//! Keys of one shard share the hash tag `{s}` (`P:{s}:h:<id>` the session
//! hash, `P:{s}:due` the deadlines, `P:{s}:ev` the event stream,
//! `P:{s}:t:<id>` tombstones, `P:{s}:f:<id>` an ended session's shared
//! values for the shared hooks); `P:n` and `P:ipn` count sessions for the
//! limits. Times are milliseconds; an argument `now` of 0 means Redis `TIME`.
//! A session hash has no Redis TTL: only a script ends a session (a lookup,
//! the sweep, a delete), so the counters, the tombstone, the `End` event and
//! the shared hooks follow every end, however late the sweep comes.
//!
//! The session hash: `c` created, `la` last access, `it` idle timeout, `ab`
//! absolute deadline (only when there is one), `ip` the bound address and
//! `ik` the address's key for the per-address limit (both only when set),
//! `rev` bumped by every value write, `prev` the id before a renew. Per
//! shared key: its bytes in fields of at most 64 bytes, `v:<name>` then
//! `v1:<name>`, `v2:<name>` ... (so the hash keeps Redis' compact encoding,
//! whose default limit is 64 bytes a field); `k:<name>`, its revision (it
//! only grows, removals included, so a stale compare-and-set never
//! succeeds), `:`, then the tokens of its last three writes (so a write
//! resent after a lost reply is recognised, not applied twice, even when
//! another write or two came between; 8 random bytes each).
//! `q:<name>` is a key's turn after a lost round: the holder's token, then
//! its deadline.

use crate::redis::lua::Function;

/// KEYS: h due ev tomb n ipn. ARGV: now idle_ms absolute_ms ip ip_key
/// max_sessions max_per_ip id retention_ms resent evict namespace shards
/// first_name first_bytes first_token (a shared key's first value, written
/// with the session; `first_name` empty for none).
/// Reply: `{'ok', now [, evicted id, its fields]}`, `{'taken'}`,
/// `{'full', limit}`, `{'ipfull', limit}`.
///
/// The per-address limit is checked before the total one, so a create it
/// refuses never evicts a bystander. A create resent after a lost reply
/// (`resent` = 1, the same id) finds its own session and answers `ok`.
///
/// With `evict` = 1 a full store ends the session whose deadline is nearest
/// in any of the `shards` shards `{0}` .. (reason `evicted`) to make room;
/// with `shards` = 0, in the creating shard only (over a Cluster, where a
/// script touches one slot).
pub(crate) static CREATE: Function = Function::new(
    "create",
    r#"
local now, redis_now = now_ms(ARGV[1])
if redis.call('EXISTS', KEYS[1], KEYS[4]) > 0 then
  -- A create resent after its reply was lost finds its own session (the id
  -- is 128 random bits this create drew: nobody else's).
  if ARGV[10] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
    return {'ok', tonumber(redis.call('HGET', KEYS[1], 'c'))}
  end
  return {'taken'}
end
-- The address first: a create it refuses must not evict anybody.
local ipmax = tonumber(ARGV[7])
if ipmax > 0 and ARGV[5] ~= '' and tonumber(redis.call('HGET', KEYS[6], ARGV[5]) or '0') >= ipmax then
  return {'ipfull', ipmax}
end
local max = tonumber(ARGV[6])
local evicted = nil
if max > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= max then
  if ARGV[11] ~= '1' then return {'full', max} end
  local best, best_score, best_prefix = nil, nil, nil
  local prefixes = {}
  for s = 0, tonumber(ARGV[13]) - 1 do prefixes[s + 1] = ARGV[12] .. ':{' .. s .. '}:' end
  if #prefixes == 0 then prefixes[1] = string.sub(KEYS[2], 1, -4) end
  for _, prefix in ipairs(prefixes) do
    local first = redis.call('ZRANGE', prefix .. 'due', 0, 0, 'WITHSCORES')
    if first[1] and (not best_score or tonumber(first[2]) < best_score) then
      best, best_score, best_prefix = first[1], tonumber(first[2]), prefix
    end
  end
  if not best then return {'full', max} end
  local all = end_session(best_prefix .. 'h:' .. best, best_prefix .. 'due', best_prefix .. 'ev',
    best_prefix .. 't:' .. best, KEYS[5], best_prefix .. 'ipn', best, 'evicted', tonumber(ARGV[9]))
  if not all then
    redis.call('ZREM', best_prefix .. 'due', best)
    return {'full', max}
  end
  evicted = {best, all}
end
local it = tonumber(ARGV[2])
local ab = 0
if tonumber(ARGV[3]) > 0 then ab = now + tonumber(ARGV[3]) end
-- A first value, written with the session, is its first revision.
local with_value = ARGV[14] ~= ''
local fields = {'c', now, 'la', now, 'it', it, 'rev', with_value and 1 or 0}
-- The absolute deadline, the address and its key only when there is one (a
-- field less to keep).
if ab > 0 then
  table.insert(fields, 'ab')
  table.insert(fields, ab)
end
if ARGV[4] ~= '' then
  table.insert(fields, 'ip')
  table.insert(fields, ARGV[4])
end
if ARGV[5] ~= '' then
  table.insert(fields, 'ik')
  table.insert(fields, ARGV[5])
end
if with_value then
  value_fields(fields, ARGV[14], ARGV[15])
  table.insert(fields, 'k:' .. ARGV[14])
  table.insert(fields, make_k(1, ARGV[16]))
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], deadline(now, it, ab), ARGV[8])
redis.call('INCR', KEYS[5])
if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[6], ARGV[5], 1) end
redis.call('XADD', KEYS[3], 'MINID', '~', trim_id(tonumber(ARGV[9]), redis_now), '*',
  'e', 'begin', 'id', ARGV[8], 'ip', ARGV[4])
if evicted then return {'ok', now, evicted[1], evicted[2]} end
return {'ok', now}
"#,
);

pub(crate) static LOAD: Function = Function::new(
    "load",
    r#"
local now = now_ms(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then
  local t = redis.call('GET', KEYS[4])
  if t then return {'gone', t} end
  return {'missing'}
end
local m = {}
for i = 1, #all, 2 do m[all[i]] = all[i + 1] end
local la = tonumber(m['la'])
local it = tonumber(m['it'])
local ab = tonumber(m['ab'] or '0')
if now >= deadline(la, it, ab) then
  local reason = expiry_reason(now, ab)
  end_session(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[4], reason, tonumber(ARGV[5]))
  return {'expired', reason, all}
end
if now - la >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'la', now)
  local d = deadline(now, it, ab)
  redis.call('ZADD', KEYS[2], d, ARGV[4])
  la = now
  retrack(KEYS[1])
end
local rev = m['rev']
local head = {'ok', m['c'], string.format('%d', la), m['it'], m['ab'] or '0', m['ip'] or '', rev, m['prev'] or '',
  string.format('%d', now)}
if rev ~= ARGV[3] then table.insert(head, all) end
return head
"#,
);

/// KEYS: h tomb. ARGV: name bytes token.
/// Reply: `{'ok', r [, old bytes]}`, `{'gone', tombstone}`; `{'seen', r
/// [, bytes]}` for a resent write it had applied: the key as it is now
/// (another write may have come between the two sends, so the sender must
/// not take its own bytes for the key's revision `r`).
pub(crate) static PUT: Function = Function::new(
    "put",
    r#"
local name = ARGV[1]
local got = redis.call('HMGET', KEYS[1], 'rev', 'k:' .. name, 'v:' .. name)
if not got[1] then return {'gone', redis.call('GET', KEYS[2])} end
local old = whole(KEYS[1], name, got[3])
local r, seen = parse_k(got[2])
if seen_token(seen, ARGV[3]) then return {'seen', r, old} end
r = r + 1
write_value(KEYS[1], name, ARGV[2], got[3],
  {'k:' .. name, make_k(r, remember(seen, ARGV[3])), 'rev', tonumber(got[1]) + 1})
retrack(KEYS[1])
return {'ok', r, old}
"#,
);

/// KEYS: h tomb. ARGV: name expected_r bytes token turn_ms.
/// Reply: `{'ok', r}`, `{'conflict', r [, bytes]}`, `{'wait', r [, bytes]}`,
/// `{'gone', tombstone}`; `{'seen', r [, bytes]}` for a resent write it had
/// applied, with the key as it is now (as PUT's).
///
/// Fair between processes: a writer that lost (`conflict`) takes the key's
/// next turn (field `q:<name>`, its token and a deadline `turn_ms` away)
/// unless another loser holds it; while a turn is held by someone else, a
/// write with the right revision answers `wait` without applying, so the
/// loser's retry lands next. The turn goes with that write (or its deadline).
pub(crate) static CAS: Function = Function::new(
    "cas",
    r#"
local name = ARGV[1]
local got = redis.call('HMGET', KEYS[1], 'rev', 'k:' .. name, 'q:' .. name, 'v:' .. name)
if not got[1] then return {'gone', redis.call('GET', KEYS[2])} end
local r, seen = parse_k(got[2])
if seen_token(seen, ARGV[4]) then return {'seen', r, whole(KEYS[1], name, got[4])} end
local q = got[3]
local holder = nil
local now = 0
if q then
  now = now_ms(0)
  -- The holder's token (8 bytes), then its deadline.
  if tonumber(string.sub(q, 9)) > now then holder = string.sub(q, 1, 8) end
end
if r ~= tonumber(ARGV[2]) then
  if not holder then
    if now == 0 then now = now_ms(0) end
    redis.call('HSET', KEYS[1], 'q:' .. name, ARGV[4] .. string.format('%d', now + tonumber(ARGV[5])))
    retrack(KEYS[1])
  end
  return {'conflict', r, whole(KEYS[1], name, got[4])}
end
if holder and holder ~= ARGV[4] then
  return {'wait', r, whole(KEYS[1], name, got[4])}
end
if q then redis.call('HDEL', KEYS[1], 'q:' .. name) end
r = r + 1
write_value(KEYS[1], name, ARGV[3], got[4],
  {'k:' .. name, make_k(r, remember(seen, ARGV[4])), 'rev', tonumber(got[1]) + 1})
retrack(KEYS[1])
return {'ok', r}
"#,
);

/// KEYS: h tomb. ARGV: name.
/// Reply: `{'ok', r [, old bytes]}`, `{'gone', tombstone}`.
pub(crate) static REMOVE: Function = Function::new(
    "remove",
    r#"
local name = ARGV[1]
local got = redis.call('HMGET', KEYS[1], 'rev', 'k:' .. name, 'v:' .. name)
if not got[1] then return {'gone', redis.call('GET', KEYS[2])} end
if not got[3] then return {'ok', rev_of(got[2])} end
local old = whole(KEYS[1], name, got[3])
drop_value(KEYS[1], name, got[3])
local r = rev_of(got[2]) + 1
redis.call('HSET', KEYS[1], 'k:' .. name, make_k(r), 'rev', tonumber(got[1]) + 1)
retrack(KEYS[1])
return {'ok', r, old}
"#,
);

/// KEYS: h tomb. Empties the session of its shared values and keeps it:
/// each key's revision goes up (a stale compare-and-set never succeeds).
/// Reply: `{'ok', {name, bytes, ...}}`, `{'gone', tombstone}`.
pub(crate) static CLEAR: Function = Function::new(
    "clear",
    r#"
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {'gone', redis.call('GET', KEYS[2])} end
local old = values_of(all)
if #old == 0 then return {'ok', old} end
local drop = {}
for i = 1, #all, 2 do
  if value_field(all[i]) then table.insert(drop, all[i]) end
end
local revs = {'rev', tonumber(field(all, 'rev')) + 1}
for i = 1, #old, 2 do
  table.insert(drop, 'q:' .. old[i])
  table.insert(revs, 'k:' .. old[i])
  table.insert(revs, make_k(rev_of(field(all, 'k:' .. old[i])) + 1))
end
redis.call('HDEL', KEYS[1], unpack(drop))
redis.call('HSET', KEYS[1], unpack(revs))
return {'ok', old}
"#,
);

/// KEYS: h tomb. Whether the session is there (before a local write).
/// Reply: `{'ok'}`, `{'gone', tombstone}`.
pub(crate) static ALIVE: Function = Function::new(
    "alive",
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', redis.call('GET', KEYS[2])} end
return {'ok'}
"#,
);

/// KEYS: h due ev tomb n ipn. ARGV: id reason retention_ms.
/// Reply: `{'ok', fields}` (this call ended it), `{'gone'}`.
pub(crate) static END: Function = Function::new(
    "end",
    r#"
local all = end_session(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if not all then return {'gone'} end
return {'ok', all}
"#,
);

/// KEYS: h_old h_new due ev tomb_old tomb_new. ARGV: old new retention_ms.
/// Reply: `{'ok'}`, `{'gone', tombstone}`, `{'taken'}`.
///
/// Safe to resend after a lost reply: the resend finds the old id's
/// tombstone pointing at the new id it asks for, and answers `ok`.
pub(crate) static RENEW: Function = Function::new(
    "renew",
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('GET', KEYS[5])
  if t == 'renewed:' .. ARGV[2] then return {'ok'} end
  return {'gone', t}
end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[6]) == 1 then return {'taken'} end
local score = redis.call('ZSCORE', KEYS[3], ARGV[1])
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'prev', ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if score then redis.call('ZADD', KEYS[3], score, ARGV[2]) end
local retention = tonumber(ARGV[3])
redis.call('SET', KEYS[5], 'renewed:' .. ARGV[2], 'PX', retention)
redis.call('XADD', KEYS[4], 'MINID', '~', trim_id(retention), '*',
  'e', 'renew', 'id', ARGV[2], 'old', ARGV[1])
return {'ok'}
"#,
);

/// KEYS: h due ev tomb n ipn. ARGV: now id retention_ms. Marks the session
/// used now (a client is attached); a session past its deadline is ended
/// (with its counts, tombstone and `End`), never revived.
/// Reply: `{'ok', now}`, `{'expired', reason}`, `{'gone', tombstone}`.
pub(crate) static TOUCH: Function = Function::new(
    "touch",
    r#"
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {'gone', redis.call('GET', KEYS[4])} end
local now = now_ms(ARGV[1])
local it = tonumber(field(all, 'it'))
local ab = tonumber(field(all, 'ab') or '0')
if now >= deadline(tonumber(field(all, 'la')), it, ab) then
  local reason = expiry_reason(now, ab)
  end_session(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], reason, tonumber(ARGV[3]))
  return {'expired', reason}
end
redis.call('HSET', KEYS[1], 'la', now)
redis.call('ZADD', KEYS[2], deadline(now, it, ab), ARGV[2])
return {'ok', now}
"#,
);

/// KEYS: due ev n ipn. ARGV: now limit prefix retention_ms. Ends up to
/// `limit` sessions whose deadline passed (re-checked on each hash).
/// Reply: `{{id, reason, fields}, ...}`.
pub(crate) static SWEEP: Function = Function::new(
    "sweep",
    r#"
local now = now_ms(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local h = ARGV[3] .. 'h:' .. id
  local all = redis.call('HGETALL', h)
  if #all == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    local it = tonumber(field(all, 'it'))
    local ab = tonumber(field(all, 'ab') or '0')
    local d = deadline(tonumber(field(all, 'la')), it, ab)
    if now >= d then
      local reason = expiry_reason(now, ab)
      end_session(h, KEYS[1], KEYS[2], ARGV[3] .. 't:' .. id, KEYS[3], KEYS[4], id, reason, tonumber(ARGV[4]))
      table.insert(out, {id, reason, all})
    else
      redis.call('ZADD', KEYS[1], d, id)
    end
  end
end
return out
"#,
);

/// KEYS: h due ev tomb n ipn. ARGV: now id idle_ms retention_ms. Gives the
/// session its own idle timeout ("remember me"), its deadline moved to
/// match; a session past its deadline is ended, never revived.
/// Reply: `{'ok', now}`, `{'expired', reason}`, `{'gone', tombstone}`.
pub(crate) static SET_IDLE: Function = Function::new(
    "set_idle",
    r#"
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {'gone', redis.call('GET', KEYS[4])} end
local now = now_ms(ARGV[1])
local la = tonumber(field(all, 'la'))
local ab = tonumber(field(all, 'ab') or '0')
if now >= deadline(la, tonumber(field(all, 'it')), ab) then
  local reason = expiry_reason(now, ab)
  end_session(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], reason, tonumber(ARGV[4]))
  return {'expired', reason}
end
local it = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'it', it, 'la', now)
redis.call('ZADD', KEYS[2], deadline(now, it, ab), ARGV[2])
return {'ok', now}
"#,
);

/// KEYS: h tomb. ARGV: token, n, then n pairs (name, expected revision) of
/// the keys read or written, then m, then m triples (name, '1' and bytes
/// for a value written, '0' and '' for a value removed).
/// Reply: `{'ok', name, r, ...}` with each written key's new revision;
/// `{'conflict', name, r, bytes or false, ...}` with each checked key as it
/// is; `{'wait'}` while another writer holds the turn of a key it would
/// write (see [`CAS`]: a writer that lost a round goes next);
/// `{'gone', tombstone}`.
///
/// A resend after a lost reply finds its token among the first written
/// key's last writes and answers `{'seen', name, r, bytes or false, ...}`:
/// each written key as it is now (a write may have come between the sends).
pub(crate) static EDIT: Function = Function::new(
    "edit",
    r#"
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return {'gone', redis.call('GET', KEYS[2])} end
local token = ARGV[1]
local n = tonumber(ARGV[2])
local checked = {}
local fresh = true
for c = 0, n - 1 do
  local name = ARGV[3 + 2 * c]
  local r = rev_of(redis.call('HGET', KEYS[1], 'k:' .. name))
  checked[c + 1] = {name, r}
  if r ~= tonumber(ARGV[4 + 2 * c]) then fresh = false end
end
local w = 3 + 2 * n
local m = tonumber(ARGV[w])
-- The first written key's last writes: a resend finds its token there.
local _, last = parse_k(m > 0 and redis.call('HGET', KEYS[1], 'k:' .. ARGV[w + 1]) or nil)
if seen_token(last, token) then
  local out = {'seen'}
  for c = 0, m - 1 do
    local name = ARGV[w + 1 + 3 * c]
    table.insert(out, name)
    table.insert(out, rev_of(redis.call('HGET', KEYS[1], 'k:' .. name)))
    table.insert(out, value(KEYS[1], name))
  end
  return out
end
-- A key whose turn another writer holds (it lost a round of its
-- compare-and-set, see CAS) is left to it: this edit waits.
local now = 0
for c = 0, m - 1 do
  local q = redis.call('HGET', KEYS[1], 'q:' .. ARGV[w + 1 + 3 * c])
  if q then
    if now == 0 then now = now_ms(0) end
    if tonumber(string.sub(q, 9)) > now and string.sub(q, 1, 8) ~= token then
      return {'wait'}
    end
  end
end
if not fresh then
  local out = {'conflict'}
  for _, nr in ipairs(checked) do
    table.insert(out, nr[1])
    table.insert(out, nr[2])
    table.insert(out, value(KEYS[1], nr[1]))
  end
  return out
end
local out = {'ok'}
for c = 0, m - 1 do
  local name = ARGV[w + 1 + 3 * c]
  local got = redis.call('HMGET', KEYS[1], 'k:' .. name, 'v:' .. name)
  local r, seen = parse_k(got[1])
  r = r + 1
  local fields = {'k:' .. name, make_k(r, remember(seen, token))}
  if ARGV[w + 2 + 3 * c] == '1' then
    write_value(KEYS[1], name, ARGV[w + 3 + 3 * c], got[2], fields)
  else
    drop_value(KEYS[1], name, got[2])
    redis.call('HSET', KEYS[1], unpack(fields))
  end
  table.insert(out, name)
  table.insert(out, r)
end
redis.call('HSET', KEYS[1], 'rev', tonumber(rev) + 1)
retrack(KEYS[1])
return out
"#,
);

/// Every function of the store's library.
pub(crate) static ALL: [&Function; 13] = [
    &CREATE, &LOAD, &PUT, &CAS, &REMOVE, &CLEAR, &ALIVE, &END, &RENEW, &TOUCH, &SWEEP, &SET_IDLE,
    &EDIT,
];
