//! The one wall clock. The domain's decisions take their time as an argument (`now_ms`,
//! `now: SystemTime`), so tests fix it; the edges (Lambda glue, `relay serve`'s loops) and the
//! bookkeeping no caller decides by (a store's TTLs and visibility times, the Bitrix24
//! client's rate-limit and token-expiry clocks) read it here, in Unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock now.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// `at` in Unix milliseconds; 0 before 1970, `i64::MAX` past its range.
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The wall clock now, in Unix milliseconds.
pub fn now_unix_ms() -> i64 {
    unix_ms(now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_ms_counts_from_the_epoch_and_clamps_before_it() {
        assert_eq!(
            unix_ms(UNIX_EPOCH + Duration::from_millis(1_766_000_000_123)),
            1_766_000_000_123
        );
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
