//! Which family (which deployed function) takes an event: Bitrix24's from the event catalogue,
//! SalesMan's from the table here. Ingress asks it after parsing; an event sent to another
//! family's URL is refused with the family that takes it, and an event in no family is refused.

use crate::catalogue::{self, CatalogueMiss};
use crate::error::IngestError;
use crate::event::{Family, Source};

/// How a rule matches a canonical (upper-case Bitrix24, lower-case SalesMan) event name.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
}

impl Pattern {
    fn matches(self, event: &str) -> bool {
        match self {
            Pattern::Exact(name) => event == name,
            Pattern::Prefix(prefix) => event.starts_with(prefix),
        }
    }

    /// The most specific matching rule wins: an exact name over any prefix, then the longest
    /// literal text (so `client.change.recv` beats `client.`).
    fn specificity(self) -> (u8, usize) {
        match self {
            Pattern::Exact(name) => (2, name.len()),
            Pattern::Prefix(prefix) => (1, prefix.len()),
        }
    }
}

struct Rule {
    source: Source,
    pattern: Pattern,
    family: Family,
}

const fn rule(source: Source, pattern: Pattern, family: Family) -> Rule {
    Rule {
        source,
        pattern,
        family,
    }
}

use Family::*;
use Pattern::*;
use Source::Salesman as SM;

/// SalesMan's families by event name, lower case (events are canonicalised first).
const RULES: &[Rule] = &[
    rule(SM, Prefix("deal."), Deal),
    rule(SM, Prefix("lead."), Lead),
    rule(SM, Prefix("entry."), Lead),
    rule(SM, Prefix("person."), Contact),
    rule(SM, Prefix("client."), Company),
    rule(SM, Exact("client.change.recv"), Requisite),
    rule(SM, Prefix("invoice."), Invoice),
    rule(SM, Prefix("contract."), Document),
    rule(SM, Prefix("akt."), Document),
    rule(SM, Prefix("task."), Activity),
    rule(SM, Prefix("history."), Activity),
];

/// The event name as the routing table (and the envelope) spells it.
pub fn canonical_event(source: Source, event: &str) -> String {
    match source {
        Source::Bitrix24 => event.to_ascii_uppercase(),
        Source::Salesman => event.to_ascii_lowercase(),
    }
}

/// The family that takes `event`, compared case-insensitively; `None` when no family does.
/// (A base `ONCRMDYNAMICITEM*` name is the invoice family's; [`route`] checks its type.)
pub fn family_of(source: Source, event: &str) -> Option<Family> {
    if source == Source::Bitrix24 {
        return catalogue::entry(event).map(|e| e.family);
    }
    let event = canonical_event(source, event);
    RULES
        .iter()
        .filter(|r| r.source == source && r.pattern.matches(&event))
        .max_by_key(|r| r.pattern.specificity())
        .map(|r| r.family)
}

/// Checks that the URL of `called` takes `event` (with its `data`, which names the type of a
/// base dynamic-item event): `UnknownEvent` when no family does, `NotTaken` when the
/// catalogue refuses it, `WrongFamily` (naming the right one) when another family takes it.
pub fn route(
    source: Source,
    event: &str,
    data: &serde_json::Value,
    called: Family,
) -> Result<(), IngestError> {
    let family = match source {
        Source::Bitrix24 => match catalogue::resolve(event, data) {
            Ok(entry) => Some(entry.family),
            Err(CatalogueMiss::Unknown(_)) => None,
            Err(miss) => return Err(IngestError::NotTaken(miss.to_string())),
        },
        Source::Salesman => family_of(source, event),
    };
    match family {
        None => Err(IngestError::UnknownEvent(canonical_event(source, event))),
        Some(family) if family == called => Ok(()),
        Some(family) => Err(IngestError::WrongFamily {
            event: canonical_event(source, event),
            expected: family,
            got: called,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrix24_events_route_by_prefix_case_insensitively() {
        let cases = [
            ("ONCRMDEALUPDATE", Deal),
            ("onCrmDealAdd", Deal),
            ("ONCRMDEALUSERFIELDADD", Deal),
            ("ONCRMLEADDELETE", Lead),
            ("ONCRMCONTACTADD", Contact),
            ("ONCRMCOMPANYUPDATE", Company),
            ("onCrmRequisiteUserFieldUpdate", Requisite),
            ("ONCRMREQUISITEUSERFIELDUPDATE", Requisite),
            ("ONCRMBANKDETAILADD", Requisite),
            ("ONCRMADDRESSREGISTER", Requisite),
            ("ONCRMINVOICEADD", Invoice),
            ("ONCRMDYNAMICITEMADD_31", Invoice),
            ("onCrmDynamicItemUpdate_31", Invoice),
            ("ONTASKADD", Activity),
            ("ONTASKCOMMENTADD", Activity),
            ("onCrmDynamicItemAdd", Invoice),
            ("ONCRMDEALRECURRINGEXPOSE", Deal),
            ("ONCRMINVOICERECURRINGADD", Invoice),
            ("ONCRMACTIVITYADD", Activity),
            ("ONAPPINSTALL", App),
            ("onAppUninstall", App),
            ("ONAPPUPDATE", App),
            ("ONAPPTEST", App),
            ("ONOFFLINEEVENT", App),
        ];
        for (event, family) in cases {
            assert_eq!(family_of(Source::Bitrix24, event), Some(family), "{event}");
        }
    }

    #[test]
    fn salesman_events_route_with_the_recv_exception() {
        let cases = [
            ("deal.change.step", Deal),
            ("deal.import", Deal),
            ("lead.setuser", Lead),
            ("entry.status", Lead),
            ("person.change.user", Contact),
            ("client.add", Company),
            ("client.change.user", Company),
            ("client.import", Company),
            ("client.change.recv", Requisite),
            ("Client.Change.Recv", Requisite),
            ("invoice.doit", Invoice),
            ("contract.edit", Document),
            ("akt.delete", Document),
            ("task.doit", Activity),
            ("history.add", Activity),
        ];
        for (event, family) in cases {
            assert_eq!(family_of(Source::Salesman, event), Some(family), "{event}");
        }
    }

    #[test]
    fn unknown_events_have_no_family() {
        for (source, event) in [
            (Source::Bitrix24, "ONCRMDYNAMICITEMADD_128"),
            (Source::Bitrix24, "ONCRMDYNAMICITEMADD_131"),
            (Source::Bitrix24, "ONCRMQUOTEADD"),
            (Source::Bitrix24, "ONAPPINSTALLX"),
            (Source::Bitrix24, "ONUSERADD"),
            (Source::Bitrix24, "ONCRM"),
            (Source::Salesman, "email.send"),
            (Source::Salesman, "deal"),
            // A name of one CRM is not an event of the other.
            (Source::Salesman, "ONCRMDEALADD"),
            (Source::Bitrix24, "deal.add"),
        ] {
            assert_eq!(family_of(source, event), None, "{event}");
        }
    }

    /// on-crm-dynamic-item-add.md: the base name's type is in FIELDS.ENTITY_TYPE_ID.
    #[test]
    fn base_dynamic_item_events_route_by_their_type() {
        let data = |t: &str| serde_json::json!({"FIELDS": {"ID": "22", "ENTITY_TYPE_ID": t}});
        assert!(route(
            Source::Bitrix24,
            "ONCRMDYNAMICITEMADD",
            &data("31"),
            Family::Invoice
        )
        .is_ok());
        match route(
            Source::Bitrix24,
            "ONCRMDYNAMICITEMADD",
            &data("1220"),
            Family::Invoice,
        ) {
            Err(IngestError::NotTaken(why)) => assert!(why.contains("1220"), "{why}"),
            other => panic!("expected NotTaken, got {other:?}"),
        }
        match route(Source::Bitrix24, "ONCRMQUOTEADD", &data("7"), Family::Deal) {
            Err(IngestError::NotTaken(why)) => assert!(why.contains("estimates"), "{why}"),
            other => panic!("expected NotTaken, got {other:?}"),
        }
    }

    #[test]
    fn wrong_family_names_the_right_one() {
        match route(
            Source::Bitrix24,
            "onCrmDealUpdate",
            &serde_json::json!({}),
            Family::Lead,
        ) {
            Err(IngestError::WrongFamily {
                event,
                expected,
                got,
            }) => {
                assert_eq!(event, "ONCRMDEALUPDATE");
                assert_eq!(expected, Family::Deal);
                assert_eq!(got, Family::Lead);
            }
            other => panic!("expected WrongFamily, got {other:?}"),
        }
        assert!(matches!(
            route(Source::Salesman, "email.get", &serde_json::json!({}), Family::Deal),
            Err(IngestError::UnknownEvent(e)) if e == "email.get"
        ));
        assert!(route(
            Source::Salesman,
            "client.change.recv",
            &serde_json::json!({}),
            Family::Requisite
        )
        .is_ok());
        assert!(matches!(
            route(
                Source::Salesman,
                "client.change.recv",
                &serde_json::json!({}),
                Family::Company
            ),
            Err(IngestError::WrongFamily {
                expected: Family::Requisite,
                ..
            })
        ));
    }
}
