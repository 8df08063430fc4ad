//! The one table of Bitrix24 event names crm-relay binds, per family. `relay bind` registers
//! exactly these, so the offline queue only ever holds these names; every other list of
//! Bitrix24 event names in the crate is derived from here.

use crate::event::Family;

/// Bindable Bitrix24 events of each family, in the upper case Bitrix24 stores them in.
/// (The app family's ONAPPINSTALL is the app's install handler, set in the app's settings,
/// and ONAPPTEST is sent by the settings page: neither can be bound with `event.bind`.)
pub const BITRIX24_EVENTS: &[(Family, &[&str])] = &[
    (
        Family::Deal,
        &["ONCRMDEALADD", "ONCRMDEALUPDATE", "ONCRMDEALDELETE"],
    ),
    (
        Family::Lead,
        &["ONCRMLEADADD", "ONCRMLEADUPDATE", "ONCRMLEADDELETE"],
    ),
    (
        Family::Contact,
        &[
            "ONCRMCONTACTADD",
            "ONCRMCONTACTUPDATE",
            "ONCRMCONTACTDELETE",
        ],
    ),
    (
        Family::Company,
        &[
            "ONCRMCOMPANYADD",
            "ONCRMCOMPANYUPDATE",
            "ONCRMCOMPANYDELETE",
        ],
    ),
    (
        Family::Requisite,
        &[
            "ONCRMREQUISITEADD",
            "ONCRMREQUISITEUPDATE",
            "ONCRMREQUISITEDELETE",
            "ONCRMBANKDETAILADD",
            "ONCRMBANKDETAILUPDATE",
            "ONCRMBANKDETAILDELETE",
            "ONCRMADDRESSREGISTER",
            "ONCRMADDRESSUNREGISTER",
        ],
    ),
    (
        Family::Invoice,
        &[
            "ONCRMINVOICEADD",
            "ONCRMINVOICEUPDATE",
            "ONCRMINVOICEDELETE",
            "ONCRMINVOICESETSTATUS",
            // Smart invoices are the dynamic type with entityTypeId 31.
            "ONCRMDYNAMICITEMADD_31",
            "ONCRMDYNAMICITEMUPDATE_31",
            "ONCRMDYNAMICITEMDELETE_31",
        ],
    ),
    (
        Family::Activity,
        &[
            "ONTASKADD",
            "ONTASKUPDATE",
            "ONTASKDELETE",
            "ONCRMACTIVITYADD",
            "ONCRMACTIVITYUPDATE",
            "ONCRMACTIVITYDELETE",
        ],
    ),
    (Family::App, &["ONAPPUNINSTALL", "ONAPPUPDATE"]),
];

/// Tells the poller that offline records are waiting; bound online to the app family's URL
/// when offline events are enabled.
pub const ONOFFLINEEVENT: &str = "ONOFFLINEEVENT";

/// The events bound for one family (empty for families Bitrix24 has no events for).
pub fn bitrix24_events(family: Family) -> &'static [&'static str] {
    BITRIX24_EVENTS
        .iter()
        .find(|(f, _)| *f == family)
        .map(|(_, events)| *events)
        .unwrap_or(&[])
}

/// The family of a bindable event name, compared case-insensitively (Bitrix24 upper-cases
/// names on bind but its own samples use camel case).
pub fn family_of_bound_event(event: &str) -> Option<Family> {
    BITRIX24_EVENTS
        .iter()
        .find(|(_, events)| events.iter().any(|e| e.eq_ignore_ascii_case(event)))
        .map(|(family, _)| *family)
}

/// Entity events can be recorded offline; app events cannot (Bitrix24 calls no handler for
/// an uninstalled app, and an update is its own online call).
pub fn offline_capable(family: Family) -> bool {
    family != Family::App
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_is_upper_case_and_in_one_family_only() {
        let mut seen = std::collections::BTreeSet::new();
        for (_, events) in BITRIX24_EVENTS {
            for e in *events {
                assert_eq!(*e, e.to_uppercase());
                assert!(seen.insert(*e), "{e} listed twice");
            }
        }
    }

    #[test]
    fn the_routing_table_sends_every_bound_event_to_its_family() {
        for (family, events) in BITRIX24_EVENTS {
            for e in *events {
                assert_eq!(
                    crate::routing::family_of(crate::event::Source::Bitrix24, e),
                    Some(*family),
                    "{e}"
                );
            }
        }
        assert_eq!(
            crate::routing::family_of(crate::event::Source::Bitrix24, ONOFFLINEEVENT),
            Some(Family::App)
        );
    }

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(family_of_bound_event("onCrmDealUpdate"), Some(Family::Deal));
        assert_eq!(
            family_of_bound_event("ONCRMDYNAMICITEMUPDATE_31"),
            Some(Family::Invoice)
        );
        assert_eq!(family_of_bound_event("ONCRMDEALX"), None);
        assert!(bitrix24_events(Family::Document).is_empty());
    }
}
