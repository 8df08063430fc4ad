//! EventBridge event patterns over a forwarded body: the language a route's `match` is written in.
//! A pattern is compiled once, when the routes file is read (so every mistake is a load error),
//! and matched against each body the consumer builds.
//!
//! The language is the one the AWS EventBridge user guide documents ("Creating event patterns",
//! "Comparison operators for use in event patterns", "Arrays in event patterns", "Matching null
//! values and empty strings"; AWS's reference matcher is `aws/event-ruler`): fields are AND,
//! the values listed for a field are OR; exact values, `prefix`, `suffix`, `equals-ignore-case`,
//! `wildcard`, `anything-but` (a value, a list, or a `prefix`/`suffix`/`equals-ignore-case`/
//! `wildcard`), `numeric` ranges, `exists`, `$or`, nested objects; a field whose value is an
//! array matches when any element does, and a nested pattern over an array of objects matches
//! when one element matches all of it (so `changes: {field: [STAGE_ID], new: [WON]}` means one
//! change did both). `cidr` is refused: CRM bodies carry no addresses worth routing on.
//!
//! One deliberate difference: Bitrix24 sends every number as a string (`"OPPORTUNITY":
//! "1500.00"`), so wherever a pattern names a *number* (an exact number, `anything-but`
//! numbers, `numeric`), a string that spells a decimal number is compared by value. A string
//! in a pattern stays a string: `["1500"]` does not match `"1500.00"`.
//!
//! Not the `quamina` crate (0.6, a one-maintainer Rust port of Tim Bray's Go library,
//! Apache-2.0, releases 0.4.0-0.4.2 yanked): edition 2024 and Rust 1.88, where this workspace
//! promises 1.85; new crates to build (parking_lot, fast-float2, next to arc-swap and memchr);
//! and its automaton pays off for thousands of patterns over millions of events, not for the
//! handful of routes of a relay, where walking each compiled pattern over the body takes
//! microseconds. Owning the matcher also keeps the two things quamina would not give us: the
//! number-string rule above and errors that name their place (hence their line in the file).

use serde_json::{Map, Value};
use std::fmt;

/// A compiled event pattern; compares equal when written the same.
#[derive(Clone, Debug)]
pub struct EventPattern {
    source: Value,
    root: ObjectPattern,
}

impl PartialEq for EventPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Where in a pattern a mistake is: keys and array indexes from the pattern's root, so the
/// routes file can name the line.
#[derive(Clone, Debug, PartialEq)]
pub enum PathStep {
    Key(String),
    Index(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("{}{message}", display_path(at))]
pub struct PatternError {
    pub at: Vec<PathStep>,
    pub message: String,
}

fn display_path(at: &[PathStep]) -> String {
    if at.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for step in at {
        match step {
            PathStep::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            PathStep::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out.push_str(": ");
    out
}

#[derive(Clone, Debug, Default)]
struct ObjectPattern {
    fields: Vec<(String, FieldRule)>,
    /// `$or`: at least one alternative matches the same object.
    any_of: Option<Vec<ObjectPattern>>,
}

#[derive(Clone, Debug)]
enum FieldRule {
    Nested(ObjectPattern),
    /// Any one of these matches any one leaf value of the field.
    Matchers(Vec<Matcher>),
}

#[derive(Clone, Debug)]
enum Matcher {
    Exact(Value),
    Prefix(Text),
    Suffix(Text),
    /// Stored lower-cased.
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(Exclusion),
    Numeric(Vec<(Comparison, f64)>),
    Exists(bool),
}

#[derive(Clone, Debug)]
struct Text {
    /// Lower-cased when `ignore_case`.
    text: String,
    ignore_case: bool,
}

#[derive(Clone, Debug)]
enum Exclusion {
    Strings(Vec<String>),
    Numbers(Vec<f64>),
    Prefix(String),
    Suffix(String),
    /// Lower-cased.
    IgnoreCase(Vec<String>),
    Wildcards(Vec<Wildcard>),
}

#[derive(Clone, Copy, Debug)]
enum Comparison {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

/// `*` is any run of characters; `\*` a literal star, `\\` a backslash.
#[derive(Clone, Debug)]
struct Wildcard {
    /// The literal pieces between stars: n stars make n + 1 pieces.
    pieces: Vec<String>,
}

impl EventPattern {
    /// `{}`: every body.
    pub fn match_all() -> EventPattern {
        EventPattern {
            source: Value::Object(Map::new()),
            root: ObjectPattern::default(),
        }
    }

    pub fn from_json(pattern: &Value) -> Result<EventPattern, PatternError> {
        let mut at = Vec::new();
        let Value::Object(fields) = pattern else {
            return Err(PatternError {
                at,
                message: "a pattern is a JSON object".into(),
            });
        };
        let root = compile_object(fields, &mut at)?;
        Ok(EventPattern {
            source: pattern.clone(),
            root,
        })
    }

    /// The pattern as written, for banners and `relay routes test`.
    pub fn as_json(&self) -> &Value {
        &self.source
    }

    pub fn matches(&self, body: &Value) -> bool {
        self.root.matches(body.as_object())
    }
}

fn error(at: &[PathStep], message: impl Into<String>) -> PatternError {
    PatternError {
        at: at.to_vec(),
        message: message.into(),
    }
}

const OPERATORS: &str =
    "prefix, suffix, equals-ignore-case, wildcard, anything-but, numeric, exists";

fn compile_object(
    fields: &Map<String, Value>,
    at: &mut Vec<PathStep>,
) -> Result<ObjectPattern, PatternError> {
    let mut compiled = ObjectPattern::default();
    for (name, rule) in fields {
        at.push(PathStep::Key(name.clone()));
        if name == "$or" {
            compiled.any_of = Some(compile_or(rule, at)?);
        } else {
            let rule =
                match rule {
                    Value::Object(nested) => FieldRule::Nested(compile_object(nested, at)?),
                    Value::Array(options) => FieldRule::Matchers(compile_matchers(options, at)?),
                    _ => return Err(error(
                        at,
                        "a field's value is a list of values to match (`[\"NEW\"]`) or a nested \
                         object, not a bare value",
                    )),
                };
            compiled.fields.push((name.clone(), rule));
        }
        at.pop();
    }
    Ok(compiled)
}

fn compile_or(rule: &Value, at: &mut Vec<PathStep>) -> Result<Vec<ObjectPattern>, PatternError> {
    let Value::Array(alternatives) = rule else {
        return Err(error(at, "`$or` takes a list of patterns"));
    };
    if alternatives.len() < 2 {
        return Err(error(at, "`$or` needs at least two patterns"));
    }
    let mut compiled = Vec::with_capacity(alternatives.len());
    for (i, alternative) in alternatives.iter().enumerate() {
        at.push(PathStep::Index(i));
        let Value::Object(fields) = alternative else {
            return Err(error(at, "each `$or` alternative is a pattern object"));
        };
        if fields.is_empty() {
            return Err(error(
                at,
                "an empty `$or` alternative would match everything",
            ));
        }
        compiled.push(compile_object(fields, at)?);
        at.pop();
    }
    Ok(compiled)
}

fn compile_matchers(
    options: &[Value],
    at: &mut Vec<PathStep>,
) -> Result<Vec<Matcher>, PatternError> {
    if options.is_empty() {
        return Err(error(
            at,
            "an empty list matches nothing: list at least one value",
        ));
    }
    let mut compiled = Vec::with_capacity(options.len());
    for (i, option) in options.iter().enumerate() {
        at.push(PathStep::Index(i));
        compiled.push(compile_matcher(option, at)?);
        at.pop();
    }
    Ok(compiled)
}

fn compile_matcher(option: &Value, at: &mut Vec<PathStep>) -> Result<Matcher, PatternError> {
    let operator = match option {
        Value::Array(_) => {
            return Err(error(at, "a list inside a list of values is not a pattern"))
        }
        Value::Object(operator) => operator,
        Value::Number(n) if n.as_f64().is_none_or(|f| !f.is_finite()) => {
            return Err(error(at, "a number out of range"))
        }
        exact => return Ok(Matcher::Exact(exact.clone())),
    };
    let mut entries = operator.iter();
    let (Some((name, argument)), None) = (entries.next(), entries.next()) else {
        return Err(error(
            at,
            format!("an operator object has exactly one key, one of: {OPERATORS}"),
        ));
    };
    at.push(PathStep::Key(name.clone()));
    let matcher = match name.as_str() {
        "prefix" => Matcher::Prefix(text_argument(argument, at)?),
        "suffix" => Matcher::Suffix(text_argument(argument, at)?),
        "equals-ignore-case" => {
            Matcher::EqualsIgnoreCase(string_argument(argument, at)?.to_lowercase())
        }
        "wildcard" => Matcher::Wildcard(Wildcard::parse(string_argument(argument, at)?, at)?),
        "anything-but" => Matcher::AnythingBut(exclusion(argument, at)?),
        "numeric" => Matcher::Numeric(numeric_range(argument, at)?),
        "exists" => match argument {
            Value::Bool(present) => Matcher::Exists(*present),
            _ => return Err(error(at, "`exists` takes true or false")),
        },
        "cidr" => {
            return Err(error(
                at,
                "`cidr` (IP address matching) is not supported by crm-relay",
            ))
        }
        other => {
            return Err(error(
                at,
                format!("unknown operator `{other}`; known: {OPERATORS}"),
            ))
        }
    };
    at.pop();
    Ok(matcher)
}

fn string_argument<'a>(argument: &'a Value, at: &[PathStep]) -> Result<&'a str, PatternError> {
    argument.as_str().ok_or_else(|| error(at, "takes a string"))
}

/// `"text"` or `{"equals-ignore-case": "text"}` (prefix and suffix only).
fn text_argument(argument: &Value, at: &mut Vec<PathStep>) -> Result<Text, PatternError> {
    match argument {
        Value::String(text) => Ok(Text {
            text: text.clone(),
            ignore_case: false,
        }),
        Value::Object(inner) if inner.len() == 1 && inner.contains_key("equals-ignore-case") => {
            at.push(PathStep::Key("equals-ignore-case".into()));
            let text = string_argument(&inner["equals-ignore-case"], at)?.to_lowercase();
            at.pop();
            Ok(Text {
                text,
                ignore_case: true,
            })
        }
        _ => Err(error(
            at,
            "takes a string, or {\"equals-ignore-case\": \"...\"}",
        )),
    }
}

fn exclusion(argument: &Value, at: &mut Vec<PathStep>) -> Result<Exclusion, PatternError> {
    const SHAPE: &str = "`anything-but` takes a string, a number, a list of strings, a list of \
                         numbers, or one of {\"prefix\"|\"suffix\"|\"equals-ignore-case\"|\"wildcard\": ...}";
    match argument {
        Value::String(s) => Ok(Exclusion::Strings(vec![s.clone()])),
        Value::Number(n) => Ok(Exclusion::Numbers(vec![finite(n, at)?])),
        Value::Array(items) if !items.is_empty() => {
            if let Some(strings) = items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
            {
                return Ok(Exclusion::Strings(strings));
            }
            if items.iter().all(Value::is_number) {
                let numbers = items
                    .iter()
                    .filter_map(Value::as_number)
                    .map(|n| finite(n, at))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(Exclusion::Numbers(numbers));
            }
            Err(error(at, "a list is all strings or all numbers"))
        }
        Value::Object(inner) if inner.len() == 1 => {
            let (name, value) = inner.iter().next().ok_or_else(|| error(at, SHAPE))?;
            at.push(PathStep::Key(name.clone()));
            let exclusion = match name.as_str() {
                "prefix" => Exclusion::Prefix(string_argument(value, at)?.to_string()),
                "suffix" => Exclusion::Suffix(string_argument(value, at)?.to_string()),
                "equals-ignore-case" => Exclusion::IgnoreCase(
                    strings(value, at)?
                        .iter()
                        .map(|s| s.to_lowercase())
                        .collect(),
                ),
                "wildcard" => Exclusion::Wildcards(
                    strings(value, at)?
                        .iter()
                        .map(|s| Wildcard::parse(s, at))
                        .collect::<Result<_, _>>()?,
                ),
                _ => return Err(error(at, SHAPE)),
            };
            at.pop();
            Ok(exclusion)
        }
        _ => Err(error(at, SHAPE)),
    }
}

/// A string or a non-empty list of strings.
fn strings(value: &Value, at: &[PathStep]) -> Result<Vec<String>, PatternError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| error(at, "takes a string or a list of strings")),
        _ => Err(error(at, "takes a string or a list of strings")),
    }
}

fn finite(n: &serde_json::Number, at: &[PathStep]) -> Result<f64, PatternError> {
    n.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| error(at, "a number out of range"))
}

/// `["=", 5]`, `["<", 10]`, `[">", 0, "<=", 5]`: a lower bound first, then an upper one.
fn numeric_range(
    argument: &Value,
    at: &[PathStep],
) -> Result<Vec<(Comparison, f64)>, PatternError> {
    const SHAPE: &str =
        "`numeric` takes [\"<op>\", number] or [\">\"|\">=\", low, \"<\"|\"<=\", high]; \
                         ops: = < <= > >=";
    let Value::Array(items) = argument else {
        return Err(error(at, SHAPE));
    };
    let mut range = Vec::new();
    for pair in items.chunks(2) {
        let [Value::String(op), Value::Number(bound)] = pair else {
            return Err(error(at, SHAPE));
        };
        let op = match op.as_str() {
            "=" => Comparison::Eq,
            "<" => Comparison::Lt,
            "<=" => Comparison::Le,
            ">" => Comparison::Gt,
            ">=" => Comparison::Ge,
            _ => return Err(error(at, SHAPE)),
        };
        range.push((op, finite(bound, at)?));
    }
    match range.as_slice() {
        [_] => Ok(range),
        [(Comparison::Gt | Comparison::Ge, low), (Comparison::Lt | Comparison::Le, high)] => {
            if low < high {
                Ok(range)
            } else {
                Err(error(at, "the lower bound must be below the upper bound"))
            }
        }
        _ => Err(error(at, SHAPE)),
    }
}

impl Wildcard {
    fn parse(text: &str, at: &[PathStep]) -> Result<Wildcard, PatternError> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars();
        let mut last_was_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' if last_was_star => {
                    return Err(error(at, "a wildcard cannot have two `*` in a row"))
                }
                '*' => {
                    pieces.push(String::new());
                    last_was_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => push_char(&mut pieces, escaped),
                    _ => return Err(error(at, "in a wildcard `\\` escapes only `*` or `\\`")),
                },
                other => push_char(&mut pieces, other),
            }
            last_was_star = false;
        }
        Ok(Wildcard { pieces })
    }

    fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return value.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            return value == first;
        };
        let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
            return false;
        };
        // Leftmost placement of each middle piece leaves the most room for the rest.
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(i) => remaining = &remaining[i + piece.len()..],
                None => return false,
            }
        }
        remaining.ends_with(last.as_str())
    }
}

fn push_char(pieces: &mut [String], c: char) {
    if let Some(piece) = pieces.last_mut() {
        piece.push(c);
    }
}

impl ObjectPattern {
    /// `object` is `None` when the body has no object here (absent, a scalar, or null): every
    /// field is then absent.
    fn matches(&self, object: Option<&Map<String, Value>>) -> bool {
        self.fields
            .iter()
            .all(|(name, rule)| rule.matches(object.and_then(|o| o.get(name))))
            && self
                .any_of
                .as_ref()
                .is_none_or(|alternatives| alternatives.iter().any(|a| a.matches(object)))
    }
}

impl FieldRule {
    fn matches(&self, value: Option<&Value>) -> bool {
        match self {
            FieldRule::Nested(pattern) => match value {
                Some(Value::Object(object)) => pattern.matches(Some(object)),
                // One element must match the whole nested pattern: two fields of a pattern
                // are never satisfied by two different elements.
                Some(Value::Array(items)) if !items.is_empty() => {
                    items.iter().any(|item| self.matches(Some(item)))
                }
                _ => pattern.matches(None),
            },
            FieldRule::Matchers(matchers) => {
                let mut leaves = Vec::new();
                if let Some(value) = value {
                    collect_leaves(value, &mut leaves);
                }
                if leaves.is_empty() {
                    // Only leaves exist: an object, an empty list or nothing is "absent".
                    matchers.iter().any(|m| matches!(m, Matcher::Exists(false)))
                } else {
                    leaves
                        .iter()
                        .any(|leaf| matchers.iter().any(|m| m.matches(leaf)))
                }
            }
        }
    }
}

/// The scalar values (null included) a field holds: itself, or its array's, at any depth.
fn collect_leaves<'a>(value: &'a Value, leaves: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|i| collect_leaves(i, leaves)),
        Value::Object(_) => {}
        scalar => leaves.push(scalar),
    }
}

impl Matcher {
    /// Against one present leaf value.
    fn matches(&self, leaf: &Value) -> bool {
        match self {
            Matcher::Exact(Value::Number(n)) => {
                number_of(leaf).is_some_and(|v| n.as_f64() == Some(v))
            }
            Matcher::Exact(exact) => exact == leaf,
            Matcher::Prefix(text) => leaf
                .as_str()
                .is_some_and(|s| text.folded(s).starts_with(&text.text)),
            Matcher::Suffix(text) => leaf
                .as_str()
                .is_some_and(|s| text.folded(s).ends_with(&text.text)),
            Matcher::EqualsIgnoreCase(text) => {
                leaf.as_str().is_some_and(|s| s.to_lowercase() == *text)
            }
            Matcher::Wildcard(wildcard) => leaf.as_str().is_some_and(|s| wildcard.matches(s)),
            Matcher::AnythingBut(exclusion) => !exclusion.excludes(leaf),
            Matcher::Numeric(range) => number_of(leaf).is_some_and(|v| {
                range.iter().all(|(op, bound)| match op {
                    Comparison::Eq => v == *bound,
                    Comparison::Lt => v < *bound,
                    Comparison::Le => v <= *bound,
                    Comparison::Gt => v > *bound,
                    Comparison::Ge => v >= *bound,
                })
            }),
            Matcher::Exists(present) => *present,
        }
    }
}

impl Text {
    fn folded<'a>(&self, value: &'a str) -> std::borrow::Cow<'a, str> {
        if self.ignore_case {
            std::borrow::Cow::Owned(value.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(value)
        }
    }
}

impl Exclusion {
    /// True when `leaf` is one of the excluded values.
    fn excludes(&self, leaf: &Value) -> bool {
        match self {
            Exclusion::Strings(list) => leaf.as_str().is_some_and(|s| list.iter().any(|x| x == s)),
            Exclusion::Numbers(list) => number_of(leaf).is_some_and(|v| list.contains(&v)),
            Exclusion::Prefix(prefix) => leaf
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            Exclusion::Suffix(suffix) => {
                leaf.as_str().is_some_and(|s| s.ends_with(suffix.as_str()))
            }
            Exclusion::IgnoreCase(list) => leaf.as_str().is_some_and(|s| {
                let s = s.to_lowercase();
                list.contains(&s)
            }),
            Exclusion::Wildcards(list) => leaf
                .as_str()
                .is_some_and(|s| list.iter().any(|w| w.matches(s))),
        }
    }
}

/// A JSON number, or a string spelling a decimal number the way Bitrix24 sends amounts
/// (`"1500.00"`, `"-3"`, `"1e3"`): no spaces, no thousands separators, no `inf`/`NaN`.
fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if is_decimal(s) => s.parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    digits(whole)
        && fraction.is_none_or(digits)
        && exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)))
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)
    }
}

#[cfg(test)]
#[path = "pattern_tests.rs"]
mod tests;
