//! Appends journal records as fast as it can and prints, after each commit returns, how
//! many it has committed. The torn-commit test SIGKILLs it at random moments.

use journal::{BackupKind, Journal, PartRecord, Planned, Transition};

fn main() {
    let path = std::env::args().nth(1).expect("journal path");
    let j = Journal::open(std::path::Path::new(&path)).expect("open journal");
    let run = j
        .begin_run(Planned {
            subvolume: "hammer".into(),
            source_path: "/hammer".into(),
            kind: BackupKind::Full,
            snapshot_name: "hammer.x".into(),
            snapshot_path: "/hammer.x".into(),
            backup_id: "x".into(),
            chain_id: "x".into(),
            created_at: "x".into(),
            chunk_size: 1 << 30,
            part_size: 8 << 20,
            settings: "x".into(),
        })
        .expect("begin");
    println!("run {run}");
    for n in 1u32.. {
        j.append(
            run,
            &Transition::PartCommitted(PartRecord {
                chunk: 0,
                part_number: n,
                offset: u64::from(n) << 23,
                length: 8 << 20,
                etag: format!("etag-{n}"),
                xxh3: u128::from(n) * 0x9E37_79B9,
                crc32c: n,
            }),
        )
        .expect("append");
        println!("committed {n}");
    }
}
