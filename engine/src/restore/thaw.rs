//! Thawing archived chunks before a restore: a RestoreObject for every object S3 reports
//! archived and not being restored (recorded in the restore journal), then polls with backoff
//! until every object is readable. The decisions are
//! the pure `object_step` and `pass_end`; `Restorer::thaw` performs them.

use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{self, RestoreState};
use super::{RestoreError, Restorer};
use crate::manifest::Manifest;
use crate::settings::RestoreSettings;
use crate::store::{ObjectStore, Readiness};

/// What to do about one object in a thaw pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectStep {
    Ready,
    /// Ask S3 to thaw it (never asked before by this restore), then wait for it.
    Request,
    Wait,
}

/// S3's word decides, not the restore journal's: an object HeadObject reports archived and not
/// being restored is asked for again — its thawed copy expired after `days`, or the request
/// was lost — while one being restored is waited for (so a rerun does not pay twice).
pub fn object_step(readiness: Readiness) -> ObjectStep {
    match readiness {
        Readiness::Readable => ObjectStep::Ready,
        Readiness::Thawing => ObjectStep::Wait,
        Readiness::Archived => ObjectStep::Request,
    }
}

/// After a pass over every object: go on, stop for now, give up, or sleep and poll again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassEnd {
    AllReadable,
    /// `--no-wait`: the requests are made and remembered; come back later.
    Pending,
    TimedOut,
    /// Sleep this long, then poll again.
    Poll(Duration),
}

/// `delay` is the current wait between polls; it doubles up to 15 minutes.
pub fn pass_end(
    waiting: usize,
    wait: bool,
    elapsed: Duration,
    timeout: Duration,
    delay: Duration,
) -> PassEnd {
    if waiting == 0 {
        PassEnd::AllReadable
    } else if !wait {
        PassEnd::Pending
    } else if elapsed >= timeout {
        PassEnd::TimedOut
    } else {
        PassEnd::Poll(delay)
    }
}

pub fn next_delay(delay: Duration) -> Duration {
    (delay * 2).min(Duration::from_secs(900))
}

impl Restorer {
    /// Thaws every archived chunk of the chain: one RestoreObject per object, remembered.
    pub(super) async fn thaw(
        &self,
        chain: &[(String, Manifest)],
        st: &mut RestoreState,
        state_path: &Path,
        wait: bool,
    ) -> Result<(), RestoreError> {
        let keys: Vec<String> = chain
            .iter()
            .flat_map(|(_, m)| m.chunks.iter().map(|c| c.key.clone()))
            .collect();
        let already = st.thaw_requested.len();
        let mut remember = |k: &str| -> Result<usize, RestoreError> {
            st.thaw_requested.insert(k.to_string());
            state::save(self.state.as_ref(), state_path, st)?;
            Ok(st.thaw_requested.len())
        };
        thaw_objects(
            self.store.as_ref(),
            &keys,
            &self.restore,
            wait,
            already,
            &mut remember,
        )
        .await
    }
}

/// Thaws the objects `keys`: RestoreObject for each one S3 reports archived and not being
/// restored (then `requested(key)`, which says how many requests there are in all, `already`
/// before this run), then polls with backoff until every one is readable, or stops as
/// `wait` and the timeout say.
pub(super) async fn thaw_objects(
    store: &dyn ObjectStore,
    keys: &[String],
    restore: &RestoreSettings,
    wait: bool,
    already: usize,
    requested: &mut dyn FnMut(&str) -> Result<usize, RestoreError>,
) -> Result<(), RestoreError> {
    let started = Instant::now();
    let mut delay = restore.poll;
    let mut asked = already;
    loop {
        let mut waiting = 0;
        for k in keys {
            let info = store
                .head_object(k)
                .await?
                .ok_or_else(|| RestoreError::Damaged {
                    key: k.clone(),
                    detail: "object missing".into(),
                })?;
            match object_step(info.readiness()) {
                ObjectStep::Ready => {}
                ObjectStep::Wait => waiting += 1,
                ObjectStep::Request => {
                    store.restore_object(k, restore.days, &restore.tier).await?;
                    asked = requested(k)?;
                    waiting += 1;
                }
            }
        }
        match pass_end(waiting, wait, started.elapsed(), restore.timeout, delay) {
            PassEnd::AllReadable => return Ok(()),
            PassEnd::Pending => {
                return Err(RestoreError::ThawPending {
                    requested: asked.max(waiting),
                    waiting,
                })
            }
            PassEnd::TimedOut => {
                return Err(RestoreError::ThawTimeout {
                    waiting,
                    waited: started.elapsed(),
                })
            }
            PassEnd::Poll(d) => {
                tracing::warn!(waiting, "waiting for archived objects to thaw");
                eprintln!(
                    "waiting for {waiting} archived object(s) to thaw (tier {}), next check in {}s",
                    restore.tier,
                    d.as_secs()
                );
                tokio::time::sleep(d).await;
                delay = next_delay(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_per_object_then_wait() {
        assert_eq!(object_step(Readiness::Archived), ObjectStep::Request);
        assert_eq!(object_step(Readiness::Thawing), ObjectStep::Wait);
        assert_eq!(object_step(Readiness::Readable), ObjectStep::Ready);
        let s = Duration::from_secs;
        assert_eq!(pass_end(0, false, s(0), s(10), s(1)), PassEnd::AllReadable);
        assert_eq!(pass_end(2, false, s(0), s(10), s(1)), PassEnd::Pending);
        assert_eq!(pass_end(2, true, s(10), s(10), s(1)), PassEnd::TimedOut);
        assert_eq!(pass_end(2, true, s(3), s(10), s(4)), PassEnd::Poll(s(4)));
        assert_eq!(next_delay(s(600)), s(900));
    }
}
