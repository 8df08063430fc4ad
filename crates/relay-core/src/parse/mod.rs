//! Body parsing, the first step of ingress: raw bytes (form or JSON) -> one JSON document ->
//! a typed delivery of Bitrix24 (`bitrix24`) or SalesMan (`salesman`). Nothing here verifies
//! or routes; it only says what arrived, or why it cannot be read.

pub mod bitrix24;
mod budgeted_json;
pub mod php_form;
pub mod salesman;

use crate::event::Source;
use php_form::{FormError, MAX_CONTAINERS, MAX_DEPTH, MAX_FIELDS};
use serde_json::Value;

/// How a body is encoded, from its content type (or sniffed when there is none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    Form,
    Json,
}

/// Why a body could not be read: each becomes 400 (or 415 for the encoding) at the edge.
/// Messages name the problem, never a value from the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unsupported content type")]
    UnsupportedContentType,
    #[error("body is not valid JSON")]
    InvalidJson,
    #[error("body must be a JSON object or a form")]
    NotAnObject,
    #[error("document nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("document has more than {MAX_FIELDS} fields")]
    TooManyFields,
    #[error("document has more than {MAX_CONTAINERS} objects and arrays")]
    TooManyContainers,
    #[error("field `{0}` is missing or empty")]
    Missing(&'static str),
    #[error("field `{0}` has an invalid value")]
    Invalid(&'static str),
}

impl From<FormError> for ParseError {
    fn from(e: FormError) -> Self {
        match e {
            FormError::TooDeep => ParseError::TooDeep,
            FormError::TooManyFields => ParseError::TooManyFields,
            FormError::TooManyContainers => ParseError::TooManyContainers,
        }
    }
}

/// Picks the decoder from `Content-Type`. Without one, a body starting with `{` is JSON and
/// anything else a form (what both CRMs send). A charset other than UTF-8 is refused: decoding
/// such a body as UTF-8 would silently change its text.
pub fn body_encoding(content_type: Option<&str>, body: &[u8]) -> Result<BodyEncoding, ParseError> {
    let content_type = content_type.map(str::trim).filter(|c| !c.is_empty());
    let Some(content_type) = content_type else {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        return Ok(if first == Some(&b'{') {
            BodyEncoding::Json
        } else {
            BodyEncoding::Form
        });
    };
    let mut parts = content_type.split(';');
    let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    for param in parts {
        if let Some((name, value)) = param.split_once('=') {
            let value = value.trim().trim_matches('"').to_ascii_lowercase();
            if name.trim().eq_ignore_ascii_case("charset")
                && !matches!(value.as_str(), "utf-8" | "utf8" | "us-ascii")
            {
                return Err(ParseError::UnsupportedContentType);
            }
        }
    }
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Ok(BodyEncoding::Form),
        "application/json" => Ok(BodyEncoding::Json),
        m if m.starts_with("application/") && m.ends_with("+json") => Ok(BodyEncoding::Json),
        _ => Err(ParseError::UnsupportedContentType),
    }
}

/// Decodes a body into a JSON object, with the same depth and size limits for both encodings.
pub fn decode_document(
    encoding: BodyEncoding,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, ParseError> {
    let value = match encoding {
        BodyEncoding::Form => php_form::decode_php_form(body)?,
        // The limits are applied while the tree is built, so a bomb stops at the first node
        // past them instead of after it has been allocated whole.
        BodyEncoding::Json => budgeted_json::from_slice(body)?,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ParseError::NotAnObject),
    }
}

/// Which CRM sent a document, from its event name: Bitrix24 names are `ON…` without dots
/// (`ONCRMDEALUPDATE`), SalesMan names are dotted (`deal.change.step`). The body is the only
/// reliable sign, since one family URL takes both CRMs.
pub fn detect_source(document: &serde_json::Map<String, Value>) -> Result<Source, ParseError> {
    let event = event_name(document)?;
    Ok(if event.contains('.') {
        Source::Salesman
    } else {
        Source::Bitrix24
    })
}

/// Longest event name accepted; real ones are under 64 characters.
const MAX_EVENT_NAME: usize = 128;

/// The `event` field, checked to be a plausible event name so it is safe to log and echo.
pub(crate) fn event_name(document: &serde_json::Map<String, Value>) -> Result<&str, ParseError> {
    let event = match document.get("event") {
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(ParseError::Invalid("event")),
        None => return Err(ParseError::Missing("event")),
    };
    if event.is_empty() {
        return Err(ParseError::Missing("event"));
    }
    let plausible = event.len() <= MAX_EVENT_NAME
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !plausible {
        return Err(ParseError::Invalid("event"));
    }
    Ok(event)
}

/// A field that must be an identifier safe for an SQS MessageGroupId (printable ASCII, no
/// `#`, which separates the group id's parts): the portal and the entity id.
pub(crate) fn group_safe_id(
    value: Option<&Value>,
    field: &'static str,
    max_len: usize,
) -> Result<Option<String>, ParseError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(ParseError::Invalid(field)),
    };
    if text.is_empty() {
        return Ok(None);
    }
    let safe = text.len() <= max_len && text.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if !safe {
        return Err(ParseError::Invalid(field));
    }
    Ok(Some(text))
}

/// Longest portal id (`member_id` is 32 hex characters) and entity id (an integer) accepted,
/// chosen so `source#portal#family#entity` stays within SQS's 128-character group id.
pub(crate) const MAX_PORTAL_LEN: usize = 64;
pub(crate) const MAX_ENTITY_ID_LEN: usize = 40;

/// Keys whose values are credentials, wherever they appear: they never enter an envelope.
/// `ses` is SalesMan's session cookie, which its older `hookSender` forwarded.
const SECRET_KEYS: [&str; 9] = [
    "auth",
    "token",
    "application_token",
    "access_token",
    "refresh_token",
    "client_secret",
    "apikey",
    "password",
    "ses",
];

/// Shortest known secret also matched by value: a short test token such as `1` would otherwise
/// wipe every field that happens to equal it.
const MIN_SECRET_LEN_FOR_VALUE_MATCH: usize = 8;

/// Removes every credential from `value`: keys in [`SECRET_KEYS`] (case-insensitively) at any
/// depth, and any string equal to one of `known_secrets` (the credentials the request carried
/// or was checked against), so a secret under an unexpected name is dropped too.
pub fn strip_secrets(value: &mut Value, known_secrets: &[&str]) {
    match value {
        Value::Object(map) => {
            map.retain(|k, v| {
                let secret_key = SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s));
                !secret_key && !is_known_secret(v, known_secrets)
            });
            for v in map.values_mut() {
                strip_secrets(v, known_secrets);
            }
        }
        Value::Array(items) => {
            items.retain(|v| !is_known_secret(v, known_secrets));
            for v in items.iter_mut() {
                strip_secrets(v, known_secrets);
            }
        }
        _ => {}
    }
}

fn is_known_secret(value: &Value, known_secrets: &[&str]) -> bool {
    matches!(value, Value::String(s)
        if s.len() >= MIN_SECRET_LEN_FOR_VALUE_MATCH && known_secrets.contains(&s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_choose_the_decoder() {
        let form = Ok(BodyEncoding::Form);
        let json = Ok(BodyEncoding::Json);
        assert_eq!(
            body_encoding(Some("application/x-www-form-urlencoded"), b""),
            form
        );
        assert_eq!(
            body_encoding(
                Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                b""
            ),
            form
        );
        assert_eq!(
            body_encoding(Some("application/json; charset=utf-8"), b""),
            json
        );
        assert_eq!(body_encoding(Some("application/vnd.api+json"), b""), json);
        assert_eq!(body_encoding(None, b"  {\"event\":1}"), json);
        assert_eq!(body_encoding(Some(""), b"event=x"), form);
        assert_eq!(body_encoding(None, b"event=x"), form);
        for bad in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/json; charset=windows-1251",
        ] {
            assert_eq!(
                body_encoding(Some(bad), b"{}"),
                Err(ParseError::UnsupportedContentType),
                "{bad}"
            );
        }
    }

    #[test]
    fn json_documents_share_the_form_limits() {
        let deep = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(decode_document(BodyEncoding::Json, deep.as_bytes()).is_ok());
        let deeper = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            decode_document(BodyEncoding::Json, deeper.as_bytes()),
            Err(ParseError::TooDeep)
        );
        // Stopped at depth 33, long before the body turns out to be unclosed.
        let bomb = "[".repeat(100_000);
        assert_eq!(
            decode_document(BodyEncoding::Json, bomb.as_bytes()),
            Err(ParseError::TooDeep)
        );
        let wide = format!("{{\"a\":[{}1]}}", "1,".repeat(MAX_FIELDS));
        assert_eq!(
            decode_document(BodyEncoding::Json, wide.as_bytes()),
            Err(ParseError::TooManyFields)
        );
        assert_eq!(
            decode_document(BodyEncoding::Json, b"[1]"),
            Err(ParseError::NotAnObject)
        );
    }

    #[test]
    fn source_follows_the_event_name() {
        let doc = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            detect_source(&doc(json!({"event": "ONCRMDEALADD"}))),
            Ok(Source::Bitrix24)
        );
        assert_eq!(
            detect_source(&doc(json!({"event": "deal.add"}))),
            Ok(Source::Salesman)
        );
        assert_eq!(
            detect_source(&doc(json!({"x": "1"}))),
            Err(ParseError::Missing("event"))
        );
        assert_eq!(
            detect_source(&doc(json!({"event": "ON CRM"}))),
            Err(ParseError::Invalid("event"))
        );
    }

    #[test]
    fn secrets_are_stripped_by_name_and_by_value() {
        let mut v = json!({
            "auth": {"application_token": "t"},
            "FIELDS": {"ID": "1", "Access_Token": "a", "note": "s3cret-value"},
            "list": ["s3cret-value", "keep"],
            "token": "s3cret-value",
            "short": "1"
        });
        strip_secrets(&mut v, &["s3cret-value", "1"]);
        assert_eq!(
            v,
            json!({"FIELDS": {"ID": "1"}, "list": ["keep"], "short": "1"})
        );
    }
}
