//! SalesMan CRM event deliveries: a decoded document (flat JSON of strings, or the same as a
//! form; `event`, `identity`, `iduser1` and per-event ids) -> a typed delivery with the portal
//! (`identity`) and the entity id. The shared secret is in the URL, checked in `verify`.

use super::{event_name, group_safe_id, ParseError, MAX_ENTITY_ID_LEN, MAX_PORTAL_LEN};
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct SalesmanDelivery {
    /// Canonical: lower-case (`deal.change.step`).
    pub event: String,
    /// The SalesMan account (its wire field `identity`): the envelope's `portal`.
    pub portal: String,
    /// From the id field the event implies (`did` for deals…); `None` for imports, which
    /// carry lists (`clids[]`, `dids[]`), and for bulk changes without a single id.
    pub entity_id: Option<String>,
    /// The document without `event` and `identity` (they are the envelope's `event` and
    /// `portal`, so the event name's case cannot change the envelope id); secrets are
    /// stripped later, in ingest.
    pub data: Value,
}

/// Which field holds the entity id, by event prefix, as SalesMan's senders write it (the
/// `event::fire` calls in `inc/class/*.php`, `modules/entry/core.entry.php`): the first present
/// field wins. `task.add` from the express form sends `tid`, the task form `id`; `invoice.*`
/// sends `id` (the `crid` of the credit table); `contract.delete` sends `deid`
/// (`inc/class/Document.php`).
const ENTITY_ID_FIELDS: [(&str, &[&str]); 10] = [
    ("client.", &["clid"]),
    ("person.", &["pid"]),
    ("deal.", &["did"]),
    ("invoice.", &["id", "crid"]),
    ("task.", &["tid", "id"]),
    ("history.", &["id"]),
    ("lead.", &["id"]),
    ("entry.", &["id", "ide"]),
    ("contract.", &["id", "deid"]),
    ("akt.", &["id", "deid"]),
];

/// The kind of record a SalesMan event is about, by event prefix: the name of its table in
/// v3 terms (`client`, `person`, `deal`, `lead`, `entry`, `invoice`, `task`, `history`,
/// `contract`, `akt`). Two kinds never share a snapshot, even within one family (lead vs
/// entry, task vs history, contract vs akt). `client.change.recv` is a `client`: its
/// requisites are part of the client record (v3 `client/info` with `bankinfo`).
pub fn entity_kind(event: &str) -> Option<&'static str> {
    const KINDS: [(&str, &str); 10] = [
        ("client.", "client"),
        ("person.", "person"),
        ("deal.", "deal"),
        ("invoice.", "invoice"),
        ("task.", "task"),
        ("history.", "history"),
        ("lead.", "lead"),
        ("entry.", "entry"),
        ("contract.", "contract"),
        ("akt.", "akt"),
    ];
    let event = event.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|(prefix, _)| event.starts_with(prefix))
        .map(|(_, kind)| *kind)
}

/// One envelope's worth of a SalesMan delivery: most deliveries are one item; imports, bulk
/// owner changes and `lead.do` are several (see [`fan_out`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SalesmanItem {
    /// The envelope's event name: the delivery's, `<kind>.add` for what `lead.do` created,
    /// `<kind>.import` for the other kind an import lists. Its prefix is always the kind.
    pub event: String,
    /// What the entity id names (see [`entity_kind`]); `None` for an import without ids.
    pub kind: Option<&'static str>,
    pub entity_id: Option<String>,
    /// The delivery's data for this one entity: list fields replaced by the entity's own id
    /// field (and its row, for bulk owner changes); `derived_from` names the event an item
    /// was derived from when its event is not the one SalesMan sent.
    pub data: Value,
}

/// The id lists SalesMan's bulk senders write, and the kind each list names:
/// `client.import` (`content/helpers/client.import.php`: `clids`, `pids`), `deal.import`
/// (`content/helpers/deal.import.php`: `clids`, `dids`).
const IMPORT_LISTS: [(&str, &str, &str); 3] = [
    ("clids", "client", "clid"),
    ("pids", "person", "pid"),
    ("dids", "deal", "did"),
];

/// What `lead.do` may have created (`inc/class/Leads.php`: `clid`, `pid`, `did` when added;
/// SalesMan fires no `*.add` for them, so the relay does, in this order).
const LEAD_DO_CREATED: [(&str, &str, &str); 3] = [
    ("clid", "client", "client.add"),
    ("pid", "person", "person.add"),
    ("did", "deal", "deal.add"),
];

/// Turns one SalesMan delivery into one item per entity it names:
/// - `client.import` / `deal.import`: one per id in `clids` / `pids` / `dids`, named
///   `client.import` / `person.import` / `deal.import` by the id's kind, marked
///   `derived_from` with the sent event where that differs;
/// - bulk `client.change.user` / `deal.change.user` (the list forms of
///   `content/core/core.client.php` and `core.deals.php`): one per `info` row, whose
///   `clid`/`did`, `title` and `olduser` replace the list;
/// - `lead.do`: the lead itself, then `client.add` / `person.add` / `deal.add` for each id
///   above 0, marked `derived_from: "lead.do"`;
/// - anything else: the delivery as it is.
///
/// A bulk delivery naming no id at all stays one item without an entity, so nothing is lost.
pub fn fan_out(delivery: &SalesmanDelivery) -> Result<Vec<SalesmanItem>, ParseError> {
    let single = || SalesmanItem {
        event: delivery.event.clone(),
        kind: entity_kind(&delivery.event),
        entity_id: delivery.entity_id.clone(),
        data: delivery.data.clone(),
    };
    let Value::Object(data) = &delivery.data else {
        return Ok(vec![single()]);
    };
    let mut items = Vec::new();
    if delivery.event.ends_with(".import") {
        let mut common = data.clone();
        for (list, _, _) in IMPORT_LISTS {
            common.remove(list);
        }
        for (list, kind, id_field) in IMPORT_LISTS {
            // The event names the entity's kind (`person.import` for the contacts of a
            // client import), so family, `info` method and snapshot follow from it.
            let event = format!("{kind}.import");
            for id in id_list(data.get(list), list)? {
                let mut own = common.clone();
                own.insert(id_field.to_string(), Value::String(id.clone()));
                if event != delivery.event {
                    own.insert("derived_from".into(), Value::String(delivery.event.clone()));
                }
                items.push(SalesmanItem {
                    event: event.clone(),
                    kind: Some(kind),
                    entity_id: Some(id),
                    data: Value::Object(own),
                });
            }
        }
    } else if delivery.entity_id.is_none() && delivery.event.ends_with(".change.user") {
        let (kind, id_field) = match entity_kind(&delivery.event) {
            Some("deal") => ("deal", "did"),
            _ => ("client", "clid"),
        };
        let mut common = data.clone();
        common.remove("info");
        for row in rows(data.get("info")) {
            let Some(id) = positive_id(row.get(id_field), id_field)? else {
                continue;
            };
            let mut own = common.clone();
            for (k, v) in row {
                own.insert(k.clone(), v.clone());
            }
            items.push(SalesmanItem {
                event: delivery.event.clone(),
                kind: Some(kind),
                entity_id: Some(id),
                data: Value::Object(own),
            });
        }
    } else if delivery.event == "lead.do" {
        items.push(single());
        for (field, kind, event) in LEAD_DO_CREATED {
            let Some(id) = positive_id(data.get(field), field)? else {
                continue;
            };
            let mut own = data.clone();
            own.insert("derived_from".into(), Value::String("lead.do".into()));
            items.push(SalesmanItem {
                event: event.to_string(),
                kind: Some(kind),
                entity_id: Some(id),
                data: Value::Object(own),
            });
        }
    }
    if items.is_empty() {
        items.push(single());
    }
    Ok(items)
}

/// The ids of an import list: a JSON array, or a form list (`clids[]=1`, or `clids[3]=1`,
/// which decodes to an object); ids of 0 or empty are skipped, as SalesMan writes them.
fn id_list(value: Option<&Value>, field: &'static str) -> Result<Vec<String>, ParseError> {
    let items: Vec<&Value> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Object(map)) => map.values().collect(),
        Some(single) => vec![single],
    };
    let mut ids = Vec::new();
    for item in items {
        if let Some(id) = positive_id(Some(item), field)? {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The rows of a bulk owner change: SalesMan's first row can be an empty array
/// (`$clients[] = []`), which `http_build_query` drops, so indices may start at 1 (an object).
fn rows(value: Option<&Value>) -> Vec<&Map<String, Value>> {
    let values: Vec<&Value> = match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Object(map)) => map.values().collect(),
        _ => Vec::new(),
    };
    values.into_iter().filter_map(Value::as_object).collect()
}

/// An id SalesMan means: present, not empty and not `0` (its "none").
fn positive_id(value: Option<&Value>, field: &'static str) -> Result<Option<String>, ParseError> {
    Ok(group_safe_id(value, field, MAX_ENTITY_ID_LEN)?.filter(|id| id != "0"))
}

pub fn parse_salesman(document: &Map<String, Value>) -> Result<SalesmanDelivery, ParseError> {
    let event = event_name(document)?.to_ascii_lowercase();
    let portal = group_safe_id(document.get("identity"), "identity", MAX_PORTAL_LEN)?
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
            if let Some(id) = group_safe_id(document.get(field), field, MAX_ENTITY_ID_LEN)? {
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
        portal,
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
        assert_eq!(d.portal, "1");
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
            // contract.delete sends `deid` (inc/class/Document.php).
            (
                json!({"event": "contract.delete", "deid": "19", "did": "7"}),
                Some("19"),
            ),
            // Bulk change of owner sends `info` rows instead of a single id.
            (
                json!({"event": "client.change.user", "info": [{"clid": "5", "olduser": "2"}]}),
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

    fn form(body: &str) -> SalesmanDelivery {
        parse_salesman(&decode_document(BodyEncoding::Form, body.as_bytes()).unwrap()).unwrap()
    }

    fn summary(items: &[SalesmanItem]) -> Vec<(String, Option<&'static str>, Option<String>)> {
        items
            .iter()
            .map(|i| (i.event.clone(), i.kind, i.entity_id.clone()))
            .collect()
    }

    #[test]
    fn imports_fan_out_one_item_per_id_and_kind() {
        // content/helpers/client.import.php: clids and pids; deal.import.php: clids and dids.
        let items = fan_out(&form(
            "event=client.import&identity=1&clids%5B%5D=101&clids%5B%5D=102\
             &pids%5B0%5D=201&autor=3&user=3",
        ))
        .unwrap();
        assert_eq!(
            summary(&items),
            vec![
                ("client.import".into(), Some("client"), Some("101".into())),
                ("client.import".into(), Some("client"), Some("102".into())),
                ("person.import".into(), Some("person"), Some("201".into())),
            ]
        );
        assert_eq!(
            items[2].data,
            json!({"pid": "201", "autor": "3", "user": "3", "derived_from": "client.import"})
        );
        assert_eq!(
            items[0].data,
            json!({"clid": "101", "autor": "3", "user": "3"})
        );
        let deals = fan_out(&form(
            "event=deal.import&identity=1&clids%5B%5D=5&dids%5B%5D=8&dids%5B%5D=0&autor=3",
        ))
        .unwrap();
        assert_eq!(
            summary(&deals),
            vec![
                ("client.import".into(), Some("client"), Some("5".into())),
                ("deal.import".into(), Some("deal"), Some("8".into())),
            ]
        );
        // An import naming nothing stays one envelope.
        let empty = fan_out(&form("event=client.import&identity=1&autor=3")).unwrap();
        assert_eq!(
            summary(&empty),
            vec![("client.import".into(), Some("client"), None)]
        );
    }

    #[test]
    fn bulk_owner_changes_fan_out_per_row() {
        // content/core/core.client.php: `$clients[] = []` first, so rows start at index 1.
        let items = fan_out(&form(
            "event=client.change.user&identity=1&info%5B1%5D%5Bclid%5D=5\
             &info%5B1%5D%5Btitle%5D=A&info%5B1%5D%5Bolduser%5D=2\
             &info%5B2%5D%5Bclid%5D=6&info%5B2%5D%5Btitle%5D=B&info%5B2%5D%5Bolduser%5D=4\
             &autor=1&newuser=9&comment=x",
        ))
        .unwrap();
        assert_eq!(
            summary(&items),
            vec![
                (
                    "client.change.user".into(),
                    Some("client"),
                    Some("5".into())
                ),
                (
                    "client.change.user".into(),
                    Some("client"),
                    Some("6".into())
                ),
            ]
        );
        assert_eq!(
            items[1].data,
            json!({"clid": "6", "title": "B", "olduser": "4", "autor": "1", "newuser": "9", "comment": "x"})
        );
        // content/core/core.deals.php writes `did` rows.
        let deals = fan_out(
            &from_json(json!({"event": "deal.change.user", "identity": "1",
                "info": [{"did": "8", "title": "D", "olduser": "2"}], "newuser": "9"}))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            summary(&deals),
            vec![("deal.change.user".into(), Some("deal"), Some("8".into()))]
        );
        // A single owner change is one item.
        let single = fan_out(
            &from_json(
                json!({"event": "client.change.user", "identity": "1", "clid": "5",
                "olduser": "2", "newuser": "9"}),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(single.len(), 1);
        assert_eq!(
            single[0].data,
            json!({"clid": "5", "olduser": "2", "newuser": "9"})
        );
    }

    #[test]
    fn lead_do_emits_what_it_created_as_derived_adds() {
        // inc/class/Leads.php: `lead.do` with clid/pid/did of what was added (0: nothing).
        let items = fan_out(&form(
            "event=lead.do&identity=1&id=14&autor=3&clid=5&pid=0&did=7&coordinator=2",
        ))
        .unwrap();
        assert_eq!(
            summary(&items),
            vec![
                ("lead.do".into(), Some("lead"), Some("14".into())),
                ("client.add".into(), Some("client"), Some("5".into())),
                ("deal.add".into(), Some("deal"), Some("7".into())),
            ]
        );
        assert_eq!(items[0].data.get("derived_from"), None);
        assert_eq!(items[1].data["derived_from"], json!("lead.do"));
        assert_eq!(items[2].data["derived_from"], json!("lead.do"));
        assert_eq!(items[2].data["did"], json!("7"));
    }

    #[test]
    fn every_prefix_has_its_own_kind() {
        for (event, kind) in [
            ("client.change.recv", Some("client")),
            ("person.change.user", Some("person")),
            ("deal.close", Some("deal")),
            ("lead.setuser", Some("lead")),
            ("entry.status", Some("entry")),
            ("invoice.expressadd", Some("invoice")),
            ("task.doit", Some("task")),
            ("history.edit", Some("history")),
            ("contract.add", Some("contract")),
            ("AKT.edit", Some("akt")),
            ("budjet.add", None),
        ] {
            assert_eq!(entity_kind(event), kind, "{event}");
        }
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
