//! When the next sync runs: kube-proxy's `BoundedFrequencyRunner`
//! (`pkg/util/async/bounded_frequency_runner.go`) as a pure state machine.
//!
//! - A change asks for a sync, but never sooner than `min` after the last one: a burst of
//!   events coalesces into one sync.
//! - With no change, a sync still runs `max` after the last one (the periodic resync that
//!   repairs rules someone else flushed).
//! - A failed sync is retried `retry` after it (upstream's `RetryAfter`), doubling with
//!   each further failure and capped at `max`; a success resets the backoff.
//!
//! The clock comes in as arguments (`now`), so the schedule is tested without sleeping.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Schedule {
    min: Duration,
    max: Duration,
    retry: Duration,
    last_run: Option<Instant>,
    /// A change arrived since the last sync started.
    pending: bool,
    /// Failed syncs in a row.
    failures: u32,
}

impl Schedule {
    /// `min` ≤ `max` is enforced by raising `max`; `retry` is at least 1 ms.
    pub fn new(min: Duration, max: Duration, retry: Duration) -> Self {
        Schedule {
            min,
            max: max.max(min),
            retry: retry.max(Duration::from_millis(1)),
            last_run: None,
            pending: false,
            failures: 0,
        }
    }

    /// Something changed: a sync is wanted (at the earliest `min` after the last one).
    pub fn changed(&mut self) {
        self.pending = true;
    }

    /// Failed syncs in a row (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait before a retry after `failures` failures in a row.
    pub fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let shift = (self.failures - 1).min(20);
        self.retry.saturating_mul(1 << shift).min(self.max)
    }

    /// When the next sync is due. The first sync is due at once.
    pub fn next_due(&self) -> Option<Instant> {
        let last = self.last_run?;
        let mut due = last + self.max;
        if self.pending {
            due = due.min(last + self.min);
        }
        if self.failures > 0 {
            due = due.min(last + self.backoff().max(self.min));
        }
        Some(due)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.next_due().is_none_or(|t| now >= t)
    }

    /// How long to wait from `now` until the next sync is due.
    pub fn wait(&self, now: Instant) -> Duration {
        self.next_due()
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// A sync started at `started` has finished: `ok` when every part converged.
    pub fn finished(&mut self, started: Instant, ok: bool) {
        self.last_run = Some(started);
        self.pending = false;
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests;
