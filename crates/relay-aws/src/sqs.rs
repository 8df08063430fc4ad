//! The ingress queue on SQS FIFO: ingress sends envelopes (group = entity, dedup id =
//! envelope id), the consumer delays retries with ChangeMessageVisibility and parks permanent
//! failures in the FIFO DLQ, and `relay replay` moves dead letters back.

use super::store_error;
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use relay_core::clock::now_unix_ms as unix_ms_now;
use relay_core::error::StoreError;
use relay_core::event::RelayEvent;
use relay_core::ports::{DeadLetter, OutgoingMessage, Queue, QueueMessage, RedriveFilter};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Message attribute on a parked message: why it was parked.
pub const REASON_ATTRIBUTE: &str = "relay_reason";
/// Message attribute on a parked message: when, in Unix milliseconds.
pub const PARKED_AT_ATTRIBUTE: &str = "relay_parked_at_ms";
/// SQS caps a visibility timeout at 12 hours.
const MAX_VISIBILITY_SECS: u64 = 12 * 60 * 60;
/// SQS message attributes are small; a reason is a short human line, not a body.
const MAX_REASON_CHARS: usize = 512;
/// How long a redrive keeps DLQ messages it looked at but did not move hidden; they are made
/// visible again at the end. Also bounds one redrive pass.
const REDRIVE_HOLD_SECS: i32 = 120;
/// Receives of 10 messages per redrive: 100,000 messages at most, so the loop is bounded.
const MAX_REDRIVE_ROUNDS: usize = 10_000;

pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: Option<String>,
}

impl SqsQueue {
    pub fn new(client: Client, queue_url: impl Into<String>, dlq_url: Option<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
            dlq_url,
        }
    }

    /// Builds the SQS client from a shared SDK configuration (see [`super::sdk_config`]).
    pub fn from_conf(
        config: &aws_config::SdkConfig,
        queue_url: impl Into<String>,
        dlq_url: Option<String>,
    ) -> Self {
        SqsQueue::new(Client::new(config), queue_url, dlq_url)
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn dlq_url(&self) -> Option<&str> {
        self.dlq_url.as_deref()
    }

    fn require_dlq(&self) -> Result<&str, StoreError> {
        self.dlq_url
            .as_deref()
            .ok_or_else(|| StoreError::Unavailable("no dead-letter queue configured".into()))
    }

    /// Receives up to `max` (≤ 10) messages from the main queue, hidden for `visibility`.
    /// Lambda's event source mapping does this on AWS; `relay` and tests use it directly.
    pub async fn receive(
        &self,
        max: i32,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .visibility_timeout(visibility_secs(visibility))
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| store_error("sqs ReceiveMessage", e))?;
        Ok(out.messages().iter().map(to_queue_message).collect())
    }

    /// Done with a message: removes it from the main queue.
    pub async fn delete(&self, receipt: &str) -> Result<(), StoreError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| store_error("sqs DeleteMessage", e))?;
        Ok(())
    }

    /// The messages in the DLQ, oldest first per group, without removing any: each is
    /// received (hidden briefly) and made visible again at the end. A FIFO queue hands out
    /// later messages of a group only once the earlier ones are gone, so a listing shows at
    /// most one receive's worth (up to 10) per group; redrive has no such limit for the
    /// messages it moves.
    pub async fn list_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let dlq = self.require_dlq()?;
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut held = Vec::new();
        let result = async {
            for _ in 0..MAX_REDRIVE_ROUNDS {
                let messages = self.hold_dead_letters(dlq).await?;
                if messages.is_empty() {
                    break;
                }
                for message in &messages {
                    held.push(message.receipt_handle().unwrap_or_default().to_string());
                    let letter = to_dead_letter(message);
                    if !letters.iter().any(|l| l.message_id == letter.message_id) {
                        letters.push(letter);
                    }
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        self.release_held(dlq, held).await;
        result.map(|()| letters)
    }

    /// Receives up to 10 DLQ messages with their attributes, hidden for `REDRIVE_HOLD_SECS`.
    async fn hold_dead_letters(
        &self,
        dlq: &str,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .visibility_timeout(REDRIVE_HOLD_SECS)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| store_error("sqs ReceiveMessage (DLQ)", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Makes DLQ messages that a listing or redrive only looked at visible again.
    async fn release_held(&self, dlq: &str, held: Vec<String>) {
        for receipt in held {
            // Best effort: a receipt not released here reappears when its hold expires.
            let _ = self
                .client
                .change_message_visibility()
                .queue_url(dlq)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }

    /// Moves dead letters back to the main queue: all of them, those whose envelope id is in
    /// `filter.ids`, and/or those parked at or after `filter.since_ms`. Returns how many moved.
    ///
    /// Receive-and-resend, not `StartMessageMoveTask`: that task cannot select messages (ids,
    /// since) and moto does not implement it, so the tests could not hold it to anything.
    /// Each moved message keeps its group and gets a fresh deduplication id, so the main
    /// queue's 5-minute dedup window does not swallow it. Messages that do not match stay
    /// hidden until the pass ends, then are made visible again; in a FIFO DLQ a hidden message
    /// holds back the later ones of its group, so those wait for the next redrive.
    pub async fn redrive_dead_letters(&self, filter: &RedriveFilter) -> Result<usize, StoreError> {
        let dlq = self.require_dlq()?;
        let now_ms = unix_ms_now();
        let mut moved = 0;
        let mut held = Vec::new();
        let result = async {
            for _ in 0..MAX_REDRIVE_ROUNDS {
                let messages = self.hold_dead_letters(dlq).await?;
                if messages.is_empty() {
                    break;
                }
                for message in &messages {
                    let letter = to_dead_letter(message);
                    let receipt = message.receipt_handle().unwrap_or_default().to_string();
                    if !filter.selects(&letter, envelope_id_of(&letter.body).as_deref()) {
                        held.push(receipt);
                        continue;
                    }
                    self.client
                        .send_message()
                        .queue_url(&self.queue_url)
                        .message_body(&letter.body)
                        .message_group_id(group_or_default(&letter.group_id))
                        .message_deduplication_id(redrive_dedup_id(&letter, now_ms))
                        .send()
                        .await
                        .map_err(|e| store_error("sqs SendMessage (redrive)", e))?;
                    self.client
                        .delete_message()
                        .queue_url(dlq)
                        .receipt_handle(receipt)
                        .send()
                        .await
                        .map_err(|e| store_error("sqs DeleteMessage (DLQ)", e))?;
                    moved += 1;
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        // Whatever happened above, give back what was only looked at.
        self.release_held(dlq, held).await;
        result.map(|()| moved)
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, event: &RelayEvent) -> Result<(), StoreError> {
        let body = serde_json::to_string(event)
            .map_err(|e| StoreError::Corrupt(format!("envelope does not serialize: {e}")))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_group_id(event.message_group_id())
            .message_deduplication_id(event.send_deduplication_id())
            .send()
            .await
            .map_err(|e| store_error("sqs SendMessage", e))?;
        Ok(())
    }

    async fn send_message(&self, message: &OutgoingMessage) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&message.body)
            .message_group_id(&message.group_id)
            .message_deduplication_id(&message.dedup_id)
            .send()
            .await
            .map_err(|e| store_error("sqs SendMessage (fan-out)", e))?;
        Ok(())
    }

    async fn retry_after(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(visibility_secs(delay))
            .send()
            .await
            .map_err(|e| store_error("sqs ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn park_dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
    ) -> Result<(), StoreError> {
        let dlq = self.require_dlq()?;
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let reason = if reason.is_empty() {
            "unspecified".to_string()
        } else {
            reason
        };
        self.client
            .send_message()
            .queue_url(dlq)
            .message_body(&message.body)
            .message_group_id(group_or_default(&message.group_id))
            .message_deduplication_id(park_dedup_id(message))
            .message_attributes(REASON_ATTRIBUTE, string_attribute("String", reason)?)
            .message_attributes(
                PARKED_AT_ATTRIBUTE,
                string_attribute("Number", unix_ms_now().to_string())?,
            )
            .send()
            .await
            .map_err(|e| store_error("sqs SendMessage (DLQ)", e))?;
        Ok(())
    }
}

/// The SQS message id is the same on every receive of one message, so parking it twice (a
/// Lambda retry) leaves one dead letter. A message without one (not from SQS) is keyed by
/// its body.
fn park_dedup_id(message: &QueueMessage) -> String {
    if message.message_id.is_empty() || message.message_id.len() > 128 {
        hex::encode(Sha256::digest(message.body.as_bytes()))
    } else {
        message.message_id.clone()
    }
}

fn string_attribute(data_type: &str, value: String) -> Result<MessageAttributeValue, StoreError> {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .map_err(|e| StoreError::Corrupt(format!("message attribute: {e}")))
}

fn visibility_secs(delay: Duration) -> i32 {
    // Round up: a Retry-After of 1.5 s must not become a retry after 1 s.
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    secs.min(MAX_VISIBILITY_SECS) as i32
}

/// A FIFO send needs a group id; a message that somehow lost its own keeps a fixed one.
fn group_or_default(group_id: &str) -> &str {
    if group_id.is_empty() {
        "-"
    } else {
        group_id
    }
}

fn system_attribute(
    message: &aws_sdk_sqs::types::Message,
    name: MessageSystemAttributeName,
) -> Option<&str> {
    message
        .attributes()
        .and_then(|attrs| attrs.get(&name))
        .map(String::as_str)
}

fn to_queue_message(message: &aws_sdk_sqs::types::Message) -> QueueMessage {
    QueueMessage {
        message_id: message.message_id().unwrap_or_default().to_string(),
        receipt: message.receipt_handle().unwrap_or_default().to_string(),
        body: message.body().unwrap_or_default().to_string(),
        group_id: system_attribute(message, MessageSystemAttributeName::MessageGroupId)
            .unwrap_or_default()
            .to_string(),
        // Unknown counts as received before: only a known first receive goes out without a
        // dedup claim (see relay_core::consume).
        receive_count: system_attribute(
            message,
            MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .and_then(|n| n.parse().ok())
        .unwrap_or(2),
        received_at_ms: first_receive_ms(
            system_attribute(message, MessageSystemAttributeName::ApproximateReceiveCount),
            system_attribute(
                message,
                MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            ),
        ),
    }
}

/// The time of this receive, where SQS tells it: on a first receive (`ApproximateReceiveCount`
/// 1) `ApproximateFirstReceiveTimestamp` is this receive's time; on a later one it is not.
pub fn first_receive_ms(receive_count: Option<&str>, first_receive: Option<&str>) -> Option<i64> {
    match receive_count {
        Some("1") => first_receive.and_then(|t| t.parse().ok()),
        _ => None,
    }
}

/// A DLQ message as a dead letter. Messages SQS moved itself (max receives) carry no reason
/// or park time: they get a generic reason and their send time.
fn to_dead_letter(message: &aws_sdk_sqs::types::Message) -> DeadLetter {
    let user_attribute = |name: &str| {
        message
            .message_attributes()
            .and_then(|attrs| attrs.get(name))
            .and_then(|value| value.string_value())
    };
    let parked_at_ms = user_attribute(PARKED_AT_ATTRIBUTE)
        .or_else(|| system_attribute(message, MessageSystemAttributeName::SentTimestamp))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    DeadLetter {
        message_id: message.message_id().unwrap_or_default().to_string(),
        body: message.body().unwrap_or_default().to_string(),
        group_id: system_attribute(message, MessageSystemAttributeName::MessageGroupId)
            .unwrap_or_default()
            .to_string(),
        reason: user_attribute(REASON_ATTRIBUTE)
            .unwrap_or("exceeded the queue's maximum receive count")
            .to_string(),
        parked_at_ms,
    }
}

/// The envelope id inside a message body, if it is an envelope at all.
fn envelope_id_of(body: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

/// A deduplication id the main queue has not seen in the last 5 minutes, still traceable to
/// the envelope (SQS allows 128 characters).
fn redrive_dedup_id(letter: &DeadLetter, now_ms: i64) -> String {
    let base = envelope_id_of(&letter.body).unwrap_or_else(|| letter.message_id.clone());
    let mut id: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation())
        .take(100)
        .collect();
    id.push_str(&format!(".redrive.{now_ms}"));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_rounds_up_and_is_capped() {
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::from_secs(0)), 0);
        assert_eq!(visibility_secs(Duration::from_secs(60)), 60);
        assert_eq!(visibility_secs(Duration::from_secs(100_000)), 43_200);
    }

    fn letter(message_id: &str, parked_at_ms: i64) -> DeadLetter {
        DeadLetter {
            message_id: message_id.into(),
            body: String::new(),
            group_id: "g".into(),
            reason: "r".into(),
            parked_at_ms,
        }
    }

    #[test]
    fn redrive_filter_selects_by_id_and_time() {
        let all = RedriveFilter::default();
        let by_id = RedriveFilter {
            ids: vec!["env-1".into()],
            since_ms: None,
        };
        let since = RedriveFilter {
            ids: vec![],
            since_ms: Some(100),
        };
        let env1 = Some("env-1".to_string());
        assert!(all.selects(&letter("m", 0), None));
        assert!(by_id.selects(&letter("m", 0), env1.as_deref()));
        assert!(by_id.selects(&letter("env-1", 0), None));
        assert!(!by_id.selects(&letter("m", 0), None));
        assert!(since.selects(&letter("m", 100), None));
        assert!(!since.selects(&letter("m", 99), None));
    }

    #[test]
    fn parking_is_keyed_by_message_id_or_else_the_body() {
        let mut message = QueueMessage {
            message_id: "5fea7756-0ea4-451a-a703-a558b933e274".into(),
            receipt: "r".into(),
            body: "{}".into(),
            group_id: "g".into(),
            receive_count: 1,
            received_at_ms: None,
        };
        assert_eq!(park_dedup_id(&message), message.message_id);
        message.message_id.clear();
        let by_body = park_dedup_id(&message);
        assert_eq!(by_body.len(), 64);
        message.body = "{ }".into();
        assert_ne!(park_dedup_id(&message), by_body);
    }

    #[test]
    fn redrive_dedup_id_is_fresh_and_within_limits() {
        let mut l = letter("m", 0);
        l.body = format!(r#"{{"id":"{}"}}"#, "a".repeat(64));
        let id = redrive_dedup_id(&l, 1234);
        assert!(id.starts_with(&"a".repeat(64)));
        assert!(id.ends_with(".redrive.1234"));
        assert!(id.len() <= 128);
    }
}
