//! The journal edge: what the backup driver needs of the journal, as a small trait. The real
//! implementation is `journal::Journal` (redb, on disk, or in memory); `CrashingRunLog` is the
//! crash-matrix layer, which treats every commit as a side effect.

use std::sync::Arc;

use journal::{Journal, JournalError, Location, Planned, RunHeader, RunId, RunStatus, Transition};

use crate::crash::CrashPlan;

pub trait RunLog: Send + Sync {
    /// Commits a new run's header (with where it writes) and plan; returns its id.
    fn begin_run(&self, planned: Planned, location: Location) -> Result<RunId, JournalError>;
    /// Commits one transition of an open run, durably.
    fn append(&self, run: RunId, t: &Transition) -> Result<(), JournalError>;
    /// Every run header, oldest first.
    fn runs(&self) -> Result<Vec<RunHeader>, JournalError>;
    /// Every transition of one run, in commit order.
    fn transitions(&self, run: RunId) -> Result<Vec<Transition>, JournalError>;
    fn open_runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        Ok(self
            .runs()?
            .into_iter()
            .filter(|h| h.status == RunStatus::Open)
            .collect())
    }
}

impl RunLog for Journal {
    fn begin_run(&self, planned: Planned, location: Location) -> Result<RunId, JournalError> {
        Journal::begin_run_at(self, planned, Some(location))
    }
    fn append(&self, run: RunId, t: &Transition) -> Result<(), JournalError> {
        Journal::append(self, run, t)
    }
    fn runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        Journal::runs(self)
    }
    fn transitions(&self, run: RunId) -> Result<Vec<Transition>, JournalError> {
        Journal::transitions(self, run)
    }
}

/// The dry-run layer: reads go to the journal underneath; writes are kept in memory and
/// never reach it (`backup --dry-run` plans against the real journal, changing nothing).
pub struct DryRunLog {
    inner: Arc<dyn RunLog>,
    /// Transitions that would have been committed, `(run, transition)`.
    pending: std::sync::Mutex<Vec<(RunId, Transition)>>,
}

impl DryRunLog {
    pub fn new(inner: Arc<dyn RunLog>) -> DryRunLog {
        DryRunLog {
            inner,
            pending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// What would have been committed.
    pub fn pending(&self) -> Vec<(RunId, Transition)> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl RunLog for DryRunLog {
    fn begin_run(&self, planned: Planned, _: Location) -> Result<RunId, JournalError> {
        let id = self.inner.runs()?.last().map_or(1, |h| h.id + 1);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, Transition::Planned(Box::new(planned))));
        Ok(id)
    }
    fn append(&self, run: RunId, t: &Transition) -> Result<(), JournalError> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((run, t.clone()));
        Ok(())
    }
    fn runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        self.inner.runs()
    }
    fn transitions(&self, run: RunId) -> Result<Vec<Transition>, JournalError> {
        self.inner.transitions(run)
    }
}

/// Reports every commit to a `CrashPlan`. Reads after the crash fail too: a dead process
/// reads nothing.
pub struct CrashingRunLog {
    inner: Arc<dyn RunLog>,
    plan: Arc<CrashPlan>,
}

impl CrashingRunLog {
    pub fn new(inner: Arc<dyn RunLog>, plan: Arc<CrashPlan>) -> CrashingRunLog {
        CrashingRunLog { inner, plan }
    }

    fn dead(m: &str) -> JournalError {
        JournalError::Corrupt {
            path: "(crash matrix)".into(),
            detail: m.to_string(),
        }
    }
}

impl RunLog for CrashingRunLog {
    fn begin_run(&self, planned: Planned, location: Location) -> Result<RunId, JournalError> {
        self.plan.alive().map_err(Self::dead)?;
        let what = format!("commit Planned {}", planned.backup_id);
        let r = self.inner.begin_run(planned, location);
        self.plan.effect(&what).map_err(Self::dead)?;
        r
    }
    fn append(&self, run: RunId, t: &Transition) -> Result<(), JournalError> {
        self.plan.alive().map_err(Self::dead)?;
        let r = self.inner.append(run, t);
        let name = format!("{t:?}");
        let name = name.split([' ', '(', '{']).next().unwrap_or("");
        self.plan
            .effect(&format!("commit {name}"))
            .map_err(Self::dead)?;
        r
    }
    fn runs(&self) -> Result<Vec<RunHeader>, JournalError> {
        self.plan.alive().map_err(Self::dead)?;
        self.inner.runs()
    }
    fn transitions(&self, run: RunId) -> Result<Vec<Transition>, JournalError> {
        self.plan.alive().map_err(Self::dead)?;
        self.inner.transitions(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::run::tests::planned;

    fn here() -> Location {
        Location {
            endpoint: None,
            bucket: "b".into(),
            prefix: "p".into(),
        }
    }

    #[test]
    fn the_dry_run_layer_keeps_writes_from_the_journal() {
        let j = Arc::new(Journal::in_memory().expect("journal"));
        let first = j.begin_run(planned()).expect("begin");
        let dry = DryRunLog::new(j.clone());
        let run = dry.begin_run(planned(), here()).expect("begin");
        assert_eq!(run, first + 1);
        dry.append(first, &Transition::Finished).expect("append");
        assert_eq!(dry.pending().len(), 2);
        assert_eq!(
            j.runs().expect("runs").len(),
            1,
            "a run reached the journal"
        );
        assert_eq!(j.transitions(first).expect("t").len(), 1);
        assert_eq!(dry.open_runs().expect("open").len(), 1);
    }

    #[test]
    fn a_crashed_log_commits_the_fatal_record_and_nothing_after() {
        let j = Arc::new(Journal::in_memory().expect("journal"));
        let plan = Arc::new(CrashPlan::after(2));
        let log = CrashingRunLog::new(j.clone(), plan.clone());
        let run = log.begin_run(planned(), here()).expect("first event");
        assert!(log.append(run, &Transition::PruningDone).is_err());
        assert!(log.append(run, &Transition::Finished).is_err());
        assert!(log.runs().is_err(), "a dead process reads nothing");
        assert_eq!(j.transitions(run).expect("t").len(), 2);
    }
}
