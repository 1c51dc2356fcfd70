//! The torture driver: for N iterations drawn from one seed, a backup (full or incremental,
//! after a random change of the source) runs through the S3 fault proxy under random faults,
//! and may be SIGKILLed and have the S3 server (garage) SIGKILLed and restarted under it; it
//! is resumed, under the same faults and then on a clean link; a random published backup is
//! restored, under faults and perhaps killed, then restored again. After every iteration the
//! end state is proven: no open run, no open multipart upload, one manifest per backup
//! directory, the pointer on the newest, every local snapshot one of a published backup, the
//! newest backup's chain downloaded, verified and received identical to its snapshots, part
//! bytes sent again within concurrency × part_size per interruption (and one part per
//! injected part fault), and a restore that did not finish never left a read-only snapshot
//! that differs from its backup. Restores by the tool (a random retained backup in half the
//! iterations, every retained one at the end) give the tree recorded at publication.
//!
//! `run` is the library (tests/tests/torture.rs runs 20 iterations in the normal test run);
//! `torture` (tests/src/bin/torture.rs, scripts/torture.sh) is the command. A failure names
//! its iteration and the seed that replays the same sequence of actions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::tree::{tree, Coverage, Entry};
use fault_injection::proxy::{Fault, Op, Proxy, Rule, OPS};

use crate::btrfs::{mutate, Rng};
use crate::{tool_bin, Flavor, LoopFs, Opts, Setup};

pub const CONCURRENCY: u64 = 2;
pub const PART: u64 = 5 << 20;
/// A child that runs longer than this is a hang, and a failure.
const HANG: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Options {
    pub iterations: u64,
    pub seed: u64,
    /// One line per iteration on stderr.
    pub verbose: bool,
}

/// What a torture run did and measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub seed: u64,
    pub iterations: u64,
    pub backups_published: u64,
    pub full_backups: u64,
    /// Backups SIGKILLed before they finished.
    pub backup_kills: u64,
    /// Restores SIGKILLed before they finished.
    pub restore_kills: u64,
    /// Times garage was SIGKILLed (and started again) while a backup ran.
    pub server_kills: u64,
    /// Runs (backup or resume) that ended with exit 1, the retry budget spent.
    pub runs_exit_1: u64,
    pub resumes: u64,
    /// Restores by the tool whose result was compared with the backup's recorded tree.
    pub restores_proven: u64,
    /// Faults the proxy injected, by kind.
    pub faults: BTreeMap<String, u64>,
    pub stream_bytes: u64,
    /// Part bytes that reached the server beyond the streams of the backups published.
    pub resent_worst: u64,
    pub resent_total: u64,
    pub seconds: f64,
}

impl Figures {
    pub fn faults_total(&self) -> u64 {
        self.faults.values().sum()
    }

    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "seed {}: {} iterations in {:.0} s; {} backups published ({} full, {} MiB of streams); \
             {} backups and {} restores SIGKILLed, garage SIGKILLed {} times, {} runs ended exit 1, \
             {} resumes, {} restores proven; {} faults injected ({}); part bytes sent again: \
             worst {} B in one iteration, mean {} B per iteration (bound {} B per interruption)",
            self.seed,
            self.iterations,
            self.seconds,
            self.backups_published,
            self.full_backups,
            self.stream_bytes >> 20,
            self.backup_kills,
            self.restore_kills,
            self.server_kills,
            self.runs_exit_1,
            self.resumes,
            self.restores_proven,
            self.faults_total(),
            faults.join(", "),
            self.resent_worst,
            self.resent_total / self.iterations.max(1),
            CONCURRENCY * PART,
        )
    }
}

/// A failed iteration: which, with what seed, and why.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub iteration: u64,
    pub message: String,
    pub figures: Figures,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "iteration {} of seed {} failed: {}\nreplay: scripts/torture.sh --seed {} --iterations {}",
            self.iteration,
            self.seed,
            self.message,
            self.seed,
            self.iteration + 1
        )
    }
}

/// Runs the torture; Err names the first failed iteration and its seed.
pub fn run(opts: &Options) -> Result<Figures, Box<Failure>> {
    let started = Instant::now();
    let mut t = Torture::new(opts.seed);
    for i in 0..opts.iterations {
        let mut line = Vec::new();
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.iteration(i, &mut line)));
        let message = match r {
            Ok(Ok(())) => {
                if opts.verbose {
                    eprintln!("[{i}] {}", line.join("; "));
                }
                t.figures.iterations = i + 1;
                continue;
            }
            Ok(Err(m)) => m,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        let message = format!("after [{}]: {message}", line.join("; "));
        t.figures.seconds = started.elapsed().as_secs_f64();
        return Err(Box::new(Failure {
            seed: opts.seed,
            iteration: i,
            message,
            figures: t.figures.clone(),
        }));
    }
    if let Err(message) = t.restore_every_retained() {
        return Err(Box::new(Failure {
            seed: opts.seed,
            iteration: opts.iterations,
            message: format!("final restore of every retained backup: {message}"),
            figures: t.figures.clone(),
        }));
    }
    t.figures.seconds = started.elapsed().as_secs_f64();
    Ok(t.figures)
}

struct Torture {
    s: Setup,
    proxy: Proxy,
    target: LoopFs,
    seed: u64,
    /// How long an undisturbed full backup takes: the window for kills.
    window: Duration,
    /// The tree each published backup was taken from, by backup id.
    trees: BTreeMap<String, BTreeMap<String, Entry>>,
    /// The snapshot name of every backup published.
    published_snapshots: BTreeSet<String>,
    figures: Figures,
}

/// One child's end: its exit code, or None when a kill ended it.
struct Ended {
    code: Option<i32>,
    stderr: String,
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

fn random_fault(rng: &mut Rng) -> Fault {
    match below(rng, 9) {
        0 => Fault::ResetBeforeForward,
        1 => Fault::ResetMidResponse,
        2 => Fault::Reply(500),
        3 => Fault::Reply(503),
        4 => Fault::Reply(400),
        5 => Fault::LoseReply,
        6 => Fault::TruncateBody,
        7 => Fault::StallResponse(Duration::from_millis(1500)),
        // Longer than stall_timeout_secs: the watchdog's case on parts and GETs.
        _ => Fault::StallRequest(Duration::from_millis(4000)),
    }
}

/// Zero to three rules, each on one operation (or all) with a probability of 5-35 %.
fn random_rules(rng: &mut Rng) -> Vec<Rule> {
    (0..below(rng, 4))
        .map(|_| Rule {
            op: (!chance(rng, 0.2)).then(|| OPS[below(rng, OPS.len() as u64) as usize]),
            fault: random_fault(rng),
            probability: (5 + below(rng, 31)) as f64 / 100.0,
            skip: 0,
            times: Some(1 + below(rng, 3)),
        })
        .collect()
}

impl Torture {
    fn new(seed: u64) -> Torture {
        let s = Setup::new(
            Flavor::Garage,
            Opts {
                chunk_size: "8MiB".into(),
                part_size: "5MiB".into(),
                concurrency: CONCURRENCY as u32,
                big_file_mib: 12,
                ..Opts::default()
            },
        );
        let proxy = s.through_proxy();
        let config = std::fs::read_to_string(&s.config).expect("config");
        s.write_config(
            &config
                .replace(
                    "attempt_timeout_secs = 60",
                    "attempt_timeout_secs = 20\nstall_timeout_secs = 2",
                )
                .replace("max_chain_length = 60", "max_chain_length = 4")
                .replace("keep_local_snapshots = 1000", "keep_local_snapshots = 3")
                .replace("keep_chains = 1000", "keep_chains = 2"),
        );
        let mut t = Torture {
            target: LoopFs::new(1024),
            s,
            proxy,
            seed,
            window: Duration::ZERO,
            trees: BTreeMap::new(),
            published_snapshots: BTreeSet::new(),
            figures: Figures {
                seed,
                ..Figures::default()
            },
        };
        let started = Instant::now();
        t.s.run(&["backup", "--full"]).assert_code(0);
        t.window = started.elapsed();
        t.record_new(&BTreeSet::new());
        t
    }

    fn manifests(&self) -> BTreeSet<String> {
        self.s
            .objects()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with("/manifest.json"))
            .collect()
    }

    /// Records the trees of backups published since `before`; their stream bytes.
    fn record_new(&mut self, before: &BTreeSet<String>) -> u64 {
        let mut bytes = 0;
        for key in self.manifests().difference(before) {
            let m = self.s.manifest(key);
            let snap = self.s.snapshot_dir.join(&m.snapshot.name);
            assert!(
                snap.exists(),
                "backup {} was published but its snapshot {} is gone",
                m.backup_id,
                snap.display()
            );
            self.trees
                .insert(m.backup_id.clone(), tree(&snap, Coverage::All));
            self.published_snapshots.insert(m.snapshot.name.clone());
            self.figures.backups_published += 1;
            if m.kind == engine::manifest::Kind::Full {
                self.figures.full_backups += 1;
            }
            bytes += m.total_bytes;
        }
        self.figures.stream_bytes += bytes;
        bytes
    }

    fn spawn(&self, args: &[String]) -> Child {
        let mut c = Command::new(tool_bin("btrfs-to-s3"));
        c.arg("--config").arg(&self.s.config).args(args);
        c.env_remove("AWS_PROFILE").env_remove("AWS_SESSION_TOKEN");
        for (k, v) in self.s.s3.env() {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn btrfs-to-s3")
    }

    /// Runs `args`, SIGKILLing it after `kill_after` and killing garage for `server_down`
    /// at `server_at`, if given. A run longer than `HANG` is a failure.
    fn run_disrupted(
        &mut self,
        args: &[String],
        kill_after: Option<Duration>,
        server: Option<(Duration, Duration)>,
    ) -> Result<(Ended, bool), String> {
        let mut child = self.spawn(args);
        let pid = child.id().to_string();
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
            s
        });
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let s3 = &mut self.s.s3;
        let (status, server_killed) = std::thread::scope(|scope| {
            let done2 = done.clone();
            let pid2 = pid.clone();
            let events = scope.spawn(move || {
                let mut server_killed = false;
                let mut events: Vec<(Duration, u8)> = Vec::new();
                if let Some(d) = kill_after {
                    events.push((d, 0));
                }
                if let Some((at, down)) = server {
                    events.push((at, 1));
                    events.push((at + down, 2));
                }
                events.sort();
                for (at, what) in events {
                    while started.elapsed() < at {
                        if done2.load(Ordering::SeqCst) && what != 2 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    match what {
                        0 if !done2.load(Ordering::SeqCst) => {
                            let _ = Command::new("kill")
                                .args(["-9", &pid2])
                                .stderr(Stdio::null())
                                .status();
                        }
                        1 if !done2.load(Ordering::SeqCst) => {
                            s3.kill();
                            server_killed = true;
                        }
                        // Garage comes back whether or not the run is over.
                        2 if server_killed => s3.start_again(),
                        _ => {}
                    }
                }
                server_killed
            });
            let deadline = started + HANG;
            let status = loop {
                if let Some(st) = child.try_wait().expect("wait") {
                    break Some(st);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            done.store(true, Ordering::SeqCst);
            (status, events.join().expect("events thread"))
        });
        let stderr = reader.join().unwrap_or_default();
        // What a killed process sent may still be on its way (a request the link stalled):
        // the next process starts once the link has delivered it, as after a real restart.
        // (If it lands later still, the next run's retention aborts the orphan: uploads under
        // a finished run's prefix are strays at any age.)
        self.drain(&args.join(" "))?;
        let Some(status) = status else {
            return Err(format!("`{}` hung for {HANG:?}\n{stderr}", args.join(" ")));
        };
        Ok((
            Ended {
                code: status.code(),
                stderr,
            },
            server_killed,
        ))
    }

    /// Waits until the link has delivered every request it holds: a request the link stalled
    /// past the tool's stall timeout is sent again by the tool and then, late, forwarded
    /// still; its bytes belong to the iteration whose fault caused them.
    fn drain(&self, after: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.proxy.in_flight() > 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "the proxy still holds {} request(s) 30 s after `{after}` ended",
                    self.proxy.in_flight(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// One iteration; `line` tells what it did so far.
    fn iteration(&mut self, i: u64, line: &mut Vec<String>) -> Result<(), String> {
        let mut rng = Rng::new(self.seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if chance(&mut rng, 0.7) {
            mutate(
                &self.s.subvolume,
                self.seed.wrapping_mul(100_000).wrapping_add(i),
            );
        }
        let rules = random_rules(&mut rng);
        line.push(format!(
            "rules [{}]",
            rules
                .iter()
                .map(|r| format!(
                    "{}:{}@{:.2}",
                    r.op.map_or("any", |o| o.name()),
                    r.fault.name(),
                    r.probability
                ))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        self.drain("the last iteration")?;
        self.proxy.set_rules(rules);
        let faults_before = self.proxy.injected().len();
        let part_bytes_before = self.proxy.forwarded(Op::Part).1;
        let manifests_before = self.manifests();

        // The backup, perhaps killed, perhaps with the server killed under it.
        let full = chance(&mut rng, 0.3);
        let args: Vec<String> = ["backup", if full { "--full" } else { "--once" }]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let window = self.window.as_micros() as u64;
        // From process start-up to a little past an undisturbed run's end.
        let at = |rng: &mut Rng| Duration::from_micros(window / 20 + below(rng, window * 6 / 5));
        let kill = chance(&mut rng, 0.5).then(|| at(&mut rng));
        let server = chance(&mut rng, 0.2)
            .then(|| (at(&mut rng), Duration::from_millis(below(&mut rng, 2000))));
        line.push(format!(
            "{}{}{}",
            args.join(" "),
            kill.map_or(String::new(), |d| format!(", kill at {d:.2?}")),
            server.map_or(String::new(), |(at, down)| format!(
                ", garage down at {at:.2?} for {down:.2?}"
            ))
        ));
        let (ended, server_killed) = self.run_disrupted(&args, kill, server)?;
        let mut interruptions = 0u64;
        if server_killed {
            self.figures.server_kills += 1;
            interruptions += 1;
        }
        match ended.code {
            None => {
                self.figures.backup_kills += 1;
                interruptions += 1;
                line.push("backup killed".into());
            }
            Some(0) => line.push("backup 0".into()),
            Some(1) => {
                self.figures.runs_exit_1 += 1;
                interruptions += 1;
                line.push("backup 1".into());
            }
            Some(c) => return Err(format!("backup exit {c}\n{}", ended.stderr)),
        }

        // Resume under the same faults (twice at most), then on a clean link.
        for _ in 0..2 {
            if self.s.open_runs().is_empty() {
                break;
            }
            self.figures.resumes += 1;
            let out = self.s.run(&["resume"]);
            match out.code {
                0 => break,
                1 => {
                    self.figures.runs_exit_1 += 1;
                    interruptions += 1;
                }
                c => return Err(format!("resume under faults: exit {c}\n{}", out.stderr)),
            }
        }
        self.count_faults(faults_before);
        let part_faults = self.proxy.injected()[faults_before..]
            .iter()
            .filter(|f| f.op == Op::Part)
            .count() as u64;
        self.proxy.set_rules(Vec::new());
        if !self.s.open_runs().is_empty() {
            self.figures.resumes += 1;
            let out = self.s.run(&["resume"]);
            if out.code != 0 {
                return Err(format!(
                    "resume on a clean link: exit {}\n{}",
                    out.code, out.stderr
                ));
            }
        }

        // The end state, once late requests (resumes under faults) have landed.
        self.drain("the resumes")?;
        let new_bytes = self.record_new(&manifests_before);
        let sent = self.proxy.forwarded(Op::Part).1 - part_bytes_before;
        let again = sent.saturating_sub(new_bytes);
        let bound = interruptions * CONCURRENCY * PART + part_faults * PART;
        if again > bound {
            return Err(format!(
                "{again} part bytes sent again (sent {sent}, new streams {new_bytes}); bound {bound} \
                 for {interruptions} interruptions and {part_faults} part faults"
            ));
        }
        self.figures.resent_worst = self.figures.resent_worst.max(again);
        self.figures.resent_total += again;
        line.push(format!("sent again {again} B"));
        self.prove_state()?;

        // A restore of a random retained backup, under faults, perhaps killed.
        if chance(&mut rng, 0.5) {
            line.push(self.restore_disrupted(&mut rng)?);
        }
        Ok(())
    }

    fn count_faults(&mut self, from: usize) {
        for f in &self.proxy.injected()[from..] {
            *self
                .figures
                .faults
                .entry(f.fault.kind().to_string())
                .or_default() += 1;
        }
    }

    /// After an iteration's runs are over: nothing open, one manifest per backup, the pointer
    /// on the newest, no leaked snapshot, the newest chain restorable.
    fn prove_state(&self) -> Result<(), String> {
        let open = self.s.open_runs();
        if !open.is_empty() {
            return Err(format!("runs still open: {open:?}"));
        }
        let uploads = self.s.open_uploads();
        if !uploads.is_empty() {
            return Err(format!("multipart uploads left open: {uploads:?}"));
        }
        let objects = self.s.objects();
        let manifests = self.manifests();
        let mut dirs: BTreeMap<String, usize> = BTreeMap::new();
        for m in &manifests {
            *dirs
                .entry(m[..m.rfind('/').expect("/") + 1].to_string())
                .or_default() += 1;
        }
        for (k, _) in objects.iter().filter(|(k, _)| k.contains("/chunk-")) {
            let dir = &k[..k.rfind('/').expect("/") + 1];
            if dirs.get(dir) != Some(&1) {
                return Err(format!(
                    "chunk {k} has {:?} manifests beside it",
                    dirs.get(dir)
                ));
            }
        }
        let pointer = self.s.pointer();
        let newest = manifests.iter().max().cloned().unwrap_or_default();
        if pointer.manifest_key != newest {
            return Err(format!(
                "the pointer names {} but the newest manifest is {newest}",
                pointer.manifest_key
            ));
        }
        // Local and remote retention are separate: a kept snapshot's chain may be pruned from
        // S3, but every snapshot must have been published once.
        let local = self.s.snapshots();
        for snap in &local {
            if !self.published_snapshots.contains(snap) {
                return Err(format!(
                    "local snapshot {snap} belongs to no published backup (leaked)"
                ));
            }
        }
        // keep_local_snapshots = 3, plus the next incremental's parent.
        if local.len() > 4 {
            return Err(format!(
                "{} local snapshots kept (3 asked): {local:?}",
                local.len()
            ));
        }
        self.s.prove_restorable(&newest);
        Ok(())
    }

    /// Restores `backup_id` into a fresh directory of the target filesystem by the tool.
    fn restore_args(&self, backup_id: &str, dir: &Path) -> Vec<String> {
        [
            "restore",
            "--subvolume",
            &self.s.name,
            "--backup",
            backup_id,
            "--target",
            &dir.display().to_string(),
            "--verify",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn retained(&self) -> Vec<(String, String)> {
        self.manifests()
            .iter()
            .map(|k| {
                let m = self.s.manifest(k);
                (m.backup_id, m.snapshot.name)
            })
            .collect()
    }

    fn restore_disrupted(&mut self, rng: &mut Rng) -> Result<String, String> {
        let retained = self.retained();
        let (id, name) = retained[below(rng, retained.len() as u64) as usize].clone();
        let dir = self.target.path(&format!("r-{id}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let rules = random_rules(rng);
        self.drain("the last iteration")?;
        self.proxy.set_rules(rules);
        let faults_before = self.proxy.injected().len();
        let kill = chance(rng, 0.4)
            .then(|| Duration::from_micros(below(rng, self.window.as_micros() as u64 + 1)));
        let args = self.restore_args(&id, &dir);
        let (ended, _) = self.run_disrupted(&args, kill, None)?;
        self.count_faults(faults_before);
        self.proxy.set_rules(Vec::new());
        let first = match ended.code {
            None => {
                self.figures.restore_kills += 1;
                "killed".to_string()
            }
            Some(c @ (0 | 1)) => c.to_string(),
            Some(c) => {
                return Err(format!(
                    "restore of {id} under faults: exit {c}\n{}",
                    ended.stderr
                ))
            }
        };
        // Whatever it left must not look complete unless it is: a read-only snapshot there
        // is the whole backup it is named after.
        let complete = self.check_read_only_snapshots(&dir)?;
        // A kill after the restore finished (its state already removed) leaves the whole
        // snapshot, which a rerun rightly refuses to restore over ("already holds"): it is
        // proven as it is. Otherwise the same restore on a clean link must finish it.
        if ended.code != Some(0) && !complete.contains(&name) {
            self.restore_clean(&id, &dir)?;
        }
        self.prove_restored(&id, &name, &dir)?;
        Ok(format!("restore {id} {first}"))
    }

    /// `restore` of `id` into `dir` on a clean link, which must exit 0.
    fn restore_clean(&self, id: &str, dir: &Path) -> Result<(), String> {
        let args = self.restore_args(id, dir);
        let out = self
            .s
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if out.code != 0 {
            return Err(format!(
                "restore of {id}: exit {}\n{}",
                out.code, out.stderr
            ));
        }
        Ok(())
    }

    /// The restored snapshot equals the tree recorded for `id`; then the target is cleared.
    fn prove_restored(&mut self, id: &str, name: &str, dir: &Path) -> Result<(), String> {
        self.compare(id, &dir.join(name))?;
        self.figures.restores_proven += 1;
        self.clear(dir);
        Ok(())
    }

    /// Every read-only snapshot in `dir` must be a whole backup; returns their names.
    fn check_read_only_snapshots(&self, dir: &Path) -> Result<Vec<String>, String> {
        let by_name: BTreeMap<String, String> =
            self.retained().into_iter().map(|(id, n)| (n, id)).collect();
        let mut complete = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
            let p = e.map_err(|e| e.to_string())?.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let out = Command::new("btrfs")
                .args(["property", "get", "-ts"])
                .arg(&p)
                .arg("ro")
                .output()
                .map_err(|e| format!("btrfs property get: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "btrfs property get {}: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let ro = String::from_utf8_lossy(&out.stdout).contains("ro=true");
            if !ro {
                continue;
            }
            match by_name.get(&name) {
                Some(id) => self.compare(id, &p)?,
                None => return Err(format!("read-only {} is no backup's snapshot", p.display())),
            }
            complete.push(name);
        }
        Ok(complete)
    }

    fn compare(&self, id: &str, restored: &Path) -> Result<(), String> {
        let want = self
            .trees
            .get(id)
            .ok_or_else(|| format!("no recorded tree for backup {id}"))?;
        let got = tree(restored, Coverage::All);
        if &got != want {
            let diff: Vec<&String> = want
                .keys()
                .chain(got.keys())
                .filter(|k| want.get(*k) != got.get(*k))
                .take(10)
                .collect();
            return Err(format!(
                "{} differs from backup {id} ({} vs {} entries) at {diff:?}",
                restored.display(),
                got.len(),
                want.len()
            ));
        }
        Ok(())
    }

    /// Deletes every subvolume under `dir`, then `dir`.
    fn clear(&self, dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = Command::new("btrfs")
                .args(["subvolume", "delete", "-c"])
                .arg(e.path())
                .stdout(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The end of a torture run: every retained backup restored by the tool on a clean link
    /// and compared with the tree it was taken from.
    fn restore_every_retained(&mut self) -> Result<(), String> {
        for (id, name) in self.retained() {
            let dir = self.target.path(&format!("final-{id}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            self.restore_clean(&id, &dir)?;
            self.prove_restored(&id, &name, &dir)?;
        }
        Ok(())
    }
}
