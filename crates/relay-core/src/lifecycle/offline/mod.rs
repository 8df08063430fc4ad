//! The safety net behind online delivery: Bitrix24 never resends a lost call, but it keeps an
//! offline-event log. The poller (`poller`) drains it per portal (`event.offline.get` with
//! `clear=0`), queues each record as the envelope ingress would have built (`envelope`), then
//! clears what was queued; ONOFFLINEEVENT wakes it (`wake`).
//!
//! # One forward for an event delivered both online and offline
//!
//! A change bound both ways arrives twice: as an online POST and as an offline record.
//!
//! 1. **The envelope ids line up.** The record becomes the envelope the online POST gave:
//!    it goes through ingress's own parser and routing table (event name upper-cased, entity
//!    id from `FIELDS`/`FIELDS_AFTER`), `data` = `EVENT_DATA` with every scalar turned into
//!    the string PHP's `http_build_query` would have sent (`7405` → `"7405"`, `true` → `"1"`,
//!    null → `""`), and `ts` = `TIMESTAMP_X` in Unix seconds. Bitrix24 stamps the online
//!    event's `ts` when it queues the call, the same second it writes the record, so both give
//!    the same [`envelope_id`]: SQS FIFO drops the second within its 5-minute window, and the
//!    consumer's dedup record (`DEDUP#<id>`, COMPLETED for days) makes it a redelivery after
//!    that: re-fetched, and forwarded only if the entity changed since (news only).
//! 2. **Coalescing keeps them lined up.** When an entity changes again before the poll, the
//!    log keeps one record stamped with the *latest* change, which is the `ts` of the latest
//!    online call: that call and the record are one envelope; the earlier calls were their own
//!    envelopes already. If the latest online call was lost, the record is the only copy and
//!    is forwarded: exactly the loss the poller exists to recover.
//! 3. **Stamps a second apart**: a second boundary falling between Bitrix24's two stamps
//!    gives two ids. The consumer's twin rule (`consume::TWIN_WINDOW_S`) forwards only the
//!    first: the second finds the entity unchanged since a delivery stamped a moment before.
//!
//! Records are cleared only after `Queue::send` returned (the event is durable), so a crash
//! between the two re-reads the page on the next run: the poller always asks with the same
//! `process_id` for a portal, and `event.offline.get` re-selects a process's uncleared records.

mod envelope;
mod poller;
mod wake;

pub use envelope::{offline_record_envelope, parse_bitrix_timestamp, RecordRejected};
pub use poller::{stable_process_id, OfflinePoller};
pub use wake::{InlinePollWake, NotifyWake};

use crate::error::{EnrichError, StoreError};

/// Records per `event.offline.get` page: Bitrix24's default and maximum useful size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Bounds one run (50 × 200 = 10,000 records); the next run continues where this one stopped.
pub const DEFAULT_MAX_PAGES: u32 = 200;

/// One portal to drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalRef {
    pub member_id: String,
    /// For the envelope's `domain`.
    pub domain: Option<String>,
}

/// What one run did for one portal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    pub pages: u32,
    pub fetched: usize,
    pub enqueued: usize,
    pub cleared: usize,
    /// Records handed to `event.offline.error`: they stay in the portal's log for the next run.
    pub marked_error: usize,
}

impl PollReport {
    fn add(&mut self, other: &PollReport) {
        self.pages += other.pages;
        self.fetched += other.fetched;
        self.enqueued += other.enqueued;
        self.cleared += other.cleared;
        self.marked_error += other.marked_error;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("Bitrix24 REST call {method} failed: {source}")]
    Rest {
        method: &'static str,
        #[source]
        source: EnrichError,
    },
    #[error("unexpected answer from {method}: {reason}")]
    Answer {
        method: &'static str,
        reason: String,
    },
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    /// offline-events.md: `clear=0` (confirm after queueing) needs `rest_offline_extended`;
    /// without it a record would be gone from the log before it is durable, so nothing is read.
    #[error("portal lacks the rest_offline_extended feature (feature.get): offline events are not drained, since clearing them before they are queued could lose them")]
    NoExtendedOfflineEvents,
}
