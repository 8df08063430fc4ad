//! The poller: per portal, `event.offline.get` page by page (`clear=0`), each record queued as
//! its envelope (`envelope`), then `event.offline.clear` for what was queued and
//! `event.offline.error` for what was not. Runs on a schedule and when `wake` asks.

use super::{
    offline_record_envelope, PollError, PollReport, PortalRef, DEFAULT_MAX_PAGES, DEFAULT_PAGE_SIZE,
};
use crate::lifecycle::install::text_at;
use crate::ports::{Bitrix24Rest, Queue, TokenStore};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// One page after queueing: the record ids to clear, the message ids to mark as errors.
#[derive(Default)]
struct QueuedPage {
    enqueued: usize,
    cleared_ids: Vec<String>,
    failed_message_ids: Vec<String>,
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

    /// One phase of a run: the error log (`retry_errors`) or fresh records, page by page.
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
            let records = self
                .fetch_page(portal, retry_errors, &mut process_id)
                .await?;
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
            let page = self
                .queue_page(portal, &records, now, all_failed_before)
                .await;
            failed_here.extend(page.failed_message_ids.iter().cloned());
            self.confirm_page(portal, &process_id, page, &mut report)
                .await?;
            if all_failed_before {
                break;
            }
        }
        Ok(report)
    }

    /// One `event.offline.get` page. Bitrix24 may name another `process_id`; later calls of
    /// the run use it.
    async fn fetch_page(
        &self,
        portal: &PortalRef,
        retry_errors: bool,
        process_id: &mut String,
    ) -> Result<Vec<Value>, PollError> {
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
            *process_id = given;
        }
        match answer.get("events") {
            Some(Value::Array(records)) => Ok(records.clone()),
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(_) => Err(PollError::Answer {
                method: "event.offline.get",
                reason: "events is not a list".into(),
            }),
        }
    }

    /// Queues each record of a page as its envelope (none when `skip`: they all failed
    /// earlier in this run); a record that is not queued is kept for `event.offline.error`.
    async fn queue_page(
        &self,
        portal: &PortalRef,
        records: &[Value],
        now: SystemTime,
        skip: bool,
    ) -> QueuedPage {
        let mut page = QueuedPage::default();
        for record in records {
            let record_id = text_at(record, &["ID"]);
            let outcome = if skip {
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
                    page.enqueued += 1;
                    page.cleared_ids.extend(record_id);
                }
                Err(reason) => {
                    tracing::warn!(portal = %portal.member_id, record = ?record_id, %reason,
                        "offline record not queued; marking it for event.offline.error");
                    page.failed_message_ids
                        .extend(text_at(record, &["MESSAGE_ID"]));
                }
            }
        }
        page
    }

    /// Clears the queued records from the portal's log (they are durable now) and hands the
    /// others to `event.offline.error`, where the next run's first phase finds them.
    async fn confirm_page(
        &self,
        portal: &PortalRef,
        process_id: &str,
        page: QueuedPage,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        report.enqueued += page.enqueued;
        if !page.cleared_ids.is_empty() {
            self.call(
                portal,
                "event.offline.clear",
                json!({"process_id": process_id, "id": page.cleared_ids}),
            )
            .await?;
            report.cleared += page.cleared_ids.len();
        }
        if !page.failed_message_ids.is_empty() {
            self.call(
                portal,
                "event.offline.error",
                json!({"process_id": process_id, "message_id": page.failed_message_ids}),
            )
            .await?;
            report.marked_error += page.failed_message_ids.len();
        }
        Ok(())
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
