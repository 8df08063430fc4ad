//! Enrichment: which CRM call gives an event's entity, and making it (one by one, or as
//! Bitrix24 `batch` calls when a queue batch holds several events of one portal).
//! The entity comes back exactly as the CRM answered; gone or unconfigured gives `None`.

pub mod bitrix24;
mod missing_credentials;
pub mod salesman;

use crate::catalogue::{self, Arg, Pick};
use crate::error::EnrichError;
use crate::event::{Family, RelayEvent, Source};
use crate::ports::Bitrix24Rest;
use missing_credentials::MissingCredentialsLog;
use salesman::{InfoOutcome, SalesmanClient};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Bitrix24 takes at most 50 commands in one `batch`.
pub const BATCH_LIMIT: usize = 50;

/// A Bitrix24 read call and where the entity sits in its `result`, from the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct B24Lookup {
    pub method: &'static str,
    /// In order; a name `filter[X]` is `X` inside the `filter` object.
    pub params: Vec<(&'static str, String)>,
    pub pick: Pick,
}

impl B24Lookup {
    pub fn params_json(&self) -> Value {
        let mut map = Map::new();
        for (name, value) in &self.params {
            match name.split_once('[') {
                Some((outer, inner)) => {
                    let inner = inner.trim_end_matches(']');
                    let nested = map
                        .entry(outer.to_string())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(nested) = nested {
                        nested.insert(inner.to_string(), json!(value));
                    }
                }
                None => {
                    map.insert((*name).to_string(), json!(value));
                }
            }
        }
        Value::Object(map)
    }

    /// One `cmd[key]` of a batch: `method?param=value&…`.
    pub fn batch_command(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.params {
            query.append_pair(k, v);
        }
        format!("{}?{}", self.method, query.finish())
    }

    /// The entity in a `result`; `None` when the answer holds none (an empty list).
    fn pick(&self, result: &Value) -> Option<Value> {
        let picked = match self.pick {
            Pick::Result => result.clone(),
            Pick::Key(key) => result.get(key).cloned().unwrap_or(Value::Null),
            Pick::First => result.get(0).cloned().unwrap_or(Value::Null),
        };
        (!picked.is_null()).then_some(picked)
    }
}

/// What to do to learn an event's entity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// App events and kinds without a read method: forwarded as they came, entity null.
    AsIs,
    /// A delete event: the entity is gone, so nothing is asked and the entity is null.
    Deleted,
    Bitrix24(B24Lookup),
    /// `POST developer/v3/<method>/info` with `{<key>: id}`.
    Salesman(salesman::InfoCall),
}

/// What enrichment gave one event; `note` goes into the forwarded body as `enrichment`.
#[derive(Clone, Debug, PartialEq)]
pub enum Enriched {
    Fetched(Value),
    /// The CRM answered "not found" (deleted since, or never readable).
    NotFound,
    /// A delete: nothing to read.
    Deleted,
    /// No read method for this kind (app events, task comments, SalesMan kinds without one).
    NotFetched,
    /// Neither stored tokens nor a webhook for this portal: never another portal's.
    NoCredentials,
    /// The CRM's API user may not see this record (SalesMan v3's 403 for a record outside
    /// the user's visibility).
    NoAccess,
}

impl Enriched {
    pub fn entity(&self) -> Option<&Value> {
        match self {
            Enriched::Fetched(entity) => Some(entity),
            _ => None,
        }
    }

    pub fn into_entity(self) -> Option<Value> {
        match self {
            Enriched::Fetched(entity) => Some(entity),
            _ => None,
        }
    }

    pub fn note(&self) -> &'static str {
        match self {
            Enriched::Fetched(_) => "fetched",
            Enriched::NotFound => "not found",
            Enriched::Deleted => "deleted",
            Enriched::NotFetched => "not fetched",
            Enriched::NoCredentials => "no credentials for this portal",
            Enriched::NoAccess => "no access",
        }
    }
}

/// The read method for an event, from its catalogue entry (Bitrix24) or kind (SalesMan).
pub fn plan(event: &RelayEvent) -> Plan {
    let Some(id) = event.entity_id.clone().filter(|id| !id.is_empty()) else {
        return Plan::AsIs;
    };
    if event.family == Family::App {
        return Plan::AsIs;
    }
    match event.source {
        Source::Bitrix24 => plan_bitrix24(&event.event, &event.data, id),
        Source::Salesman => plan_salesman(&event.event.to_ascii_lowercase(), id),
    }
}

fn plan_bitrix24(name: &str, data: &Value, id: String) -> Plan {
    // Ingress refused anything the catalogue does not take; an old or hand-made envelope
    // that slips through is forwarded as it came rather than read with a guessed method.
    let Ok(entry) = catalogue::resolve(name, data) else {
        return Plan::AsIs;
    };
    if entry.delete {
        return Plan::Deleted;
    }
    let Some(fetch) = entry.fetch else {
        return Plan::AsIs;
    };
    let mut params = Vec::with_capacity(fetch.params.len());
    for (param, arg) in fetch.params {
        let value = match arg {
            Arg::Id => id.clone(),
            Arg::Const(value) => (*value).to_string(),
            Arg::Field(key) => match catalogue::field_text(data, "FIELDS", key) {
                Some(value) => value,
                None => return Plan::AsIs,
            },
        };
        params.push((*param, value));
    }
    Plan::Bitrix24(B24Lookup {
        method: fetch.method,
        params,
        pick: fetch.pick,
    })
}

fn plan_salesman(name: &str, id: String) -> Plan {
    if name.ends_with(".delete") {
        return Plan::Deleted;
    }
    match salesman::info_call(name, id) {
        Some(call) => Plan::Salesman(call),
        None => Plan::AsIs,
    }
}

/// Asks the CRMs for entities. The only state it keeps between batches is when it last
/// warned about each portal without credentials.
pub struct Enricher {
    bitrix24: Option<Arc<dyn Bitrix24Rest>>,
    salesman: Option<SalesmanClient>,
    missing_credentials: MissingCredentialsLog,
}

/// Entities fetched ahead for one queue batch, by (portal, lookup). `None`: gone.
pub type Prefetched = HashMap<(String, B24Lookup), Option<Value>>;

impl Enricher {
    pub fn new(bitrix24: Option<Arc<dyn Bitrix24Rest>>, salesman: Option<SalesmanClient>) -> Self {
        Enricher {
            bitrix24,
            salesman,
            missing_credentials: MissingCredentialsLog::default(),
        }
    }

    /// The entity for one event, or why there is none; an error only when retrying (or a
    /// person) can fix it.
    pub async fn entity(
        &self,
        event: &RelayEvent,
        prefetched: &Prefetched,
    ) -> Result<Enriched, EnrichError> {
        let result = match plan(event) {
            Plan::AsIs => return Ok(Enriched::NotFetched),
            Plan::Deleted => return Ok(Enriched::Deleted),
            Plan::Bitrix24(lookup) => {
                if let Some(hit) = prefetched.get(&(event.portal.clone(), lookup.clone())) {
                    return Ok(hit.clone().map_or(Enriched::NotFound, Enriched::Fetched));
                }
                let Some(client) = &self.bitrix24 else {
                    return Ok(Enriched::NoCredentials);
                };
                client
                    .call_on(
                        &event.portal,
                        event.domain.as_deref(),
                        lookup.method,
                        lookup.params_json(),
                    )
                    .await
                    .map(|answer| lookup.pick(&answer.result))
            }
            Plan::Salesman(_) => {
                // Unknown-method and refused calls came back as errors above.
                return Ok(match self.salesman_outcome(event).await? {
                    Some(InfoOutcome::Found(entity)) => Enriched::Fetched(entity),
                    Some(InfoOutcome::Gone) => Enriched::Deleted,
                    Some(InfoOutcome::NoAccess) => Enriched::NoAccess,
                    Some(_) => Enriched::NotFetched,
                    None => Enriched::NoCredentials,
                });
            }
        };
        match result {
            Ok(Some(entity)) => Ok(Enriched::Fetched(entity)),
            Ok(None) | Err(EnrichError::NotFound) => Ok(Enriched::NotFound),
            Err(EnrichError::NoCredentials(what)) => {
                self.missing_credentials.warn(&what);
                Ok(Enriched::NoCredentials)
            }
            Err(other) => Err(other),
        }
    }

    /// What SalesMan v3 says about a SalesMan event's record: `Ok(None)` when the event
    /// names none v3 can read or no credentials are configured; `Gone` for delete events
    /// without asking. An unknown method is a configuration error: logged as one and
    /// returned as `Transient`, so the event is retried and, failing on, reaches the
    /// dead-letter queue and its alarm, never forwarded with a silent null.
    pub async fn salesman_outcome(
        &self,
        event: &RelayEvent,
    ) -> Result<Option<InfoOutcome>, EnrichError> {
        let call = match plan(event) {
            Plan::Salesman(call) => call,
            Plan::Deleted if event.source == Source::Salesman => {
                return Ok(Some(InfoOutcome::Gone))
            }
            _ => return Ok(None),
        };
        let Some(client) = &self.salesman else {
            return Ok(None);
        };
        let outcome = client.info(&call).await?;
        if let InfoOutcome::UnknownMethod { method, code } = &outcome {
            tracing::error!(
                event_id = %event.id,
                %method,
                %code,
                "SalesMan v3 does not know this method: configuration error; will retry"
            );
            return Err(EnrichError::Transient {
                reason: format!("salesman {method}: unknown method (error {code})"),
                retry_after: None,
            });
        }
        if let InfoOutcome::Refused { method, code } = &outcome {
            return Err(EnrichError::Permanent(format!(
                "salesman {method}: error {code}"
            )));
        }
        Ok(Some(outcome))
    }

    /// Fetches, with `batch` calls, the Bitrix24 entities of every portal that has two or
    /// more distinct lookups in this queue batch. Failures are left out: `entity` then asks
    /// one by one, and its error decides the message's fate.
    pub async fn prefetch(&self, events: &[&RelayEvent]) -> Prefetched {
        let mut out = Prefetched::new();
        let Some(client) = &self.bitrix24 else {
            return out;
        };
        let mut per_portal: HashMap<(&str, Option<&str>), Vec<B24Lookup>> = HashMap::new();
        for event in events {
            if let Plan::Bitrix24(lookup) = plan(event) {
                let lookups = per_portal
                    .entry((event.portal.as_str(), event.domain.as_deref()))
                    .or_default();
                if !lookups.contains(&lookup) {
                    lookups.push(lookup);
                }
            }
        }
        for ((portal, domain), lookups) in per_portal {
            if lookups.len() < 2 {
                continue;
            }
            for chunk in lookups.chunks(BATCH_LIMIT) {
                let cmd: Map<String, Value> = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("c{i}"), json!(l.batch_command())))
                    .collect();
                let answer = match client
                    .call_on(portal, domain, "batch", json!({"halt": 0, "cmd": cmd}))
                    .await
                {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(%portal, error = %e, "bitrix24 batch failed; falling back to single calls");
                        continue;
                    }
                };
                for (i, lookup) in chunk.iter().enumerate() {
                    let key = format!("c{i}");
                    let found = answer.result.get("result").and_then(|r| r.get(&key));
                    let error = answer.result.get("result_error").and_then(|r| r.get(&key));
                    let entity = match (found, error) {
                        (Some(result), _) if !result.is_null() => lookup.pick(result),
                        (_, Some(err)) => {
                            let code = err.get("error").and_then(Value::as_str).unwrap_or("");
                            let text = err
                                .get("error_description")
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            if bitrix24::is_not_found(code, text) {
                                None
                            } else {
                                // Anything else is decided by a single call later.
                                continue;
                            }
                        }
                        _ => continue,
                    };
                    out.insert((portal.to_string(), lookup.clone()), entity);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: Source, family: Family, name: &str, id: Option<&str>) -> RelayEvent {
        RelayEvent {
            v: 1,
            id: "x".into(),
            source,
            portal: "m".into(),
            domain: None,
            family,
            event: name.into(),
            entity_type: None,
            entity_id: id.map(str::to_string),
            ts: 1,
            received_at: "2026-11-22T10:00:00Z".into(),
            data: json!({}),
        }
    }

    fn b24(name: &str, family: Family) -> Plan {
        plan(&event(Source::Bitrix24, family, name, Some("7")))
    }

    fn method(p: Plan) -> (&'static str, Option<&'static str>) {
        match p {
            Plan::Bitrix24(l) => (
                l.method,
                match l.pick {
                    Pick::Key(key) => Some(key),
                    _ => None,
                },
            ),
            other => panic!("expected a Bitrix24 lookup, got {other:?}"),
        }
    }

    #[test]
    fn bitrix24_events_map_to_their_get_method() {
        assert_eq!(
            method(b24("ONCRMDEALUPDATE", Family::Deal)),
            ("crm.deal.get", None)
        );
        assert_eq!(
            method(b24("ONCRMLEADADD", Family::Lead)),
            ("crm.lead.get", None)
        );
        assert_eq!(
            method(b24("onCrmContactUpdate", Family::Contact)),
            ("crm.contact.get", None)
        );
        assert_eq!(
            method(b24("ONCRMCOMPANYADD", Family::Company)),
            ("crm.company.get", None)
        );
        assert_eq!(
            method(b24("ONCRMREQUISITEUPDATE", Family::Requisite)),
            ("crm.requisite.get", None)
        );
        assert_eq!(
            method(b24("ONCRMINVOICEUPDATE", Family::Invoice)),
            ("crm.invoice.get", None)
        );
        assert_eq!(
            method(b24("ONCRMACTIVITYADD", Family::Activity)),
            ("crm.activity.get", None)
        );
        assert_eq!(
            method(b24("ONTASKUPDATE", Family::Activity)),
            ("tasks.task.get", Some("task"))
        );
        assert_eq!(
            method(b24("ONCRMDYNAMICITEMUPDATE_31", Family::Invoice)),
            ("crm.item.get", Some("item"))
        );
        match b24("ONCRMDYNAMICITEMUPDATE_31", Family::Invoice) {
            Plan::Bitrix24(l) => assert_eq!(l.batch_command(), "crm.item.get?entityTypeId=31&id=7"),
            _ => unreachable!(),
        }
    }

    /// on-crm-requisite-user-field-update.md and crm-requisite-userfield-get.md: the field's definition, by its id.
    #[test]
    fn user_field_events_read_the_field_definition() {
        assert_eq!(
            method(b24("ONCRMREQUISITEUSERFIELDUPDATE", Family::Requisite)),
            ("crm.requisite.userfield.get", None)
        );
        assert_eq!(
            method(b24("ONCRMDEALUSERFIELDADD", Family::Deal)),
            ("crm.deal.userfield.get", None)
        );
        assert_eq!(b24("ONCRMDEALUSERFIELDDELETE", Family::Deal), Plan::Deleted);
    }

    /// crm-deal-recurring-get.md and on-crm-deal-recurring-expose.md.
    #[test]
    fn recurring_events_read_the_settings_row_or_the_new_deal() {
        assert_eq!(
            method(b24("ONCRMDEALRECURRINGUPDATE", Family::Deal)),
            ("crm.deal.recurring.get", None)
        );
        assert_eq!(
            method(b24("ONCRMINVOICERECURRINGADD", Family::Invoice)),
            ("crm.invoice.recurring.get", None)
        );
        assert_eq!(
            method(b24("ONCRMDEALRECURRINGEXPOSE", Family::Deal)),
            ("crm.deal.get", None)
        );
    }

    /// on-crm-dynamic-item-update.md + crm-item-get.md: `{entityTypeId: 31, id}`, `result.item`.
    #[test]
    fn base_dynamic_item_names_read_smart_invoices() {
        let mut ev = event(
            Source::Bitrix24,
            Family::Invoice,
            "ONCRMDYNAMICITEMUPDATE",
            Some("22"),
        );
        ev.data = json!({"FIELDS": {"ID": "22", "ENTITY_TYPE_ID": "31"}});
        match plan(&ev) {
            Plan::Bitrix24(l) => {
                assert_eq!(l.params_json(), json!({"entityTypeId": "31", "id": "22"}));
                assert_eq!(l.pick, Pick::Key("item"));
            }
            other => panic!("{other:?}"),
        }
        ev.data = json!({"FIELDS": {"ID": "22", "ENTITY_TYPE_ID": "1220"}});
        assert_eq!(plan(&ev), Plan::AsIs);
    }

    /// crm-address-list.md: filter by type and owner; the first row.
    #[test]
    fn address_events_list_by_their_composite_key() {
        let mut ev = event(
            Source::Bitrix24,
            Family::Requisite,
            "ONCRMADDRESSREGISTER",
            Some("1-8-3"),
        );
        ev.data = json!({"FIELDS": {"TYPE_ID": "1", "ENTITY_TYPE_ID": "8", "ENTITY_ID": "3"}});
        match plan(&ev) {
            Plan::Bitrix24(l) => {
                assert_eq!(l.method, "crm.address.list");
                assert_eq!(
                    l.params_json(),
                    json!({"filter": {"TYPE_ID": "1", "ENTITY_TYPE_ID": "8", "ENTITY_ID": "3"}})
                );
                assert_eq!(
                    l.batch_command(),
                    "crm.address.list?filter%5BTYPE_ID%5D=1&filter%5BENTITY_TYPE_ID%5D=8&filter%5BENTITY_ID%5D=3"
                );
                assert_eq!(l.pick(&json!([])), None);
                assert_eq!(l.pick(&json!([{"CITY": "X"}])), Some(json!({"CITY": "X"})));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deletes_app_events_and_unknown_methods_are_not_fetched() {
        assert_eq!(b24("ONCRMDEALDELETE", Family::Deal), Plan::Deleted);
        assert_eq!(b24("ONTASKDELETE", Family::Activity), Plan::Deleted);
        assert_eq!(
            b24("ONCRMDYNAMICITEMDELETE_31", Family::Invoice),
            Plan::Deleted
        );
        assert_eq!(
            b24("ONCRMADDRESSUNREGISTER", Family::Requisite),
            Plan::Deleted
        );
        assert_eq!(b24("ONCRMADDRESSUPDATE", Family::Requisite), Plan::AsIs);
        assert_eq!(b24("ONTASKCOMMENTADD", Family::Activity), Plan::AsIs);
        assert_eq!(
            plan(&event(Source::Bitrix24, Family::App, "ONAPPINSTALL", None)),
            Plan::AsIs
        );
        assert_eq!(
            plan(&event(
                Source::Bitrix24,
                Family::Deal,
                "ONCRMDEALUPDATE",
                None
            )),
            Plan::AsIs
        );
    }

    #[test]
    fn salesman_events_map_to_v3_info() {
        let sm = |name: &str, f| plan(&event(Source::Salesman, f, name, Some("12")));
        let method = |p: Plan| match p {
            Plan::Salesman(c) => (c.kind, c.method, c.key, c.id, c.bankinfo),
            other => panic!("expected a v3 call, got {other:?}"),
        };
        assert_eq!(
            method(sm("deal.change.step", Family::Deal)),
            ("deal", "deal", "did", "12".into(), false)
        );
        assert_eq!(
            method(sm("client.change.recv", Family::Requisite)),
            ("client", "client", "clid", "12".into(), true)
        );
        assert_eq!(
            method(sm("person.edit", Family::Contact)),
            ("person", "person", "pid", "12".into(), false)
        );
        assert_eq!(
            method(sm("invoice.add", Family::Invoice)),
            ("invoice", "invoice", "id", "12".into(), false)
        );
        assert_eq!(
            method(sm("lead.add", Family::Lead)),
            ("lead", "lead", "id", "12".into(), false)
        );
        assert_eq!(
            method(sm("contract.add", Family::Document)),
            ("contract", "document", "id", "12".into(), false)
        );
        assert_eq!(sm("person.delete", Family::Contact), Plan::Deleted);
        assert_eq!(sm("akt.delete", Family::Document), Plan::Deleted);
    }

    #[test]
    fn not_found_is_recognised_in_every_known_form() {
        assert!(bitrix24::is_not_found("", "Not found"));
        assert!(bitrix24::is_not_found("NOT_FOUND", "Element not found"));
        assert!(bitrix24::is_not_found("ERROR_NOT_FOUND", ""));
        assert!(bitrix24::is_not_found(
            "ERROR_CORE",
            "TASKS_ERROR_EXCEPTION_#256; Task not found or access denied.; 256/TE/ITEM_NOT_FOUND_OR_NOT_ACCESSIBLE"
        ));
        assert!(!bitrix24::is_not_found("ACCESS_DENIED", "Access denied"));
    }
}
