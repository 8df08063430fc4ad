//! Which destinations the store said were enabled a moment ago, so `dispatch` asks the store
//! (`DestinationStatus::disabled`, a DynamoDB read on AWS, a SQLite read locally) about a
//! destination once a second instead of before every POST: under load that read was 4% of
//! the consumers' CPU.
//!
//! Only "enabled" is remembered. A destination disabled by this process is forgotten at once
//! (`forget`); one disabled by another process (another consumer instance) is POSTed to for
//! at most `REMEMBER_FOR` more, answers 410 again and is disabled and parked as before. A
//! destination the user enables again is seen at once, since "disabled" is never remembered.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an "enabled" answer stands in for the store's.
const REMEMBER_FOR: Duration = Duration::from_secs(1);
/// Destinations remembered at most; past it the memory starts over (routes name a handful).
const MAX_DESTINATIONS: usize = 1024;

#[derive(Default)]
pub(super) struct EnabledDestinations {
    answered_at: Mutex<HashMap<String, Instant>>,
}

impl EnabledDestinations {
    /// Whether the store said `url` was enabled less than `REMEMBER_FOR` before `now`.
    pub(super) fn recently_enabled(&self, url: &str, now: Instant) -> bool {
        self.lock()
            .get(url)
            .is_some_and(|at| now.saturating_duration_since(*at) < REMEMBER_FOR)
    }

    /// The store just said `url` is enabled.
    pub(super) fn remember(&self, url: &str, now: Instant) {
        let mut answered_at = self.lock();
        if answered_at.len() >= MAX_DESTINATIONS && !answered_at.contains_key(url) {
            answered_at.clear();
        }
        answered_at.insert(url.to_string(), now);
    }

    /// `url` is being disabled: the next delivery asks the store.
    pub(super) fn forget(&self, url: &str) {
        self.lock().remove(url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.answered_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enabled_answer_stands_for_a_second_and_a_disable_ends_it() {
        let memory = EnabledDestinations::default();
        let t0 = Instant::now();
        let url = "https://dest.example/hook";
        assert!(!memory.recently_enabled(url, t0), "never asked");
        memory.remember(url, t0);
        assert!(memory.recently_enabled(url, t0 + Duration::from_millis(999)));
        assert!(
            !memory.recently_enabled(url, t0 + REMEMBER_FOR),
            "asks again"
        );
        assert!(!memory.recently_enabled("https://other.example/", t0));
        memory.remember(url, t0);
        memory.forget(url);
        assert!(!memory.recently_enabled(url, t0));
    }

    #[test]
    fn the_memory_is_bounded() {
        let memory = EnabledDestinations::default();
        let t0 = Instant::now();
        for n in 0..=MAX_DESTINATIONS {
            memory.remember(&format!("https://d{n}.example/"), t0);
        }
        assert_eq!(memory.lock().len(), 1, "started over at the bound");
        assert!(memory.recently_enabled(&format!("https://d{MAX_DESTINATIONS}.example/"), t0));
    }
}
