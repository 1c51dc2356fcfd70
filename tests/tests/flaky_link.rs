//! Backup and restore through a link that drops and lies: the S3 fault proxy
//! (`fault_injection::proxy`) between the tool and garage injects each fault type once on each
//! S3 operation a backup (and a restore) uses. Each run must end published (or exit 1 and then
//! resume to published), the fault must really have been injected (the proxy's log), and the
//! part bytes that reached the server may exceed the stream by at most concurrency × part_size.

use fault_injection::proxy::{Fault, Op, Rule, OPS};
use harness::{Flavor, LoopFs, Opts, Setup};

const CONCURRENCY: u64 = 3;
const PART: u64 = 5 << 20;

fn faults() -> Vec<Fault> {
    vec![
        Fault::ResetBeforeForward,
        Fault::ResetMidResponse,
        Fault::Reply(500),
        Fault::Reply(503),
        Fault::Reply(400),
        Fault::LoseReply,
        Fault::TruncateBody,
        Fault::StallResponse(std::time::Duration::from_millis(1500)),
    ]
}

fn setup_opts() -> Opts {
    Opts {
        chunk_size: "20MiB".into(),
        part_size: "5MiB".into(),
        concurrency: CONCURRENCY as u32,
        big_file_mib: 24,
        ..Opts::default()
    }
}

fn setup() -> Setup {
    Setup::new(Flavor::Garage, setup_opts())
}

/// Runs `args`; on exit 1 (the retry budget spent) runs `resume`, which must publish.
/// True when it took the resume.
fn run_to_published(s: &Setup, args: &[&str], case: &str) -> bool {
    let out = s.run(args);
    match out.code {
        0 => false,
        1 => {
            let again = s.run(&["resume"]);
            assert_eq!(
                again.code, 0,
                "{case}: resume after exit 1 failed\nfirst: {}\nresume: {}",
                out.stderr, again.stderr
            );
            true
        }
        c => panic!("{case}: exit {c}\n{}", out.stderr),
    }
}

#[test]
fn garage_backup_survives_each_fault_on_each_operation() {
    let s = setup();
    let proxy = s.through_proxy();
    // A clean run shows which operations a backup uses.
    s.run(&["backup", "--full"]).assert_code(0);
    let used: Vec<Op> = OPS
        .iter()
        .copied()
        .filter(|op| proxy.forwarded(*op).0 > 0)
        .collect();
    for op in [Op::Create, Op::Part, Op::Complete, Op::Put, Op::List] {
        assert!(used.contains(&op), "a backup made no {op:?} request");
    }
    let mut resumed = Vec::new();
    let mut worst = 0u64;
    for op in &used {
        for fault in faults() {
            let case = format!("{} {}", op.name(), fault.name());
            proxy.set_rules(vec![Rule::once(*op, fault)]);
            let before_faults = proxy.injected().len();
            let before_bytes = proxy.forwarded(Op::Part).1;
            if run_to_published(&s, &["backup", "--full"], &case) {
                resumed.push(case.clone());
            }
            let injected = proxy.injected();
            assert_eq!(
                injected.len(),
                before_faults + 1,
                "{case}: the fault was not injected exactly once"
            );
            let last = injected.last().expect("one");
            assert_eq!((last.op, last.fault), (*op, fault), "{case}");
            let m = s.manifest(&s.pointer().manifest_key);
            let sent = proxy.forwarded(Op::Part).1 - before_bytes;
            let again = sent.saturating_sub(m.total_bytes);
            worst = worst.max(again);
            assert!(
                again <= CONCURRENCY * PART,
                "{case}: {again} bytes sent again (stream {}, bound {})",
                m.total_bytes,
                CONCURRENCY * PART
            );
            assert!(
                s.open_uploads().is_empty(),
                "{case}: uploads left open: {:?}",
                s.open_uploads()
            );
        }
    }
    proxy.set_rules(Vec::new());
    eprintln!(
        "{} faults on {} operations: worst {worst} bytes sent again; needed resume: {resumed:?}",
        faults().len(),
        used.len()
    );
    s.prove_restorable(&s.pointer().manifest_key);
}

#[test]
fn garage_restore_survives_each_fault_on_each_operation() {
    let s = setup();
    s.run(&["backup", "--full"]).assert_code(0);
    let proxy = s.through_proxy();
    let target = LoopFs::new(1024);
    for (i, fault) in faults().into_iter().enumerate() {
        for op in [Op::Get, Op::Head, Op::List] {
            proxy.set_rules(vec![Rule::once(op, fault)]);
            let before = proxy.injected().len();
            let dir = target.path(&format!("r{i}-{}", op.name()));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let case = format!("restore {} {}", op.name(), fault.name());
            let out = s.restore(&dir);
            if proxy.injected().len() == before {
                // This restore made no request of `op`.
                out.assert_code(0);
                continue;
            }
            let out = if out.code == 1 {
                // The retry budget was spent: the same restore again completes.
                s.restore(&dir)
            } else {
                out
            };
            assert_eq!(out.code, 0, "{case}: {}", out.stderr);
            let m = s.manifest(&s.pointer().manifest_key);
            harness::assert_same_tree(
                &s.snapshot_dir.join(&m.snapshot.name),
                &dir.join(&m.snapshot.name),
            );
        }
    }
    assert!(
        proxy.injected().iter().filter(|i| i.op == Op::Get).count() >= faults().len(),
        "every fault hit a GET: {:?}",
        proxy.injected()
    );
}

/// A transfer that stops moving (the server holds the reply, or never gets the request) is
/// given up after stall_timeout_secs and made again, long before the 600 s attempt timeout
/// and before the stall would have ended by itself.
#[test]
fn garage_stalled_transfers_are_detected_and_retried() {
    let s = setup();
    let proxy = s.through_proxy();
    let config = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&config.replace(
        "attempt_timeout_secs = 60",
        "attempt_timeout_secs = 60\nstall_timeout_secs = 2",
    ));
    let stall = std::time::Duration::from_secs(120);
    let target = LoopFs::new(1024);
    let cases = [
        (Op::Part, Fault::StallResponse(stall), "backup"),
        (Op::Part, Fault::StallRequest(stall), "backup"),
        (Op::Get, Fault::StallResponse(stall), "restore"),
    ];
    for (i, (op, fault, what)) in cases.into_iter().enumerate() {
        proxy.set_rules(vec![Rule::once(op, fault)]);
        let before = proxy.injected().len();
        let started = std::time::Instant::now();
        let out = if what == "backup" {
            s.run(&["backup", "--full"])
        } else {
            let dir = target.path(&format!("r{i}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            s.restore(&dir)
        };
        let took = started.elapsed();
        let case = format!("{what} {} {}", op.name(), fault.name());
        assert_eq!(out.code, 0, "{case}: {}", out.stderr);
        assert_eq!(
            proxy.injected().len(),
            before + 1,
            "{case}: no stall injected"
        );
        assert!(
            took < stall / 2,
            "{case}: took {took:?}; the stall was not detected"
        );
        if what == "backup" {
            // The proxy takes the whole request before it stalls: the log says the part's
            // body went whole (the reply did not come), naming the part.
            let (key, part, moved) = stall_report(&out.stderr)
                .unwrap_or_else(|| panic!("{case}: no stall report in {}", out.stderr));
            let m = s.manifest(&s.pointer().manifest_key);
            let size = m
                .chunks
                .iter()
                .filter(|c| c.key == key)
                .flat_map(|c| &c.parts)
                .find(|p| p.number == part)
                .map(|p| p.size)
                .unwrap_or_else(|| panic!("{case}: part {part} of {key} is in the manifest"));
            assert_eq!(moved, size, "{case}: bytes moved before the stall");
        }
        eprintln!("{case}: done in {took:.1?} (stall {stall:?}, stall_timeout_secs 2)");
    }
    s.prove_restorable(&s.pointer().manifest_key);
}

/// The first "transfer stalled" warning's key, part number and bytes moved.
fn stall_report(stderr: &str) -> Option<(String, u32, u64)> {
    let line = stderr.lines().find(|l| l.contains("transfer stalled"))?;
    let field = |name: &str| {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        Some(if let Some(q) = rest.strip_prefix('"') {
            q.split('"').next()?.to_string()
        } else {
            rest.split_whitespace().next()?.to_string()
        })
    };
    let part = field("at")?.strip_prefix("part ")?.parse().ok()?;
    Some((field("key")?, part, field("moved_bytes")?.parse().ok()?))
}

/// `--limit-upload` and `limit_download` hold transfers to the rate asked: the part bytes take
/// at least the time the limit allows (measured through the proxy), and the run completes.
#[test]
fn garage_bandwidth_limits_hold() {
    let s = setup();
    let proxy = s.through_proxy();
    let rate: u64 = 8 << 20;
    let started = std::time::Instant::now();
    s.run(&["--limit-upload", "8MiB", "backup", "--full"])
        .assert_code(0);
    let took = started.elapsed().as_secs_f64();
    let sent = proxy.forwarded(Op::Part).1;
    let floor = sent as f64 / rate as f64;
    assert!(
        took >= floor * 0.9,
        "uploaded {sent} bytes in {took:.2} s: faster than the 8 MiB/s limit allows ({floor:.2} s)"
    );
    eprintln!("upload: {sent} bytes in {took:.2} s at an 8 MiB/s limit");
    // The download limit, from the config file this time.
    let config = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&config.replace(
        "attempt_timeout_secs = 60",
        "attempt_timeout_secs = 60\nlimit_download = \"8MiB\"",
    ));
    let m = s.manifest(&s.pointer().manifest_key);
    let target = LoopFs::new(1024);
    let dir = target.path("r");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let started = std::time::Instant::now();
    s.restore(&dir).assert_code(0);
    let took = started.elapsed().as_secs_f64();
    let floor = m.total_bytes as f64 / rate as f64;
    assert!(
        took >= floor * 0.9,
        "restored {} bytes in {took:.2} s: faster than the 8 MiB/s limit allows ({floor:.2} s)",
        m.total_bytes
    );
    eprintln!(
        "download: {} bytes in {took:.2} s at an 8 MiB/s limit",
        m.total_bytes
    );
}

/// A link that goes down mid-backup: with the default `outage_wait_mins = 0` the run ends with
/// exit 1 once the SDK's retries are spent, and `resume` publishes it; with
/// `outage_wait_mins = 1` the same outage is waited out and the run publishes by itself. Either
/// way at most concurrency × part_size bytes are sent again.
#[test]
fn garage_outage_ends_resumable_or_is_waited_out() {
    let s = setup();
    let proxy = s.through_proxy();
    let config = std::fs::read_to_string(&s.config).expect("config");
    let outage = std::time::Duration::from_secs(8);
    for wait_mins in [0, 1] {
        s.write_config(&config.replace(
            "max_attempts = 3",
            &format!("max_attempts = 2\noutage_wait_mins = {wait_mins}"),
        ));
        let before = proxy.forwarded(Op::Part).1;
        let started = std::time::Instant::now();
        // Slowed to 4 MiB/s so the outage lands mid-upload.
        let child = s.spawn_with(
            harness::tool_bin("btrfs-to-s3"),
            &["--limit-upload", "4MiB", "backup", "--full"],
            &[],
        );
        harness::wait_until("a part upload reached the server", 30, || {
            proxy.forwarded(Op::Part).1 > before + PART
        });
        proxy.set_down(true);
        let down_at = started.elapsed();
        std::thread::sleep(outage);
        proxy.set_down(false);
        let out = Setup::finish(child);
        let took = started.elapsed();
        if wait_mins == 0 {
            assert_eq!(out.code, 1, "no outage wait: exit 1\n{}", out.stderr);
            assert!(
                took < down_at + outage + std::time::Duration::from_secs(2),
                "exit 1 came {took:?} after start, not during the {outage:?} outage"
            );
            assert!(out.stderr.contains("resume"), "{}", out.stderr);
            assert!(!s.open_runs().is_empty(), "the run is kept for resume");
            let f = s.resume_and_prove(None);
            assert!(
                f.resent_bytes <= CONCURRENCY * PART,
                "resume sent {} bytes again",
                f.resent_bytes
            );
            eprintln!(
                "outage_wait_mins 0: exit 1 after {took:.1?}; resume sent {} bytes again",
                f.resent_bytes
            );
        } else {
            assert_eq!(out.code, 0, "the outage was waited out\n{}", out.stderr);
            assert!(
                out.stderr.contains("waiting for the link"),
                "the wait is logged\n{}",
                out.stderr
            );
            assert!(
                took > down_at + outage,
                "done {took:?}: before the link came back?"
            );
            let key = s.pointer().manifest_key;
            let m = s.manifest(&key);
            let again = (proxy.forwarded(Op::Part).1 - before).saturating_sub(m.total_bytes);
            assert!(
                again <= CONCURRENCY * PART,
                "{again} bytes sent again (bound {})",
                CONCURRENCY * PART
            );
            assert!(s.open_runs().is_empty() && s.open_uploads().is_empty());
            s.prove_restorable(&key);
            eprintln!("outage_wait_mins 1: published after {took:.1?} ({outage:?} down), {again} bytes sent again");
        }
    }
}

/// A lost reply to CreateMultipartUpload: garage made the upload, the tool never heard, the
/// SDK's retry made a second one. The run must publish by itself and leave no upload open
/// (the orphan is aborted before the manifest is written), on garage and on moto. Before the
/// fix moto kept the orphan open until retention's stray-upload sweep, days later.
#[test]
fn lost_create_reply_leaves_no_upload_behind() {
    for flavor in [Flavor::Garage, Flavor::Moto] {
        let s = Setup::new(flavor, setup_opts());
        let proxy = s.through_proxy();
        proxy.set_rules(vec![Rule::once(Op::Create, Fault::LoseReply)]);
        let mut env = s.s3.env();
        env.push(("RUST_LOG".into(), "info".into()));
        let out = s.run_with(
            harness::tool_bin("btrfs-to-s3"),
            &["backup", "--full"],
            &env,
        );
        out.assert_code(0);
        assert_eq!(proxy.injected().len(), 1, "{flavor:?}: the reply was lost");
        let (creates, _) = proxy.forwarded(Op::Create);
        let chunks = s.manifest(&s.pointer().manifest_key).chunks.len() as u64;
        assert_eq!(
            creates,
            chunks + 1,
            "{flavor:?}: one upload per chunk plus the orphan reached the server"
        );
        assert!(
            s.open_uploads().is_empty(),
            "{flavor:?}: uploads left open: {:?}",
            s.open_uploads()
        );
        // garage drops an upload older than a completed version of its key by itself; moto
        // keeps it until it is aborted, by the run itself (not by the stray-upload sweep of
        // retention, which moto's odd Initiated times would trigger too).
        if flavor == Flavor::Moto {
            assert!(
                out.stderr
                    .contains("aborting an upload the journal never recorded"),
                "{flavor:?}: the run aborted the orphan\n{}",
                out.stderr
            );
        }
        s.prove_restorable(&s.pointer().manifest_key);
    }
}

/// moto through the proxy (AWS's semantics where garage differs: ListParts, ETags): a lost
/// reply or a reset on each operation of a backup still publishes with at most
/// concurrency × part_size sent again.
#[test]
fn moto_backup_survives_lost_replies_and_resets() {
    let s = Setup::new(Flavor::Moto, setup_opts());
    let proxy = s.through_proxy();
    for op in [Op::Create, Op::Part, Op::Complete, Op::Put, Op::List] {
        for fault in [Fault::LoseReply, Fault::ResetMidResponse, Fault::Reply(503)] {
            let case = format!("moto {} {}", op.name(), fault.name());
            proxy.set_rules(vec![Rule::once(op, fault)]);
            let before = proxy.forwarded(Op::Part).1;
            let faults = proxy.injected().len();
            run_to_published(&s, &["backup", "--full"], &case);
            assert_eq!(proxy.injected().len(), faults + 1, "{case}: not injected");
            let m = s.manifest(&s.pointer().manifest_key);
            let again = (proxy.forwarded(Op::Part).1 - before).saturating_sub(m.total_bytes);
            assert!(
                again <= CONCURRENCY * PART,
                "{case}: {again} bytes sent again"
            );
            assert!(s.open_uploads().is_empty(), "{case}: uploads left open");
        }
    }
    s.prove_restorable(&s.pointer().manifest_key);
}

/// A CreateMultipartUpload that a killed process sent, stalled on the link and applied by S3
/// after the run it belonged to was over (the torture driver met this: seed 1125, iteration
/// 323). Nothing of that run will use the upload: the next run's retention aborts it at once,
/// not after abort_uploads_older_than_hours.
#[test]
fn garage_a_late_upload_under_a_finished_run_is_aborted_by_the_next_run() {
    let s = setup();
    s.run(&["backup", "--full"]).assert_code(0);
    let manifest = s.pointer().manifest_key;
    let late = format!(
        "{}chunk-000099.bin",
        &manifest[..manifest.rfind('/').expect("/") + 1]
    );
    let client = s.s3.client();
    let bucket = s.s3.bucket.clone();
    let key = late.clone();
    harness::block_on(async move {
        client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create")
    });
    assert_eq!(s.open_uploads(), vec![late.clone()]);
    s.run(&["backup", "--full"]).assert_code(0);
    assert!(
        s.open_uploads().is_empty(),
        "the late upload {late} is still open: {:?}",
        s.open_uploads()
    );
}
