//! SalesMan CRM event deliveries: a decoded document (flat JSON of strings, or the same as a
//! form; `event`, `identity`, `iduser1` and per-event ids) -> a typed delivery with the portal
//! (`identity`) and the entity id. The shared secret is in the URL, checked in `verify`.

use super::{event_name, identifier, ParseError, MAX_ENTITY_ID_LEN, MAX_PORTAL_LEN};
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct SalesmanDelivery {
    /// Canonical: lower-case (`deal.change.step`).
    pub event: String,
    /// `identity`: the SalesMan account, our portal.
    pub identity: String,
    /// From the id field the event implies (`did` for deals…); `None` for imports, which
    /// carry lists (`clids[]`, `dids[]`), and for bulk changes without a single id.
    pub entity_id: Option<String>,
    /// The document without `event` and `identity` (they are the envelope's `event` and
    /// `portal`, so the event name's case cannot change the envelope id); secrets are
    /// stripped later, in ingest.
    pub data: Value,
}

/// Which field holds the entity id, by event prefix (SalesMan `developer/events.php`): the
/// first present field wins. `task.add` from the express form sends `tid`, the task form `id`.
const ENTITY_ID_FIELDS: [(&str, &[&str]); 10] = [
    ("client.", &["clid"]),
    ("person.", &["pid"]),
    ("deal.", &["did"]),
    ("invoice.", &["id", "crid"]),
    ("task.", &["tid", "id"]),
    ("history.", &["id"]),
    ("lead.", &["id"]),
    ("entry.", &["id", "ide"]),
    ("contract.", &["id"]),
    ("akt.", &["id"]),
];

pub fn parse_salesman(document: &Map<String, Value>) -> Result<SalesmanDelivery, ParseError> {
    let event = event_name(document)?.to_ascii_lowercase();
    let identity = identifier(document.get("identity"), "identity", MAX_PORTAL_LEN)?
        .ok_or(ParseError::Missing("identity"))?;
    let entity_id = if event.ends_with(".import") {
        None
    } else {
        let fields = ENTITY_ID_FIELDS
            .iter()
            .find(|(prefix, _)| event.starts_with(prefix))
            .map(|(_, fields)| *fields)
            .unwrap_or(&[]);
        let mut found = None;
        for &field in fields {
            if let Some(id) = identifier(document.get(field), field, MAX_ENTITY_ID_LEN)? {
                found = Some(id);
                break;
            }
        }
        found
    };
    let mut data = document.clone();
    data.remove("event");
    data.remove("identity");
    Ok(SalesmanDelivery {
        event,
        identity,
        entity_id,
        data: Value::Object(data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{decode_document, BodyEncoding};
    use serde_json::json;

    fn from_json(v: Value) -> Result<SalesmanDelivery, ParseError> {
        parse_salesman(v.as_object().unwrap())
    }

    #[test]
    fn deal_step_change_as_json() {
        let d = from_json(json!({
            "event": "deal.change.step", "identity": "1", "iduser1": "3",
            "did": "812", "autor": "3", "stepOld": "20", "stepNew": "60",
            "reason": "Договор подписан", "comment": "Договор подписан"
        }))
        .unwrap();
        assert_eq!(d.event, "deal.change.step");
        assert_eq!(d.identity, "1");
        assert_eq!(d.entity_id.as_deref(), Some("812"));
        assert_eq!(d.data["reason"], json!("Договор подписан"));
        assert_eq!(d.data.get("event"), None);
        assert_eq!(d.data.get("identity"), None);
    }

    #[test]
    fn the_same_delivery_as_a_form_reads_the_same() {
        let body = "event=deal.change.step&identity=1&iduser1=3&did=812&autor=3&stepOld=20\
                    &stepNew=60&reason=%D0%94%D0%BE%D0%B3%D0%BE%D0%B2%D0%BE%D1%80+%D0%BF%D0%BE%D0%B4%D0%BF%D0%B8%D1%81%D0%B0%D0%BD\
                    &comment=%D0%94%D0%BE%D0%B3%D0%BE%D0%B2%D0%BE%D1%80%20%D0%BF%D0%BE%D0%B4%D0%BF%D0%B8%D1%81%D0%B0%D0%BD";
        let form =
            parse_salesman(&decode_document(BodyEncoding::Form, body.as_bytes()).unwrap()).unwrap();
        let json = from_json(json!({
            "event": "deal.change.step", "identity": "1", "iduser1": "3",
            "did": "812", "autor": "3", "stepOld": "20", "stepNew": "60",
            "reason": "Договор подписан", "comment": "Договор подписан"
        }))
        .unwrap();
        assert_eq!(form, json);
    }

    #[test]
    fn entity_id_follows_the_event() {
        let cases = [
            (
                json!({"event": "client.edit", "clid": "5", "pid": "9"}),
                Some("5"),
            ),
            (
                json!({"event": "client.change.recv", "clid": "5"}),
                Some("5"),
            ),
            (
                json!({"event": "person.add", "pid": "9", "clid": "5"}),
                Some("9"),
            ),
            (
                json!({"event": "deal.close", "did": "7", "summa": "10340.00"}),
                Some("7"),
            ),
            (
                json!({"event": "invoice.doit", "id": "31", "did": "7"}),
                Some("31"),
            ),
            (
                json!({"event": "task.add", "tid": "11", "clid": "5"}),
                Some("11"),
            ),
            (json!({"event": "task.doit", "id": "12"}), Some("12")),
            (json!({"event": "history.add", "id": "13"}), Some("13")),
            (
                json!({"event": "lead.do", "id": "14", "did": "7"}),
                Some("14"),
            ),
            (
                json!({"event": "entry.status", "id": "15", "status": "2"}),
                Some("15"),
            ),
            (
                json!({"event": "contract.add", "id": "16", "did": "7"}),
                Some("16"),
            ),
            (json!({"event": "akt.delete", "id": "17"}), Some("17")),
            (json!({"event": "Deal.Edit", "did": 18}), Some("18")),
            // Bulk change of owner sends `info` instead of a single id.
            (
                json!({"event": "client.change.user", "info": [["5", "2"]]}),
                None,
            ),
        ];
        for (mut doc, expected) in cases {
            doc["identity"] = json!("1");
            let d = from_json(doc.clone()).unwrap();
            assert_eq!(d.entity_id.as_deref(), expected, "{doc}");
        }
    }

    #[test]
    fn imports_carry_lists_and_no_single_entity() {
        let body = "event=client.import&identity=1&clids%5B%5D=101&clids%5B%5D=102\
                    &pids%5B0%5D=201&autor=3&user=3";
        let d =
            parse_salesman(&decode_document(BodyEncoding::Form, body.as_bytes()).unwrap()).unwrap();
        assert_eq!(d.entity_id, None);
        assert_eq!(d.data["clids"], json!(["101", "102"]));
        assert_eq!(d.data["pids"], json!(["201"]));
    }

    #[test]
    fn identity_is_required() {
        assert_eq!(
            from_json(json!({"event": "deal.add", "did": "1"})),
            Err(ParseError::Missing("identity"))
        );
        assert_eq!(
            from_json(json!({"event": "deal.add", "identity": "", "did": "1"})),
            Err(ParseError::Missing("identity"))
        );
        assert_eq!(
            from_json(json!({"event": "deal.add", "identity": "1", "did": ["1"]})),
            Err(ParseError::Invalid("did"))
        );
    }
}
