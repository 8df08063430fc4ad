//! From one offline record to the envelope ingress would have built from the online POST of
//! the same change (`offline`'s module docs say why the ids line up). The poller calls it per
//! record; ingress's own parser and catalogue do the reading.

use crate::catalogue;
use crate::event::{envelope_id, rfc3339_seconds, Family, RelayEvent, Source, ENVELOPE_VERSION};
use crate::lifecycle::install::text_at;
use crate::parse::bitrix24::parse_bitrix24;
use serde_json::{json, Value};
use std::time::SystemTime;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why one offline record could not become an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordRejected {
    #[error("record has no EVENT_NAME")]
    NoEventName,
    #[error("event {0} is in no family")]
    UnknownEvent(String),
    #[error("event {0} carries no entity id")]
    NoEntityId(String),
    #[error("record cannot be read as an event: {0}")]
    Unreadable(String),
}

/// The envelope ingress would have built from the online POST of the same change (see the
/// module docs for why the ids line up).
pub fn offline_record_envelope(
    member_id: &str,
    domain: Option<&str>,
    record: &Value,
    now: SystemTime,
) -> Result<RelayEvent, RecordRejected> {
    let event = text_at(record, &["EVENT_NAME"])
        .filter(|e| !e.is_empty())
        .ok_or(RecordRejected::NoEventName)?;
    let data = match record.get("EVENT_DATA") {
        Some(Value::Object(_)) => as_form_strings(&record["EVENT_DATA"]),
        _ => json!({}),
    };
    // The same catalogue entry ingress would pick (a base dynamic-item name by its type).
    let entry = catalogue::resolve(&event, &data)
        .map_err(|_| RecordRejected::UnknownEvent(event.to_ascii_uppercase()))?;
    let family = entry.family;
    // Ingress's own parser reads the record as if it had been posted, so the event name and
    // the entity id come out exactly as for the online call.
    let mut posted = serde_json::Map::new();
    posted.insert("event".into(), json!(event));
    posted.insert("data".into(), data.clone());
    posted.insert("auth".into(), json!({"member_id": member_id}));
    let parsed =
        parse_bitrix24(&posted).map_err(|e| RecordRejected::Unreadable(format!("{event}: {e}")))?;
    let (event, entity_id) = (parsed.event, parsed.entity_id);
    if family != Family::App && entity_id.is_none() {
        return Err(RecordRejected::NoEntityId(event));
    }
    let ts = text_at(record, &["TIMESTAMP_X"])
        .and_then(|t| parse_bitrix_timestamp(&t))
        .unwrap_or_else(|| {
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    Ok(RelayEvent {
        v: ENVELOPE_VERSION,
        id: envelope_id(Source::Bitrix24, member_id, &event, &data, ts),
        source: Source::Bitrix24,
        portal: member_id.to_string(),
        domain: domain.map(str::to_string),
        family,
        entity_type: Some(entry.entity_type),
        event,
        entity_id,
        ts,
        received_at: rfc3339_seconds(now),
        data,
    })
}

/// JSON as PHP's `http_build_query` would have sent it: every scalar a string.
fn as_form_strings(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), as_form_strings(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_form_strings).collect()),
        Value::String(s) => Value::String(s.clone()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(if *b { "1" } else { "0" }.to_string()),
        Value::Null => Value::String(String::new()),
    }
}

/// `TIMESTAMP_X` as Bitrix24 writes it (RFC 3339 with the portal's offset,
/// `2024-07-18T12:32:31+02:00`) to Unix seconds.
pub fn parse_bitrix_timestamp(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// b24restdocs api-reference/events/event-offline-get.md: the sample answer's record is
    /// stamped `"TIMESTAMP_X": "2024-07-18T12:32:31+02:00"` (RFC 3339, the portal's offset).
    #[test]
    fn timestamps_with_offsets_are_unix_seconds() {
        assert_eq!(parse_bitrix_timestamp("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T12:32:31+02:00"),
            Some(1_721_298_751)
        );
        // The same page's `time.date_start` of that answer, in the same format.
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T12:48:40+02:00"),
            Some(1_721_299_720)
        );
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T10:32:31Z"),
            Some(1_721_298_751)
        );
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T07:32:31-03:00"),
            Some(1_721_298_751)
        );
        assert_eq!(parse_bitrix_timestamp("yesterday"), None);
        assert_eq!(parse_bitrix_timestamp("2024-13-18T07:32:31Z"), None);
        assert_eq!(parse_bitrix_timestamp("2024-02-30T07:32:31Z"), None);
        assert_eq!(parse_bitrix_timestamp("2024-07-18T12:32:31"), None);
    }

    #[test]
    fn offline_record_gives_the_online_envelope_id() {
        let record = json!({"ID": "9", "TIMESTAMP_X": "2026-11-22T10:00:00+00:00",
            "EVENT_NAME": "onCrmDealUpdate", "EVENT_DATA": {"FIELDS": {"ID": 7405}},
            "EVENT_ADDITIONAL": {"user_id": 1}, "MESSAGE_ID": "abc"});
        let ev =
            offline_record_envelope("m1", Some("x.bitrix24.ru"), &record, SystemTime::UNIX_EPOCH)
                .unwrap();
        let online_data = json!({"FIELDS": {"ID": "7405"}});
        let ts = parse_bitrix_timestamp("2026-11-22T10:00:00+00:00").unwrap();
        assert_eq!(
            ev.id,
            envelope_id(Source::Bitrix24, "m1", "ONCRMDEALUPDATE", &online_data, ts)
        );
        assert_eq!(ev.family, Family::Deal);
        assert_eq!(ev.entity_id.as_deref(), Some("7405"));
        assert_eq!(ev.data, online_data);
    }

    #[test]
    fn records_that_cannot_be_routed_are_rejected() {
        let unknown = json!({"EVENT_NAME": "ONSOMETHING", "EVENT_DATA": {"FIELDS": {"ID": 1}}});
        assert_eq!(
            offline_record_envelope("m", None, &unknown, SystemTime::UNIX_EPOCH).unwrap_err(),
            RecordRejected::UnknownEvent("ONSOMETHING".into())
        );
        let no_id = json!({"EVENT_NAME": "ONCRMLEADADD", "EVENT_DATA": false});
        assert_eq!(
            offline_record_envelope("m", None, &no_id, SystemTime::UNIX_EPOCH).unwrap_err(),
            RecordRejected::NoEntityId("ONCRMLEADADD".into())
        );
        // on-crm-address-register.md: no FIELDS.ID; the composite key names it.
        let address = json!({"EVENT_NAME": "ONCRMADDRESSREGISTER", "EVENT_DATA": {"FIELDS": {
            "TYPE_ID": 1, "ENTITY_TYPE_ID": 8, "ENTITY_ID": 3}}});
        let ev = offline_record_envelope("m", None, &address, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(ev.entity_id.as_deref(), Some("1-8-3"));
        assert_eq!(ev.entity_type, Some(crate::catalogue::EntityType::Address));
        let task = json!({"EVENT_NAME": "ONTASKUPDATE", "EVENT_DATA": {"FIELDS_AFTER": {"ID": 5}, "FIELDS_BEFORE": "undefined"}});
        let ev = offline_record_envelope("m", None, &task, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            (ev.family, ev.entity_id.as_deref()),
            (Family::Activity, Some("5"))
        );
    }
}
