//! Progress while a backup or restore runs: an indicatif bar on a terminal (log lines are
//! written around it by `LogWriter`), a plain line every 30 s elsewhere.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::backup::Progress;

use crate::output::{count, human_bytes, human_rate};

/// The bar on the terminal, if one is drawn: log lines are written around it.
static BAR: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Where log lines go: stderr, with the progress bar (if any) lifted out of the way first.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = BAR.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(b) => b.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Progress while a backup or restore runs. On a terminal an indicatif bar: the current
/// subvolume, bytes of the stream against the expected size (the last backup of the same
/// kind; the manifest's for a restore), rate, time left, parts in flight and bytes reused on
/// resume. Elsewhere (a log, the journal) a plain line every `every_secs` (--progress-every,
/// default 30). The caller spawns none with --quiet or --json; `stop` clears it.
pub struct ProgressDisplay {
    task: tokio::task::JoinHandle<()>,
}

impl ProgressDisplay {
    pub fn start(p: Arc<Progress>, restore: bool, every_secs: u64) -> ProgressDisplay {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let task = if terminal {
            let bar = indicatif::ProgressBar::new(0);
            *BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            tokio::spawn(async move {
                let known = indicatif::ProgressStyle::with_template(
                    "{msg}\n[{bar:40}] {bytes}/~{total_bytes} {binary_bytes_per_sec}, {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                let unknown = indicatif::ProgressStyle::with_template(
                    "{msg}\n{spinner} {bytes} {binary_bytes_per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
                let mut was_known = None;
                loop {
                    let expected = p.expected_bytes.load(Ordering::Relaxed);
                    let pos = p.run_bytes();
                    if was_known != Some(expected > 0) {
                        bar.set_style(if expected > 0 {
                            known.clone()
                        } else {
                            unknown.clone()
                        });
                        was_known = Some(expected > 0);
                    }
                    bar.set_length(expected.max(pos));
                    bar.set_position(pos);
                    bar.set_message(progress_message(&p, restore));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        } else {
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(every_secs)).await;
                    let rate = human_rate(
                        p.stream_bytes.load(Ordering::Relaxed),
                        start.elapsed().as_secs_f64(),
                    );
                    eprintln!("progress: {}, {rate}", progress_message(&p, restore));
                }
            })
        };
        ProgressDisplay { task }
    }

    pub fn stop(self) {
        self.task.abort();
        if let Some(bar) = BAR.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

fn progress_message(p: &Progress, restore: bool) -> String {
    let current = p.current.lock().map(|c| c.clone()).unwrap_or_default();
    let read = p.run_bytes();
    if restore {
        return format!("{current}: {} received", human_bytes(read));
    }
    let expected = p.expected_bytes.load(Ordering::Relaxed);
    format!(
        "{current}: read {}{}, sent {}, reused {}, {} in flight",
        human_bytes(read),
        if expected > 0 {
            format!(" of ~{}", human_bytes(expected))
        } else {
            String::new()
        },
        human_bytes(p.uploaded_bytes.load(Ordering::Relaxed)),
        human_bytes(p.reused_bytes.load(Ordering::Relaxed)),
        count(p.parts_in_flight.load(Ordering::Relaxed) as usize, "part"),
    )
}
