//! Journal at scale: builds a synthetic journal of ten years of weekly backups of five
//! subvolumes (2,600 finished runs; by default 10,000 part records each, as 200 GiB backups
//! in 21 MiB parts leave, plus one run in progress), then times what must not grow with it:
//! opening the journal and the planning phase of `backup` (for each subvolume: is the name
//! free, the last published backup and its chain). `status` is timed by
//! scripts/bench-journal-scale.sh with the real binary.
//!
//!   journal_scale PATH [--runs N] [--parts N] [--compacted]
//!
//! `--compacted` writes each finished run as closing compacts it (no chunk or part records):
//! what a journal of this format holds after the same ten years.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use engine::backup::{Context, Progress};
use engine::btrfs::memory::MemoryBtrfs;
use engine::plan::{Force, Schedule};
use engine::settings::{Retention, S3Settings, Settings, Sse, SubvolumeSpec, GIB, MIB};
use engine::store::memory::MemoryStore;
use journal::{BackupKind, Journal, PartRecord, Planned, RunStatus, Transition};

const SUBVOLUMES: usize = 5;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(
        args.get(1)
            .expect("usage: journal_scale PATH [--runs N] [--parts N] [--compacted]"),
    );
    let runs = arg(&args, "--runs", 2600);
    let parts = arg(&args, "--parts", 10_000);
    let compacted = args.iter().any(|a| a == "--compacted");
    let part_size = 21 * MIB;
    let t0 = Utc
        .with_ymd_and_hms(2016, 11, 6, 3, 0, 0)
        .single()
        .expect("time");
    let started = Instant::now();
    let mut part_records = 0u64;
    if !path.exists() {
        let j = Journal::open(path).expect("open");
        let mut chain = vec![String::new(); SUBVOLUMES];
        let mut parent: Vec<Option<(String, String)>> = vec![None; SUBVOLUMES];
        for i in 0..runs {
            let sv = (i as usize) % SUBVOLUMES;
            let week = i / SUBVOLUMES as u64;
            let now =
                t0 + chrono::Duration::weeks(week as i64) + chrono::Duration::minutes(sv as i64);
            let id = engine::machine::timestamp(now);
            let name = format!("vol{sv}");
            // A new full every 26 weeks (full_every_days = 180).
            let kind = if week.is_multiple_of(26) {
                chain[sv] = id.clone();
                BackupKind::Full
            } else {
                let (pid, pkey) = parent[sv].clone().expect("parent");
                BackupKind::Incremental {
                    parent_backup_id: pid.clone(),
                    parent_manifest_key: pkey,
                    parent_snapshot_path: format!("/pool/.snapshots/{name}.{pid}"),
                    parent_uuid: format!("uuid-{sv}-{pid}"),
                }
            };
            let mkey = format!("p/{name}/{}/{id}/manifest.json", chain[sv]);
            let planned = Planned {
                subvolume: name.clone(),
                source_path: format!("/pool/{name}"),
                kind,
                snapshot_name: format!("{name}.{id}"),
                snapshot_path: format!("/pool/.snapshots/{name}.{id}"),
                backup_id: id.clone(),
                chain_id: chain[sv].clone(),
                created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                chunk_size: 200 * GIB,
                part_size,
                settings: "fingerprint".into(),
            };
            let mut rest = vec![Transition::SnapshotTaken {
                path: planned.snapshot_path.clone(),
                uuid: format!("uuid-{sv}-{id}"),
            }];
            let last = i + 1 == runs;
            if !compacted || last {
                rest.push(Transition::ChunkOpened {
                    chunk: 0,
                    key: format!("p/{name}/{}/{id}/chunk-000000.bin", chain[sv]),
                    upload_id: format!("upload-{i}"),
                });
                for n in 1..=parts as u32 {
                    rest.push(Transition::PartCommitted(PartRecord {
                        chunk: 0,
                        part_number: n,
                        offset: u64::from(n - 1) * part_size,
                        length: part_size,
                        etag: format!("\"{:032x}\"", u128::from(n) * 0x9E37_79B9_7F4A_7C15),
                        xxh3: u128::from(n) << 64 | u128::from(n),
                        crc32c: n,
                    }));
                }
                part_records += parts;
            }
            if last {
                // The newest run is still uploading: `status` folds it.
                j.import_run(planned, &rest, RunStatus::Open)
                    .expect("import");
                continue;
            }
            if !compacted {
                rest.push(Transition::ChunkSealed {
                    chunk: 0,
                    size: parts * part_size,
                    hash: [7; 32],
                    etag: format!("\"x-{parts}\""),
                });
            }
            rest.push(Transition::ManifestWritten {
                key: mkey.clone(),
                total_bytes: parts * part_size,
                stream_hash: [8; 32],
            });
            rest.push(Transition::PointerPublished {
                key: format!("p/{name}/current.json"),
            });
            rest.push(Transition::PruningDone);
            rest.push(Transition::Finished);
            j.import_run(planned, &rest, RunStatus::Finished)
                .expect("import");
            parent[sv] = Some((id, mkey));
        }
        eprintln!(
            "generated {runs} runs, {part_records} part records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let size = std::fs::metadata(path).expect("journal").len();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = Settings {
        subvolumes: (0..SUBVOLUMES)
            .map(|sv| SubvolumeSpec {
                name: format!("vol{sv}"),
                path: format!("/pool/vol{sv}").into(),
            })
            .collect(),
        snapshot_dir: "/pool/.snapshots".into(),
        state_dir: "/var/empty".into(),
        lock_path: "/var/empty/lock".into(),
        metrics_file: None,
        compression: engine::codec::Compression::Off,
        encryption: None,
        prune_profile: None,
        file_index: false,
        file_index_hot: engine::fileindex::Spill::DEFAULT_HOT,
        chunk_hash: engine::chunkhash::ChunkHash::default(),
        s3: S3Settings {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint: None,
            path_style: true,
            prefix: "p".into(),
            storage_class_chunks: "STANDARD".into(),
            storage_class_manifest: "STANDARD".into(),
            sse: Sse::None,
            kms_key_id: None,
            chunk_size: 200 * GIB,
            part_size,
            concurrency: 4,
            max_attempts: 1,
            attempt_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(1),
            limit_upload: None,
            limit_download: None,
            outage_wait: Duration::ZERO,
            credentials_file: None,
            checksum: Default::default(),
            profile: engine::provider::Provider::Aws.profile(engine::provider::Source::Default),
            chunk_lowered_from: None,
            object_lock: Default::default(),
            append_only: false,
            aws_profile: None,
        },
        schedule: Schedule::default(),
        retention: Retention::default(),
        restore: Default::default(),
    };
    let mut open_times = Vec::new();
    let mut plan_times = Vec::new();
    let mut decisions = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let j = Arc::new(Journal::open(path).expect("open"));
        open_times.push(t.elapsed());
        let ctx = Context {
            settings: settings.clone(),
            store: Arc::new(MemoryStore::new("b")),
            btrfs: Arc::new(MemoryBtrfs::new()),
            journal: j,
            progress: Arc::new(Progress::default()),
            clock: Arc::new(engine::clock::SystemClock),
            stores: Arc::new(engine::store::memory::MemoryStores(Arc::new(
                MemoryStore::new("b"),
            ))),
        };
        let now = Utc::now();
        let t = Instant::now();
        decisions.clear();
        for sv in &settings.subvolumes {
            let free = ctx
                .name_free(&engine::machine::snapshot_name(&sv.name, now))
                .expect("name");
            let d = rt
                .block_on(ctx.decide(sv, now, Force::Schedule))
                .expect("decide");
            decisions.push(format!("{}: free={free} {}", sv.name, d.reason()));
        }
        plan_times.push(t.elapsed() + *open_times.last().expect("timed"));
    }
    for d in &decisions {
        eprintln!("  {d}");
    }
    println!(
        "{{\"runs\": {runs}, \"part_records\": {}, \"compacted\": {compacted}, \"journal_bytes\": {size}, \"open_ms\": {:.2}, \"planning_ms\": {:.2}}}",
        if compacted { parts } else { (runs) * parts },
        median(open_times).as_secs_f64() * 1000.0,
        median(plan_times).as_secs_f64() * 1000.0,
    );
}
