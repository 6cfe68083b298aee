//! `state-dump entries`: the decoded entries of one keyed state.

use std::collections::HashMap;
use std::io::Write;

use cairn_core::{CodecIdentity, KeyGroup, KeyGroupRange, StateKind, StateMeta};
use cairn_format::decode_list;
use serde_json::Value;

use crate::error::DumpError;
use crate::open::Snapshot;
use crate::progress::Progress;
use crate::scan::{file_count, operator, scan_operator, Entry};
use crate::schema_decode::{hex, raw, Decoder};
use crate::table;

/// What `entries` prints.
#[derive(Debug, Clone, Default)]
pub struct EntriesOptions {
    /// The operator uid.
    pub uid: String,
    /// The state name.
    pub state: String,
    /// Only this key group.
    pub key_group: Option<KeyGroup>,
    /// Only this key: its decoded JSON (`"hello"` or `hello` for a string key, `42`), or
    /// the hex of its bytes.
    pub key: Option<String>,
    /// At most this many entries.
    pub limit: Option<u64>,
    /// JSON lines instead of a table.
    pub json: bool,
}

/// One decoded entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEntry {
    /// The key group.
    pub key_group: KeyGroup,
    /// The key.
    pub key: Value,
    /// The namespace (`null` for the void namespace).
    pub namespace: Value,
    /// The map's user key (map state only).
    pub user_key: Option<Value>,
    /// The value; a list state's value is the array of its elements.
    pub value: Value,
}

impl DecodedEntry {
    /// One JSON object: `{"key":…,"namespace":…[,"user_key":…],"value":…,"key_group":N}`.
    pub fn to_json_line(&self) -> String {
        let mut s = format!("{{\"key\":{},\"namespace\":{}", self.key, self.namespace);
        if let Some(uk) = &self.user_key {
            s.push_str(&format!(",\"user_key\":{uk}"));
        }
        s.push_str(&format!(
            ",\"value\":{},\"key_group\":{}}}",
            self.value, self.key_group
        ));
        s
    }
}

/// The decoders of one state (and of the key), built once per codec identity.
#[derive(Debug, Default)]
pub struct Decoders {
    by_codec: HashMap<CodecIdentity, Decoder>,
}

impl Decoders {
    fn decode(&mut self, id: &CodecIdentity, bytes: &[u8]) -> Result<Value, String> {
        self.by_codec
            .entry(id.clone())
            .or_insert_with(|| Decoder::for_codec(id))
            .decode(bytes)
    }

    /// A key, namespace or user key: never damaged beyond showing raw (only values carry a
    /// TTL stamp).
    fn decode_key(&mut self, id: &CodecIdentity, bytes: &[u8]) -> Value {
        self.decode(id, bytes).unwrap_or_else(|_| raw(bytes))
    }

    fn value(&mut self, meta: &StateMeta, bytes: &[u8]) -> Result<Value, String> {
        if meta.kind == StateKind::List {
            let Ok(elements) = decode_list(bytes) else {
                return Ok(raw(bytes));
            };
            let n = elements.len();
            return elements
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    self.decode(&meta.value, e)
                        .map_err(|d| format!("list element {i} of {n}: {d}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array);
        }
        self.decode(&meta.value, bytes)
    }

    /// Decodes one entry of operator `uid` in the snapshot at `path` with the codecs the
    /// manifest stores. Bytes a schema does not fit are shown raw; the one error is a value
    /// that cannot be what its encoding says at all (a value of a state with a TTL too
    /// short for its timestamp), [`DumpError::DamagedValue`] naming the entry.
    pub fn entry(
        &mut self,
        e: &Entry<'_>,
        uid: &str,
        path: &str,
    ) -> Result<DecodedEntry, DumpError> {
        let user_key = match (e.entry.user_key, &e.state.user_key) {
            (Some(b), Some(id)) => Some(self.decode_key(id, b)),
            (Some(b), None) => Some(raw(b)),
            (None, _) => None,
        };
        let key = self.decode_key(&e.handle.key_codec, e.entry.key);
        let value = match self.value(e.state, e.entry.value) {
            Ok(v) => v,
            Err(detail) => {
                let mut detail = format!("{detail} key_group={} key={key}", e.entry.key_group);
                if let Some(uk) = &user_key {
                    detail.push_str(&format!(" user_key={uk}"));
                }
                return Err(DumpError::DamagedValue {
                    path: path.to_string(),
                    uid: uid.to_string(),
                    state: e.state.name.clone(),
                    detail,
                });
            }
        };
        Ok(DecodedEntry {
            key_group: e.entry.key_group,
            key,
            namespace: self.decode_key(&e.state.namespace, e.entry.namespace),
            user_key,
            value,
        })
    }
}

/// Whether `key` (decoded `decoded`, raw `bytes`) is the key the user asked for.
fn key_matches(want: &str, decoded: &Value, bytes: &[u8]) -> bool {
    if decoded.as_str() == Some(want) {
        return true;
    }
    if serde_json::from_str::<Value>(want).is_ok_and(|v| &v == decoded) {
        return true;
    }
    let h = hex(bytes);
    want == h || want.strip_prefix("0x") == Some(h.as_str())
}

/// Writes the entries of one state to `out`: JSON lines with `json`, else an aligned table.
/// Returns how many entries were written.
pub fn write_entries(
    s: &Snapshot,
    opts: &EntriesOptions,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<u64, DumpError> {
    let op = operator(s, &opts.uid)?;
    let known = op
        .subtasks
        .iter()
        .filter_map(|st| st.keyed.as_ref())
        .any(|h| h.states.iter().any(|m| m.name == opts.state));
    if !known {
        let mut names: Vec<&str> = op
            .subtasks
            .iter()
            .filter_map(|st| st.keyed.as_ref())
            .flat_map(|h| h.states.iter().map(|m| m.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        return Err(DumpError::usage(format!(
            "operator uid={} has no keyed state {}; its keyed states: {}",
            opts.uid,
            opts.state,
            if names.is_empty() {
                "(none)".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    if let Some(kg) = opts.key_group {
        if kg >= op.max_parallelism {
            return Err(DumpError::usage(format!(
                "key group {kg} is out of range: operator uid={} has key groups 0..{}",
                opts.uid, op.max_parallelism
            )));
        }
    }
    let only = opts.key_group.map(|kg| KeyGroupRange::new(kg, kg + 1));
    let mut decoders = Decoders::default();
    let mut count = 0u64;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut is_map = false;
    let limit = opts.limit.unwrap_or(u64::MAX);
    progress.start("entries", file_count(op));
    let write_err = |e: std::io::Error| DumpError::data("<stdout>", format!("write failed: {e}"));
    if limit == 0 {
        return Ok(0);
    }
    scan_operator(s, op, only, progress, &mut |e| {
        if e.state.name != opts.state {
            return Ok(true);
        }
        // Filter on the key alone, so that a damaged value of another key does not stop
        // the listing of this one.
        if let Some(k) = &opts.key {
            let key = decoders.decode_key(&e.handle.key_codec, e.entry.key);
            if !key_matches(k, &key, e.entry.key) {
                return Ok(true);
            }
        }
        let d = decoders.entry(&e, &opts.uid, &s.location)?;
        count += 1;
        if opts.json {
            match writeln!(out, "{}", d.to_json_line()) {
                // A closed pipe (`| head`) ends the listing quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(false),
                r => r.map_err(write_err)?,
            }
        } else {
            is_map |= d.user_key.is_some();
            rows.push(vec![
                d.key_group.to_string(),
                d.key.to_string(),
                d.namespace.to_string(),
                d.user_key.map_or(String::new(), |u| u.to_string()),
                d.value.to_string(),
            ]);
        }
        Ok(count < limit)
    })?;
    progress.finish();
    if !opts.json {
        let text = if is_map {
            table::render(
                &["KEY_GROUP", "KEY", "NAMESPACE", "USER_KEY", "VALUE"],
                &rows,
            )
        } else {
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|mut r| {
                    r.remove(3);
                    r
                })
                .collect();
            table::render(&["KEY_GROUP", "KEY", "NAMESPACE", "VALUE"], &rows)
        };
        match out.write_all(text.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(count),
            r => r.map_err(write_err)?,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.map_err(write_err)?,
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_line_shape() {
        let e = DecodedEntry {
            key_group: 3,
            key: json!("hello"),
            namespace: Value::Null,
            user_key: None,
            value: json!(2),
        };
        assert_eq!(
            e.to_json_line(),
            r#"{"key":"hello","namespace":null,"value":2,"key_group":3}"#
        );
    }

    #[test]
    fn key_filters() {
        assert!(key_matches("hello", &json!("hello"), b"x"));
        assert!(key_matches("\"hello\"", &json!("hello"), b"x"));
        assert!(key_matches("42", &json!(42), b"x"));
        assert!(key_matches("0x78", &json!({"hex": "78"}), b"x"));
        assert!(!key_matches("hell", &json!("hello"), b"x"));
    }
}
