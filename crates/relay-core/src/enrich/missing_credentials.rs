//! The warning for events of a portal with no CRM credentials, at most once a minute per
//! portal. Such a portal (never installed, no webhook URL configured) forwards every event
//! without its entity; a line per event buried every other line, and under load formatting
//! them was 2.6% of the consumers' CPU.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often one portal's warning repeats while its events keep coming.
const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// Portals remembered at most. Past it the memory starts over, so a warning may repeat
/// early; it never grows without bound.
const MAX_PORTALS: usize = 1024;

/// When each portal's warning was last logged, and how many events went without one since.
#[derive(Default)]
pub(super) struct MissingCredentialsLog {
    portals: Mutex<HashMap<String, LastWarning>>,
}

struct LastWarning {
    at: Instant,
    events_since: u64,
}

impl MissingCredentialsLog {
    /// Logs the warning for `what` (the portal as `EnrichError::NoCredentials` names it, in
    /// the log field it always had) unless it was logged less than a minute ago; a repeat
    /// says how many of the portal's events went out without a line in between.
    pub(super) fn warn(&self, what: &str) {
        if let Some(events_since) = self.due(what, Instant::now()) {
            tracing::warn!(%what, events_since_last_warning = events_since,
                "no CRM credentials for this portal; forwarding without entity");
        }
    }

    /// `Some(events since the last line)` when a line is due at `now`.
    fn due(&self, portal: &str, now: Instant) -> Option<u64> {
        let mut portals = self.portals.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = portals.get_mut(portal) {
            if now.saturating_duration_since(last.at) < REPEAT_EVERY {
                last.events_since += 1;
                return None;
            }
            let events_since = last.events_since;
            *last = LastWarning {
                at: now,
                events_since: 0,
            };
            return Some(events_since);
        }
        if portals.len() >= MAX_PORTALS {
            portals.clear();
        }
        let first = LastWarning {
            at: now,
            events_since: 0,
        };
        portals.insert(portal.to_string(), first);
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portal_is_warned_about_once_a_minute_with_the_events_in_between() {
        let log = MissingCredentialsLog::default();
        let start = Instant::now();
        assert_eq!(log.due("bitrix24 portal a", start), Some(0));
        assert_eq!(
            log.due("bitrix24 portal a", start + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.due("bitrix24 portal a", start + Duration::from_secs(59)),
            None
        );
        // Another portal has a warning of its own.
        assert_eq!(
            log.due("bitrix24 portal b", start + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            log.due("bitrix24 portal a", start + Duration::from_secs(60)),
            Some(2)
        );
        assert_eq!(
            log.due("bitrix24 portal a", start + Duration::from_secs(61)),
            None
        );
    }

    #[test]
    fn the_memory_of_portals_is_bounded() {
        let log = MissingCredentialsLog::default();
        let now = Instant::now();
        for n in 0..MAX_PORTALS + 10 {
            assert_eq!(log.due(&format!("portal {n}"), now), Some(0));
        }
        let remembered = log.portals.lock().map(|p| p.len()).unwrap_or(usize::MAX);
        assert!(remembered <= MAX_PORTALS, "{remembered} portals remembered");
    }
}
