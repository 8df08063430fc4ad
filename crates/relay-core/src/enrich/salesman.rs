//! SalesMan CRM API v3 client: the consumer's way to read the record a SalesMan event names.
//! `POST <crm>/developer/v3/<method>/info` with `login`/`apikey` headers answers `{"data":{…}}`
//! or `{"result":"Error","error":{"code","text"}}` (always HTTP 200: v3 sets no status).

use crate::config::RelayConfig;
use crate::error::EnrichError;
use crate::secret::Secret;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// One v3 `info` call: which method, which parameter carries the id, and the id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InfoCall {
    /// The entity kind (`parse::salesman::entity_kind`): what the snapshot is of.
    pub kind: &'static str,
    /// The v3 method (`developer/v3/methods/<method>.php`).
    pub method: &'static str,
    /// The parameter `info` reads the id from.
    pub key: &'static str,
    pub id: String,
    /// `client/info` drops the requisites unless asked (`bankinfo: true`, v3 `client.md`).
    pub bankinfo: bool,
}

/// How each kind is read, from `developer/v3/methods/*.php` (`case 'info'`): the method file
/// and the parameter its `info` action reads. Contracts are `document`; history reads `cid`.
const INFO_METHODS: [(&str, &str, &str); 10] = [
    ("client", "client", "clid"),
    ("person", "person", "pid"),
    ("deal", "deal", "did"),
    ("lead", "lead", "id"),
    ("entry", "entry", "id"),
    ("invoice", "invoice", "id"),
    ("task", "task", "id"),
    ("history", "history", "cid"),
    ("contract", "document", "id"),
    ("akt", "akt", "id"),
];

/// The `info` call for an event (canonical, lower-case name) about entity `id`; `None` for
/// an event whose kind v3 cannot read.
pub fn info_call(event: &str, id: String) -> Option<InfoCall> {
    let kind = crate::parse::salesman::entity_kind(event)?;
    let (_, method, key) = INFO_METHODS.iter().find(|(k, _, _)| *k == kind)?;
    Some(InfoCall {
        kind,
        method,
        key,
        id,
        bankinfo: event == "client.change.recv",
    })
}

/// What v3 said about one record, told apart as its source allows.
#[derive(Clone, Debug, PartialEq)]
pub enum InfoOutcome {
    /// The record as v3 answered it.
    Found(Value),
    /// The record does not exist (any more): `invoice`/`task`/`history` answer 403 and
    /// `document`/`akt`/`entry`/`lead`/`person` 404 or an empty record, none of them filtered
    /// by the API user's visibility. Forwarded as a delete is: `deleted`, with the last snapshot
    /// as `previous`, which is then removed.
    Gone,
    /// `client`/`deal` answer 403 "не найден(а) в пределах аккаунта указанного пользователя"
    /// when the record is outside the API user's visibility (`get_people`) as well as when it
    /// is gone; for an event that is not a delete, the sender has just written the record, so
    /// the relay takes it for no access (a deletion in between arrives as its own `.delete`).
    NoAccess,
    /// v3 does not know the method or action (`Неизвестный метод`, or an empty answer when
    /// `methods/<method>.php` does not exist): a configuration error, never a null entity.
    UnknownMethod { method: String, code: String },
    /// Any other error (405 "Отсутствуют параметры…"): the call itself is wrong; parked with
    /// the code, never forwarded as a null entity.
    Refused { method: String, code: String },
}

/// Reads a v3 answer (already parsed as JSON, `None` when the body was empty) for `call`.
/// Pure, so every rule is testable without a server.
pub fn classify(call: &InfoCall, answer: Option<&Value>) -> InfoOutcome {
    let unknown = |code: &str| InfoOutcome::UnknownMethod {
        method: format!("{}/info", call.method),
        code: code.to_string(),
    };
    let Some(answer) = answer.filter(|a| !is_empty_json(a)) else {
        return unknown("");
    };
    if answer.get("result").and_then(Value::as_str) == Some("Error") {
        let code = answer
            .pointer("/error/code")
            .map(|c| c.to_string().trim_matches('"').to_string())
            .unwrap_or_default();
        let text = answer
            .pointer("/error/text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // Every method's `default:` branch: 402 (client, deal, entry, invoice, document,
        // akt) or 404 (person, lead, task) "Неизвестный метод"; history's says
        // "Не понимаю чЁ происходит". The text, not the code, tells it from "not found".
        if text.contains("Неизвестный метод") || text.contains("Не понимаю")
        {
            return unknown(&code);
        }
        return match (call.kind, code.as_str()) {
            ("client" | "deal", "403") => InfoOutcome::NoAccess,
            (_, "403" | "404") => InfoOutcome::Gone,
            _ => InfoOutcome::Refused {
                method: format!("{}/info", call.method),
                code,
            },
        };
    }
    match answer.get("data") {
        Some(Value::Object(data)) if record_is_empty(call, data) => InfoOutcome::Gone,
        Some(data @ Value::Object(_)) => InfoOutcome::Found(data.clone()),
        _ => InfoOutcome::Gone,
    }
}

fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `person/info`, `lead/info` and `entry/info` read the record without checking it exists
/// and answer 200 with its fields empty: the record's own id field says whether it does.
fn record_is_empty(call: &InfoCall, data: &Map<String, Value>) -> bool {
    let own_id = match call.kind {
        "person" => "pid",
        "lead" => "id",
        "entry" => "ide",
        _ => return data.is_empty(),
    };
    match data.get(own_id) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty() || s == "0",
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        Some(_) => false,
    }
}

pub struct SalesmanClient {
    http: reqwest::Client,
    base_url: String,
    login: String,
    apikey: Secret,
    timeout: Duration,
    /// Kinds already logged as "no access": logged once per kind, not once per event.
    no_access_logged: Mutex<HashSet<&'static str>>,
}

impl SalesmanClient {
    /// `None` unless URL, login and API key are all configured.
    pub fn from_config(http: reqwest::Client, config: &RelayConfig) -> Option<Self> {
        Some(SalesmanClient {
            http,
            base_url: config
                .salesman_url
                .as_ref()?
                .trim_end_matches('/')
                .to_string(),
            login: config.salesman_login.clone()?,
            apikey: config.salesman_apikey.clone()?,
            timeout: Duration::from_secs(20),
            no_access_logged: Mutex::new(HashSet::new()),
        })
    }

    /// Asks v3 for one record. Transport failures, 5xx and 429 are `Transient`; a wrong API
    /// key or user (400/401) and a non-JSON answer are `Permanent`.
    pub async fn info(&self, call: &InfoCall) -> Result<InfoOutcome, EnrichError> {
        let method = call.method;
        // SalesMan ids are integers; send a number where the id is one, as its own forms do.
        let id_value = call
            .id
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or(json!(call.id));
        let mut body = Map::new();
        body.insert(call.key.to_string(), id_value);
        if call.bankinfo {
            body.insert("bankinfo".into(), Value::Bool(true));
        }
        let response = self
            .http
            .post(format!("{}/developer/v3/{method}/info", self.base_url))
            .timeout(self.timeout)
            .header("login", &self.login)
            .header("apikey", self.apikey.expose())
            .json(&Value::Object(body))
            .send()
            .await
            .map_err(|_| EnrichError::Transient {
                reason: format!("salesman {method}/info: request failed"),
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        if status >= 500 || status == 429 {
            return Err(EnrichError::Transient {
                reason: format!("salesman {method}/info: {status}"),
                retry_after: None,
            });
        }
        let bytes = crate::http_client::read_capped(response, crate::http_client::MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                crate::http_client::AnswerError::TooLarge { .. } => {
                    EnrichError::Permanent(format!("salesman {method}/info: {e}"))
                }
                _ => EnrichError::Transient {
                    reason: format!("salesman {method}/info: answer cut off"),
                    retry_after: None,
                },
            })?;
        let answer: Option<Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(serde_json::from_slice(&bytes).map_err(|_| {
                EnrichError::Permanent(format!(
                    "salesman {method}/info: answer {status} is not JSON"
                ))
            })?)
        };
        if let Some(code) = answer
            .as_ref()
            .filter(|a| a.get("result").and_then(Value::as_str) == Some("Error"))
            .and_then(|a| a.pointer("/error/code"))
            .map(|c| c.to_string().trim_matches('"').to_string())
        {
            // index.php: 400 "Не верный API key", 401 "Неизвестный пользователь".
            if code == "400" || code == "401" {
                return Err(EnrichError::Permanent(format!(
                    "salesman {method}/info: error {code} (API key or login)"
                )));
            }
        }
        let outcome = classify(call, answer.as_ref());
        if outcome == InfoOutcome::NoAccess && self.first_no_access(call.kind) {
            tracing::warn!(
                kind = call.kind,
                "the SalesMan v3 API user cannot see this kind of record; forwarding with entity null (logged once per kind)"
            );
        }
        Ok(outcome)
    }

    fn first_no_access(&self, kind: &'static str) -> bool {
        self.no_access_logged
            .lock()
            .map(|mut seen| seen.insert(kind))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(event: &str) -> InfoCall {
        info_call(event, "7".into()).unwrap()
    }

    fn error(code: Value, text: &str) -> Value {
        json!({"result": "Error", "error": {"code": code, "text": text}})
    }

    #[test]
    fn every_kind_is_read_with_the_parameter_its_info_action_reads() {
        let cases = [
            ("client.edit", "client", "client", "clid"),
            ("client.change.recv", "client", "client", "clid"),
            ("person.add", "person", "person", "pid"),
            ("deal.close", "deal", "deal", "did"),
            ("lead.setuser", "lead", "lead", "id"),
            ("entry.status", "entry", "entry", "id"),
            ("invoice.doit", "invoice", "invoice", "id"),
            ("task.doit", "task", "task", "id"),
            ("history.edit", "history", "history", "cid"),
            ("contract.edit", "contract", "document", "id"),
            ("akt.add", "akt", "akt", "id"),
        ];
        for (event, kind, method, key) in cases {
            let c = call(event);
            assert_eq!((c.kind, c.method, c.key), (kind, method, key), "{event}");
            assert_eq!(c.bankinfo, event == "client.change.recv", "{event}");
        }
        assert_eq!(info_call("budjet.add", "1".into()), None);
    }

    #[test]
    fn not_found_answers_are_gone_where_v3_does_not_filter_by_user() {
        // invoice.php: 403 'Счет не найден'; task.php: 403 "Напоминание … не найдено …";
        // history.php: '403' (a string) "Не найдено в пределах …"; document.php / akt.php:
        // 404 "Документ не найден".
        let cases = [
            ("invoice.add", error(json!(403), "Счет не найден")),
            ("task.edit", error(json!(403), "Напоминание с указанным id не найдено в пределах аккаунта указанного пользователя.")),
            ("history.add", error(json!("403"), "Не найдено в пределах аккаунта указанного пользователя.")),
            ("contract.edit", error(json!(404), "Документ не найден")),
            ("akt.edit", error(json!(404), "Документ не найден")),
        ];
        for (event, answer) in cases {
            assert_eq!(
                classify(&call(event), Some(&answer)),
                InfoOutcome::Gone,
                "{event}"
            );
        }
    }

    #[test]
    fn client_and_deal_403_is_no_access() {
        let client = error(
            json!(403),
            "Клиент не найден в пределах аккаунта указанного пользователя.",
        );
        let deal = error(
            json!(403),
            "Сделка не найдена в пределах аккаунта указанного пользователя.",
        );
        assert_eq!(
            classify(&call("client.edit"), Some(&client)),
            InfoOutcome::NoAccess
        );
        assert_eq!(
            classify(&call("deal.edit"), Some(&deal)),
            InfoOutcome::NoAccess
        );
        // deal.php answers 404 "Не найдено" when the row passed the filter but `info` is empty.
        assert_eq!(
            classify(&call("deal.edit"), Some(&error(json!(404), "Не найдено"))),
            InfoOutcome::Gone
        );
    }

    #[test]
    fn unknown_method_is_told_from_not_found_by_its_text() {
        for (event, code, text) in [
            ("client.edit", json!(402), "Неизвестный метод"),
            ("person.edit", json!(404), "Неизвестный метод"),
            ("lead.do", json!(404), "Неизвестный метод"),
            ("task.add", json!(404), "Неизвестный метод"),
            (
                "history.add",
                json!(404),
                "Не понимаю чЁ происходит. Может в следующий раз?",
            ),
        ] {
            let outcome = classify(&call(event), Some(&error(code.clone(), text)));
            assert!(
                matches!(&outcome, InfoOutcome::UnknownMethod { code: c, .. } if *c == code.to_string().trim_matches('"')),
                "{event}: {outcome:?}"
            );
        }
        // Missing parameters are the relay's fault, not a missing record.
        assert_eq!(
            classify(
                &call("invoice.add"),
                Some(&error(json!(405), "Отсутствуют параметры - id Счета"))
            ),
            InfoOutcome::Refused {
                method: "invoice/info".into(),
                code: "405".into()
            }
        );
        // No methods/<name>.php: index.php includes nothing and prints nothing.
        assert!(matches!(
            classify(&call("deal.edit"), None),
            InfoOutcome::UnknownMethod { .. }
        ));
    }

    #[test]
    fn empty_records_from_unchecked_info_actions_are_gone() {
        // person.php fills every field from an empty Person::info; lead.php and entry.php too.
        let person = json!({"data": {"pid": null, "person": null, "clid": null, "client": "", "date_create": null}});
        assert_eq!(
            classify(&call("person.edit"), Some(&person)),
            InfoOutcome::Gone
        );
        let lead = json!({"data": {"statusName": "", "rezultName": null, "client": null, "person": null, "deal": null}, "id": 7});
        assert_eq!(
            classify(&call("lead.setuser"), Some(&lead)),
            InfoOutcome::Gone
        );
        let entry = json!({"data": {"products": []}});
        assert_eq!(
            classify(&call("entry.add"), Some(&entry)),
            InfoOutcome::Gone
        );
        let found = json!({"data": {"pid": "7", "person": "Ann"}});
        assert_eq!(
            classify(&call("person.edit"), Some(&found)),
            InfoOutcome::Found(json!({"pid": "7", "person": "Ann"}))
        );
    }
}
