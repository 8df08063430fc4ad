//! The POST itself: one already-serialised body to one destination, with the Standard
//! Webhooks headers (`signing`), a timeout, no redirects followed; the answer is read through
//! `status` and `retry`. Also how URLs appear in logs (`redact_url`).

use super::retry::parse_retry_after;
use super::signing::Signer;
use super::status::classify_status;
use crate::error::ForwardError;
use std::time::Duration;

/// One POST of an already-serialised body. `signer: None` sends no signature header (only
/// when the operator configured no secret; the consumer warns about it at start-up).
pub struct Delivery<'a> {
    pub url: &'a str,
    pub msg_id: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
    pub signer: Option<&'a Signer>,
    pub timeout: Duration,
    /// A route destination's own headers. Never one `deliver` sets itself: those are skipped,
    /// so no configuration can forge a signature or an id.
    pub headers: &'a [(String, String)],
}

/// Headers `deliver` sets itself; a route's extra headers may not replace them.
pub const RESERVED_HEADERS: [&str; 4] = [
    "content-type",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Sends one delivery. `Ok(status)` only for 2xx; the error says whether to retry.
pub async fn deliver(http: &reqwest::Client, delivery: &Delivery<'_>) -> Result<u16, ForwardError> {
    let mut request = http
        .post(delivery.url)
        .timeout(delivery.timeout)
        .header("content-type", "application/json")
        .header("webhook-id", delivery.msg_id)
        .header("webhook-timestamp", delivery.timestamp.to_string())
        .body(delivery.body.to_vec());
    for (name, value) in delivery.headers {
        if !RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    if let Some(signer) = delivery.signer {
        request = request.header(
            "webhook-signature",
            signer.signature_header(delivery.msg_id, delivery.timestamp, delivery.body),
        );
    }
    let response = request.send().await.map_err(|e| ForwardError::Retryable {
        status: None,
        retry_after: None,
        // reqwest's message names the URL, which may hold a token in its query: say only what.
        reason: if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection failed".to_string()
        } else {
            "request failed".to_string()
        },
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, crate::clock::now()));
    if (300..=399).contains(&status) {
        // Never followed: a 302 would turn the signed POST into a bodiless GET that looks
        // delivered, a 307 would send the signed body to whatever host `Location` names.
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(|l| redact_url(&resolve_location(delivery.url, l)))
            .unwrap_or_else(|| "nowhere".to_string());
        return Err(ForwardError::Permanent {
            status,
            reason: format!(
                "destination answered {status}, a redirect to {location}; redirects are not followed: configure the final URL"
            ),
        });
    }
    classify_status(status, retry_after).map(|()| status)
}

/// `Location` may be relative to the URL that answered.
fn resolve_location(base: &str, location: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| location.to_string())
}

/// A URL as the attempt log and the banner show it: no user info, no query, no fragment
/// (each may hold a key).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "<invalid url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn redirect_targets_are_resolved_and_redacted() {
        assert_eq!(
            redact_url(&resolve_location(
                "https://dest.example/hook",
                "/moved?key=s3cret"
            )),
            "https://dest.example/moved"
        );
        assert_eq!(
            redact_url("https://u:p@example.com/hook?token=s3cret#x"),
            "https://example.com/hook"
        );
    }

    /// A destination on loopback that answers every request on a connection with `answer`,
    /// keeps connections open (HTTP/1.1 keep-alive) and counts the connections it accepted.
    async fn destination_answering(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer_each_request(stream, answer));
            }
        });
        (url, connections)
    }

    /// Reads requests (head, then a Content-Length body) and writes `answer` after each.
    async fn answer_each_request(mut stream: tokio::net::TcpStream, answer: &'static str) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            buffer.drain(..end + 4 + length);
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn delivery(url: &str) -> Delivery<'_> {
        Delivery {
            url,
            msg_id: "msg_1",
            timestamp: 1,
            body: b"{}",
            signer: None,
            timeout: Duration::from_secs(5),
            headers: &[],
        }
    }

    /// Destinations usually answer with a body (`{"ok":true}`), which `deliver` never reads:
    /// hyper reads what is left of it when the answer is dropped, so the connection still
    /// serves the next delivery instead of a new TCP (and TLS) handshake for each.
    #[tokio::test]
    async fn an_answer_with_a_body_keeps_its_connection_for_the_next_delivery() {
        let (url, connections) = destination_answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        )
        .await;
        let http = crate::http_client::outbound_client().unwrap();
        for _ in 0..3 {
            assert_eq!(deliver(&http, &delivery(&url)).await.unwrap(), 200);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    /// The status is the answer: a body that never ends does not turn a 2xx into a timeout
    /// (that would forward the event again) nor hold the delivery until the forward timeout.
    #[tokio::test]
    async fn a_body_that_never_ends_does_not_change_a_2xx() {
        let (url, _) =
            destination_answering("HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\npartial")
                .await;
        let http = crate::http_client::outbound_client().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(deliver(&http, &delivery(&url)).await.unwrap(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
