//! Failpoints at every transition boundary of btrfs-to-s3.
//!
//! `failpoint!("name")` compiles to nothing unless the `failpoints` feature is on. With it,
//! the `FAILPOINTS` environment variable (syntax of the `fail` crate, e.g.
//! `FAILPOINTS=after-part-upload=2*off->return`) makes the process die on the spot with
//! `abort()`, as abruptly as a SIGKILL: no destructor, no cleanup, no journal commit.

/// Every failpoint name the engine defines, in protocol order. The crash-matrix test walks
/// this list; a name missing here is a boundary nobody tests.
pub const FAILPOINTS: &[&str] = &[
    "before-snapshot",
    "after-snapshot",
    "before-chunk-open",
    "after-chunk-open",
    "before-part-upload",
    "after-part-upload",
    "before-chunk-seal",
    "after-chunk-seal",
    "before-index",
    "after-index",
    "before-manifest",
    "after-manifest",
    "before-pointer",
    "after-pointer",
    "before-prune-local",
    "after-prune-local",
    "before-prune-remote",
    "after-prune-remote",
    "before-finish",
    "journal-before-commit",
    "journal-after-commit",
];

/// Failpoints hit only when retention deletes something (one hit per deleted snapshot or
/// object); the retention crash test walks these with the pruning phases above.
pub const PRUNE_FAILPOINTS: &[&str] = &["after-prune-snapshot", "after-prune-object"];

/// Failpoints of `restore`: before and after each snapshot's receive, and in the middle of
/// a stream (after two parts went to `btrfs receive`).
pub const RESTORE_FAILPOINTS: &[&str] = &[
    "restore-before-receive",
    "restore-mid-stream",
    "restore-after-receive",
];

pub mod fuzz;
pub mod proxy;
pub mod quirks;

/// Dies at once, as a crash would. Exit status is SIGABRT.
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: crashing");
    std::process::abort()
}

/// Reads `FAILPOINTS` from the environment; keep the guard alive for the process lifetime.
#[cfg(feature = "failpoints")]
pub fn setup() -> Option<fail::FailScenario<'static>> {
    Some(fail::FailScenario::setup())
}

#[cfg(not(feature = "failpoints"))]
pub fn setup() -> Option<()> {
    None
}

pub fn enabled() -> bool {
    cfg!(feature = "failpoints")
}

#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::__fail::fail_point!($name, |_| { $crate::crash($name) })
    };
}

#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {};
}

/// `failpoint_err!("name", expr)`: with `FAILPOINTS=name=return`, evaluates to `Some(expr)`
/// (an injected error the caller returns), otherwise `None`. Compiles to `None` without the
/// feature. For transient faults that must be retried, not crashes.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint_err {
    ($name:literal, $err:expr) => {
        $crate::__fail::eval($name, |_| $err)
    };
}

#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint_err {
    ($name:literal, $err:expr) => {
        None
    };
}

/// Failpoints that inject a transient error instead of a crash.
pub const TRANSIENT_FAILPOINTS: &[&str] = &["restore-part-transient"];

#[doc(hidden)]
pub use fail as __fail;
