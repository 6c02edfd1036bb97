//! The store's Lua: the helpers its functions share, and [`Function`], one
//! function of the library (its body in `scripts`, the library and the
//! calls in `library`).

/// One function of the store's Redis library: its name in the library and
/// its body, a Lua chunk over `KEYS` and `ARGV` as a script's.
pub(crate) struct Function {
    pub(crate) name: &'static str,
    pub(crate) body: &'static str,
    /// Its name in Redis (the library's name, `_`, its own), made once.
    pub(crate) called: std::sync::OnceLock<String>,
}

impl Function {
    pub(crate) const fn new(name: &'static str, body: &'static str) -> Function {
        Function {
            name,
            body,
            called: std::sync::OnceLock::new(),
        }
    }
}

/// The helpers every function of the library shares, defined once when the
/// library is loaded.
pub(crate) const PRELUDE: &str = r#"
-- The time in ms: `arg` when it is one (the store's clock), else Redis'
-- (then also returned second).
local function now_ms(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n, nil end
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, ms
end
-- The oldest stream id to keep: `retention` ms before Redis' clock (`at`
-- when the caller has read it).
local function trim_id(retention, at)
  local ms = (at or now_ms(0)) - retention
  if ms < 0 then ms = 0 end
  return string.format('%d-0', ms)
end
local function field(all, name)
  for i = 1, #all, 2 do
    if all[i] == name then return all[i + 1] end
  end
  return nil
end
local function deadline(la, it, ab)
  local d = la + it
  if ab > 0 and ab < d then d = ab end
  return d
end
-- A shared key's bytes are kept in fields of at most CHUNK bytes:
-- `v:<name>`, then `v1:<name>`, `v2:<name>` ...
local CHUNK = 64
-- Appends the fields of value `bytes` of key `name` to `fields`; returns
-- how many there are.
local function value_fields(fields, name, bytes)
  table.insert(fields, 'v:' .. name)
  table.insert(fields, string.sub(bytes, 1, CHUNK))
  local i = 1
  while i * CHUNK < #bytes do
    table.insert(fields, 'v' .. i .. ':' .. name)
    table.insert(fields, string.sub(bytes, i * CHUNK + 1, (i + 1) * CHUNK))
    i = i + 1
  end
  return i
end
-- The whole value of key `name` in hash `h`, whose first field is `first`.
local function whole(h, name, first)
  if not first or #first < CHUNK then return first end
  local parts = {first}
  local i = 1
  while true do
    local c = redis.call('HGET', h, 'v' .. i .. ':' .. name)
    if not c then break end
    parts[#parts + 1] = c
    if #c < CHUNK then break end
    i = i + 1
  end
  return table.concat(parts)
end
local function value(h, name)
  return whole(h, name, redis.call('HGET', h, 'v:' .. name))
end
-- Removes the fields of key `name`'s value from the `from`-th on; `first`
-- its first field before the write (a short one had no others).
local function drop_rest(h, name, first, from)
  if not first or #first < CHUNK then return end
  local i = from
  while redis.call('HDEL', h, 'v' .. i .. ':' .. name) == 1 do i = i + 1 end
end
-- Writes value `bytes` of key `name`, whose first field was `first`, with
-- the other fields in `fields`, in one HSET (and drops what is left of a
-- longer value).
local function write_value(h, name, bytes, first, fields)
  local n = value_fields(fields, name, bytes)
  redis.call('HSET', h, unpack(fields))
  drop_rest(h, name, first, n)
end
-- Removes the value of key `name`, whose first field is `first`.
local function drop_value(h, name, first)
  if not first then return end
  redis.call('HDEL', h, 'v:' .. name)
  drop_rest(h, name, first, 1)
end
-- The name of the key a value field belongs to and the field's place
-- (0 for `v:<name>`), or nil for any other field.
local function value_field(f)
  if string.sub(f, 1, 1) ~= 'v' then return nil end
  local c = string.find(f, ':', 1, true)
  if not c then return nil end
  return string.sub(f, c + 1), tonumber(string.sub(f, 2, c - 1)) or 0
end
-- The shared values of a flat HGETALL reply: `{name, bytes, ...}`.
local function values_of(all)
  local parts = {}
  local names = {}
  for i = 1, #all, 2 do
    local name, at = value_field(all[i])
    if name then
      if not parts[name] then
        parts[name] = {}
        table.insert(names, name)
      end
      parts[name][at + 1] = all[i + 1]
    end
  end
  local out = {}
  for _, name in ipairs(names) do
    if parts[name][1] then
      table.insert(out, name)
      table.insert(out, table.concat(parts[name]))
    end
  end
  return out
end
-- `k:<name>`: the key's revision, `:`, the tokens of its last writes.
-- Read: the revision (0 for a key never written) and the tokens.
local function parse_k(k)
  if not k then return 0, nil end
  local c = string.find(k, ':', 1, true)
  local r = c and tonumber(string.sub(k, 1, c - 1))
  if not r then
    error({err = 'ERR keyed-session: this session was written in an earlier data layout '
      .. '(give this version a namespace of its own)'})
  end
  return r, string.sub(k, c + 1)
end
local function rev_of(k)
  local r = parse_k(k)
  return r
end
local function make_k(r, tokens)
  return r .. ':' .. (tokens or '')
end
-- The tokens of the last three writes of a key (8 bytes each, newest
-- first), with `token` added: how a write resent after a lost reply is
-- recognised.
local function remember(seen, token)
  return token .. string.sub(seen or '', 1, 16)
end
local function seen_token(seen, token)
  if not seen then return false end
  for i = 1, #seen, 8 do
    if string.sub(seen, i, i + 7) == token then return true end
  end
  return false
end
-- A write over the tracked link (NOLOOP) stops Redis tracking the hash
-- for it; reading the hash again tracks it again.
local function retrack(h)
  redis.call('EXISTS', h)
end
local function expiry_reason(now, ab)
  if ab > 0 and now >= ab then return 'absolute-expired' end
  return 'idle-expired'
end
-- Ends a session: the one claim (DEL), its deadline, the counters, a
-- tombstone with the reason, the shared values' last bytes (`f:<id>`, for
-- the shared hooks), the End event. Returns the hash's fields, or nil when it
-- was already gone.
local function end_session(h, due, ev, tomb, n, ipn, id, reason, retention)
  local all = redis.call('HGETALL', h)
  if #all == 0 then return nil end
  redis.call('DEL', h)
  local last = values_of(all)
  if #last > 0 then
    local fin = string.sub(tomb, 1, #tomb - #id - 2) .. 'f:' .. id
    redis.call('HSET', fin, unpack(last))
    redis.call('PEXPIRE', fin, retention)
  end
  redis.call('ZREM', due, id)
  redis.call('DECR', n)
  local ik = field(all, 'ik')
  if ik and ik ~= '' then
    if redis.call('HINCRBY', ipn, ik, -1) <= 0 then redis.call('HDEL', ipn, ik) end
  end
  redis.call('SET', tomb, reason, 'PX', retention)
  redis.call('XADD', ev, 'MINID', '~', trim_id(retention), '*',
    'e', 'end', 'id', id, 'ip', field(all, 'ip') or '', 'r', reason)
  return all
end
"#;
