//! When a failed delivery comes back: the back-off schedule (exponential with jitter, capped by
//! SQS's 12-hour visibility limit) and the receiver's own `Retry-After`, which wins. Every delay
//! the consumer asks the queue for is computed here.

use std::time::{Duration, SystemTime};

/// SQS refuses a visibility timeout above 12 hours, so no delay may exceed it.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(12 * 60 * 60);

/// Exponential backoff with jitter: attempt n waits a random time in the top quarter of
/// `min(cap, base * 2^(n-1))` (never below `min`), which still spreads the retries of a burst
/// but keeps a known lower bound on the whole retry window (`window`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrySchedule {
    pub base: Duration,
    pub cap: Duration,
    /// Never retry sooner: a zero delay would hand the message straight back.
    pub min: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(60 * 60),
            min: Duration::from_secs(1),
        }
    }
}

impl RetrySchedule {
    /// Delay before delivery number `receive_count + 1`. A `Retry-After` from the receiver
    /// wins over the schedule; everything stays within SQS's 12-hour visibility limit.
    pub fn delay(&self, receive_count: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.clamp(self.min, MAX_RETRY_DELAY);
        }
        let ceiling = self.ceiling(receive_count);
        let floor = (ceiling * 3 / 4).max(self.min);
        let span_ms = (ceiling - floor).as_millis() as u64;
        floor + Duration::from_millis(fastrand::u64(0..=span_ms))
    }

    /// The shortest and longest time from the first delivery to the last of `tries`
    /// deliveries when every try fails without a `Retry-After` (what a dead destination gets
    /// before the event is parked in the DLQ).
    pub fn window(&self, tries: u32) -> (Duration, Duration) {
        (1..tries).fold((Duration::ZERO, Duration::ZERO), |(low, high), try_no| {
            let ceiling = self.ceiling(try_no);
            (low + (ceiling * 3 / 4).max(self.min), high + ceiling)
        })
    }

    fn ceiling(&self, receive_count: u32) -> Duration {
        let exponent = receive_count.saturating_sub(1).min(30);
        self.base
            .saturating_mul(1u32 << exponent)
            .min(self.cap)
            .min(MAX_RETRY_DELAY)
            .max(self.min)
    }
}

/// Deliveries before a message goes to the dead-letter queue (SQS `maxReceiveCount`, the
/// embedded queue's limit): with the default schedule the last try comes at least 24 h after
/// the first (`RetrySchedule::window`), as Svix and Stripe retry for days, not minutes.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 42;

/// `Retry-After` as delta-seconds or an HTTP date; a date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn schedule_grows_with_full_jitter_and_stays_capped() {
        let schedule = RetrySchedule::default();
        for attempt in 1..=40u32 {
            let ceiling = (Duration::from_secs(5) * 2u32.saturating_pow(attempt - 1).min(1 << 30))
                .min(schedule.cap);
            for _ in 0..50 {
                let d = schedule.delay(attempt, None);
                assert!(
                    d >= schedule.min && d <= ceiling.max(schedule.min),
                    "{attempt}: {d:?}"
                );
            }
        }
        // Full jitter really spreads: 200 draws at attempt 10 are not all equal.
        let draws: std::collections::HashSet<_> =
            (0..200).map(|_| schedule.delay(10, None)).collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn default_retry_window_is_at_least_a_day_with_at_most_an_hour_between_tries() {
        let schedule = RetrySchedule::default();
        let (low, high) = schedule.window(DEFAULT_MAX_RECEIVE_COUNT);
        assert!(low >= Duration::from_secs(24 * 60 * 60), "{low:?}");
        assert!(high <= Duration::from_secs(33 * 60 * 60), "{high:?}");
        // One try fewer would fall short of a day: the count is not padded blindly.
        let (shorter, _) = schedule.window(DEFAULT_MAX_RECEIVE_COUNT - 1);
        assert!(shorter < Duration::from_secs(24 * 60 * 60), "{shorter:?}");
        for attempt in 1..=DEFAULT_MAX_RECEIVE_COUNT {
            assert!(schedule.delay(attempt, None) <= Duration::from_secs(60 * 60));
        }
    }

    #[test]
    fn retry_after_wins_but_is_clamped_to_the_visibility_limit() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.delay(1, Some(Duration::from_secs(300))),
            Duration::from_secs(300)
        );
        assert_eq!(
            schedule.delay(1, Some(Duration::from_secs(48 * 3600))),
            MAX_RETRY_DELAY
        );
        assert_eq!(schedule.delay(1, Some(Duration::ZERO)), schedule.min);
    }
}
