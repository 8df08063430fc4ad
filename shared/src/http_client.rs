//! The one way outbound HTTP clients are built (CRM REST, OAuth, SalesMan, destinations) and
//! their answers read: no redirect is ever followed (a 307 would carry a signed body or a token
//! to whatever host `Location` names), every answer is read with a size cap and a deadline.

use std::time::Duration;

/// Largest answer body read from a CRM, the OAuth server or a destination.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// Connection set-up; per-request timeouts bound the rest.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for a whole exchange when the caller sets none of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client every outbound call uses.
pub fn outbound_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DEFAULT_TIMEOUT)
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("answer larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the answer failed: {0}")]
    Read(String),
    #[error("answer is not JSON")]
    NotJson,
}

/// The body, read chunk by chunk and abandoned as soon as it passes `limit`.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, AnswerError> {
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(AnswerError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| AnswerError::Read(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(AnswerError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON answer of at most [`MAX_ANSWER_BYTES`].
pub async fn read_json(response: reqwest::Response) -> Result<serde_json::Value, AnswerError> {
    let body = read_capped(response, MAX_ANSWER_BYTES).await?;
    serde_json::from_slice(&body).map_err(|_| AnswerError::NotJson)
}
