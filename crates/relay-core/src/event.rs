//! The envelope every stage agrees on: what ingress puts on the queue and the consumer reads.
//! It is versioned (`v`) so a consumer can refuse an envelope it does not understand, and it
//! never carries a token or secret: ingress strips `auth` before an envelope is built.

use crate::catalogue::EntityType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Envelope version written by this build.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Bitrix24,
    Salesman,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bitrix24 => "bitrix24",
            Source::Salesman => "salesman",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One deployed ingest function (one Function URL) per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Deal,
    Lead,
    Contact,
    Company,
    Requisite,
    Invoice,
    Document,
    Activity,
    App,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Deal,
        Family::Lead,
        Family::Contact,
        Family::Company,
        Family::Requisite,
        Family::Invoice,
        Family::Document,
        Family::Activity,
        Family::App,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Deal => "deal",
            Family::Lead => "lead",
            Family::Contact => "contact",
            Family::Company => "company",
            Family::Requisite => "requisite",
            Family::Invoice => "invoice",
            Family::Document => "document",
            Family::Activity => "activity",
            Family::App => "app",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown family {0:?}; expected one of deal, lead, contact, company, requisite, invoice, document, activity, app")]
pub struct UnknownFamily(pub String);

impl FromStr for Family {
    type Err = UnknownFamily;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFamily(s.to_string()))
    }
}

/// The SQS message body (and the core of the forwarded body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayEvent {
    pub v: u32,
    /// Dedup id: see [`envelope_id`].
    pub id: String,
    pub source: Source,
    /// Bitrix24 `auth[member_id]`; SalesMan `identity`.
    pub portal: String,
    /// Bitrix24 `auth[domain]`; SalesMan has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    pub family: Family,
    /// Canonical event name: Bitrix24 upper-case, SalesMan lower-case.
    pub event: String,
    /// What kind of entity `entity_id` is, from the catalogue at ingest. Envelopes written
    /// before it existed have none: [`RelayEvent::kind`] derives it the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<EntityType>,
    /// The entity the event is about; app events have none.
    #[serde(default)]
    pub entity_id: Option<String>,
    /// Bitrix24 `ts` (queue time, Unix seconds); SalesMan sends none, so the receive second.
    pub ts: i64,
    /// RFC 3339, UTC, seconds.
    pub received_at: String,
    /// The CRM's `data` with every secret removed.
    pub data: serde_json::Value,
}

impl RelayEvent {
    /// The stored kind, or for an old envelope the one ingest would have set today.
    pub fn kind(&self) -> Option<EntityType> {
        self.entity_type
            .or_else(|| entity_type_of(self.source, &self.event, &self.data))
    }

    /// FIFO MessageGroupId: order is kept per entity, not per portal, so one slow deal
    /// does not hold back every other event of its portal.
    pub fn message_group_id(&self) -> String {
        format!(
            "{}#{}#{}#{}",
            self.source,
            self.portal,
            self.family,
            self.entity_id.as_deref().unwrap_or("-")
        )
    }

    /// FIFO MessageDeduplicationId for one send: the envelope id plus a random suffix (81
    /// chars, within SQS's 128). A retry of that one send (the SDK's) reuses it, so SQS still
    /// drops a repeated `SendMessage`; but two requests with identical bytes (Bitrix24 sends
    /// two when a deal changes twice in one second) both reach the consumer. There they share
    /// the envelope id, and the dedup record's news-only rule decides: the second is
    /// forwarded if the entity changed since the first was fetched, skipped otherwise. Keyed
    /// on the envelope id alone, the queue would drop the second change before anyone looked.
    pub fn send_deduplication_id(&self) -> String {
        format!("{}.{:016x}", self.id, fastrand::u64(..))
    }
}

/// The kind of entity an event is about: Bitrix24's from the catalogue, SalesMan's from the
/// first word of its event name. `None` for an event neither knows.
pub fn entity_type_of(source: Source, event: &str, data: &serde_json::Value) -> Option<EntityType> {
    match source {
        Source::Bitrix24 => crate::catalogue::resolve(event, data)
            .ok()
            .map(|e| e.entity_type),
        Source::Salesman => EntityType::of_salesman_event(event),
    }
}

/// Hex SHA-256 over source, portal, event, canonical `data` and `ts`, each length-prefixed so
/// no two different tuples can concatenate to the same bytes. `received_at` is left out on
/// purpose: the same delivery seen twice must get the same id.
pub fn envelope_id(
    source: Source,
    portal: &str,
    event: &str,
    data: &serde_json::Value,
    ts: i64,
) -> String {
    let canonical_data = canonical_json(data);
    let ts = ts.to_string();
    let mut hasher = Sha256::new();
    for part in [
        source.as_str(),
        portal,
        event,
        canonical_data.as_str(),
        ts.as_str(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// JSON with object keys sorted at every depth, so key order on the wire never changes an id.
pub fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::with_capacity(map.len());
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    // serde_json's Map is a BTreeMap unless preserve_order is on; sorting keeps this true
    // even if some crate in the graph turns that feature on.
    sorted(value).to_string()
}

/// RFC 3339 UTC with second precision, as `received_at` is written.
pub fn rfc3339_seconds(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn family_names_round_trip_case_insensitively() {
        for f in Family::ALL {
            assert_eq!(f.as_str().parse::<Family>().unwrap(), f);
            assert_eq!(f.as_str().to_uppercase().parse::<Family>().unwrap(), f);
        }
        assert!("deals".parse::<Family>().is_err());
    }

    #[test]
    fn envelope_id_ignores_key_order_but_not_values() {
        let a = json!({"FIELDS": {"ID": "1", "X": "2"}});
        let b = json!({"FIELDS": {"X": "2", "ID": "1"}});
        let c = json!({"FIELDS": {"X": "2", "ID": "3"}});
        let id_a = envelope_id(Source::Bitrix24, "m", "ONCRMDEALUPDATE", &a, 5);
        assert_eq!(id_a.len(), 64);
        assert_eq!(
            id_a,
            envelope_id(Source::Bitrix24, "m", "ONCRMDEALUPDATE", &b, 5)
        );
        assert_ne!(
            id_a,
            envelope_id(Source::Bitrix24, "m", "ONCRMDEALUPDATE", &c, 5)
        );
        assert_ne!(
            id_a,
            envelope_id(Source::Bitrix24, "m", "ONCRMDEALUPDATE", &a, 6)
        );
        assert_ne!(
            id_a,
            envelope_id(Source::Salesman, "m", "ONCRMDEALUPDATE", &a, 5)
        );
    }

    #[test]
    fn length_prefix_keeps_fields_apart() {
        let d = json!({});
        assert_ne!(
            envelope_id(Source::Bitrix24, "ab", "c", &d, 1),
            envelope_id(Source::Bitrix24, "a", "bc", &d, 1)
        );
    }

    #[test]
    fn group_id_is_per_entity() {
        let ev = RelayEvent {
            v: 1,
            id: "x".into(),
            source: Source::Bitrix24,
            portal: "m1".into(),
            domain: None,
            family: Family::Deal,
            event: "ONCRMDEALUPDATE".into(),
            entity_type: None,
            entity_id: Some("7405".into()),
            ts: 1,
            received_at: "2026-11-22T10:00:00Z".into(),
            data: json!({}),
        };
        assert_eq!(ev.message_group_id(), "bitrix24#m1#deal#7405");
    }
}
