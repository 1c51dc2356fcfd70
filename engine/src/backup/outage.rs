//! Waiting out a link outage (`[s3] outage_wait_mins`): when a step of a run fails with a
//! transient error after the SDK's own retries, the run may wait for the link instead of
//! ending with exit 1. `OutageWait` is the pure schedule (capped exponential pauses within a
//! budget); `Context::wait_for_link` follows it, probing the bucket after each pause. The
//! journal makes the retried step resume at its last committed part, so waiting costs nothing
//! already sent.

use std::time::Duration;

use super::{BackupError, Context};

/// The first pause, doubled after every failed probe up to `MAX_PAUSE`.
pub const FIRST_PAUSE: Duration = Duration::from_secs(2);
pub const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The pauses one run may still take. Invariant: the pauses handed out never add up to more
/// than the budget, so a run given N minutes never sleeps longer than N minutes in all.
#[derive(Debug, Clone)]
pub struct OutageWait {
    budget: Duration,
    spent: Duration,
    failed_probes: u32,
}

impl OutageWait {
    pub fn new(budget: Duration) -> OutageWait {
        OutageWait {
            budget,
            spent: Duration::ZERO,
            failed_probes: 0,
        }
    }

    /// The next pause before probing the link, or None when the budget is spent.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let left = self.budget.saturating_sub(self.spent);
        if left.is_zero() {
            return None;
        }
        let doubled = FIRST_PAUSE.saturating_mul(1u32 << self.failed_probes.min(16));
        let pause = doubled.min(MAX_PAUSE).min(left);
        self.failed_probes = self.failed_probes.saturating_add(1);
        self.spent += pause;
        Some(pause)
    }

    /// The link answered: the next outage starts again at the first pause (the budget spent
    /// so far stays spent).
    pub fn link_back(&mut self) {
        self.failed_probes = 0;
    }

    pub fn spent(&self) -> Duration {
        self.spent
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
        while let Some(pause) = wait.next_pause() {
            tracing::warn!(
                error = %err,
                pause_secs = pause.as_secs(),
                waited_secs = wait.spent().as_secs(),
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
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pauses(w: &mut OutageWait) -> Vec<u64> {
        std::iter::from_fn(|| w.next_pause().map(|p| p.as_secs())).collect()
    }

    #[test]
    fn off_when_the_budget_is_zero() {
        assert_eq!(OutageWait::new(Duration::ZERO).next_pause(), None);
    }

    #[test]
    fn pauses_double_up_to_the_cap_and_never_exceed_the_budget() {
        let mut w = OutageWait::new(Duration::from_secs(5 * 60));
        let p = pauses(&mut w);
        assert_eq!(p, vec![2, 4, 8, 16, 32, 60, 60, 60, 58]);
        assert_eq!(p.iter().sum::<u64>(), 300);
        assert_eq!(w.spent(), Duration::from_secs(300));
    }

    #[test]
    fn the_link_coming_back_restarts_the_backoff_but_not_the_budget() {
        let mut w = OutageWait::new(Duration::from_secs(20));
        assert_eq!(w.next_pause(), Some(Duration::from_secs(2)));
        assert_eq!(w.next_pause(), Some(Duration::from_secs(4)));
        w.link_back();
        assert_eq!(pauses(&mut w), vec![2, 4, 8]);
    }

    #[test]
    fn a_huge_budget_stays_capped_without_overflow() {
        let mut w = OutageWait::new(Duration::from_secs(u64::MAX / 4));
        for _ in 0..100 {
            assert!(w.next_pause().expect("budget left") <= MAX_PAUSE);
        }
    }
}
