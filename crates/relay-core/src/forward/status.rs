//! What a destination's HTTP status means for the event: delivered (2xx), retry later
//! (408, 425, 429, 5xx), stop sending there (410), or park it (any other answer). `http`
//! asks this after each POST; redirects are refused there before they get here.

use crate::error::ForwardError;
use std::time::Duration;

/// What a destination's answer means for the event.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Result<(), ForwardError> {
    match status {
        200..=299 => Ok(()),
        410 => Err(ForwardError::Gone),
        408 | 425 | 429 | 500..=599 => Err(ForwardError::Retryable {
            status: Some(status),
            retry_after,
            reason: format!("destination answered {status}"),
        }),
        _ => Err(ForwardError::Permanent {
            status,
            reason: format!("destination answered {status}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        assert!(classify_status(200, None).is_ok());
        assert!(classify_status(204, None).is_ok());
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify_status(s, None), Err(ForwardError::Retryable { status: Some(x), .. }) if x == s),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(
                matches!(classify_status(s, None), Err(ForwardError::Permanent { status: x, .. }) if x == s),
                "{s}"
            );
        }
        assert!(matches!(
            classify_status(410, None),
            Err(ForwardError::Gone)
        ));
        // 3xx are not followed to another host with our signature: the user must fix the URL.
        assert!(matches!(
            classify_status(301, None),
            Err(ForwardError::Permanent { .. })
        ));
    }
}
