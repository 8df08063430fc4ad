//! The safety net behind online delivery: Bitrix24 never resends a lost call, but it keeps an
//! offline-event log. The poller drains it per portal (`event.offline.get` with `clear=0`),
//! queues each record as the envelope ingress would have built, then clears what was queued.
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
//! 3. **What is left**: a second boundary falling between Bitrix24's two stamps gives two
//!    ids, and both are forwarded (distinct `webhook-id`s; the second with `changes: []`, as
//!    the first stored the same state as snapshot). The consumer could drop such a forward
//!    (entity equal to the snapshot, same event name as the one that produced it), but that
//!    needs the snapshot to keep its event name; it does not do so yet (see the lifecycle
//!    report).
//!
//! Records are cleared only after `Queue::send` returned (the event is durable), so a crash
//! between the two re-reads the page on the next run: the poller always asks with the same
//! `process_id` for a portal, and `event.offline.get` re-selects a process's uncleared records.

use crate::catalogue;
use crate::error::{EnrichError, StoreError};
use crate::event::{envelope_id, rfc3339_seconds, Family, RelayEvent, Source, ENVELOPE_VERSION};
use crate::lifecycle::install::{text_at, OfflineWake};
use crate::parse::bitrix24::parse_bitrix24;
use crate::ports::{Bitrix24Rest, Queue, TokenStore};
use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

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

/// Why one offline record could not become an envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordRejected {
    #[error("record has no EVENT_NAME")]
    NoEventName,
    #[error("event {0} is in no family")]
    UnknownEvent(String),
    #[error("event {0} carries no entity id")]
    NoEntityId(String),
    #[error("record cannot be read as an event: {0}")]
    Unreadable(String),
}

/// Drains the offline-event log of portals onto the queue. Every call goes through
/// `Bitrix24Rest`, so the per-portal rate limiter and token refresh apply.
pub struct OfflinePoller {
    rest: Arc<dyn Bitrix24Rest>,
    queue: Arc<dyn Queue>,
    page_size: u32,
    max_pages: u32,
}

impl OfflinePoller {
    pub fn new(rest: Arc<dyn Bitrix24Rest>, queue: Arc<dyn Queue>) -> Self {
        OfflinePoller {
            rest,
            queue,
            page_size: DEFAULT_PAGE_SIZE,
            max_pages: DEFAULT_MAX_PAGES,
        }
    }

    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    pub fn with_max_pages(mut self, max_pages: u32) -> Self {
        self.max_pages = max_pages.max(1);
        self
    }

    /// Every portal in the token store (app mode), one after another; one failing portal does
    /// not stop the others.
    pub async fn poll_all(
        &self,
        tokens: &dyn TokenStore,
        now: SystemTime,
    ) -> Result<Vec<(String, Result<PollReport, PollError>)>, PollError> {
        let mut results = Vec::new();
        for portal in tokens.list().await? {
            let portal = PortalRef {
                member_id: portal.member_id,
                domain: Some(portal.domain).filter(|d| !d.is_empty()),
            };
            let outcome = self.poll_portal(&portal, now).await;
            match &outcome {
                Ok(report) => {
                    tracing::info!(portal = %portal.member_id, enqueued = report.enqueued,
                    marked_error = report.marked_error, pages = report.pages, "offline events drained")
                }
                Err(e) => {
                    tracing::warn!(portal = %portal.member_id, error = %e, "offline poll failed")
                }
            }
            results.push((portal.member_id, outcome));
        }
        Ok(results)
    }

    /// One run for one portal: first the records an earlier run marked as errors (each tried
    /// once), then fresh records, page by page until the log is empty or `max_pages`.
    pub async fn poll_portal(
        &self,
        portal: &PortalRef,
        now: SystemTime,
    ) -> Result<PollReport, PollError> {
        self.require_extended_offline_events(portal).await?;
        let mut report = PollReport::default();
        for retry_errors in [true, false] {
            let phase = self.drain(portal, retry_errors, now).await?;
            report.add(&phase);
        }
        Ok(report)
    }

    /// feature-get.md: `{CODE: rest_offline_extended}` answers `{value: "Y"}` when the portal
    /// has it. A portal that does not know the method is tried as before: `event.offline.get`
    /// itself refuses `clear=0` there.
    async fn require_extended_offline_events(&self, portal: &PortalRef) -> Result<(), PollError> {
        match self
            .rest
            .call(
                &portal.member_id,
                "feature.get",
                json!({"CODE": "rest_offline_extended"}),
            )
            .await
        {
            Ok(answer) => match text_at(&answer.result, &["value"]).as_deref() {
                Some("Y") => Ok(()),
                _ => {
                    tracing::error!(portal = %portal.member_id, "PORTAL LACKS rest_offline_extended: its offline events are not drained (clear=0 is unavailable on its plan)");
                    Err(PollError::NoExtendedOfflineEvents)
                }
            },
            Err(e) => {
                tracing::debug!(portal = %portal.member_id, error = %e, "feature.get unavailable; polling as before");
                Ok(())
            }
        }
    }

    async fn drain(
        &self,
        portal: &PortalRef,
        retry_errors: bool,
        now: SystemTime,
    ) -> Result<PollReport, PollError> {
        let mut report = PollReport::default();
        let mut failed_here: HashSet<String> = HashSet::new();
        let mut process_id = stable_process_id(&portal.member_id);
        while report.pages < self.max_pages {
            let answer = self
                .call(
                    portal,
                    "event.offline.get",
                    json!({
                        "clear": 0,
                        "limit": self.page_size,
                        "process_id": process_id,
                        "error": if retry_errors { 1 } else { 0 },
                    }),
                )
                .await?;
            if let Some(given) = text_at(&answer, &["process_id"]).filter(|p| !p.is_empty()) {
                process_id = given;
            }
            let records = match answer.get("events") {
                Some(Value::Array(records)) => records.clone(),
                None | Some(Value::Null) => Vec::new(),
                Some(_) => {
                    return Err(PollError::Answer {
                        method: "event.offline.get",
                        reason: "events is not a list".into(),
                    })
                }
            };
            if records.is_empty() {
                break;
            }
            report.pages += 1;
            report.fetched += records.len();
            // A retry page holding only records that already failed in this run means the
            // rest of the error log is failing too: leave it for the next run.
            let all_failed_before = records
                .iter()
                .all(|r| text_at(r, &["MESSAGE_ID"]).is_some_and(|m| failed_here.contains(&m)));

            let mut cleared_ids = Vec::new();
            let mut failed_message_ids = Vec::new();
            for record in &records {
                let record_id = text_at(record, &["ID"]);
                let message_id = text_at(record, &["MESSAGE_ID"]);
                let outcome = if all_failed_before {
                    Err("already failed in this run".to_string())
                } else {
                    match offline_record_envelope(
                        &portal.member_id,
                        portal.domain.as_deref(),
                        record,
                        now,
                    ) {
                        Ok(envelope) => self
                            .queue
                            .send(&envelope)
                            .await
                            .map_err(|e| format!("queue: {e}")),
                        Err(rejected) => Err(rejected.to_string()),
                    }
                };
                match outcome {
                    Ok(()) => {
                        report.enqueued += 1;
                        if let Some(id) = record_id {
                            cleared_ids.push(id);
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(portal = %portal.member_id, record = ?record_id, %reason,
                            "offline record not queued; marking it for event.offline.error");
                        if let Some(m) = message_id {
                            failed_here.insert(m.clone());
                            failed_message_ids.push(m);
                        }
                    }
                }
            }
            if !cleared_ids.is_empty() {
                self.call(
                    portal,
                    "event.offline.clear",
                    json!({"process_id": process_id, "id": cleared_ids}),
                )
                .await?;
                report.cleared += cleared_ids.len();
            }
            if !failed_message_ids.is_empty() {
                self.call(
                    portal,
                    "event.offline.error",
                    json!({"process_id": process_id, "message_id": failed_message_ids}),
                )
                .await?;
                report.marked_error += failed_message_ids.len();
            }
            if all_failed_before {
                break;
            }
        }
        Ok(report)
    }

    async fn call(
        &self,
        portal: &PortalRef,
        method: &'static str,
        params: Value,
    ) -> Result<Value, PollError> {
        self.rest
            .call(&portal.member_id, method, params)
            .await
            .map(|answer| answer.result)
            .map_err(|source| PollError::Rest { method, source })
    }
}

/// The same `process_id` on every run for a portal, so a run that died between
/// `event.offline.get` and `event.offline.clear` gets its hidden records back on the next.
pub fn stable_process_id(member_id: &str) -> String {
    let digest = Sha256::digest(format!("crm-relay offline poller {member_id}").as_bytes());
    hex::encode(&digest[..16])
}

/// The envelope ingress would have built from the online POST of the same change (see the
/// module docs for why the ids line up).
pub fn offline_record_envelope(
    member_id: &str,
    domain: Option<&str>,
    record: &Value,
    now: SystemTime,
) -> Result<RelayEvent, RecordRejected> {
    let event = text_at(record, &["EVENT_NAME"])
        .filter(|e| !e.is_empty())
        .ok_or(RecordRejected::NoEventName)?;
    let data = match record.get("EVENT_DATA") {
        Some(Value::Object(_)) => as_form_strings(&record["EVENT_DATA"]),
        _ => json!({}),
    };
    // The same catalogue entry ingress would pick (a base dynamic-item name by its type).
    let entry = catalogue::resolve(&event, &data)
        .map_err(|_| RecordRejected::UnknownEvent(event.to_ascii_uppercase()))?;
    let family = entry.family;
    // Ingress's own parser reads the record as if it had been posted, so the event name and
    // the entity id come out exactly as for the online call.
    let mut posted = serde_json::Map::new();
    posted.insert("event".into(), json!(event));
    posted.insert("data".into(), data.clone());
    posted.insert("auth".into(), json!({"member_id": member_id}));
    let parsed =
        parse_bitrix24(&posted).map_err(|e| RecordRejected::Unreadable(format!("{event}: {e}")))?;
    let (event, entity_id) = (parsed.event, parsed.entity_id);
    if family != Family::App && entity_id.is_none() {
        return Err(RecordRejected::NoEntityId(event));
    }
    let ts = text_at(record, &["TIMESTAMP_X"])
        .and_then(|t| parse_bitrix_timestamp(&t))
        .unwrap_or_else(|| {
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    Ok(RelayEvent {
        v: ENVELOPE_VERSION,
        id: envelope_id(Source::Bitrix24, member_id, &event, &data, ts),
        source: Source::Bitrix24,
        portal: member_id.to_string(),
        domain: domain.map(str::to_string),
        family,
        entity_type: Some(entry.entity_type),
        event,
        entity_id,
        ts,
        received_at: rfc3339_seconds(now),
        data,
    })
}

/// JSON as PHP's `http_build_query` would have sent it: every scalar a string.
fn as_form_strings(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), as_form_strings(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_form_strings).collect()),
        Value::String(s) => Value::String(s.clone()),
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(if *b { "1" } else { "0" }.to_string()),
        Value::Null => Value::String(String::new()),
    }
}

/// `TIMESTAMP_X` as Bitrix24 writes it, `2024-07-18T12:32:31+02:00`, to Unix seconds.
pub fn parse_bitrix_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, rest) = text.split_once('T').or_else(|| text.split_once(' '))?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset_secs) = if let Some(clock) = rest.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (clock, offset) = rest.split_at(pos);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let mut hm = offset[1..].split(':');
        let oh: i64 = hm.next()?.parse().ok()?;
        let om: i64 = hm.next().unwrap_or("0").parse().ok()?;
        (clock, sign * (oh * 3600 + om * 60))
    } else {
        (rest, 0)
    };
    let mut c = clock.split(':');
    let (hh, mm): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let ss: i64 = c.next().unwrap_or("0").split('.').next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `relay serve`'s wake-up: ONOFFLINEEVENT notifies the poller loop, which polls at once.
pub struct NotifyWake(pub Arc<tokio::sync::Notify>);

#[async_trait]
impl OfflineWake for NotifyWake {
    async fn wake(&self, member_id: &str) {
        let _ = member_id;
        self.0.notify_one();
    }
}

/// Lambda's wake-up: the app function polls that portal before it answers (a Lambda is
/// frozen after its reply, so nothing may run after it). Bounded by the poller's page limit.
pub struct InlinePollWake {
    pub poller: Arc<OfflinePoller>,
    pub tokens: Arc<dyn TokenStore>,
}

#[async_trait]
impl OfflineWake for InlinePollWake {
    async fn wake(&self, member_id: &str) {
        let domain = match self.tokens.get(member_id).await {
            Ok(Some(t)) => Some(t.domain).filter(|d| !d.is_empty()),
            _ => None,
        };
        let portal = PortalRef {
            member_id: member_id.to_string(),
            domain,
        };
        if let Err(e) = self.poller.poll_portal(&portal, SystemTime::now()).await {
            tracing::warn!(portal = %member_id, error = %e, "offline poll on ONOFFLINEEVENT failed; the schedule retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_offsets_are_unix_seconds() {
        assert_eq!(parse_bitrix_timestamp("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T12:32:31+02:00"),
            Some(1_721_298_751)
        );
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T10:32:31Z"),
            Some(1_721_298_751)
        );
        assert_eq!(
            parse_bitrix_timestamp("2024-07-18T07:32:31-03:00"),
            Some(1_721_298_751)
        );
        assert_eq!(parse_bitrix_timestamp("yesterday"), None);
        assert_eq!(parse_bitrix_timestamp("2024-13-18T07:32:31Z"), None);
    }

    #[test]
    fn offline_record_gives_the_online_envelope_id() {
        let record = json!({"ID": "9", "TIMESTAMP_X": "2026-11-22T10:00:00+00:00",
            "EVENT_NAME": "onCrmDealUpdate", "EVENT_DATA": {"FIELDS": {"ID": 7405}},
            "EVENT_ADDITIONAL": {"user_id": 1}, "MESSAGE_ID": "abc"});
        let ev =
            offline_record_envelope("m1", Some("x.bitrix24.ru"), &record, SystemTime::UNIX_EPOCH)
                .unwrap();
        let online_data = json!({"FIELDS": {"ID": "7405"}});
        let ts = parse_bitrix_timestamp("2026-11-22T10:00:00+00:00").unwrap();
        assert_eq!(
            ev.id,
            envelope_id(Source::Bitrix24, "m1", "ONCRMDEALUPDATE", &online_data, ts)
        );
        assert_eq!(ev.family, Family::Deal);
        assert_eq!(ev.entity_id.as_deref(), Some("7405"));
        assert_eq!(ev.data, online_data);
    }

    #[test]
    fn records_that_cannot_be_routed_are_rejected() {
        let unknown = json!({"EVENT_NAME": "ONSOMETHING", "EVENT_DATA": {"FIELDS": {"ID": 1}}});
        assert_eq!(
            offline_record_envelope("m", None, &unknown, SystemTime::UNIX_EPOCH).unwrap_err(),
            RecordRejected::UnknownEvent("ONSOMETHING".into())
        );
        let no_id = json!({"EVENT_NAME": "ONCRMLEADADD", "EVENT_DATA": false});
        assert_eq!(
            offline_record_envelope("m", None, &no_id, SystemTime::UNIX_EPOCH).unwrap_err(),
            RecordRejected::NoEntityId("ONCRMLEADADD".into())
        );
        // on-crm-address-register.md: no FIELDS.ID; the composite key names it.
        let address = json!({"EVENT_NAME": "ONCRMADDRESSREGISTER", "EVENT_DATA": {"FIELDS": {
            "TYPE_ID": 1, "ENTITY_TYPE_ID": 8, "ENTITY_ID": 3}}});
        let ev = offline_record_envelope("m", None, &address, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(ev.entity_id.as_deref(), Some("1-8-3"));
        assert_eq!(ev.entity_type, Some(crate::catalogue::EntityType::Address));
        let task = json!({"EVENT_NAME": "ONTASKUPDATE", "EVENT_DATA": {"FIELDS_AFTER": {"ID": 5}, "FIELDS_BEFORE": "undefined"}});
        let ev = offline_record_envelope("m", None, &task, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            (ev.family, ev.entity_id.as_deref()),
            (Family::Activity, Some("5"))
        );
    }
}
