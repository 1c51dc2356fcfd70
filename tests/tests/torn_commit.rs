//! Guards the journal against a kill in the middle of a commit: a process appending records
//! as fast as it can is SIGKILLed at random moments, 30 times on one journal file. Every
//! commit it acknowledged must be there afterwards, decodable and in order, and the file
//! must open cleanly each time.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::btrfs::Rng;
use harness::tool_bin;
use journal::{Journal, Transition};

#[test]
fn kill_during_commits_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.redb");
    let mut rng = Rng::new(42);
    let mut total_acked = 0;
    for round in 0..30 {
        let mut child = Command::new(tool_bin("journal_hammer"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn hammer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Wait for the run to exist, then kill at a random moment among the commits.
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hammer started");
        let run: u64 = first
            .strip_prefix("run ")
            .expect("run line")
            .parse()
            .expect("id");
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 200_000));
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        reader.join().expect("reader");
        let acked = rx
            .try_iter()
            .filter_map(|l| {
                l.strip_prefix("committed ")
                    .map(|n| n.parse::<u32>().expect("n"))
            })
            .max()
            .unwrap_or(0);
        total_acked += acked;

        let j = Journal::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let ts = j
            .transitions(run)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(matches!(ts[0], Transition::Planned(_)));
        let parts: Vec<u32> = ts[1..]
            .iter()
            .map(|t| match t {
                Transition::PartCommitted(p) => p.part_number,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // In order, no gap, and at least everything acknowledged (one more may have landed
        // between the commit and the print).
        assert_eq!(
            parts,
            (1..=parts.len() as u32).collect::<Vec<_>>(),
            "round {round}"
        );
        assert!(
            parts.len() as u32 >= acked,
            "round {round}: acked {acked}, found {}",
            parts.len()
        );
        assert!(
            parts.len() as u32 <= acked + 1,
            "round {round}: phantom records"
        );
        assert_eq!(j.open_runs().expect("runs").len(), round + 1);
    }
    assert!(
        total_acked > 30,
        "kills should land among commits ({total_acked} commits in all)"
    );
}
