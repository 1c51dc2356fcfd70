//! `torture`: the torture driver as one command (see `harness::torture`).

use harness::torture::{run, Options};

const HELP: &str = "\
torture: backups, resumes and restores of btrfs-to-s3 under random SIGKILLs, random faults on
the link (the S3 fault proxy) and S3 server (garage) kills, with the end state proven after
every iteration: the newest backup's chain received identical to its snapshots, one manifest
per backup, the pointer on the newest, no open multipart upload, no leaked snapshot, part bytes
sent again within concurrency x part_size per interruption; random restores during the run and
every retained backup at the end restore to the tree each was taken from.

Needs root, btrfs-progs and garage (scripts/install-deps.sh), and a built btrfs-to-s3
(target/debug, or BTRFS_TO_S3_BIN). Usually run as scripts/torture.sh.

usage: torture [--iterations N] [--seed S] [--json] [--quiet]
  --iterations N  iterations to run (default 20)
  --seed S        the seed of the sequence of actions (default: from the clock, printed);
                  a failure prints the seed and iteration that replay it
  --json          print the figures as JSON on stdout at the end
  --quiet         no line per iteration on stderr

exit codes: 0 every iteration proven; 1 an iteration failed (its seed is printed); 2 bad usage
";

fn main() {
    let mut opts = Options {
        iterations: 20,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
        verbose: true,
    };
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> u64 {
            match args.next().map(|v| v.parse::<u64>()) {
                Some(Ok(n)) => n,
                _ => {
                    eprintln!("error: {what} needs a whole number\n\n{HELP}");
                    std::process::exit(2);
                }
            }
        };
        match a.as_str() {
            "--iterations" => opts.iterations = number("--iterations"),
            "--seed" => opts.seed = number("--seed"),
            "--json" => json = true,
            "--quiet" => opts.verbose = false,
            "-h" | "--help" => {
                print!("{HELP}");
                return;
            }
            other => {
                eprintln!("error: unknown argument `{other}`\n\n{HELP}");
                std::process::exit(2);
            }
        }
    }
    eprintln!(
        "torture: {} iterations, seed {}",
        opts.iterations, opts.seed
    );
    match run(&opts) {
        Ok(f) => {
            eprintln!("torture passed: {}", f.summary());
            if json {
                println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
            }
        }
        Err(failure) => {
            eprintln!("torture FAILED: {failure}");
            eprintln!("so far: {}", failure.figures.summary());
            std::process::exit(1);
        }
    }
}
