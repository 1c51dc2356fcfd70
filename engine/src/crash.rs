//! Simulated process death for the in-process crash matrix. A `CrashPlan` counts side effects
//! (store calls, journal commits, snapshot creation and deletion) as the crash layers report
//! them; after the N-th it "kills the process": that call's effect stays applied but its caller
//! gets an error, and every later call fails without any effect, as if nothing ran after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct CrashPlan {
    /// Crash after this many events (`u64::MAX`: never).
    after: u64,
    seen: AtomicU64,
    dead: AtomicBool,
    /// What happened, in order (for the failure message of a matrix case).
    log: Mutex<Vec<String>>,
}

/// The message every crashed call carries.
pub const CRASHED: &str = "simulated crash: the process is dead";

impl CrashPlan {
    pub fn after(n: u64) -> CrashPlan {
        CrashPlan {
            after: n,
            seen: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        }
    }

    /// Counts events without ever crashing (to learn how many a scenario has).
    pub fn never() -> CrashPlan {
        CrashPlan::after(u64::MAX)
    }

    /// Before a call: Err when the process is already dead.
    pub fn alive(&self) -> Result<(), &'static str> {
        if self.dead.load(Ordering::SeqCst) {
            Err(CRASHED)
        } else {
            Ok(())
        }
    }

    /// After a call whose effect is applied: counts it, and dies if it was the N-th.
    pub fn effect(&self, what: &str) -> Result<(), &'static str> {
        self.alive()?;
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what.to_string());
        if n >= self.after {
            self.dead.store(true, Ordering::SeqCst);
            return Err(CRASHED);
        }
        Ok(())
    }

    pub fn events(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    pub fn crashed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The events so far, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
