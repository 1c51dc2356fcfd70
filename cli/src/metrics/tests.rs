use super::*;
use engine::journal::{BackupKind, RunSummary};

fn header(id: u64, chain: &str, backup: &str, status: RunStatus) -> RunHeader {
    RunHeader {
        id,
        subvolume: "data".into(),
        backup_id: backup.into(),
        snapshot_name: format!("data.{backup}"),
        chain_id: chain.into(),
        status,
        summary: (status == RunStatus::Finished).then(|| RunSummary {
            kind: BackupKind::Full,
            snapshot_path: format!("/s/data.{backup}"),
            snapshot_uuid: "u".into(),
            created_at: format!(
                "{}-{}-{}T{}:{}:{}Z",
                &backup[..4],
                &backup[4..6],
                &backup[6..8],
                &backup[9..11],
                &backup[11..13],
                &backup[13..15]
            ),
            manifest_key: "m".into(),
            total_bytes: 1,
            chunks: 1,
            parts: 1,
        }),
        location: None,
    }
}

#[test]
fn journal_view_counts_the_current_chain_and_the_kept_ones() {
    let runs = vec![
        header(
            1,
            "20260101T000000Z",
            "20260101T000000Z",
            RunStatus::Finished,
        ),
        header(
            2,
            "20260101T000000Z",
            "20260102T000000Z",
            RunStatus::Finished,
        ),
        header(
            3,
            "20260201T000000Z",
            "20260201T000000Z",
            RunStatus::Finished,
        ),
        header(
            4,
            "20260201T000000Z",
            "20260202T000000Z",
            RunStatus::Abandoned,
        ),
        header(
            5,
            "20260301T000000Z",
            "20260301T000000Z",
            RunStatus::Finished,
        ),
        header(
            6,
            "20260301T000000Z",
            "20260302T000000Z",
            RunStatus::Finished,
        ),
        header(7, "20260301T000000Z", "20260303T000000Z", RunStatus::Open),
    ];
    let j = from_journal(&runs, "data", 2);
    assert_eq!(j.chain_length, 2);
    assert_eq!(j.backups_kept, 3, "chains of March and February");
    assert_eq!(
        j.last_success,
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z")
                .expect("t")
                .timestamp()
        )
    );
    assert_eq!(from_journal(&runs, "other", 2), FromJournal::default());
}

fn report(subvolume: &str, total: u64, uploaded: u64, reused: u64, resumed: bool) -> RunReport {
    RunReport {
        run_id: 1,
        subvolume: subvolume.into(),
        backup_id: "b".into(),
        chain_id: "c".into(),
        kind: engine::manifest::Kind::Full,
        snapshot: "s".into(),
        manifest_key: "m".into(),
        pointer_key: "p".into(),
        total_bytes: total,
        chunks: 1,
        parts: 1,
        uploaded_bytes: uploaded,
        reused_bytes: reused,
        resumed,
        seconds: 2.5,
        retention_held: Vec::new(),
    }
}

#[test]
fn results_fold_into_counters_and_last_runs() {
    let mut st = State::default();
    // A resumed run: 100 bytes of stream, 40 reused, 70 uploaded: 10 sent again.
    record(&mut st, &[report("data", 100, 70, 40, true)], &[], 1000);
    assert_eq!(
        (st.runs_succeeded, st.runs_resumed, st.runs_failed),
        (1, 1, 0)
    );
    let last = &st.last_run["data"];
    assert!(last.success);
    assert_eq!(
        (last.sent_bytes, last.resent_bytes, last.ended),
        (70, 10, 1000)
    );
    record(
        &mut st,
        &[],
        &[("data".into(), BackupError::Internal("x".into()))],
        2000,
    );
    assert_eq!(st.runs_failed, 1);
    let last = &st.last_run["data"];
    assert!(!last.success);
    assert_eq!(
        (last.ended, last.sent_bytes),
        (2000, 70),
        "figures of the last success stay"
    );
}

#[test]
fn render_is_the_text_format_with_help_type_and_escaped_labels() {
    let mut st = State::default();
    record(
        &mut st,
        &[report("we\"ird\\name", 10, 10, 0, false)],
        &[],
        5,
    );
    let text = render(
        &[(
            "we\"ird\\name".into(),
            FromJournal {
                last_success: Some(4),
                chain_length: 3,
                backups_kept: 7,
            },
        )],
        &st,
    );
    assert!(text.contains(
        "# TYPE btrfs_to_s3_last_success_timestamp_seconds gauge\nbtrfs_to_s3_last_success_timestamp_seconds{subvolume=\"we\\\"ird\\\\name\"} 4\n"
    ), "{text}");
    assert!(
        text.contains("btrfs_to_s3_runs_succeeded_total 1\n"),
        "{text}"
    );
    assert!(text.contains("btrfs_to_s3_backups_kept{subvolume=\"we\\\"ird\\\\name\"} 7\n"));
    // Every sample line belongs to a family announced just before.
    let mut announced = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            announced = rest.split(' ').next().unwrap_or_default().to_string();
        } else if !line.starts_with('#') {
            assert!(
                line.starts_with(&announced),
                "{line} after TYPE {announced}"
            );
        }
    }
    // A subvolume with no run and no backup yet: only its journal gauges.
    let empty = render(&[("new".into(), FromJournal::default())], &State::default());
    assert!(!empty.contains("last_success_timestamp"));
    assert!(empty.contains("btrfs_to_s3_chain_length{subvolume=\"new\"} 0"));
}

#[test]
fn a_damaged_state_file_starts_again_from_zero() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join(STATE_FILE), b"{\"runs_succeeded\": \"x\"").expect("write");
    assert_eq!(load_state(dir.path()), State::default());
    let st = State {
        runs_failed: 3,
        ..State::default()
    };
    write_atomically(
        &dir.path().join(STATE_FILE),
        &serde_json::to_vec(&st).expect("json"),
        0o600,
    )
    .expect("write");
    assert_eq!(load_state(dir.path()), st);
}
