use std::time::{Duration, Instant};

use super::Schedule;

const MIN: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_first_sync_is_due_at_once() {
    let s = Schedule::new(MIN, MAX, RETRY);
    assert!(s.is_due(Instant::now()));
    assert_eq!(s.wait(Instant::now()), Duration::ZERO);
}

#[test]
fn a_burst_of_events_coalesces_to_one_sync_at_the_minimum_interval() {
    let t0 = Instant::now();
    let mut s = Schedule::new(MIN, MAX, RETRY);
    s.finished(t0, true);
    // Ten changes within 500 ms: none makes a sync due before t0 + MIN.
    for i in 0..10 {
        s.changed();
        assert!(!s.is_due(t0 + ms(50 * i)), "change {i} ran early");
    }
    assert_eq!(s.next_due(), Some(t0 + MIN));
    assert!(s.is_due(t0 + MIN));
    s.finished(t0 + MIN, true);
    // The burst was served by that one sync: the next is the periodic one.
    assert_eq!(s.next_due(), Some(t0 + MIN + MAX));
}

#[test]
fn no_event_means_a_resync_at_the_maximum_interval() {
    let t0 = Instant::now();
    let mut s = Schedule::new(MIN, MAX, RETRY);
    s.finished(t0, true);
    assert!(!s.is_due(t0 + MAX - ms(1)));
    assert!(s.is_due(t0 + MAX));
    assert_eq!(s.wait(t0 + ms(29_000)), ms(1000));
}

#[test]
fn a_failed_sync_retries_at_the_retry_interval_then_backs_off_and_a_success_resets_it() {
    let t0 = Instant::now();
    let mut s = Schedule::new(ms(100), MAX, RETRY);
    s.finished(t0, false);
    assert_eq!(s.next_due(), Some(t0 + ms(1000)), "first retry after 1 s");
    s.finished(t0 + ms(1000), false);
    assert_eq!(s.next_due(), Some(t0 + ms(3000)), "then 2 s");
    s.finished(t0 + ms(3000), false);
    assert_eq!(s.next_due(), Some(t0 + ms(7000)), "then 4 s");
    for i in 0..10 {
        s.finished(t0 + Duration::from_secs(100 * i), false);
    }
    assert_eq!(s.backoff(), MAX, "capped at the maximum interval");
    s.finished(t0 + ms(2_000_000), true);
    assert_eq!(s.failures(), 0);
    assert_eq!(s.next_due(), Some(t0 + ms(2_000_000) + MAX), "reset");
}

#[test]
fn a_change_after_a_failure_still_waits_only_the_minimum_interval() {
    let t0 = Instant::now();
    let mut s = Schedule::new(ms(100), MAX, Duration::from_secs(5));
    s.finished(t0, false);
    assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(5)));
    s.changed();
    assert_eq!(s.next_due(), Some(t0 + ms(100)), "new input may fix it");
}

#[test]
fn the_retry_never_runs_sooner_than_the_minimum_interval() {
    let t0 = Instant::now();
    let mut s = Schedule::new(Duration::from_secs(2), MAX, ms(10));
    s.finished(t0, false);
    assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(2)));
}

#[test]
fn a_maximum_below_the_minimum_is_raised_to_it() {
    let t0 = Instant::now();
    let mut s = Schedule::new(Duration::from_secs(5), Duration::from_secs(1), RETRY);
    s.finished(t0, true);
    assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(5)));
}
