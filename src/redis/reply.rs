//! Reading the scripts' replies: tags, numbers, and a session hash's fields.

use std::collections::HashMap;

use redis::Value;

use crate::redis::error::SharedError;

/// The reply as an array (the scripts always answer with one).
pub(crate) fn array(v: Value) -> Result<Vec<Value>, SharedError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(SharedError::protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// A bulk or simple string's bytes.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A string (the scripts' tags, ids, reasons).
pub(crate) fn text(v: &Value) -> Option<&str> {
    bytes(v).and_then(|b| std::str::from_utf8(b).ok())
}

/// An integer, whether Redis sent it as one or as its decimal text.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

/// The first element's text: which answer a script gave.
pub(crate) fn tag(items: &[Value]) -> &str {
    items.first().and_then(text).unwrap_or("")
}

/// One shared key's state in a session hash: its revision and bytes (`None`
/// when absent).
#[derive(Clone, Debug, Default)]
pub(crate) struct Field {
    pub(crate) rev: u64,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// A key as a write's answer leaves it: the revision the answer names with
/// `bytes`.
pub(crate) fn written(answer: &[Value], bytes: Option<Vec<u8>>) -> Field {
    Field {
        rev: Wrote::read(answer).rev,
        bytes,
    }
}

/// The answer of a write of one key (PUT, REMOVE, CAS): `{tag, r [, bytes]}`,
/// the key's revision and, after a PUT or REMOVE, the value it replaced, or
/// after a lost compare-and-set, the value as it is.
pub(crate) struct Wrote<'a> {
    pub(crate) rev: u64,
    pub(crate) value: Option<&'a [u8]>,
}

impl<'a> Wrote<'a> {
    pub(crate) fn read(answer: &'a [Value]) -> Self {
        Wrote {
            rev: answer.get(1).and_then(int).unwrap_or(0) as u64,
            value: answer.get(2).and_then(bytes),
        }
    }
}

/// The number an answer carries after its tag: the time (Redis ms) of an
/// `ok` create, touch or idle-timeout change; the limit of a refused create.
pub(crate) fn number(answer: &[Value]) -> Option<i64> {
    answer.get(1).and_then(int)
}

/// Whether a `gone` answer found no tombstone: the session hash vanished
/// (Redis restarted empty, or evicted it) rather than ended by a script.
pub(crate) fn vanished(answer: &[Value]) -> bool {
    tag(answer) == "gone" && answer.get(1).and_then(text).is_none()
}

/// The `name, bytes` pairs of the array after an answer's tag (CLEAR's
/// values taken out).
pub(crate) fn named_values(answer: &[Value]) -> Vec<(String, Vec<u8>)> {
    let Some(Value::Array(flat)) = answer.get(1) else {
        return Vec::new();
    };
    flat.chunks_exact(2)
        .filter_map(|pair| Some((text(&pair[0])?.to_owned(), bytes(&pair[1])?.to_vec())))
        .collect()
}

/// The `name, revision` pairs after an `ok` EDIT answer's tag.
pub(crate) fn revisions(answer: &[Value]) -> HashMap<String, u64> {
    answer[1..]
        .chunks(2)
        .filter_map(|pair| match pair {
            [name, rev] => Some((text(name)?.to_owned(), int(rev)? as u64)),
            _ => None,
        })
        .collect()
}

/// The `name, revision, bytes` triples after a `conflict` EDIT answer's
/// tag: each checked key as it is.
pub(crate) fn checked(answer: &[Value]) -> impl Iterator<Item = (String, Field)> + '_ {
    answer[1..].chunks(3).filter_map(|triple| match triple {
        [name, rev, value] => Some((
            text(name)?.to_owned(),
            Field {
                rev: int(rev).unwrap_or(0) as u64,
                bytes: bytes(value).map(<[u8]>::to_vec),
            },
        )),
        _ => None,
    })
}

/// The shared keys' fields of a flat `HGETALL` reply, by key name: each
/// value from its fields `v:<name>`, `v1:<name>` ... in order (up to the
/// first missing one), each revision from `k:<name>` (`<revision>:<tokens>`).
pub(crate) fn fields(all: &Value) -> HashMap<String, Field> {
    let mut out: HashMap<String, Field> = HashMap::new();
    let Value::Array(flat) = all else {
        return out;
    };
    let mut parts: HashMap<&str, Vec<(u32, &[u8])>> = HashMap::new();
    for pair in flat.chunks_exact(2) {
        let (Some(name), value) = (text(&pair[0]), &pair[1]) else {
            continue;
        };
        if let Some((key, at)) = value_field(name) {
            if let Some(b) = bytes(value) {
                parts.entry(key).or_default().push((at, b));
            }
        } else if let Some(key) = name.strip_prefix("k:") {
            let rev = bytes(value)
                .and_then(|b| b.split(|&c| c == b':').next())
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse().ok());
            out.entry(key.to_owned()).or_default().rev = rev.unwrap_or(0);
        }
    }
    for (key, mut chunks) in parts {
        chunks.sort_unstable_by_key(|&(at, _)| at);
        if chunks[0].0 != 0 {
            continue;
        }
        let mut value = Vec::new();
        for (expected, (at, chunk)) in chunks.into_iter().enumerate() {
            if at as usize != expected {
                break;
            }
            value.extend_from_slice(chunk);
        }
        out.entry(key.to_owned()).or_default().bytes = Some(value);
    }
    out
}

/// The key a value field (`v:<name>`, `v1:<name>` ...) belongs to, and the
/// field's place in the value (0 for `v:<name>`).
fn value_field(field: &str) -> Option<(&str, u32)> {
    let (head, key) = field.strip_prefix('v')?.split_once(':')?;
    let at = if head.is_empty() {
        0
    } else {
        head.parse().ok()?
    };
    Some((key, at))
}

/// The new id a tombstone names (`renewed:<id>`), when the session was
/// renewed rather than ended.
pub(crate) fn renewed_to(tomb: &str) -> Option<crate::id::SessionId> {
    tomb.strip_prefix("renewed:")?.parse().ok()
}

/// Where a `{'gone', tombstone}` answer says the session went: the new id
/// when it was renewed (the handle follows it), `None` when it ended.
pub(crate) fn gone_to(answer: &[Value]) -> Option<crate::id::SessionId> {
    answer.get(1).and_then(text).and_then(renewed_to)
}

/// A LOAD script's `ok` answer, read once: `{'ok', created, last access,
/// idle ms, absolute deadline, bound address, revision, previous id, now,
/// [fields]}` (the fields only when the revision changed).
pub(crate) struct Loaded<'a> {
    pub(crate) last_access_ms: i64,
    /// `None` when the answer has none (the store's own then applies).
    pub(crate) idle_ms: Option<i64>,
    pub(crate) absolute_ms: i64,
    pub(crate) bound: Option<std::net::IpAddr>,
    pub(crate) rev: String,
    /// Redis' clock when it answered, ms.
    pub(crate) now_ms: i64,
    /// The hash's fields, when the revision differs from the one asked with.
    pub(crate) all: Option<&'a Value>,
}

impl<'a> Loaded<'a> {
    /// Reads an `ok` answer of the LOAD script.
    pub(crate) fn read(answer: &'a [Value]) -> Loaded<'a> {
        let int = |i: usize| answer.get(i).and_then(int).unwrap_or(0);
        Loaded {
            last_access_ms: int(2),
            idle_ms: answer.get(3).and_then(self::int),
            absolute_ms: int(4),
            bound: answer.get(5).and_then(text).and_then(|t| t.parse().ok()),
            rev: answer.get(6).and_then(text).unwrap_or("").to_owned(),
            now_ms: int(8),
            all: answer.get(9),
        }
    }
}
