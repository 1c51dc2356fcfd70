use super::*;
use journal::BackupKind;

pub(crate) fn planned() -> Planned {
    Planned {
        subvolume: "s".into(),
        source_path: "/s".into(),
        kind: BackupKind::Full,
        snapshot_name: "s.T".into(),
        snapshot_path: "/snap/s.T".into(),
        backup_id: "T".into(),
        chain_id: "T".into(),
        created_at: "t".into(),
        chunk_size: 10,
        part_size: 5,
        settings: "x".into(),
    }
}

fn part(chunk: u32, n: u32) -> Transition {
    Transition::PartCommitted(PartRecord {
        chunk,
        part_number: n,
        offset: 0,
        length: 5,
        etag: "e".into(),
        xxh3: 1,
        crc32c: 2,
    })
}

fn opened(chunk: u32, id: &str) -> Transition {
    Transition::ChunkOpened {
        chunk,
        key: format!("k{chunk}"),
        upload_id: id.into(),
    }
}

#[test]
fn steps_follow_the_protocol() {
    let mut ts = vec![Transition::Planned(Box::new(planned()))];
    let step = |ts: &[Transition]| RunState::fold(ts).expect("fold").next_step();
    assert_eq!(step(&ts), Step::TakeSnapshot);
    ts.push(Transition::SnapshotTaken {
        path: "/snap/s.T".into(),
        uuid: "u".into(),
    });
    assert_eq!(step(&ts), Step::Upload);
    ts.push(opened(0, "a"));
    ts.push(part(0, 2));
    assert_eq!(step(&ts), Step::Upload);
    ts.push(Transition::ManifestWritten {
        key: "m".into(),
        total_bytes: 10,
        stream_hash: [0; 32],
    });
    assert_eq!(step(&ts), Step::PublishPointer);
    ts.push(Transition::PointerPublished { key: "p".into() });
    assert_eq!(step(&ts), Step::Prune);
    ts.push(Transition::LocalPruned {
        snapshots: vec!["old".into()],
    });
    assert_eq!(
        step(&ts),
        Step::Prune,
        "pruning is done only when it says so"
    );
    ts.push(Transition::PruningDone);
    assert_eq!(step(&ts), Step::Finish);
    ts.push(Transition::Finished);
    assert_eq!(step(&ts), Step::Done);
    let abandoned = vec![
        Transition::Planned(Box::new(planned())),
        Transition::Abandoned { reason: "r".into() },
    ];
    assert_eq!(step(&abandoned), Step::Done);
}

#[test]
fn committed_parts_need_not_be_contiguous() {
    let ts = vec![
        Transition::Planned(Box::new(planned())),
        opened(0, "a"),
        part(0, 2),
        part(0, 5),
        part(0, 2),
    ];
    let s = RunState::fold(&ts).expect("fold");
    let parts: Vec<u32> = s.chunks[&0].parts.keys().copied().collect();
    assert_eq!(parts, vec![2, 5]);
    assert_eq!(s.committed_bytes(), 10);
    assert_eq!(s.open_uploads(), vec![("k0".to_string(), "a".to_string())]);
}

#[test]
fn restart_forgets_the_chunk_and_a_new_upload_replaces_it() {
    let ts = vec![
        Transition::Planned(Box::new(planned())),
        opened(0, "a"),
        part(0, 1),
        opened(1, "b"),
        part(1, 1),
        Transition::ChunkRestarted {
            chunk: 0,
            reason: "hash mismatch".into(),
        },
        opened(0, "c"),
    ];
    let s = RunState::fold(&ts).expect("fold");
    assert_eq!(s.restarts, 1);
    assert_eq!(s.chunks[&0].upload_id, "c");
    assert!(s.chunks[&0].parts.is_empty());
    assert_eq!(s.chunks[&1].parts.len(), 1);
}

fn chunk_with(parts: &[(u32, u64, u128)], sealed: Option<Sealed>) -> ChunkState {
    ChunkState {
        key: "k".into(),
        upload_id: "u".into(),
        parts: parts
            .iter()
            .map(|&(n, len, h)| {
                (
                    n,
                    PartRecord {
                        chunk: 0,
                        part_number: n,
                        offset: u64::from(n - 1) * 5,
                        length: len,
                        etag: format!("e{n}"),
                        xxh3: h,
                        crc32c: n,
                    },
                )
            })
            .collect(),
        stored: BTreeMap::new(),
        sealed,
    }
}

#[test]
fn part_decisions() {
    let c = chunk_with(&[(1, 5, 11), (3, 5, 33)], None);
    assert_eq!(
        decide_part(None, false, 1, 0, 5, 11),
        PartAction::OpenThenUpload
    );
    assert_eq!(decide_part(Some(&c), false, 1, 0, 5, 11), PartAction::Reuse);
    // Committed parts need not be a prefix: part 2 is uploaded, part 3 reused.
    assert_eq!(
        decide_part(Some(&c), false, 2, 5, 5, 22),
        PartAction::Upload
    );
    assert_eq!(
        decide_part(Some(&c), false, 3, 10, 5, 33),
        PartAction::Reuse
    );
    for (off, len, h) in [(0, 5, 12), (0, 4, 11), (1, 5, 11)] {
        assert!(matches!(
            decide_part(Some(&c), false, 1, off, len, h),
            PartAction::RestartChunk(_)
        ));
    }
    // Upload gone or chunk sealed: a missing part cannot be added any more.
    assert!(matches!(
        decide_part(Some(&c), true, 2, 5, 5, 22),
        PartAction::RestartChunk(r) if r.contains("never committed")
    ));
    assert_eq!(decide_part(Some(&c), true, 3, 10, 5, 33), PartAction::Reuse);
    let sealed = chunk_with(
        &[(1, 5, 11)],
        Some(Sealed {
            size: 5,
            hash: [1; 32],
            etag: "E".into(),
        }),
    );
    assert!(matches!(
        decide_part(Some(&sealed), false, 2, 5, 5, 22),
        PartAction::RestartChunk(_)
    ));
}

#[test]
fn chunk_end_decisions() {
    let full = chunk_with(&[(1, 5, 11), (2, 5, 22), (3, 2, 33)], None);
    match decide_chunk_end(&full, false, 12, &[0; 32], 5) {
        ChunkEndAction::Complete(parts) => {
            let numbers: Vec<u32> = parts.iter().map(|p| p.0).collect();
            assert_eq!(numbers, vec![1, 2, 3]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        decide_chunk_end(&full, true, 12, &[0; 32], 5),
        ChunkEndAction::AdoptIfComplete
    );
    let holey = chunk_with(&[(1, 5, 11), (3, 2, 33)], None);
    assert!(matches!(
        decide_chunk_end(&holey, false, 12, &[0; 32], 5),
        ChunkEndAction::RestartChunk(_)
    ));
    let sealed = chunk_with(
        &[(1, 5, 11), (2, 5, 22), (3, 2, 33)],
        Some(Sealed {
            size: 12,
            hash: [7; 32],
            etag: "E".into(),
        }),
    );
    assert_eq!(
        decide_chunk_end(&sealed, false, 12, &[7; 32], 5),
        ChunkEndAction::AlreadySealed
    );
    assert!(matches!(
        decide_chunk_end(&sealed, false, 12, &[8; 32], 5),
        ChunkEndAction::RestartChunk(_)
    ));
    assert!(matches!(
        decide_chunk_end(&sealed, false, 13, &[7; 32], 5),
        ChunkEndAction::RestartChunk(_)
    ));
}

#[test]
fn malformed_runs_are_rejected() {
    assert_eq!(RunState::fold(&[]), Err(FoldError::NoPlan));
    assert_eq!(
        RunState::fold(&[Transition::Planned(Box::new(planned())), part(3, 1)]),
        Err(FoldError::Orphan("PartCommitted"))
    );
}

/// The project's seeded generator (`fault_injection::fuzz::Mutator`), in u64 terms.
struct Rnd(fault_injection::fuzz::Mutator);
impl Rnd {
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n as usize) as u64
    }
    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }
}

/// A random, mostly protocol-shaped history: what a driver that crashed at random points
/// and resumed any number of times could have journaled.
fn random_history(r: &mut Rnd) -> Vec<Transition> {
    let mut ts = vec![Transition::Planned(Box::new(planned()))];
    let mut open = std::collections::BTreeSet::new();
    for _ in 0..r.below(30) {
        let mut chunk = r.below(3) as u32;
        let mut pick = r.below(14);
        if (3..=9).contains(&pick) {
            // Records about a chunk come after it was opened.
            match open.iter().nth(r.below(3) as usize % open.len().max(1)) {
                Some(&c) => chunk = c,
                None => pick = 1,
            }
        }
        match pick {
            1 | 2 => {
                open.insert(chunk);
            }
            9 => {
                open.remove(&chunk);
            }
            _ => {}
        }
        let t = match pick {
            0 => Transition::SnapshotTaken {
                path: "/snap/s.T".into(),
                uuid: "u".into(),
            },
            1 | 2 => opened(chunk, &format!("up{}", r.below(5))),
            3..=7 => {
                let n = 1 + r.below(3) as u32;
                Transition::PartCommitted(PartRecord {
                    chunk,
                    part_number: n,
                    offset: u64::from(chunk) * 10 + u64::from(n - 1) * 5,
                    length: 5,
                    etag: format!("e{chunk}{n}"),
                    xxh3: u128::from(r.below(2)),
                    crc32c: 0,
                })
            }
            8 => Transition::ChunkSealed {
                chunk,
                size: 10,
                hash: [0; 32],
                etag: "E".into(),
            },
            9 => Transition::ChunkRestarted {
                chunk,
                reason: "r".into(),
            },
            10 => Transition::ManifestWritten {
                key: "m".into(),
                total_bytes: 30,
                stream_hash: [0; 32],
            },
            11 => Transition::PointerPublished { key: "p".into() },
            12 => Transition::PruningDone,
            13 if r.below(3) == 0 => Transition::IndexSkipped {
                reason: "off".into(),
            },
            13 if r.below(2) == 0 => {
                let record = journal::IndexRecord {
                    key: "i".into(),
                    stored_bytes: 1,
                    stored_xxh3: u128::from(r.below(2)),
                    plain_bytes: 1,
                    plain_xxh3: 0,
                    entries: 1,
                    position: 0,
                };
                // As an older build journaled it (format 1), or with its format.
                if r.below(2) == 0 {
                    Transition::IndexStored(record)
                } else {
                    Transition::IndexStoredAs { format: 2, record }
                }
            }
            _ if r.below(4) == 0 => Transition::Finished,
            _ => Transition::LocalPruned { snapshots: vec![] },
        };
        ts.push(t);
    }
    ts
}

/// Properties of the decider over 20,000 random histories and random facts: it never
/// publishes a pointer before the manifest, never prunes before the pointer, never
/// abandons a run whose manifest is written, uploads only with its snapshot (and parent)
/// present under unchanged settings; a committed part whose bytes match is always reused,
/// never sent again; reconciling with an S3 that holds every journaled part keeps them
/// all and never aborts an upload the journal knows.
#[test]
fn decider_properties_over_random_histories() {
    let mut r = Rnd(fault_injection::fuzz::Mutator::new(0x9E37_79B9_7F4A_7C15));
    let mut checked = 0;
    for _ in 0..20_000 {
        let ts = random_history(&mut r);
        let Ok(st) = RunState::fold(&ts) else {
            continue;
        };
        checked += 1;
        // The stored index is the last one journaled, unless a chunk restarted after it.
        let last = |f: fn(&Transition) -> bool| ts.iter().rposition(f);
        let stored = last(|t| {
            matches!(
                t,
                Transition::IndexStored(_) | Transition::IndexStoredAs { .. }
            )
        });
        let skipped = last(|t| matches!(t, Transition::IndexSkipped { .. }));
        let restarted = last(|t| matches!(t, Transition::ChunkRestarted { .. }));
        assert_eq!(st.index.is_some(), stored > restarted, "{ts:?}");
        if st.index.is_some() {
            let format = match stored.map(|i| &ts[i]) {
                Some(Transition::IndexStoredAs { format, .. }) => *format,
                _ => 1,
            };
            assert_eq!(st.index_format, format, "{ts:?}");
        }
        assert_eq!(st.index_skipped.is_some(), skipped > restarted, "{ts:?}");
        assert_eq!(
            decide_index(&st, true) == IndexStep::Build,
            stored <= restarted && skipped <= restarted
        );
        let facts = Facts {
            settings: if r.below(5) == 0 {
                "other".into()
            } else {
                "x".into()
            },
            snapshot_exists: r.below(5) != 0,
            parent_exists: r.below(5) != 0,
            configured: r.below(8) != 0,
        };
        match next_action(&st, &facts) {
            Action::PublishPointer => assert!(st.manifest.is_some(), "{ts:?}"),
            Action::Prune => assert!(st.pointer_published && st.manifest.is_some()),
            Action::Finish => assert!(st.pruning_done && st.pointer_published),
            Action::Abandon(_) => {
                assert!(st.manifest.is_none(), "abandoning a published run: {ts:?}")
            }
            Action::Upload => {
                assert!(st.snapshot_uuid.is_some() && st.manifest.is_none());
                assert!(facts.snapshot_exists && facts.parent_exists && facts.configured);
                assert_eq!(facts.settings, st.planned.settings);
                assert!(st.restarts <= MAX_RESTARTS);
            }
            Action::TakeSnapshot => assert!(st.snapshot_uuid.is_none()),
            Action::Over => assert!(st.finished || st.abandoned.is_some()),
        }
        for (idx, c) in &st.chunks {
            for rec in c.parts.values() {
                let a = decide_part(
                    Some(c),
                    r.coin(),
                    rec.part_number,
                    rec.offset,
                    rec.length,
                    rec.xxh3,
                );
                assert_eq!(
                    a,
                    PartAction::Reuse,
                    "committed part {idx}/{} sent again",
                    rec.part_number
                );
            }
        }
        // S3 holds every journaled part (and maybe an upload the journal never saw).
        let listed: BTreeMap<u32, Listed> = st
            .chunks
            .iter()
            .filter(|(_, c)| c.sealed.is_none())
            .map(|(i, c)| {
                (
                    *i,
                    Listed::Parts(
                        c.parts
                            .values()
                            .map(|p| (p.part_number, format!("\"{}\"", p.etag), p.length))
                            .collect(),
                    ),
                )
            })
            .collect();
        let mut uploads: Vec<(String, String)> = st
            .chunks
            .values()
            .map(|c| (c.key.clone(), c.upload_id.clone()))
            .collect();
        uploads.push(("k9".into(), "stranger".into()));
        let rec = reconcile(&st, &uploads, &listed);
        assert_eq!(rec.chunks, st.chunks, "reconcile dropped parts S3 holds");
        assert!(rec.gone.is_empty());
        assert_eq!(rec.abort, vec![("k9".to_string(), "stranger".to_string())]);
    }
    assert!(checked > 5_000, "only {checked} histories were well-formed");
}

#[test]
fn reconcile_drops_what_s3_lacks_and_marks_gone_uploads() {
    let ts = vec![
        Transition::Planned(Box::new(planned())),
        opened(0, "a"),
        part(0, 1),
        part(0, 2),
        opened(1, "b"),
        part(1, 1),
    ];
    let st = RunState::fold(&ts).expect("fold");
    let listed = BTreeMap::from([
        // Part 2 missing, part 1 with another size: both uploaded again.
        (0, Listed::Parts(vec![(1, "e".into(), 4)])),
        (1, Listed::Gone),
    ]);
    let r = reconcile(&st, &[], &listed);
    assert!(r.chunks[&0].parts.is_empty());
    assert_eq!(r.gone, [1].into_iter().collect());
    assert_eq!(
        r.chunks[&1].parts.len(),
        1,
        "a gone chunk is decided at its end"
    );
    let trusting = reconcile(&st, &[], &BTreeMap::from([(0, Listed::Unusable)]));
    assert_eq!(trusting.chunks[&0].parts.len(), 2);
}

#[test]
fn adoption_needs_the_whole_object() {
    let three = ["x", "y", "z"];
    assert_eq!(
        decide_adoption(Some((12, Some("\"abc-3\"".into()))), 12, &three, "u"),
        Ok("\"abc-3\"".to_string())
    );
    assert!(decide_adoption(Some((12, Some("\"abc-2\"".into()))), 12, &three, "u").is_err());
    assert!(decide_adoption(Some((11, Some("\"abc-3\"".into()))), 12, &three, "u").is_err());
    assert!(decide_adoption(None, 12, &three, "u").is_err());
    // A server whose multipart ETags carry no part count: the size decides.
    assert!(decide_adoption(Some((12, Some("\"abc\"".into()))), 12, &three, "u").is_ok());
    // MD5 part ETags: the object must be the one they make, not a stale one of that size.
    let parts = [
        "\"bce6bf66aeb76c7040fdd5f4eccb78e6\"",
        "\"8165449fc15bbf43d3b674595cbcc406\"",
    ];
    // Cloudflare's documented example (R2 multipart docs).
    let made = "\"f77dc0eecdebcd774a2a22cb393ad2ff-2\"";
    assert_eq!(multipart_etag(&parts).as_deref(), Some(made));
    assert!(decide_adoption(Some((12, Some(made.into()))), 12, &parts, "u").is_ok());
    let stale = "\"0123456789abcdef0123456789abcdef-2\"";
    let e = decide_adoption(Some((12, Some(stale.into()))), 12, &parts, "u").expect_err("stale");
    assert!(e.contains("is not the one"), "{e}");
    assert_eq!(multipart_etag(&["opq6162", "x"]), None);
    // garage hashes the parts' hex text: accepted too.
    let garage = multipart_etags(&parts).expect("md5s")[1].clone();
    assert_ne!(garage, made);
    assert!(decide_adoption(Some((12, Some(garage))), 12, &parts, "u").is_ok());
}

#[test]
fn a_stream_shorter_than_the_chunks_journaled_restarts_the_last() {
    let ts = vec![
        Transition::Planned(Box::new(planned())),
        opened(0, "a"),
        opened(1, "b"),
        opened(2, "c"),
    ];
    let st = RunState::fold(&ts).expect("fold");
    assert_eq!(decide_stream_end(&st.chunks, 30, 10), Ok(()));
    assert!(matches!(decide_stream_end(&st.chunks, 20, 10), Err((2, _))));
}

#[test]
fn next_action_gives_up_only_before_the_manifest() {
    let mut ts = vec![
        Transition::Planned(Box::new(planned())),
        Transition::SnapshotTaken {
            path: "/snap/s.T".into(),
            uuid: "u".into(),
        },
    ];
    let same = Facts {
        settings: "x".into(),
        snapshot_exists: true,
        parent_exists: true,
        configured: true,
    };
    let st = RunState::fold(&ts).expect("fold");
    assert_eq!(next_action(&st, &same), Action::Upload);
    let changed = Facts {
        settings: "y".into(),
        ..same.clone()
    };
    assert!(
        matches!(next_action(&st, &changed), Action::Abandon(r) if r.contains("configuration"))
    );
    let vanished = Facts {
        snapshot_exists: false,
        ..same.clone()
    };
    assert!(matches!(next_action(&st, &vanished), Action::Abandon(r) if r.contains("vanished")));
    for _ in 0..=MAX_RESTARTS {
        ts.push(Transition::ChunkRestarted {
            chunk: 0,
            reason: "r".into(),
        });
    }
    let st = RunState::fold(&ts).expect("fold");
    assert!(matches!(next_action(&st, &same), Action::Abandon(r) if r.contains("reproducible")));
    ts.push(Transition::ManifestWritten {
        key: "m".into(),
        total_bytes: 1,
        stream_hash: [0; 32],
    });
    let st = RunState::fold(&ts).expect("fold");
    assert_eq!(next_action(&st, &changed), Action::PublishPointer);
}

/// Sealed parts: the run compares plaintext (as for any part) but reconciles, completes and
/// adopts with what S3 holds.
#[test]
fn sealed_parts_are_reconciled_and_completed_by_their_stored_bytes() {
    let sealed = |n: u32, stored_len: u64, crc: u32| Transition::SealedPartCommitted {
        part: PartRecord {
            chunk: 0,
            part_number: n,
            offset: u64::from(n - 1) * 5,
            length: 5,
            etag: format!("e{n}"),
            xxh3: u128::from(n),
            crc32c: 2,
        },
        stored: StoredPart {
            length: stored_len,
            xxh3: 9,
            crc32c: crc,
        },
    };
    let ts = vec![
        Transition::Planned(Box::new(planned())),
        Transition::SnapshotTaken {
            path: "/snap/s.T".into(),
            uuid: "u".into(),
        },
        opened(0, "a"),
        sealed(1, 200, 71),
        sealed(2, 201, 72),
    ];
    let st = RunState::fold(&ts).expect("fold");
    let c = &st.chunks[&0];
    assert_eq!(c.stored_size(), 401);
    assert_eq!(st.committed_bytes(), 10, "progress counts plaintext");
    // The regenerated plaintext decides reuse.
    assert_eq!(decide_part(Some(c), false, 1, 0, 5, 1), PartAction::Reuse);
    assert!(matches!(
        decide_part(Some(c), false, 1, 0, 5, 7),
        PartAction::RestartChunk(_)
    ));
    // Completion sends the stored CRC32C.
    assert_eq!(
        decide_chunk_end(c, false, 10, &[0; 32], 5),
        ChunkEndAction::Complete(vec![(1, "e1".into(), 71), (2, "e2".into(), 72)])
    );
    // ListParts reports stored sizes: a part listed at its plaintext size is not the one
    // committed.
    let listed = BTreeMap::from([(
        0,
        Listed::Parts(vec![(1, "e1".into(), 200), (2, "e2".into(), 5)]),
    )]);
    let r = reconcile(&st, &[], &listed);
    let kept = &r.chunks[&0];
    assert_eq!(kept.parts.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(kept.stored.keys().copied().collect::<Vec<_>>(), vec![1]);
    // A plain commit of the same number replaces the sealed record.
    let mut st2 = st.clone();
    st2.apply(&part(0, 2)).expect("apply");
    assert_eq!(st2.chunks[&0].stored_of(2).map(|s| s.length), Some(5));
}

#[test]
fn the_index_is_built_until_stored_and_again_after_a_chunk_restart() {
    use super::{decide_index, IndexStep};
    let mut st = RunState::new(planned());
    assert_eq!(decide_index(&st, false), IndexStep::Off);
    assert_eq!(decide_index(&st, true), IndexStep::Build);
    // Skipped is decided too, whatever the setting says on resume.
    let mut skipped = st.clone();
    skipped
        .apply(&Transition::IndexSkipped {
            reason: "file_index = false".into(),
        })
        .expect("apply");
    assert_eq!(decide_index(&skipped, true), IndexStep::Decided);
    let rec = journal::IndexRecord {
        key: "k".into(),
        stored_bytes: 1,
        stored_xxh3: 2,
        plain_bytes: 3,
        plain_xxh3: 4,
        entries: 5,
        position: 0,
    };
    st.apply(&Transition::IndexStored(rec.clone()))
        .expect("apply");
    assert_eq!(st.index.as_ref(), Some(&rec));
    assert_eq!(decide_index(&st, true), IndexStep::Decided);
    assert_eq!(decide_index(&st, false), IndexStep::Decided);
    st.apply(&Transition::ChunkRestarted {
        chunk: 0,
        reason: "regenerated stream differs".into(),
    })
    .expect("apply");
    assert_eq!(
        st.index, None,
        "a restarted chunk makes the stored index stale"
    );
    assert_eq!(decide_index(&st, true), IndexStep::Build);
}

#[test]
fn only_a_run_with_no_chunk_opened_opens_the_first_ahead() {
    use super::open_ahead;
    let mut st = RunState::new(planned());
    assert_eq!(open_ahead(&st), Some(0));
    st.apply(&opened(0, "a")).expect("apply");
    assert_eq!(open_ahead(&st), None, "chunk 0 is open already (a resume)");
    let later = RunState::fold(&[
        Transition::Planned(Box::new(planned())),
        opened(0, "a"),
        opened(1, "b"),
    ])
    .expect("fold");
    assert_eq!(open_ahead(&later), None);
}
