//! PHP-style form decoding: `application/x-www-form-urlencoded` bodies built by PHP's
//! `http_build_query` (Bitrix24, older SalesMan senders) read back the way PHP fills `$_POST`,
//! into a `serde_json::Value` that equals the JSON the same document would have been.
//!
//! Written here on top of `form_urlencoded` rather than with `serde_qs`, because ingress needs
//! two things serde_qs does not give exactly: a hard nesting limit that turns a depth bomb into
//! a clear error (instead of PHP's silent drop or unbounded work), and PHP's own bracket rules
//! (`a[]` appends after the largest integer key, numeric keys are integers, a scalar is replaced
//! by an array when a later key nests under it, the last duplicate wins in place, text after a
//! closing bracket is ignored, an unclosed `[` becomes `_`). PHP's `main/php_variables.c`
//! (`php_register_variable_ex`) is the reference.

use serde_json::{Map, Value};
use std::collections::HashMap;

/// Deepest document accepted: the top-level object is depth 1, so a form key may carry at most
/// `MAX_DEPTH - 1` bracket segments. Bitrix24 needs 3 (`data[FIELDS][ID]`); PHP's own default
/// (`max_input_nesting_level`) is 64 but silently drops deeper keys, which we refuse instead.
pub const MAX_DEPTH: usize = 32;

/// Most `key=value` pairs (form) or scalars (JSON) in one document. PHP's `max_input_vars`
/// default is 1000 and truncates silently; SalesMan imports list many ids (`clids[]`), so the
/// limit is higher and exceeding it is an error, never a silent truncation.
pub const MAX_FIELDS: usize = 10_000;

/// Most arrays (JSON objects and arrays, PHP arrays) one document may build. Scalars are
/// counted by [`MAX_FIELDS`]; without this, a body of nested one-key objects and no scalars
/// would pass that limit and cost ~50 times its size in memory before the token is checked.
pub const MAX_CONTAINERS: usize = 2 * MAX_FIELDS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("more than {MAX_CONTAINERS} nested arrays")]
    TooManyContainers,
    #[error("a key nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_FIELDS} fields")]
    TooManyFields,
}

/// Decodes a PHP `http_build_query` body into a JSON object (never an array at the top, as
/// `$_POST` is always keyed by name). Lists whose keys are exactly `0..n` in order become JSON
/// arrays, every other PHP array an object, as PHP's `json_encode` writes them; every value
/// is a string. Invalid UTF-8 in a value is replaced by U+FFFD (WHATWG form decoding).
pub fn decode_php_form(body: &[u8]) -> Result<Value, FormError> {
    let mut root = PhpArray::default();
    let mut fields = 0usize;
    // Each bracket segment creates at most one array, so their total bounds the arrays built.
    let mut segments = 0usize;
    for (raw_key, value) in form_urlencoded::parse(body) {
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(FormError::TooManyFields);
        }
        let Some(path) = parse_key(&raw_key)? else {
            // PHP ignores a pair whose name is empty (`=x`, `[a]=x`); so do we.
            continue;
        };
        segments += path.len() - 1;
        if segments > MAX_CONTAINERS {
            return Err(FormError::TooManyContainers);
        }
        root.assign(&path, value.into_owned());
    }
    Ok(Value::Object(root.into_object()))
}

/// One step of a key path: `[name]` or `[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(Key),
    Append,
}

/// PHP array keys: decimal integer strings are stored as integers (`"7"` and `7` are one key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Str(String),
}

impl Key {
    fn from_php_string(s: &str) -> Key {
        // PHP's ZEND_HANDLE_NUMERIC_STR: optional '-', no leading zeros, no "-0", fits a long.
        let digits = s.strip_prefix('-').unwrap_or(s);
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && s != "-0";
        match canonical.then(|| s.parse::<i64>().ok()).flatten() {
            Some(n) => Key::Int(n),
            None => Key::Str(s.to_string()),
        }
    }

    fn into_string(self) -> String {
        match self {
            Key::Int(n) => n.to_string(),
            Key::Str(s) => s,
        }
    }
}

/// Splits `data[FIELDS][ID]` into segments as PHP does; `None` when PHP would ignore the pair.
fn parse_key(raw: &str) -> Result<Option<Vec<Segment>>, FormError> {
    let raw = raw.trim_start_matches(' ');
    let (base_raw, mut rest) = match raw.find('[') {
        Some(at) => (&raw[..at], Some(&raw[at + 1..])),
        None => (raw, None),
    };
    // Spaces and dots in a PHP variable name become underscores.
    let mut base: String = base_raw
        .chars()
        .map(|c| if c == ' ' || c == '.' { '_' } else { c })
        .collect();
    if base.is_empty() {
        return Ok(None);
    }
    let mut segments = Vec::new();
    while let Some(after_open) = rest.take() {
        if segments.len() + 1 >= MAX_DEPTH {
            return Err(FormError::TooDeep);
        }
        // PHP skips one space before testing for `[]`, but keeps it in a named index.
        let probe = after_open.strip_prefix(' ').unwrap_or(after_open);
        let (segment, after_close) = if let Some(after) = probe.strip_prefix(']') {
            (Segment::Append, after)
        } else if let Some(close) = after_open.find(']') {
            (
                Segment::Key(Key::from_php_string(&after_open[..close])),
                &after_open[close + 1..],
            )
        } else {
            if segments.is_empty() {
                // An unclosed first bracket is part of the name: `a[b` is `a_b`.
                base.push('_');
                base.extend(after_open.chars().map(|c| match c {
                    ' ' | '.' | '[' => '_',
                    c => c,
                }));
            }
            // Deeper, PHP drops the unclosed remainder and keeps the segments so far.
            break;
        };
        segments.push(segment);
        // Anything after `]` other than another `[` ends the key (`a[b]c` is `a[b]`).
        rest = after_close.strip_prefix('[');
    }
    let mut path = Vec::with_capacity(segments.len() + 1);
    path.push(Segment::Key(Key::from_php_string(&base)));
    path.extend(segments);
    Ok(Some(path))
}

#[derive(Debug)]
enum Node {
    Leaf(String),
    Array(PhpArray),
}

/// An ordered PHP array: insertion order, integer/string keys, `next` for `[]`.
#[derive(Debug, Default)]
struct PhpArray {
    entries: Vec<(Key, Node)>,
    positions: HashMap<Key, usize>,
    next_index: i64,
}

impl PhpArray {
    fn assign(&mut self, path: &[Segment], value: String) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            let slot = self.slot(first);
            // The last duplicate wins, in the position of the first (zend_hash_update).
            *slot = Node::Leaf(value);
            return;
        }
        let slot = self.slot(first);
        if !matches!(slot, Node::Array(_)) {
            // A scalar under a key that now nests is replaced by an array, as PHP does.
            *slot = Node::Array(PhpArray::default());
        }
        if let Node::Array(child) = slot {
            child.assign(rest, value);
        }
    }

    /// The node at `segment`, created empty (as an array placeholder) when absent.
    fn slot(&mut self, segment: &Segment) -> &mut Node {
        let key = match segment {
            Segment::Append => Key::Int(self.next_index),
            Segment::Key(key) => key.clone(),
        };
        let at = match self.positions.get(&key) {
            Some(&at) => at,
            None => {
                if let Key::Int(n) = key {
                    // PHP 8.3+: the next append goes after the largest integer key so far.
                    self.next_index = self.next_index.max(n.saturating_add(1));
                }
                self.positions.insert(key.clone(), self.entries.len());
                self.entries.push((key, Node::Array(PhpArray::default())));
                self.entries.len() - 1
            }
        };
        &mut self.entries[at].1
    }

    fn into_object(self) -> Map<String, Value> {
        self.entries
            .into_iter()
            .map(|(k, v)| (k.into_string(), v.into_value()))
            .collect()
    }

    fn into_value(self) -> Value {
        let is_list = self
            .entries
            .iter()
            .enumerate()
            .all(|(i, (k, _))| *k == Key::Int(i as i64));
        if is_list && !self.entries.is_empty() {
            Value::Array(
                self.entries
                    .into_iter()
                    .map(|(_, v)| v.into_value())
                    .collect(),
            )
        } else {
            Value::Object(self.into_object())
        }
    }
}

impl Node {
    fn into_value(self) -> Value {
        match self {
            Node::Leaf(s) => Value::String(s),
            Node::Array(a) => a.into_value(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(body: &str) -> Value {
        decode_php_form(body.as_bytes()).unwrap()
    }

    #[test]
    fn percent_encoded_brackets_nest() {
        let v = decode("data%5BFIELDS%5D%5BID%5D=7405&event=ONCRMDEALUPDATE");
        assert_eq!(
            v,
            json!({"data": {"FIELDS": {"ID": "7405"}}, "event": "ONCRMDEALUPDATE"})
        );
    }

    #[test]
    fn literal_brackets_nest_too() {
        assert_eq!(
            decode("auth[member_id]=m1&auth[domain]=x.bitrix24.ru"),
            json!({"auth": {"member_id": "m1", "domain": "x.bitrix24.ru"}})
        );
    }

    #[test]
    fn append_and_indexed_lists_become_arrays() {
        assert_eq!(decode("a[]=x&a[]=y"), json!({"a": ["x", "y"]}));
        assert_eq!(decode("a%5B0%5D=x&a%5B1%5D=y"), json!({"a": ["x", "y"]}));
        // `[]` continues after the largest integer key, as PHP does.
        assert_eq!(decode("a[5]=x&a[]=y"), json!({"a": {"5": "x", "6": "y"}}));
        // Lists of objects.
        assert_eq!(
            decode("a[][x]=1&a[][y]=2"),
            json!({"a": [{"x": "1"}, {"y": "2"}]})
        );
    }

    #[test]
    fn out_of_order_or_sparse_indices_stay_objects() {
        assert_eq!(decode("a[1]=x&a[0]=y"), json!({"a": {"0": "y", "1": "x"}}));
        assert_eq!(decode("a[0]=x&a[2]=y"), json!({"a": {"0": "x", "2": "y"}}));
        // "01" is not a PHP integer key, so it is a string key.
        assert_eq!(decode("a[01]=x"), json!({"a": {"01": "x"}}));
    }

    #[test]
    fn plus_and_percent20_are_spaces_and_unicode_survives() {
        assert_eq!(
            decode("t=%D0%A1%D0%B4%D0%B5%D0%BB%D0%BA%D0%B0+%E2%84%961%20ok&e=%F0%9F%98%80"),
            json!({"t": "Сделка №1 ok", "e": "😀"})
        );
        assert_eq!(decode("a=1%2B1"), json!({"a": "1+1"}));
    }

    #[test]
    fn duplicate_keys_last_wins_like_php() {
        assert_eq!(decode("a=1&b=2&a=3"), json!({"a": "3", "b": "2"}));
        assert_eq!(decode("d[x]=1&d[x]=2"), json!({"d": {"x": "2"}}));
        // A scalar later nested under becomes an array, and vice versa.
        assert_eq!(decode("a=1&a[b]=2"), json!({"a": {"b": "2"}}));
        assert_eq!(decode("a[b]=2&a=1"), json!({"a": "1"}));
    }

    #[test]
    fn empty_values_and_names() {
        assert_eq!(
            decode("a=&b&c[d]="),
            json!({"a": "", "b": "", "c": {"d": ""}})
        );
        // PHP ignores pairs without a name.
        assert_eq!(decode("=x&[a]=y&&z=1"), json!({"z": "1"}));
        assert_eq!(decode(""), json!({}));
    }

    #[test]
    fn php_name_mangling() {
        // Dots and spaces in the base name, an unclosed bracket, text after `]`.
        assert_eq!(decode("a.b=1"), json!({"a_b": "1"}));
        assert_eq!(decode("a%20b=1"), json!({"a_b": "1"}));
        assert_eq!(decode("a[b=1"), json!({"a_b": "1"}));
        assert_eq!(decode("a[b]c=1"), json!({"a": {"b": "1"}}));
        assert_eq!(decode("a[b][c=1"), json!({"a": {"b": "1"}}));
        assert_eq!(decode("a[ ]=1"), json!({"a": ["1"]}));
    }

    #[test]
    fn depth_bomb_is_refused() {
        let ok = format!("a{}=1", "[x]".repeat(MAX_DEPTH - 1));
        assert!(decode_php_form(ok.as_bytes()).is_ok());
        let bomb = format!("a{}=1", "%5Bx%5D".repeat(MAX_DEPTH));
        assert_eq!(decode_php_form(bomb.as_bytes()), Err(FormError::TooDeep));
        let huge = format!("a{}=1", "[]".repeat(100_000));
        assert_eq!(decode_php_form(huge.as_bytes()), Err(FormError::TooDeep));
    }

    #[test]
    fn too_many_fields_is_refused() {
        let ok = "a[]=1&".repeat(MAX_FIELDS);
        assert!(decode_php_form(ok.as_bytes()).is_ok());
        let many = "a[]=1&".repeat(MAX_FIELDS + 1);
        assert_eq!(
            decode_php_form(many.as_bytes()),
            Err(FormError::TooManyFields)
        );
    }

    #[test]
    fn nested_arrays_without_values_are_counted() {
        // 31 segments per pair, few pairs: within the field limit, past the container budget.
        let pair = format!("b{}=", "[a]".repeat(MAX_DEPTH - 1));
        let pairs = MAX_CONTAINERS / (MAX_DEPTH - 1) + 1;
        let bomb = (0..pairs)
            .map(|n| pair.replacen('b', &format!("b{n}"), 1))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            decode_php_form(bomb.as_bytes()),
            Err(FormError::TooManyContainers)
        );
    }

    #[test]
    fn integer_keys_match_their_string_form() {
        assert_eq!(decode("a[7]=x&a[7]=y"), json!({"a": {"7": "y"}}));
        assert_eq!(decode("a[-1]=x&a[]=y"), json!({"a": {"-1": "x", "0": "y"}}));
    }
}
