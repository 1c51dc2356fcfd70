//! Guards resume against kills the process does not choose: `backup` is SIGKILLed from
//! outside at a random moment, then `resume` must leave every backup published whole (one
//! manifest per backup, the pointer on the newest, nothing open, the newest restorable) and
//! send again at most concurrency × part_size bytes. 20 kills per server in the normal run (10
//! for the sealed variant);
//! BTRFS_TO_S3_TORTURE_ITERATIONS=200 for a long run (scripts/torture.sh runs the torture
//! driver, harness::torture, which adds link faults and server kills). The same on garage with
//! every part compressed and sealed to an age recipient.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::btrfs::Rng;
use harness::{tool_bin, Flavor, Opts, Setup};

const CONCURRENCY: u32 = 3;
const PART: u64 = 5 << 20;

fn torture(flavor: Flavor, sealed: bool) {
    let iterations: usize = std::env::var("BTRFS_TO_S3_TORTURE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        // The sealed variant proves the same protocol with every part sealed; half as many
        // kills keep the normal run's time (each iteration decrypts the chain to prove it).
        .unwrap_or(if sealed { 10 } else { 20 });
    let s = Setup::new(
        flavor,
        Opts {
            chunk_size: "12MiB".into(),
            part_size: "5MiB".into(),
            concurrency: CONCURRENCY,
            // Enough data that most of a run is upload, not process start-up.
            big_file_mib: 72,
            ..Opts::default()
        },
    );
    if sealed {
        s.write_config(&format!(
            "compression = \"zstd\"\n{}{}",
            s.default_config(),
            s.encryption_config()
        ));
    }
    // Resent bytes are counted in stored bytes against plaintext sizes: a sealed part is
    // larger by its age header and tags.
    let seal = if sealed {
        engine::seal::sealed_len(1, PART) - PART
    } else {
        0
    };
    // How long an undisturbed backup takes bounds the random kill delay: the faster of two
    // (the first also warms the server and the page cache, and a slow first run put most
    // kills after the run's end).
    let mut full = Duration::MAX;
    for _ in 0..2 {
        let t0 = Instant::now();
        s.run(&["backup", "--full"]).assert_code(0);
        full = full.min(t0.elapsed());
    }
    let mut rng = Rng::new(0x5EED ^ flavor as u64);
    let (mut mid_run, mut worst_resent, mut total_resent, mut stream) = (0, 0u64, 0u64, 0u64);
    for i in 0..iterations {
        // Past most of the start-up, up to the end of an undisturbed run.
        let window = full.as_micros() as u64;
        let delay = Duration::from_micros(window / 10 + rng.next_u64() % (window * 9 / 10 + 1));
        let mut child = Command::new(tool_bin("btrfs-to-s3"))
            .arg("--config")
            .arg(&s.config)
            // Full backups: an incremental of an unchanged tree is over too fast to interrupt.
            .args(["backup", "--full"])
            .envs(s.s3.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backup");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        if !status.success() && !s.open_runs().is_empty() {
            mid_run += 1;
        }
        let f = s.resume_and_prove(None);
        let bound = u64::from(CONCURRENCY) * PART + f.stream_bytes.div_ceil(PART) * seal;
        assert!(
            f.resent_bytes <= bound,
            "iteration {i} (kill after {delay:?}): sent {} bytes again",
            f.resent_bytes
        );
        worst_resent = worst_resent.max(f.resent_bytes);
        stream = f.stream_bytes;
        total_resent += f.resent_bytes;
    }
    eprintln!(
        "{flavor:?}{}: {iterations} kills, {mid_run} mid-run; stream {stream} B; sent again: worst {worst_resent} B, mean {} B per kill; limit {} B",
        if sealed { " (zstd + age)" } else { "" },
        total_resent / iterations.max(1) as u64,
        u64::from(CONCURRENCY) * PART
    );
    assert!(
        mid_run * 2 >= iterations,
        "too few kills landed mid-run ({mid_run}/{iterations})"
    );
}

#[test]
fn garage_random_sigkill_then_resume() {
    torture(Flavor::Garage, false);
}

#[test]
fn moto_random_sigkill_then_resume() {
    torture(Flavor::Moto, false);
}

#[test]
fn garage_encrypted_random_sigkill_then_resume() {
    torture(Flavor::Garage, true);
}
