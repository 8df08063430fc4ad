//! Bitrix24 event deliveries: a decoded document (`event`, `event_handler_id`, `data`, `ts`,
//! `auth`) -> a typed delivery with the portal, the entity id and the credentials split off.
//! Verification and routing come after this, in `verify` and `routing`.

use super::{event_name, group_safe_id, ParseError, MAX_ENTITY_ID_LEN, MAX_PORTAL_LEN};
use crate::catalogue::{self, IdAt};
use crate::secret::Secret;
use serde_json::{Map, Value};

/// What Bitrix24 sent, with every credential in `auth` (and never in `data`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bitrix24Delivery {
    /// Canonical: upper-case (`onCrmRequisiteUserFieldUpdate` is `ONCRMREQUISITEUSERFIELDUPDATE`).
    pub event: String,
    pub event_handler_id: Option<String>,
    /// `ts`: queue time, Unix seconds. `None` when the sender left it out.
    pub ts: Option<i64>,
    /// The entity the event is about, where the event catalogue says it is: mostly
    /// `data[FIELDS][ID]`, for tasks `data[FIELDS_AFTER][ID]` (or `FIELDS_BEFORE` on delete),
    /// for addresses a `TYPE_ID-ENTITY_TYPE_ID-ENTITY_ID` key; `None` for app events.
    pub entity_id: Option<String>,
    pub auth: Bitrix24Auth,
    /// `data` as sent (an empty object when absent); secrets are stripped later, in ingest.
    pub data: Value,
}

/// `auth[...]`. Debug redacts every token (they are `Secret`s).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Bitrix24Auth {
    /// The portal.
    pub member_id: String,
    pub domain: Option<String>,
    /// The only proof of origin (fixed per app per portal).
    pub application_token: Option<Secret>,
    /// Present on app events (ONAPPINSTALL) and handlers bound with OAuth; absent for robots,
    /// workflows and outgoing webhooks. Read only so their values are stripped wherever they
    /// appear: ingress never queues them (an install reads its tokens from the document).
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
}

impl Bitrix24Auth {
    /// Every credential value present, for value-based stripping.
    pub fn secrets(&self) -> Vec<&str> {
        [
            &self.application_token,
            &self.access_token,
            &self.refresh_token,
        ]
        .into_iter()
        .flatten()
        .map(Secret::expose)
        .collect()
    }
}

/// The credentials of a Bitrix24 form body, found by one pass over its pairs without building
/// the document: `(event, auth)` with `member_id` and `application_token` (the last of each
/// wins, as in PHP). `None` when the body does not look like a Bitrix24 event (no `event`, a
/// dotted SalesMan name, no `auth[member_id]`); the full parse then decides.
pub fn form_credentials(body: &[u8]) -> Option<(String, Bitrix24Auth)> {
    let (mut event, mut member_id, mut token) = (None, None, None);
    for (key, value) in form_urlencoded::parse(body).take(super::php_form::MAX_FIELDS) {
        match key.as_ref() {
            "event" => event = Some(value.into_owned()),
            "auth[member_id]" => member_id = Some(value.into_owned()),
            "auth[application_token]" => token = Some(value.into_owned()),
            _ => {}
        }
    }
    let event = event.filter(|e| !e.is_empty() && !e.contains('.'))?;
    let member_id = member_id.filter(|m| !m.is_empty())?;
    Some((
        event.to_ascii_uppercase(),
        Bitrix24Auth {
            member_id,
            application_token: token.map(Secret::new),
            ..Bitrix24Auth::default()
        },
    ))
}

/// Reads a decoded Bitrix24 document (form or JSON alike).
pub fn parse_bitrix24(document: &Map<String, Value>) -> Result<Bitrix24Delivery, ParseError> {
    let event = event_name(document)?.to_ascii_uppercase();
    let auth = match document.get("auth") {
        Some(Value::Object(auth)) => parse_auth(auth)?,
        Some(_) => return Err(ParseError::Invalid("auth")),
        None => return Err(ParseError::Missing("auth")),
    };
    let data = match document.get("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        // PHP's http_build_query drops empty arrays, so an event without fields may send
        // `data=` or nothing at all.
        Some(Value::String(s)) if s.is_empty() => Value::Object(Map::new()),
        Some(_) => return Err(ParseError::Invalid("data")),
    };
    let ts = match document.get("ts") {
        None => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(parse_unix_seconds(s).ok_or(ParseError::Invalid("ts"))?),
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .filter(|t| *t > 0)
                .ok_or(ParseError::Invalid("ts"))?,
        ),
        Some(_) => return Err(ParseError::Invalid("ts")),
    };
    let event_handler_id = match document.get("event_handler_id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let entity_id = entity_id(&event, &data)?;
    Ok(Bitrix24Delivery {
        event,
        event_handler_id,
        ts,
        entity_id,
        auth,
        data,
    })
}

fn parse_unix_seconds(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|t| *t > 0)
}

fn parse_auth(auth: &Map<String, Value>) -> Result<Bitrix24Auth, ParseError> {
    let text = |key: &str| match auth.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let member_id = group_safe_id(auth.get("member_id"), "auth[member_id]", MAX_PORTAL_LEN)?
        .ok_or(ParseError::Missing("auth[member_id]"))?;
    Ok(Bitrix24Auth {
        member_id,
        domain: text("domain"),
        application_token: text("application_token").map(Secret::new),
        access_token: text("access_token").map(Secret::new),
        refresh_token: text("refresh_token").map(Secret::new),
    })
}

/// The entity id where the catalogue says the event keeps it. Events the catalogue does not
/// know are refused by routing later; until then `FIELDS.ID` is read as most events have it.
fn entity_id(event: &str, data: &Value) -> Result<Option<String>, ParseError> {
    let at = match catalogue::entry(event) {
        Some(entry) => entry.id,
        None if event.starts_with("ONTASK") => IdAt::TaskFields,
        None => IdAt::Fields("ID"),
    };
    let field = |container: &str, key: &str| data.get(container).and_then(|f| f.get(key));
    match at {
        IdAt::Nothing => Ok(None),
        IdAt::Fields(key) => {
            group_safe_id(field("FIELDS", key), "data[FIELDS][ID]", MAX_ENTITY_ID_LEN)
        }
        // Tasks send `FIELDS_AFTER` (gone on delete, when only `FIELDS_BEFORE` has the id);
        // the side without fields is the string `undefined`, which `.get("ID")` skips.
        IdAt::TaskFields => {
            for container in ["FIELDS_AFTER", "FIELDS_BEFORE"] {
                let id = group_safe_id(
                    field(container, "ID"),
                    "data[FIELDS][ID]",
                    MAX_ENTITY_ID_LEN,
                )?;
                if id.is_some() {
                    return Ok(id);
                }
            }
            Ok(None)
        }
        // on-crm-address-register.md: an address has no id; type and owner name it.
        IdAt::AddressKey => {
            let mut parts = Vec::with_capacity(3);
            for key in ["TYPE_ID", "ENTITY_TYPE_ID", "ENTITY_ID"] {
                match group_safe_id(
                    field("FIELDS", key),
                    "data[FIELDS][ENTITY_ID]",
                    MAX_ENTITY_ID_LEN,
                )? {
                    Some(part) if part.bytes().all(|b| b.is_ascii_digit()) => parts.push(part),
                    Some(_) => return Err(ParseError::Invalid("data[FIELDS][ENTITY_ID]")),
                    None => return Ok(None),
                }
            }
            let key = parts.join("-");
            if key.len() > MAX_ENTITY_ID_LEN {
                return Err(ParseError::Invalid("data[FIELDS][ENTITY_ID]"));
            }
            Ok(Some(key))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{decode_document, BodyEncoding};
    use serde_json::json;

    fn form(body: &str) -> Result<Bitrix24Delivery, ParseError> {
        parse_bitrix24(&decode_document(BodyEncoding::Form, body.as_bytes()).unwrap())
    }

    /// Shaped like the official sample of ONCRMDEALUPDATE (b24restdocs, events/index.md).
    const DEAL_UPDATE: &str = "event=ONCRMDEALUPDATE&event_handler_id=25\
        &data%5BFIELDS%5D%5BID%5D=7405&ts=1766047124\
        &auth%5Bdomain%5D=example.bitrix24.ru\
        &auth%5Bclient_endpoint%5D=https%3A%2F%2Fexample.bitrix24.ru%2Frest%2F\
        &auth%5Bserver_endpoint%5D=https%3A%2F%2Foauth.bitrix.info%2Frest%2F\
        &auth%5Bmember_id%5D=a1b2c3d4e5f60718293a4b5c6d7e8f90\
        &auth%5Bapplication_token%5D=local-dev-app-token";

    #[test]
    fn form_credentials_are_found_without_decoding() {
        let body = b"event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=1\
            &auth%5Bmember_id%5D=m1&auth%5Bapplication_token%5D=old&auth%5Bapplication_token%5D=t";
        let (event, auth) = form_credentials(body).unwrap();
        assert_eq!(event, "ONCRMDEALADD");
        assert_eq!(auth.member_id, "m1");
        assert_eq!(auth.application_token, Some(Secret::new("t")));
        assert!(form_credentials(b"event=deal.edit&auth%5Bmember_id%5D=m1").is_none());
        assert!(form_credentials(b"event=ONCRMDEALADD").is_none());
    }

    #[test]
    fn crm_event_from_a_php_form() {
        let d = form(DEAL_UPDATE).unwrap();
        assert_eq!(d.event, "ONCRMDEALUPDATE");
        assert_eq!(d.event_handler_id.as_deref(), Some("25"));
        assert_eq!(d.ts, Some(1766047124));
        assert_eq!(d.entity_id.as_deref(), Some("7405"));
        assert_eq!(d.auth.member_id, "a1b2c3d4e5f60718293a4b5c6d7e8f90");
        assert_eq!(d.auth.domain.as_deref(), Some("example.bitrix24.ru"));
        assert_eq!(
            d.auth.application_token,
            Some(Secret::new("local-dev-app-token"))
        );
        assert_eq!(d.data, json!({"FIELDS": {"ID": "7405"}}));
    }

    #[test]
    fn the_same_document_as_json_reads_the_same() {
        let json_body = json!({
            "event": "ONCRMDEALUPDATE", "event_handler_id": "25",
            "data": {"FIELDS": {"ID": "7405"}}, "ts": "1766047124",
            "auth": {
                "domain": "example.bitrix24.ru",
                "client_endpoint": "https://example.bitrix24.ru/rest/",
                "server_endpoint": "https://oauth.bitrix.info/rest/",
                "member_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                "application_token": "local-dev-app-token"
            }
        })
        .to_string();
        let from_json =
            parse_bitrix24(&decode_document(BodyEncoding::Json, json_body.as_bytes()).unwrap())
                .unwrap();
        assert_eq!(from_json, form(DEAL_UPDATE).unwrap());
    }

    #[test]
    fn event_names_are_upper_cased() {
        let d =
            form("event=onCrmRequisiteUserFieldUpdate&data[FIELDS][ID]=3&ts=1&auth[member_id]=m")
                .unwrap();
        assert_eq!(d.event, "ONCRMREQUISITEUSERFIELDUPDATE");
    }

    #[test]
    fn task_events_take_fields_after_and_tolerate_undefined() {
        let add = form(
            "event=ONTASKADD&data[FIELDS_BEFORE]=undefined&data[FIELDS_AFTER][ID]=42\
             &data[IS_ACCESSIBLE_BEFORE]=N&data[IS_ACCESSIBLE_AFTER]=undefined\
             &ts=1766047124&auth[member_id]=m",
        )
        .unwrap();
        assert_eq!(add.entity_id.as_deref(), Some("42"));
        assert_eq!(add.data["FIELDS_BEFORE"], json!("undefined"));
        // On delete the task is gone: only FIELDS_BEFORE has its id.
        let delete = form(
            "event=ONTASKDELETE&data[FIELDS_BEFORE][ID]=42&data[FIELDS_AFTER]=undefined\
             &ts=1766047124&auth[member_id]=m",
        )
        .unwrap();
        assert_eq!(delete.entity_id.as_deref(), Some("42"));
    }

    #[test]
    fn app_install_has_no_entity_and_keeps_its_tokens_out_of_data() {
        let d = form(
            "event=ONAPPINSTALL&data[VERSION]=1&data[ACTIVE]=Y&data[INSTALLED]=Y\
             &data[LANGUAGE_ID]=ru&ts=1766047124&auth[access_token]=acc-123\
             &auth[expires]=1766050724&auth[expires_in]=3600&auth[scope]=crm%2Ctask\
             &auth[domain]=example.bitrix24.ru&auth[status]=L&auth[member_id]=m\
             &auth[refresh_token]=ref-456&auth[application_token]=app-789",
        )
        .unwrap();
        assert_eq!(d.entity_id, None);
        assert_eq!(d.auth.access_token, Some(Secret::new("acc-123")));
        assert_eq!(d.auth.refresh_token, Some(Secret::new("ref-456")));
        assert_eq!(d.auth.secrets(), vec!["app-789", "acc-123", "ref-456"]);
        assert!(!d.data.to_string().contains("acc-123"));
        let debug = format!("{d:?}");
        assert!(!debug.contains("acc-123") && !debug.contains("ref-456"));
    }

    /// on-crm-address-register.md: the sample's FIELDS are JSON numbers and carry no ID.
    #[test]
    fn address_events_get_a_composite_key() {
        let body = json!({"event": "onCrmAddressRegister", "data": {"FIELDS": {
            "TYPE_ID": 1, "ENTITY_TYPE_ID": 8, "ENTITY_ID": 1, "ANCHOR_ID": 17192, "ANCHOR_TYPE_ID": 3}},
            "ts": "1466439714", "auth": {"member_id": "m"}})
        .to_string();
        let d =
            parse_bitrix24(&decode_document(BodyEncoding::Json, body.as_bytes()).unwrap()).unwrap();
        assert_eq!(d.entity_id.as_deref(), Some("1-8-1"));
        let form_body = form(
            "event=ONCRMADDRESSUNREGISTER&data[FIELDS][TYPE_ID]=1&data[FIELDS][ENTITY_TYPE_ID]=8\
             &data[FIELDS][ENTITY_ID]=1&ts=1&auth[member_id]=m",
        )
        .unwrap();
        assert_eq!(form_body.entity_id.as_deref(), Some("1-8-1"));
        assert_eq!(
            form("event=ONCRMADDRESSREGISTER&data[FIELDS][TYPE_ID]=1-2&data[FIELDS][ENTITY_TYPE_ID]=8\
                  &data[FIELDS][ENTITY_ID]=1&auth[member_id]=m"),
            Err(ParseError::Invalid("data[FIELDS][ENTITY_ID]"))
        );
    }

    /// on-crm-deal-recurring-expose.md: DEAL_ID is the new deal; ID is a settings row.
    #[test]
    fn recurring_expose_names_the_new_deal() {
        let d = form(
            "event=ONCRMDEALRECURRINGEXPOSE&data[FIELDS][ID]=9&data[FIELDS][RECURRING_DEAL_ID]=6791\
             &data[FIELDS][DEAL_ID]=6799&ts=1&auth[member_id]=m",
        )
        .unwrap();
        assert_eq!(d.entity_id.as_deref(), Some("6799"));
        let add = form(
            "event=ONCRMDEALRECURRINGADD&data[FIELDS][ID]=11&data[FIELDS][RECURRING_DEAL_ID]=6797\
             &ts=1&auth[member_id]=m",
        )
        .unwrap();
        assert_eq!(add.entity_id.as_deref(), Some("11"));
    }

    #[test]
    fn required_and_invalid_fields() {
        assert_eq!(
            form("event=ONCRMDEALADD&data[FIELDS][ID]=1"),
            Err(ParseError::Missing("auth"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&auth[domain]=x"),
            Err(ParseError::Missing("auth[member_id]"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&auth=x"),
            Err(ParseError::Invalid("auth"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&ts=soon&auth[member_id]=m"),
            Err(ParseError::Invalid("ts"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&data=x&auth[member_id]=m"),
            Err(ParseError::Invalid("data"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&data[FIELDS][ID]=1%232&auth[member_id]=m"),
            Err(ParseError::Invalid("data[FIELDS][ID]"))
        );
        assert_eq!(
            form("event=ONCRMDEALADD&auth[member_id]=a%20b"),
            Err(ParseError::Invalid("auth[member_id]"))
        );
        // Empty `ts` and empty `data` are what PHP writes for absent values.
        let d = form("event=ONCRMDEALADD&ts=&data=&auth[member_id]=m").unwrap();
        assert_eq!((d.ts, d.entity_id, d.data), (None, None, json!({})));
    }
}
