//! Token buckets with an explicit clock: how often something an unauthenticated (or misbehaving) sender can
//! trigger may happen.
//!
//! Integer arithmetic only: the bucket holds "credit" as a duration, one token being worth `interval`, so
//! refills are exact whatever the call pattern.

use std::time::{Duration, Instant};

/// At most `burst` events at once, then one per `interval`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    interval: Duration,
    burst: u32,
    credit: Duration,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket: `burst` events may happen at once, then one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> TokenBucket {
        TokenBucket {
            interval,
            burst,
            credit: interval.saturating_mul(burst),
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let cap = self.interval.saturating_mul(self.burst);
            self.credit = self
                .credit
                .saturating_add(now.saturating_duration_since(last))
                .min(cap);
        }
        // A clock that went backwards (it cannot with Instant, but callers pass values in) refills nothing.
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.credit >= self.interval {
            self.credit -= self.interval;
            true
        } else {
            false
        }
    }

    /// True if a token is available at `now` (without taking it).
    pub fn peek(&self, now: Instant) -> bool {
        let mut b = self.clone();
        b.take(now)
    }

    /// True once the bucket has been full for a while: it can be forgotten without changing any outcome.
    pub fn is_full(&self, now: Instant) -> bool {
        let mut b = self.clone();
        b.refill(now);
        b.credit >= self.interval.saturating_mul(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, Duration::from_secs(2));
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_secs(1)));
        assert!(b.take(t0 + Duration::from_secs(2)));
        assert!(!b.take(t0 + Duration::from_secs(2)));
        // Refill stops at the burst.
        let later = t0 + Duration::from_secs(100);
        assert!(b.is_full(later));
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
        // Going back in time neither refills nor panics.
        assert!(!b.take(t0));
    }
}
