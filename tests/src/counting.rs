//! A counting layer for the cost model: an SDK interceptor that records every DynamoDB and
//! SQS call a client makes on the wire (retries included), with the request and response
//! JSON, so a test can assert calls per event and `scripts/cost.py` can price them.

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde_json::Value;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// One call as it went over the wire.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Call {
    /// `dynamodb` or `sqs`.
    pub service: String,
    /// The operation, from the request's `X-Amz-Target` (`PutItem`, `SendMessage`, …).
    pub operation: String,
    pub request: Value,
    /// `None` until the answer is read (or when the call failed on the way).
    pub response: Option<Value>,
    pub status: Option<u16>,
    /// What the test was doing (`ingest`, `consumer`, `poller`, …) when the call was made.
    pub phase: String,
}

impl Call {
    /// The partition key the call names (`Key.pk` or `Item.pk`), if any.
    pub fn pk(&self) -> Option<&str> {
        ["Key", "Item"]
            .iter()
            .find_map(|k| self.request.get(k)?.get("pk")?.get("S")?.as_str())
            .or_else(|| {
                self.request
                    .get("ExpressionAttributeValues")?
                    .get(":pk")?
                    .get("S")?
                    .as_str()
            })
    }
}

/// The calls of every client built with [`CallLog::dynamodb`] or [`CallLog::sqs`].
#[derive(Clone, Default)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<Call>>>,
    phase: Arc<Mutex<String>>,
}

#[derive(Clone, Debug)]
struct CallIndex(usize);

impl Storable for CallIndex {
    type Storer = StoreReplace<Self>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CallLog {
    pub fn new() -> Self {
        CallLog::default()
    }

    /// Calls from now on are tagged `phase`.
    pub fn set_phase(&self, phase: &str) {
        *lock(&self.phase) = phase.to_string();
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// The calls tagged `phase`.
    pub fn in_phase(&self, phase: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.phase == phase)
            .collect()
    }

    /// A DynamoDB client with the functions' configuration whose calls are recorded here.
    pub fn dynamodb(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk)
                .interceptor(Counting(self.clone()))
                .build(),
        )
    }

    /// An SQS client with the functions' configuration whose calls are recorded here.
    pub fn sqs(&self, sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(sdk)
                .interceptor(Counting(self.clone()))
                .build(),
        )
    }
}

#[derive(Debug)]
struct Counting(CallLog);

impl std::fmt::Debug for CallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallLog({} calls)", lock(&self.calls).len())
    }
}

fn json_of(bytes: Option<&[u8]>) -> Value {
    bytes
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(Value::Null)
}

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "CallCounting"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown.unknown");
        let (service, operation) = target.split_once('.').unwrap_or(("unknown", target));
        let service = if service.starts_with("DynamoDB") {
            "dynamodb"
        } else if service.starts_with("AmazonSQS") {
            "sqs"
        } else {
            service
        };
        let call = Call {
            service: service.to_string(),
            operation: operation.to_string(),
            request: json_of(request.body().bytes()),
            response: None,
            status: None,
            phase: lock(&self.0.phase).clone(),
        };
        let mut calls = lock(&self.0.calls);
        calls.push(call);
        cfg.interceptor_state()
            .store_put(CallIndex(calls.len() - 1));
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(CallIndex(index)) = cfg.load::<CallIndex>().cloned() {
            let response = context.response();
            if let Some(call) = lock(&self.0.calls).get_mut(index) {
                call.status = Some(response.status().as_u16());
                call.response = Some(json_of(response.body().bytes()));
            }
        }
        Ok(())
    }
}
