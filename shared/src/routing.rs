//! Which family (which deployed function) takes an event: DESIGN.md's routing table kept as
//! data. Ingress asks it after parsing; an event sent to another family's URL is refused with
//! the family that takes it, and an event in no family is refused as unknown.

use crate::error::IngestError;
use crate::event::{Family, Source};

/// How a rule matches a canonical (upper-case Bitrix24, lower-case SalesMan) event name.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
    /// `ONCRMDYNAMICITEM*_31`: smart-process events carry the entity type in the suffix.
    PrefixSuffix(&'static str, &'static str),
}

impl Pattern {
    fn matches(self, event: &str) -> bool {
        match self {
            Pattern::Exact(name) => event == name,
            Pattern::Prefix(prefix) => event.starts_with(prefix),
            Pattern::PrefixSuffix(prefix, suffix) => {
                event.len() >= prefix.len() + suffix.len()
                    && event.starts_with(prefix)
                    && event.ends_with(suffix)
            }
        }
    }

    /// The most specific matching rule wins: an exact name over any prefix, then the longest
    /// literal text (so `client.change.recv` beats `client.`).
    fn specificity(self) -> (u8, usize) {
        match self {
            Pattern::Exact(name) => (2, name.len()),
            Pattern::Prefix(prefix) => (1, prefix.len()),
            Pattern::PrefixSuffix(prefix, suffix) => (1, prefix.len() + suffix.len()),
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
use Source::{Bitrix24 as B24, Salesman as SM};

/// DESIGN.md, "Families". Names are canonical case here; events are canonicalised first.
const RULES: &[Rule] = &[
    rule(B24, Prefix("ONCRMDEAL"), Deal),
    rule(B24, Prefix("ONCRMLEAD"), Lead),
    rule(B24, Prefix("ONCRMCONTACT"), Contact),
    rule(B24, Prefix("ONCRMCOMPANY"), Company),
    rule(B24, Prefix("ONCRMREQUISITE"), Requisite),
    rule(B24, Prefix("ONCRMBANKDETAIL"), Requisite),
    rule(B24, Prefix("ONCRMADDRESS"), Requisite),
    rule(B24, Prefix("ONCRMINVOICE"), Invoice),
    rule(B24, PrefixSuffix("ONCRMDYNAMICITEM", "_31"), Invoice),
    rule(B24, Prefix("ONTASK"), Activity),
    rule(B24, Prefix("ONCRMACTIVITY"), Activity),
    rule(B24, Exact("ONAPPINSTALL"), App),
    rule(B24, Exact("ONAPPUNINSTALL"), App),
    rule(B24, Exact("ONAPPUPDATE"), App),
    rule(B24, Exact("ONAPPTEST"), App),
    rule(B24, Exact("ONOFFLINEEVENT"), App),
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
pub fn family_of(source: Source, event: &str) -> Option<Family> {
    let event = canonical_event(source, event);
    RULES
        .iter()
        .filter(|r| r.source == source && r.pattern.matches(&event))
        .max_by_key(|r| r.pattern.specificity())
        .map(|r| r.family)
}

/// Checks that the URL of `called` takes `event`: `UnknownEvent` when no family does,
/// `WrongFamily` (naming the right one) when another family does.
pub fn route(source: Source, event: &str, called: Family) -> Result<(), IngestError> {
    match family_of(source, event) {
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

    #[test]
    fn wrong_family_names_the_right_one() {
        match route(Source::Bitrix24, "onCrmDealUpdate", Family::Lead) {
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
            route(Source::Salesman, "email.get", Family::Deal),
            Err(IngestError::UnknownEvent(e)) if e == "email.get"
        ));
        assert!(route(Source::Salesman, "client.change.recv", Family::Requisite).is_ok());
        assert!(matches!(
            route(Source::Salesman, "client.change.recv", Family::Company),
            Err(IngestError::WrongFamily {
                expected: Family::Requisite,
                ..
            })
        ));
    }
}
