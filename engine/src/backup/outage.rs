//! Waiting out a link outage (`[s3] outage_wait_mins`): when a step of a run fails with a
//! transient error after the SDK's own retries, the run may wait for the link instead of
//! ending with exit 1. `OutageWait` is the pure schedule (capped exponential pauses within a
//! budget); `Context::wait_for_link` follows it, probing the bucket after each pause. The
//! journal makes the retried step resume at its last committed part, so waiting costs nothing
//! already sent.

use std::time::{Duration, Instant};

use super::{BackupError, Context};

/// The first pause, doubled after every failed probe up to `MAX_PAUSE`.
pub const FIRST_PAUSE: Duration = Duration::from_secs(2);
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The pauses one run may still take. Invariant: the wait ends once `budget` has passed since
/// the first failure it was asked about, counting the attempts between pauses too, so a run
/// given N minutes gives up N minutes after the link first failed it (plus one last attempt).
#[derive(Debug, Clone)]
pub struct OutageWait {
    budget: Duration,
    first_failure: Option<Instant>,
    failed_probes: u32,
}

impl OutageWait {
    pub fn new(budget: Duration) -> OutageWait {
        OutageWait {
            budget,
            first_failure: None,
            failed_probes: 0,
        }
    }

    /// The next pause before probing the link at `now`, or None when the budget is spent.
    pub fn next_pause(&mut self, now: Instant) -> Option<Duration> {
        let first = *self.first_failure.get_or_insert(now);
        let left = self
            .budget
            .saturating_sub(now.saturating_duration_since(first));
        if left.is_zero() {
            return None;
        }
        let doubled = FIRST_PAUSE.saturating_mul(1u32 << self.failed_probes.min(16));
        let pause = doubled.min(MAX_PAUSE).min(left);
        self.failed_probes = self.failed_probes.saturating_add(1);
        Some(pause)
    }

    /// The link answered: the next outage starts again at the first pause (the time since
    /// the first failure still counts).
    pub fn link_back(&mut self) {
        self.failed_probes = 0;
    }

    /// How long since the first failure.
    pub fn waited(&self, now: Instant) -> Duration {
        self.first_failure
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f))
    }
}

impl Context {
    /// After `err` (transient) ended a step: pauses and probes the bucket until it answers,
    /// then returns Ok so the caller retries the step; returns `err` when the budget is spent
    /// (or was zero: waiting is off).
    pub(crate) async fn wait_for_link(
        &self,
        wait: &mut OutageWait,
        err: BackupError,
    ) -> Result<(), BackupError> {
        // Only S3 being unreachable is waited out: a local failure (reading the send stream)
        // does not heal by waiting for the link.
        if !matches!(&err, BackupError::Store(e) if e.is_retryable()) {
            return Err(err);
        }
        while let Some(pause) = wait.next_pause(Instant::now()) {
            tracing::warn!(
                error = %err,
                pause_secs = pause.as_secs(),
                waited_secs = wait.waited(Instant::now()).as_secs(),
                "S3 unreachable; waiting for the link (outage_wait_mins)"
            );
            tokio::time::sleep(pause).await;
            match self.store.check_access().await {
                Ok(_) => {
                    tracing::info!("S3 answers again; continuing the run");
                    wait.link_back();
                    return Ok(());
                }
                Err(e) if e.is_retryable() => continue,
                // The link is back but something else is wrong (credentials, bucket): that
                // is the error to report, not the outage.
                Err(e) => return Err(e.into()),
            }
        }
        // Giving up: one quick probe tells an outage from a refusal that reached us as a
        // broken connection (a server that answers 403 and closes before reading the body of
        // an upload leaves the client a broken pipe, not the 403).
        match tokio::time::timeout(REFUSAL_PROBE, self.store.check_access()).await {
            Ok(Err(e)) if !e.is_retryable() => Err(e.into()),
            _ => Err(err),
        }
    }
}

/// How long the last probe before giving up may take.
const REFUSAL_PROBE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses taken back to back, each attempt taking `attempt` on top of its pause.
    fn pauses(w: &mut OutageWait, start: Instant, attempt: Duration) -> Vec<u64> {
        let mut now = start;
        let mut out = Vec::new();
        while let Some(p) = w.next_pause(now) {
            out.push(p.as_secs());
            now += p + attempt;
        }
        out
    }

    #[test]
    fn off_when_the_budget_is_zero() {
        assert_eq!(
            OutageWait::new(Duration::ZERO).next_pause(Instant::now()),
            None
        );
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_end_with_the_budget() {
        let mut w = OutageWait::new(Duration::from_secs(5 * 60));
        let p = pauses(&mut w, Instant::now(), Duration::ZERO);
        assert_eq!(p, vec![2, 4, 8, 16, 32, 60, 60, 60, 58]);
        assert_eq!(p.iter().sum::<u64>(), 300);
    }

    #[test]
    fn time_spent_in_attempts_counts_against_the_budget() {
        // Each failed attempt takes 30 s: 122 s of pauses and 180 s of attempts use the 5 min.
        let mut w = OutageWait::new(Duration::from_secs(5 * 60));
        let p = pauses(&mut w, Instant::now(), Duration::from_secs(30));
        assert_eq!(p, vec![2, 4, 8, 16, 32, 60]);
    }

    #[test]
    fn the_link_coming_back_restarts_the_backoff_but_not_the_clock() {
        let start = Instant::now();
        let mut w = OutageWait::new(Duration::from_secs(20));
        assert_eq!(w.next_pause(start), Some(Duration::from_secs(2)));
        assert_eq!(
            w.next_pause(start + Duration::from_secs(2)),
            Some(Duration::from_secs(4))
        );
        w.link_back();
        let later = start + Duration::from_secs(6);
        assert_eq!(w.next_pause(later), Some(Duration::from_secs(2)));
        assert_eq!(w.next_pause(start + Duration::from_secs(20)), None);
    }

    #[test]
    fn a_huge_budget_stays_capped_without_overflow() {
        let mut w = OutageWait::new(Duration::from_secs(u64::MAX / 4));
        let now = Instant::now();
        for _ in 0..100 {
            assert!(w.next_pause(now).expect("budget left") <= MAX_PAUSE);
        }
    }
}
