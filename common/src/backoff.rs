//! One back-off for everything the fabric retries: restarting a worker,
//! persisting a registry record, pushing a route table, purging an app,
//! waiting for a backing service, rolling a message back.
//!
//! Delays double from a first one up to a ceiling, each with jitter (up to
//! as much again, from `backon`), so that many retriers that failed together
//! do not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays from `first`, doubling to at most `max`, with jitter. Never runs
/// out: a retrier decides itself when to give up.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// A back-off starting at `first` and doubling to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// The next delay; each is about twice the one before, until the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        // Jitter may take a delay past the ceiling; the ceiling holds.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Starts again from the first delay, after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_to_the_ceiling_and_start_again_on_reset() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(first, max);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        // Each within [nominal, 2 × nominal], nominal = first × 2^n, capped.
        for (n, d) in delays.iter().enumerate() {
            let nominal = (first * 2u32.pow(n as u32)).min(max);
            assert!(
                *d >= nominal.min(max) && *d <= (nominal * 2).min(max),
                "{n}: {d:?}"
            );
        }
        assert_eq!(*delays.last().unwrap(), max, "it stays at the ceiling");
        b.reset();
        assert!(b.next_delay() <= first * 2);
    }

    #[test]
    fn jitter_spreads_retriers_that_failed_together() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).next_delay())
            .collect();
        assert!(delays.len() > 1, "twenty retriers, one delay: {delays:?}");
    }
}
