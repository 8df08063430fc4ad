//! The Bitrix24 event names `relay bind` registers, per family: a view of the event catalogue
//! (`catalogue::CATALOGUE`, entries with `bind`), so the offline queue only ever holds names
//! the catalogue knows how to route and read.

use crate::catalogue::{self, CATALOGUE};
use crate::event::Family;

/// Tells the poller that offline records are waiting; bound online to the app family's URL
/// when offline events are enabled.
pub const ONOFFLINEEVENT: &str = "ONOFFLINEEVENT";

/// The events bound for one family, upper case (empty for families Bitrix24 has no events for).
pub fn bitrix24_events(family: Family) -> Vec<&'static str> {
    catalogue::bound_events(family).collect()
}

/// Families with at least one bindable Bitrix24 event, in `Family::ALL` order.
pub fn bound_families() -> impl Iterator<Item = Family> {
    Family::ALL
        .into_iter()
        .filter(|f| CATALOGUE.iter().any(|e| e.bind && e.family == *f))
}

/// How many online bindings one full plan has (every bindable event once).
pub fn bindable_count() -> usize {
    CATALOGUE.iter().filter(|e| e.bind).count()
}

/// The family of a bindable event name, compared case-insensitively (Bitrix24 upper-cases
/// names on bind but its own samples use camel case).
pub fn family_of_bound_event(event: &str) -> Option<Family> {
    catalogue::entry(event).filter(|e| e.bind).map(|e| e.family)
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
    fn the_routing_table_sends_every_bound_event_to_its_family() {
        for family in bound_families() {
            for e in bitrix24_events(family) {
                assert_eq!(
                    crate::routing::family_of(crate::event::Source::Bitrix24, e),
                    Some(family),
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
        // on-crm-requisite-user-field-update.md: user-field events are bound too.
        assert_eq!(
            family_of_bound_event("onCrmRequisiteUserFieldUpdate"),
            Some(Family::Requisite)
        );
        assert_eq!(family_of_bound_event("ONCRMDEALX"), None);
        assert_eq!(family_of_bound_event("ONAPPINSTALL"), None);
        assert!(bitrix24_events(Family::Document).is_empty());
    }
}
