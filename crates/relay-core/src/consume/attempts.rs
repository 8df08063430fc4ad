//! The consumer's side of the attempt log: each stage that decides an event's fate (enrich,
//! dispatch, settle) writes one typed line, so `relay attempts` can say why an event did not
//! arrive. A line that cannot be stored only warns: bookkeeping never changes a fate.

use super::Consumer;
use crate::ports::{Attempt, AttemptOutcome};

/// The `destination` of a line about the CRM fetch, before any destination is chosen.
pub(super) const CRM: &str = "crm";
/// The `destination` of a line about an event that goes nowhere (skipped, unmatched, parked
/// for want of a destination).
pub(super) const NOWHERE: &str = "-";
/// The `destination` of an event written to `relay serve`'s outbox.
pub(super) const OUTBOX: &str = "outbox";

/// One attempt-log line as a stage writes it: what happened (`outcome`), where, and why.
pub(super) struct AttemptLine<'a> {
    event_id: &'a str,
    at_ms: i64,
    destination: &'a str,
    outcome: AttemptOutcome,
    route: Option<&'a str>,
    status: Option<u16>,
    latency_ms: u64,
    error: Option<String>,
}

impl<'a> AttemptLine<'a> {
    /// `destination`: a redacted URL (`redact_url`), or [`CRM`], [`NOWHERE`], [`OUTBOX`].
    pub(super) fn new(
        event_id: &'a str,
        at_ms: i64,
        destination: &'a str,
        outcome: AttemptOutcome,
    ) -> Self {
        AttemptLine {
            event_id,
            at_ms,
            destination,
            outcome,
            route: None,
            status: None,
            latency_ms: 0,
            error: None,
        }
    }

    pub(super) fn because(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    pub(super) fn on_route(mut self, route: Option<&'a str>) -> Self {
        self.route = route;
        self
    }

    /// The destination's answer: its status (`None`: it did not answer) and how long it took.
    pub(super) fn answered(mut self, status: Option<u16>, latency_ms: u64) -> Self {
        self.status = status;
        self.latency_ms = latency_ms;
        self
    }

    fn into_attempt(self) -> Attempt {
        Attempt {
            event_id: self.event_id.to_string(),
            at_ms: self.at_ms,
            destination: self.destination.to_string(),
            status: self.status,
            latency_ms: self.latency_ms,
            outcome: self.outcome,
            error: self.error,
            route: self.route.map(str::to_string),
        }
    }
}

impl Consumer {
    pub(super) async fn record(&self, line: AttemptLine<'_>) {
        let attempt = line.into_attempt();
        if let Err(e) = self.ports.attempts.record(&attempt).await {
            tracing::warn!(event_id = %attempt.event_id, error = %e, "attempt not recorded");
        }
    }
}
