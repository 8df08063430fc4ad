//! SalesMan CRM API v3 client: the consumer's way to read a client, person or deal.
//! `POST <crm>/developer/v3/<kind>/info` with `login`/`apikey` headers answers `{"data":{…}}`
//! or `{"result":"Error","error":{"code","text"}}`.

use crate::config::RelayConfig;
use crate::error::EnrichError;
use crate::secret::Secret;
use serde_json::{json, Value};
use std::time::Duration;

pub struct SalesmanClient {
    http: reqwest::Client,
    base_url: String,
    login: String,
    apikey: Secret,
    timeout: Duration,
}

impl SalesmanClient {
    /// `None` unless URL, login and API key are all configured.
    pub fn from_config(http: reqwest::Client, config: &RelayConfig) -> Option<Self> {
        Some(SalesmanClient {
            http,
            base_url: config
                .salesman_url
                .as_ref()?
                .trim_end_matches('/')
                .to_string(),
            login: config.salesman_login.clone()?,
            apikey: config.salesman_apikey.clone()?,
            timeout: Duration::from_secs(20),
        })
    }

    /// `kind`: `client`, `person` or `deal`; `key`: `clid`, `pid` or `did`.
    /// `Err(NotFound)` when the record is gone.
    pub async fn info(&self, kind: &str, key: &str, id: &str) -> Result<Value, EnrichError> {
        // SalesMan ids are integers; send a number where the id is one, as its own forms do.
        let id_value = id.parse::<i64>().map(Value::from).unwrap_or(json!(id));
        let response = self
            .http
            .post(format!("{}/developer/v3/{kind}/info", self.base_url))
            .timeout(self.timeout)
            .header("login", &self.login)
            .header("apikey", self.apikey.expose())
            .json(&json!({ key: id_value }))
            .send()
            .await
            .map_err(|_| EnrichError::Transient {
                reason: format!("salesman {kind}/info: request failed"),
                retry_after: None,
            })?;
        let status = response.status().as_u16();
        let answer: Value = match crate::http_client::read_json(response).await {
            Ok(v) => v,
            Err(_) if status >= 500 || status == 429 => {
                return Err(EnrichError::Transient {
                    reason: format!("salesman {kind}/info: {status}"),
                    retry_after: None,
                })
            }
            Err(_) => {
                return Err(EnrichError::Permanent(format!(
                    "salesman {kind}/info: answer {status} is not JSON"
                )))
            }
        };
        if answer.get("result").and_then(Value::as_str) == Some("Error") {
            let code = answer
                .pointer("/error/code")
                .map(|c| c.to_string().trim_matches('"').to_string())
                .unwrap_or_default();
            let text = answer
                .pointer("/error/text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let lower = text.to_lowercase();
            return Err(
                if code == "404" || lower.contains("not found") || lower.contains("не найден")
                {
                    EnrichError::NotFound
                } else if status >= 500 {
                    EnrichError::Transient {
                        reason: format!("salesman {kind}/info: {status} error {code}"),
                        retry_after: None,
                    }
                } else {
                    EnrichError::Permanent(format!("salesman {kind}/info: error {code}"))
                },
            );
        }
        if status >= 500 || status == 429 {
            return Err(EnrichError::Transient {
                reason: format!("salesman {kind}/info: {status}"),
                retry_after: None,
            });
        }
        match answer.get("data") {
            Some(Value::Null) | None if status == 404 => Err(EnrichError::NotFound),
            Some(data) if (200..300).contains(&status) => Ok(data.clone()),
            _ => Err(EnrichError::Permanent(format!(
                "salesman {kind}/info: answer {status} has no data"
            ))),
        }
    }
}
