use super::*;

mod backends;
use backends::{FillingDisk, PowerLoss, Shared};

fn planned(sub: &str) -> Planned {
    Planned {
        subvolume: sub.into(),
        source_path: format!("/mnt/{sub}"),
        kind: BackupKind::Full,
        snapshot_name: format!("{sub}.20260101T000000Z"),
        snapshot_path: format!("/mnt/.snap/{sub}.20260101T000000Z"),
        backup_id: "20260101T000000Z".into(),
        chain_id: "20260101T000000Z".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        chunk_size: 64 << 20,
        part_size: 8 << 20,
        settings: "fp".into(),
    }
}

fn part(chunk: u32, n: u32) -> Transition {
    Transition::PartCommitted(PartRecord {
        chunk,
        part_number: n,
        offset: u64::from(n - 1) << 23,
        length: 8 << 20,
        etag: format!("e{n}"),
        xxh3: u128::from(n),
        crc32c: n,
    })
}

fn opened(chunk: u32) -> Transition {
    Transition::ChunkOpened {
        chunk,
        key: format!("k{chunk}"),
        upload_id: format!("u{chunk}"),
    }
}

fn sealed(chunk: u32) -> Transition {
    Transition::ChunkSealed {
        chunk,
        size: 3 << 23,
        hash: [chunk as u8; 32],
        etag: "E".into(),
    }
}

fn manifest_written() -> Transition {
    Transition::ManifestWritten {
        key: "p/a/C/B/manifest.json".into(),
        total_bytes: 6 << 23,
        stream_hash: [9; 32],
    }
}

fn published_run() -> Vec<Transition> {
    vec![
        Transition::SnapshotTaken {
            path: "/snap/a.T".into(),
            uuid: "uuid-a".into(),
        },
        opened(0),
        part(0, 1),
        part(0, 2),
        Transition::ChunkRestarted {
            chunk: 0,
            reason: "r".into(),
        },
        opened(0),
        part(0, 1),
        part(0, 2),
        part(0, 3),
        sealed(0),
        opened(1),
        part(1, 1),
        part(1, 2),
        // An encrypted part: counted, compacted and decoded like any other.
        Transition::SealedPartCommitted {
            part: match part(1, 3) {
                Transition::PartCommitted(r) => r,
                _ => unreachable!(),
            },
            stored: StoredPart {
                length: (1 << 23) + 1464,
                xxh3: 5,
                crc32c: 6,
            },
        },
        sealed(1),
        manifest_written(),
        Transition::PointerPublished { key: "p".into() },
        Transition::PruningDone,
    ]
}

#[test]
fn closing_a_run_summarises_and_compacts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(&dir.path().join("j.redb")).expect("open");
    let run = j.begin_run(planned("a")).expect("begin");
    for t in published_run() {
        j.append(run, &t).expect("append");
    }
    let h = &j.runs().expect("runs")[0];
    assert_eq!(h.summary, None, "an open run has no summary");
    assert_eq!(j.transitions(run).expect("t").len(), 19);
    j.append(run, &Transition::Finished).expect("finish");
    let h = &j.runs().expect("runs")[0];
    assert_eq!(h.status, RunStatus::Finished);
    assert_eq!(h.chain_id, "20260101T000000Z");
    let sum = h.summary.as_ref().expect("summary");
    assert_eq!(sum.chunks, 2);
    assert_eq!(sum.parts, 6, "parts before the restart do not count");
    assert_eq!(sum.snapshot_uuid, "uuid-a");
    assert_eq!(sum.manifest_key, "p/a/C/B/manifest.json");
    assert_eq!(sum.total_bytes, 6 << 23);
    let left = j.transitions(run).expect("t");
    assert!(left.iter().all(|t| !t.is_chunk_detail()), "{left:?}");
    assert_eq!(left.len(), 6, "{left:?}");
    assert_eq!(left.last(), Some(&Transition::Finished));

    // An abandoned run is compacted too, without a summary.
    let other = j.begin_run(planned("b")).expect("begin");
    j.append(other, &opened(0)).expect("append");
    j.append(other, &part(0, 1)).expect("append");
    j.append(other, &Transition::Abandoned { reason: "x".into() })
        .expect("abandon");
    let h = &j.runs().expect("runs")[1];
    assert_eq!(
        (h.status, h.summary.is_none()),
        (RunStatus::Abandoned, true)
    );
    assert_eq!(j.transitions(other).expect("t").len(), 2);
}

#[test]
fn a_finished_run_without_manifest_has_no_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(&dir.path().join("j.redb")).expect("open");
    let run = j.begin_run(planned("a")).expect("begin");
    j.append(run, &Transition::Finished).expect("finish");
    assert_eq!(j.runs().expect("runs")[0].summary, None);
}

/// A journal written by format 1 (record version 1, no chain id or summary in headers,
/// closed runs not compacted) is migrated on open, in one transaction.
#[test]
fn version_1_journals_are_migrated() {
    #[derive(Serialize)]
    struct HeaderV1 {
        id: RunId,
        subvolume: String,
        backup_id: String,
        snapshot_name: String,
        status: RunStatus,
    }
    fn v1<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = vec![1u8];
        out.extend(postcard::to_allocvec(v).expect("encode"));
        out
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    {
        let db = Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let mut meta = tx.open_table(META).expect("meta");
            meta.insert("format", 1).expect("insert");
            meta.insert("next_run", 3).expect("insert");
            let mut runs = tx.open_table(RUNS).expect("runs");
            let mut tr = tx.open_table(TRANSITIONS).expect("tr");
            let mut done = vec![Transition::Planned(Box::new(planned("a")))];
            done.extend(published_run());
            done.push(Transition::Finished);
            let open = vec![
                Transition::Planned(Box::new(planned("b"))),
                opened(0),
                part(0, 1),
            ];
            for (id, ts, status) in [(1, &done, RunStatus::Finished), (2, &open, RunStatus::Open)] {
                let sub = if id == 1 { "a" } else { "b" };
                let h = HeaderV1 {
                    id,
                    subvolume: sub.into(),
                    backup_id: "20260101T000000Z".into(),
                    snapshot_name: format!("{sub}.20260101T000000Z"),
                    status,
                };
                runs.insert(id, v1(&h).as_slice()).expect("insert");
                for (seq, t) in (0u64..).zip(ts.iter()) {
                    tr.insert((id, seq), v1(t).as_slice()).expect("insert");
                }
            }
        }
        tx.commit().expect("commit");
    }
    let j = Journal::open(&path).expect("migrates");
    let runs = j.runs().expect("runs");
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].chain_id, "20260101T000000Z");
    let sum = runs[0].summary.as_ref().expect("finished run summarised");
    assert_eq!((sum.chunks, sum.parts), (2, 6));
    assert!(j
        .transitions(1)
        .expect("t")
        .iter()
        .all(|t| !t.is_chunk_detail()));
    assert_eq!(runs[1].status, RunStatus::Open);
    assert_eq!(runs[1].summary, None);
    assert_eq!(
        j.transitions(2).expect("t").len(),
        3,
        "open runs keep every record"
    );
    j.append(2, &part(0, 2)).expect("append after migration");
    assert_eq!(j.transitions(2).expect("t").len(), 4);
    assert_eq!(j.begin_run(planned("c")).expect("begin"), 3);
    drop(j);
    // Reopening a migrated journal writes nothing and finds the same.
    let j = Journal::open(&path).expect("reopen");
    assert_eq!(j.runs().expect("runs").len(), 3);
}

/// A journal file that says it is of `format` and holds nothing else.
fn with_format(path: &Path, format: u64) {
    let db = Database::create(path).expect("create");
    let tx = db.begin_write().expect("tx");
    tx.open_table(META)
        .expect("meta")
        .insert("format", format)
        .expect("insert");
    tx.commit().expect("commit");
}

#[test]
fn newer_formats_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    with_format(&path, 3);
    assert!(matches!(
        Journal::open(&path),
        Err(JournalError::WrongVersion { found: 3, .. })
    ));
}

#[test]
fn runs_survive_reopen_and_close_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    let (a, b);
    {
        let j = Journal::open(&path).expect("open");
        a = j.begin_run(planned("a")).expect("begin");
        b = j.begin_run(planned("b")).expect("begin");
        assert_ne!(a, b);
        j.append(
            a,
            &Transition::ChunkOpened {
                chunk: 0,
                key: "k".into(),
                upload_id: "u".into(),
            },
        )
        .expect("append");
        j.append(a, &Transition::Finished).expect("finish");
    }
    let j = Journal::open(&path).expect("reopen");
    let open: Vec<_> = j
        .open_runs()
        .expect("open runs")
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(open, vec![b]);
    let ta = j.transitions(a).expect("transitions");
    // ChunkOpened was compacted away when the run closed.
    assert_eq!(ta.len(), 2);
    assert!(matches!(ta[0], Transition::Planned(ref p) if p.subvolume == "a"));
    assert_eq!(ta[1], Transition::Finished);
    assert!(matches!(
        j.transitions(999),
        Err(JournalError::UnknownRun { run: 999, .. })
    ));
}

#[test]
fn garbage_file_is_reported_damaged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    std::fs::write(&path, vec![0x5a; 8192]).expect("write");
    let err = Journal::open(&path).err().expect("must fail");
    assert!(matches!(err, JournalError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("journal rebuild"));
}

#[test]
fn garbled_pages_are_reported_not_panicked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    {
        let j = Journal::open(&path).expect("open");
        for _ in 0..20 {
            let r = j.begin_run(planned("a")).expect("begin");
            j.append(r, &Transition::Finished).expect("append");
        }
    }
    let mut bytes = std::fs::read(&path).expect("read");
    let mut x: u32 = 12345;
    for b in bytes.iter_mut().skip(4096) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (x >> 16) as u8;
    }
    std::fs::write(&path, bytes).expect("write");
    let outcome = Journal::open(&path).and_then(|j| {
        let runs = j.runs()?;
        for h in runs {
            j.transitions(h.id)?;
        }
        Ok(())
    });
    let err = outcome.expect_err("garbage must not read as a journal");
    assert!(err.to_string().contains("journal rebuild"), "{err}");
}

#[test]
fn a_directory_is_not_a_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Journal::open(dir.path())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("directory"), "{err}");
}

#[test]
fn unknown_record_version_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(&dir.path().join("j.redb")).expect("open");
    let err = j.decode::<Transition>(&[9, 1, 2]).expect_err("must fail");
    assert!(matches!(err, JournalError::BadRecord { .. }));
}

#[test]
fn read_only_opens_write_nothing_and_refuse_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    {
        let j = Journal::open(&path).expect("open");
        let r = j.begin_run(planned("a")).expect("begin");
        j.append(r, &opened(0)).expect("append");
    }
    let before = std::fs::read(&path).expect("read");
    {
        let ro = Journal::open_read_only(&path).expect("read-only");
        assert_eq!(ro.runs().expect("runs").len(), 1);
        assert_eq!(ro.transitions(1).expect("t").len(), 2);
        assert!(matches!(
            ro.append(1, &Transition::Finished),
            Err(JournalError::ReadOnly { .. })
        ));
        assert!(matches!(
            ro.begin_run(planned("b")),
            Err(JournalError::ReadOnly { .. })
        ));
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "the file changed"
    );
    // A writer holds it (a backup running): a reader opens it all the same and follows the
    // writer's commits (redb's SingleWriter mode), which is what `status` does.
    let w = Journal::open(&path).expect("writer");
    let ro = Journal::open_read_only(&path).expect("read-only beside a writer");
    w.append(1, &Transition::Finished)
        .expect("the writer commits");
    assert_eq!(ro.runs().expect("runs")[0].status, RunStatus::Finished);
}

#[test]
fn read_only_refuses_an_older_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j.redb");
    with_format(&path, 1);
    assert!(matches!(
        Journal::open_read_only(&path),
        Err(JournalError::WrongVersion { found: 1, .. })
    ));
}

/// Fuzz: mutated records (of every kind the journal stores) are decoded or refused, never a
/// panic or an unbounded allocation (postcard caps what a length prefix can preallocate).
#[test]
fn fuzz_record_decoder() {
    let j = Journal::in_memory().expect("journal");
    let mut seeds: Vec<Vec<u8>> = published_run()
        .iter()
        .chain(
            [
                Transition::Planned(Box::new(planned("a"))),
                Transition::Finished,
                Transition::Abandoned { reason: "r".into() },
            ]
            .iter(),
        )
        .map(|t| encode(t).expect("encode"))
        .collect();
    let mut all = vec![Transition::Planned(Box::new(planned("a")))];
    all.extend(published_run());
    seeds.push(
        encode(&RunHeader {
            id: 7,
            subvolume: "a".into(),
            backup_id: "b".into(),
            snapshot_name: "a.b".into(),
            chain_id: "c".into(),
            status: RunStatus::Finished,
            summary: RunSummary::of(&all),
            location: Some(Location {
                endpoint: Some("http://127.0.0.1:3900".into()),
                bucket: "b".into(),
                prefix: "p".into(),
            }),
        })
        .expect("encode"),
    );
    let mut decoded = 0u64;
    let n = fault_injection::fuzz::run(&seeds, |bytes| {
        let t = j.decode::<Transition>(bytes);
        let h = j.decode::<RunHeader>(bytes);
        decoded += u64::from(t.is_ok()) + u64::from(h.is_ok());
        if let Ok(t) = t {
            // A decoded record is usable: folding code sees it like any other.
            let _ = RunSummary::of(&[Transition::Planned(Box::new(planned("a"))), t]);
        }
    });
    eprintln!("journal record decoder: {n} mutants, {decoded} decoded, none panicked");
}

/// The commits of one backup run, as the driver makes them.
fn backup_commits() -> Vec<Transition> {
    let mut v = published_run();
    v.push(Transition::Finished);
    v
}

/// Power loss at every sync of a backup's commits: the journal reopens from what reached the
/// disk, every acknowledged transition is there, in order, and nothing is torn (at most the
/// one commit in flight when power was lost is there too, whole).
#[test]
fn power_loss_at_every_sync_loses_no_acknowledged_transition() {
    // A journal with one published run, as the disk holds it before the run under test.
    let (base, disk) = PowerLoss::new(Vec::new(), u64::MAX);
    {
        let j = Journal::with_backend(base).expect("journal");
        let r = j.begin_run(planned("old")).expect("begin");
        for t in backup_commits() {
            j.append(r, &t).expect("append");
        }
    }
    let image = disk.lock().expect("lock").clone();
    // How many syncs the run under test makes.
    let total = {
        let (b, _) = PowerLoss::new(image.clone(), u64::MAX);
        let counter = std::sync::Arc::new(b);
        let j = Journal::with_backend(Shared(counter.clone())).expect("journal");
        let r = j.begin_run(planned("a")).expect("begin");
        for t in backup_commits() {
            j.append(r, &t).expect("append");
        }
        counter.syncs.load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(total > 20, "only {total} syncs");
    eprintln!(
        "power loss at each of {total} syncs of a backup's {} commits, flushed three ways each (none, half, all but the last write)",
        backup_commits().len() + 1
    );
    for (fail_at, torn) in (1..=total).flat_map(|n| (0..3).map(move |t| (n, t))) {
        let (b, disk) = PowerLoss::torn(image.clone(), fail_at, torn);
        let mut acknowledged: Vec<Transition> = Vec::new();
        let mut began = false;
        if let Ok(j) = Journal::with_backend(b) {
            if let Ok(r) = j.begin_run(planned("a")) {
                began = true;
                acknowledged.push(Transition::Planned(Box::new(planned("a"))));
                for t in backup_commits() {
                    if j.append(r, &t).is_err() {
                        break;
                    }
                    acknowledged.push(t);
                }
            }
        }
        // Reboot: a journal from the durable image, on a disk that works.
        let (after, _) = PowerLoss::new(disk.lock().expect("lock").clone(), u64::MAX);
        let j = Journal::with_backend(after)
            .unwrap_or_else(|e| panic!("sync {fail_at}: the journal does not reopen: {e}"));
        let runs = j.runs().expect("runs");
        assert_eq!(
            runs[0].subvolume, "old",
            "sync {fail_at}: the older run is intact"
        );
        assert_eq!(runs[0].status, RunStatus::Finished);
        let Some(h) = runs.iter().find(|h| h.subvolume == "a") else {
            assert!(!began, "sync {fail_at}: an acknowledged run is lost");
            continue;
        };
        let got = j.transitions(h.id).expect("transitions");
        // Closing compacts: compare what survives compaction when the run closed.
        let closed = h.status != RunStatus::Open;
        let keep = |ts: &[Transition]| -> Vec<Transition> {
            ts.iter()
                .filter(|t| !(closed && t.is_chunk_detail()))
                .cloned()
                .collect()
        };
        let want = keep(&acknowledged);
        assert!(
            got.len() >= want.len() && got[..want.len()] == want[..],
            "sync {fail_at}: acknowledged transitions lost\nwant {want:?}\ngot {got:?}"
        );
        assert!(
            got.len() <= want.len() + 1,
            "sync {fail_at}: more than the one commit in flight appeared"
        );
        if let Some(extra) = got.get(want.len()) {
            let mut sequence = vec![Transition::Planned(Box::new(planned("a")))];
            sequence.extend(backup_commits());
            let next = sequence.get(acknowledged.len()).cloned();
            assert_eq!(
                Some(extra.clone()),
                next,
                "sync {fail_at}: a phantom transition"
            );
        }
    }
}

/// The disk holding the journal fills up mid-run: the failing append is named as a full
/// disk (not damage, which would send the operator to `journal rebuild`), and once space is
/// freed the journal reopens with every acknowledged transition and takes more.
#[test]
fn a_full_disk_is_named_and_loses_no_acknowledged_transition() {
    let data = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pages = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let cap = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let disk = || FillingDisk {
        data: data.clone(),
        pages: pages.clone(),
        cap: cap.clone(),
    };
    let mut acknowledged = vec![Transition::Planned(Box::new(planned("a")))];
    let failure = {
        let j = Journal::with_backend(disk()).expect("journal");
        let r = j.begin_run(planned("a")).expect("begin");
        // The disk is full from here on: no page not yet written may be.
        let taken = pages.lock().expect("lock").len();
        cap.store(taken, std::sync::atomic::Ordering::SeqCst);
        let mut failure = None;
        for n in 1..=2_000u32 {
            let t = if n == 1 { opened(0) } else { part(0, n - 1) };
            match j.append(r, &t) {
                Ok(()) => acknowledged.push(t),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        failure.expect("2,000 records never needed a new page")
    };
    assert!(
        matches!(failure, JournalError::NoSpace { .. }),
        "a full disk reported as {failure}"
    );
    assert!(failure.to_string().contains("free space"), "{failure}");
    // Space is freed; the next process opens the journal.
    cap.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let j = Journal::with_backend(disk()).expect("reopens after space is freed");
    let runs = j.runs().expect("runs");
    assert_eq!(runs.len(), 1);
    let got = j.transitions(runs[0].id).expect("transitions");
    assert!(
        got.len() >= acknowledged.len() && got[..acknowledged.len()] == acknowledged[..],
        "acknowledged transitions lost: {} acknowledged, {} read back",
        acknowledged.len(),
        got.len()
    );
    j.append(runs[0].id, &sealed(0)).expect("appends again");
}
