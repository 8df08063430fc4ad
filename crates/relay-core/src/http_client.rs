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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback server that answers every connection with `head` and then `body_len` bytes.
    async fn answering(head: &'static str, body_len: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = body_len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn answers_past_the_cap_are_abandoned() {
        let http = outbound_client().unwrap();
        // Announced too large: refused before reading.
        let url = answering("HTTP/1.1 200 OK\r\nContent-Length: 9437184\r\n\r\n", 0).await;
        let response = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read_capped(response, MAX_ANSWER_BYTES).await,
            Err(AnswerError::TooLarge { .. })
        ));
        // No length, read until close: stopped at the cap.
        let url = answering(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
            2 * 1024 * 1024,
        )
        .await;
        let response = http.get(&url).send().await.unwrap();
        assert!(matches!(
            read_capped(response, 1024 * 1024).await,
            Err(AnswerError::TooLarge { .. })
        ));
        let url = answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 0).await;
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(read_json(response).await.unwrap(), serde_json::json!({}));
    }

    #[tokio::test]
    async fn redirects_are_returned_not_followed() {
        let http = outbound_client().unwrap();
        let url = answering(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n",
            0,
        )
        .await;
        let response = http.post(&url).body("signed").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 307);
    }
}
