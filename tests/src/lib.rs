//! Test harness for the end-to-end tests: real Btrfs on loop devices, real S3 servers on
//! loopback, and the real `btrfs-to-s3` binary.

pub mod btrfs;
mod prove;
pub mod s3;
pub mod torture;

pub use prove::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use engine::manifest::{Manifest, Pointer};
use sha2::{Digest, Sha256};

pub use btrfs::{assert_same_tree, LoopFs};
pub use s3::{Flavor, S3Server};

/// Runs a future to completion on a private runtime (tests are synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The binary under test: $BTRFS_TO_S3_BIN, else `btrfs-to-s3` beside the test's target dir.
pub fn tool_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("BTRFS_TO_S3_BIN").filter(|_| name == "btrfs-to-s3") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> (a test) or target/debug/<bin> (the torture command)
    //   ->  target/debug/<name>
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run scripts/test.sh, or `cargo build -p btrfs-to-s3` first",
        p.display()
    );
    p
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code, code,
            "exit code {} (want {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Backup settings a test varies.
#[derive(Debug, Clone)]
pub struct Opts {
    pub chunk_size: String,
    pub part_size: String,
    pub concurrency: u32,
    pub storage_class_chunks: String,
    pub sse: String,
    pub big_file_mib: usize,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            chunk_size: "1GiB".into(),
            part_size: "5MiB".into(),
            concurrency: 3,
            storage_class_chunks: "STANDARD".into(),
            sse: "none".into(),
            big_file_mib: 24,
        }
    }
}

/// One test's world: a seeded subvolume on its own Btrfs, an S3 server, a config file.
pub struct Setup {
    pub s3: S3Server,
    pub fs: LoopFs,
    pub state: tempfile::TempDir,
    pub config: PathBuf,
    pub prefix: String,
    pub name: String,
    pub subvolume: PathBuf,
    pub snapshot_dir: PathBuf,
    pub opts: Opts,
}

impl Setup {
    pub fn new(flavor: Flavor, opts: Opts) -> Setup {
        let fs = LoopFs::new(1024);
        let subvolume = fs.create_subvolume("data");
        btrfs::seed(&subvolume, opts.big_file_mib, 7);
        let snapshot_dir = fs.path(".snapshots");
        let s3 = S3Server::start(flavor);
        let state = tempfile::Builder::new()
            .prefix("b2s3-state-")
            .tempdir()
            .expect("tempdir");
        let config = state.path().join("config.toml");
        let prefix = format!("{}/host1", s3.base_prefix);
        let s = Setup {
            s3,
            fs,
            config,
            prefix,
            name: "data".into(),
            subvolume,
            snapshot_dir,
            state,
            opts,
        };
        s.write_config(&s.default_config());
        s
    }

    pub fn default_config(&self) -> String {
        format!(
            r#"snapshot_dir = "{snap}"
state_dir = "{state}"

[[subvolumes]]
name = "{name}"
path = "{path}"

[s3]
bucket = "{bucket}"
region = "{region}"
{endpoint}
prefix = "{prefix}"
storage_class_chunks = "{class}"
sse = "{sse}"
chunk_size = "{chunk}"
part_size = "{part}"
concurrency = {conc}
max_attempts = 3
attempt_timeout_secs = 60

[schedule]
incremental_every_days = 0
full_every_days = 180
max_chain_length = 60

[retention]
keep_local_snapshots = 1000
keep_chains = 1000
"#,
            snap = self.snapshot_dir.display(),
            state = self.state.path().join("state").display(),
            name = self.name,
            path = self.subvolume.display(),
            bucket = self.s3.bucket,
            region = self.s3.region,
            endpoint = if self.s3.endpoint.is_empty() {
                "path_style = false".to_string()
            } else {
                // moto emulates AWS; garage has its own profile.
                let provider = match self.s3.flavor {
                    Flavor::Garage => "garage",
                    _ => "aws",
                };
                format!(
                    "endpoint = \"{}\"\npath_style = true\nprovider = \"{provider}\"",
                    self.s3.endpoint
                )
            },
            prefix = self.prefix,
            class = self.opts.storage_class_chunks,
            sse = self.opts.sse,
            chunk = self.opts.chunk_size,
            part = self.opts.part_size,
            conc = self.opts.concurrency,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state.path().join("state/journal.redb")
    }

    /// Runs the tool with the S3 server's credentials.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(tool_bin("btrfs-to-s3"), args, &self.s3.env())
    }

    pub fn run_with(&self, bin: PathBuf, args: &[&str], env: &[(String, String)]) -> Output {
        let mut c = Command::new(bin);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("AWS_PROFILE").env_remove("AWS_SESSION_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.stdin(Stdio::null()).output().expect("run btrfs-to-s3");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the tool in the background with the S3 server's credentials and `extra` env.
    pub fn spawn_with(
        &self,
        bin: PathBuf,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> std::process::Child {
        let mut c = Command::new(bin);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("AWS_PROFILE").env_remove("AWS_SESSION_TOKEN");
        for (k, v) in self.s3.env() {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn btrfs-to-s3")
    }

    /// Starts the S3 fault proxy in front of this setup's server and points the config at it.
    pub fn through_proxy(&self) -> fault_injection::proxy::Proxy {
        self.through_proxy_with(|_| {})
    }

    /// `through_proxy` with the proxy's configuration changed by `tweak` (an emulated
    /// provider quirk, a bandwidth cap).
    pub fn through_proxy_with(
        &self,
        tweak: impl FnOnce(&mut fault_injection::proxy::Config),
    ) -> fault_injection::proxy::Proxy {
        let upstream: std::net::SocketAddr = self
            .s3
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .expect("endpoint host:port");
        let mut cfg = fault_injection::proxy::Config::new(upstream);
        tweak(&mut cfg);
        let proxy = fault_injection::proxy::Proxy::start_local(cfg).expect("proxy");
        self.write_config(
            &self
                .default_config()
                .replace(&self.s3.endpoint, &proxy.url()),
        );
        proxy
    }

    /// `restore --subvolume <name> --target <target>` (the newest backup).
    pub fn restore(&self, target: &Path) -> Output {
        self.run(&[
            "restore",
            "--subvolume",
            &self.name,
            "--target",
            &target.display().to_string(),
        ])
    }

    /// The newest backup restored by the tool into a fresh Btrfs filesystem is the same tree as
    /// its source snapshot, and `verify --deep` passes on it. Its manifest.
    pub fn restore_newest_and_verify(&self) -> Manifest {
        let target = LoopFs::new(1024);
        let dir = target.path("r");
        std::fs::create_dir_all(&dir).expect("mkdir");
        self.restore(&dir).assert_code(0);
        let newest = self.manifest(&self.pointer().manifest_key);
        assert_same_tree(
            &self.snapshot_dir.join(&newest.snapshot.name),
            &dir.join(&newest.snapshot.name),
        );
        self.run(&["verify", "--subvolume", &self.name, "--deep"])
            .assert_code(0);
        newest
    }

    /// Starts the failpoints build with `FAILPOINTS=spec` (typically `name=sleep(ms)`, a pause
    /// during which the test changes the world under the run); `finish` collects it.
    pub fn spawn_failpoints(&self, args: &[&str], spec: &str) -> std::process::Child {
        self.spawn_with(
            tool_bin("btrfs-to-s3-failpoints"),
            args,
            &[("FAILPOINTS", spec)],
        )
    }

    /// Waits for a child started with `spawn_with` and returns its output.
    pub fn finish(child: std::process::Child) -> Output {
        let out = child.wait_with_output().expect("wait for btrfs-to-s3");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the failpoints build with `FAILPOINTS=spec` and asserts that it crashed there.
    pub fn crash(&self, args: &[&str], spec: &str) -> Output {
        let env: Vec<(String, String)> = self
            .s3
            .env()
            .into_iter()
            .chain([("FAILPOINTS".to_string(), spec.to_string())])
            .collect();
        let out = self.run_with(tool_bin("btrfs-to-s3-failpoints"), args, &env);
        assert_eq!(
            out.code, -1,
            "{spec} should kill the run; stderr:\n{}",
            out.stderr
        );
        let name = spec.split('=').next().unwrap_or(spec);
        assert!(
            out.stderr.contains(&format!("failpoint {name}: crashing")),
            "{spec}: {}",
            out.stderr
        );
        out
    }

    pub fn pointer_key(&self) -> String {
        format!("{}/{}/current.json", self.prefix, self.name)
    }

    /// Every object under the test prefix, with its size.
    pub fn objects(&self) -> Vec<(String, u64)> {
        self.objects_under(&self.prefix)
    }

    /// Every object whose key starts with `prefix`, with its size.
    pub fn objects_under(&self, prefix: &str) -> Vec<(String, u64)> {
        let client = self.s3.client();
        let (bucket, prefix) = (self.s3.bucket.clone(), prefix.to_string());
        block_on(async move {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let r = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .expect("list objects");
                for o in r.contents() {
                    out.push((
                        o.key().unwrap_or_default().to_string(),
                        o.size().unwrap_or(0) as u64,
                    ));
                }
                token = r.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            out
        })
    }

    /// Open multipart uploads under the test prefix.
    pub fn open_uploads(&self) -> Vec<String> {
        let client = self.s3.client();
        let bucket = self.s3.bucket.clone();
        let prefix = format!("{}/", self.prefix);
        block_on(async move {
            let r = client
                .list_multipart_uploads()
                .bucket(&bucket)
                .prefix(prefix)
                .send()
                .await
                .expect("list uploads");
            r.uploads()
                .iter()
                .map(|u| u.key().unwrap_or_default().to_string())
                .collect()
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let client = self.s3.client();
        let (bucket, key) = (self.s3.bucket.clone(), key.to_string());
        block_on(async move {
            let o = client
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            o.body.collect().await.expect("body").into_bytes().to_vec()
        })
    }

    /// Writes `data` at `key` as someone else with access to the bucket would.
    pub fn put(&self, key: &str, data: Vec<u8>) {
        let client = self.s3.client();
        let (bucket, key) = (self.s3.bucket.clone(), key.to_string());
        block_on(async move {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(data.into())
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        });
    }

    pub fn head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        let client = self.s3.client();
        let (bucket, key) = (self.s3.bucket.clone(), key.to_string());
        block_on(async move {
            client
                .head_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
        })
    }

    pub fn pointer(&self) -> Pointer {
        let key = self.pointer_key();
        Pointer::parse(&key, &self.get(&key)).expect("pointer parses")
    }

    pub fn manifest_raw(&self, key: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(key)).expect("manifest is JSON")
    }

    pub fn manifest(&self, key: &str) -> Manifest {
        Manifest::parse(key, &self.get(key)).expect("manifest parses")
    }

    /// Downloads a backup's chunks, checking every part's xxh3 and CRC32C, every chunk's and
    /// the stream's hash against the manifest. Returns the stream.
    pub fn download_verified(&self, m: &Manifest) -> Vec<u8> {
        // A sealed backup: each part is opened by the age crate itself (not the tool's code)
        // with the identity `encryption_config` made.
        let identity = m.encryption.as_ref().map(|_| self.identity());
        let mut stream = Vec::new();
        let mut chunk_hashes = Vec::new();
        for c in &m.chunks {
            let data = self.get(&c.key);
            assert_eq!(data.len() as u64, c.size, "chunk {} size", c.key);
            let mut plain = Vec::new();
            let mut off = 0usize;
            for p in &c.parts {
                let part = &data[off..off + p.size as usize];
                assert_eq!(
                    engine::manifest::hex_u128(xxhash_of(part)),
                    p.xxh3,
                    "chunk {} part {} xxh3",
                    c.key,
                    p.number
                );
                assert_eq!(
                    engine::manifest::hex_u32(crc32c_of(part)),
                    p.crc32c,
                    "chunk {} part {} crc32c",
                    c.key,
                    p.number
                );
                match &identity {
                    None => plain.extend_from_slice(part),
                    Some(id) => {
                        use std::io::Read;
                        age::Decryptor::new(part)
                            .expect("an age header")
                            .decrypt(std::iter::once(id as &dyn age::Identity))
                            .expect("the identity opens the part")
                            .read_to_end(&mut plain)
                            .expect("age decrypts the part");
                    }
                }
                off += p.size as usize;
            }
            assert_eq!(off, data.len(), "parts cover chunk {}", c.key);
            let h = chunk_hash_of(m, &plain);
            assert_eq!(
                hex::encode(h),
                chunk_hash_field(m, c),
                "chunk {} hash (format {})",
                c.key,
                m.format_version
            );
            chunk_hashes.push(h);
            stream.extend_from_slice(&plain);
        }
        assert_eq!(stream.len() as u64, m.total_bytes, "stream size");
        assert_eq!(
            hex::encode(stream_hash_of(m, &stream, &chunk_hashes)),
            stream_hash_field(m),
            "stream hash (format {})",
            m.format_version
        );
        // A compressed backup: the send stream is its frames decoded, and checked.
        if let Some(c) = &m.compression {
            let mut d = c.decoder().expect("decoder");
            let plain = d.feed(&stream).expect("the frames decode");
            assert_eq!(d.finish(), Ok(c.stream_bytes), "decoded stream");
            return plain;
        }
        stream
    }

    /// Runs the README's disaster-recovery line that `pick` selects, as written there, on
    /// backup `m`: its chunk keys for `K0 K1 …`, this bucket, s5cmd with this server's
    /// endpoint, a fresh Btrfs for `/mnt/restore`, and `extra` placeholders replaced; then the
    /// received tree must equal the snapshot. No btrfs-to-s3 takes part.
    pub fn run_readme_recovery(
        &self,
        m: &Manifest,
        pick: impl Fn(&str) -> bool,
        extra: &[(&str, String)],
    ) {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .expect("README");
        let line = readme
            .lines()
            .find(|l| l.starts_with("for k in") && pick(l))
            .expect("the README's recovery line");
        let mut script = line[..line.find("  #").unwrap_or(line.len())]
            .trim()
            .to_string();
        let keys: Vec<&str> = m.chunks.iter().map(|c| c.key.as_str()).collect();
        let target = LoopFs::new(1024);
        let dir = target.path("dr");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let s5 = format!(
            "{} --endpoint-url {} cat",
            s3::tools_dir().join("venv/bin/s5cmd").display(),
            self.s3.endpoint
        );
        for (from, to) in [
            ("K0 K1 …", keys.join(" ")),
            ("BUCKET", self.s3.bucket.clone()),
            ("/mnt/restore", dir.display().to_string()),
            ("s5cmd cat", s5),
        ]
        .into_iter()
        .chain(extra.iter().map(|(f, t)| (*f, t.clone())))
        {
            script = script.replace(from, &to);
        }
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .envs(self.s3.env())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "`{script}`:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_tree(
            &self.snapshot_dir.join(&m.snapshot.name),
            &dir.join(&m.snapshot.name),
        );
    }

    /// Where `encryption_config` keeps the age identity (mode 600).
    pub fn identity_file(&self) -> PathBuf {
        self.state.path().join("age-identity.txt")
    }

    /// The age identity of this setup, made on first use.
    pub fn identity(&self) -> age::x25519::Identity {
        use age::secrecy::ExposeSecret;
        use std::os::unix::fs::PermissionsExt;
        let path = self.identity_file();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let line = text
                .lines()
                .find(|l| l.starts_with("AGE-SECRET-KEY-"))
                .expect("an identity line");
            return line.parse().expect("identity parses");
        }
        let id = age::x25519::Identity::generate();
        std::fs::write(
            &path,
            format!(
                "# created: by the test harness\n# public key: {}\n{}\n",
                id.to_public(),
                id.to_string().expose_secret()
            ),
        )
        .expect("write identity");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        id
    }

    /// An `[encryption]` table sealing to this setup's identity, with its identity file.
    pub fn encryption_config(&self) -> String {
        format!(
            "[encryption]\nrecipients = [\"{}\"]\nidentity_file = \"{}\"\n",
            self.identity().to_public(),
            self.identity_file().display()
        )
    }

    /// `btrfs receive`s a stream into `dir` (on a Btrfs filesystem).
    pub fn receive(stream: &[u8], dir: &Path) {
        let mut child = Command::new("btrfs")
            .arg("receive")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("btrfs receive");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stream)
            .expect("feed btrfs receive");
        let out = child.wait_with_output().expect("wait receive");
        assert!(
            out.status.success(),
            "btrfs receive failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The manifests of a backup's chain, from its full backup to it.
    pub fn chain(&self, manifest_key: &str) -> Vec<Manifest> {
        let mut chain = vec![self.manifest(manifest_key)];
        while let Some(p) = chain.last().and_then(|m| m.parent.clone()) {
            let parent = self.manifest(&p.manifest_key);
            assert_eq!(parent.backup_id, p.backup_id, "parent link");
            assert_eq!(parent.snapshot.uuid, p.snapshot_uuid, "parent uuid link");
            assert_eq!(
                parent.chain_id, chain[0].chain_id,
                "a chain never crosses chains"
            );
            chain.push(parent);
        }
        chain.reverse();
        assert_eq!(
            chain[0].kind,
            engine::manifest::Kind::Full,
            "a chain starts with a full backup"
        );
        chain
    }

    /// Proves a published backup: downloads and verifies every stream of its chain, receives
    /// them in order into a scratch filesystem, and compares the result with the source
    /// snapshot (and every intermediate one that still exists locally).
    pub fn prove_restorable(&self, manifest_key: &str) -> Manifest {
        let chain = self.chain(manifest_key);
        let scratch = LoopFs::new(1024);
        for m in &chain {
            let stream = self.download_verified(m);
            Setup::receive(&stream, &scratch.mnt);
            let received = scratch.mnt.join(&m.snapshot.name);
            let source = self.snapshot_dir.join(&m.snapshot.name);
            if source.exists() {
                assert_same_tree(&source, &received);
            }
            self.assert_index_lists(m, &received);
        }
        let m = chain.last().cloned().expect("chain");
        assert!(
            self.snapshot_dir.join(&m.snapshot.name).exists(),
            "the newest backup's snapshot is kept locally"
        );
        m
    }

    /// The backup's file index is in the bucket as its manifest records it and names exactly
    /// the paths of `tree` (what its chain restores to).
    pub fn assert_index_lists(&self, m: &Manifest, tree: &Path) {
        let ix = m
            .index
            .as_ref()
            .unwrap_or_else(|| panic!("backup {} has no file index", m.backup_id));
        let stored = self.get(&ix.key);
        let opener = m.encryption.as_ref().map(|e| {
            let o = engine::seal::Opener::from_file(&self.identity_file()).expect("identity");
            (o, e.recipients.len())
        });
        let index = engine::fileindex::stored::open(
            &stored,
            ix,
            opener.as_ref().map(|(o, n)| (o, *n)),
            None,
        )
        .unwrap_or_else(|e| panic!("backup {}: {e}", m.backup_id));
        let mut listed: Vec<Vec<u8>> = index.entries().into_iter().map(|(p, _)| p).collect();
        listed.sort();
        let mut there = Vec::new();
        btrfs::relative_paths(tree, &[], &mut there);
        there.sort();
        assert_eq!(
            listed.len(),
            there.len(),
            "backup {}: the index lists {} paths, the restored tree has {}",
            m.backup_id,
            listed.len(),
            there.len()
        );
        assert!(
            listed == there,
            "backup {}: the index names other paths",
            m.backup_id
        );
    }

    pub fn snapshots(&self) -> Vec<String> {
        match std::fs::read_dir(&self.snapshot_dir) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
                    .collect();
                v.sort();
                v
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Panics naming `what` and its entries unless `dir` is empty.
pub fn assert_empty_dir(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in {what}: {left:?}");
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{what}: not seen within {secs} s");
}

/// The stream hash a manifest must hold, by its own rule (computed here with the sha2 and
/// blake3 crates, not the tool's code): format 5 hashes the chunks' BLAKE3s in order with
/// BLAKE3, for any number of chunks; format 4 (written with SHA-256 for every stream of more
/// than one chunk, and only for those) the chunks' SHA-256s with SHA-256; older formats hash
/// the whole stream.
pub fn stream_hash_of(
    m: &engine::manifest::Manifest,
    stream: &[u8],
    chunk_hashes: &[[u8; 32]],
) -> [u8; 32] {
    if m.format_version == 5 {
        let mut h = blake3::Hasher::new();
        for c in chunk_hashes {
            h.update(c);
        }
        return h.finalize().into();
    }
    assert_eq!(
        m.format_version == 4,
        chunk_hashes.len() > 1,
        "format {} for {} chunks",
        m.format_version,
        chunk_hashes.len()
    );
    if m.format_version == 4 {
        let mut h = Sha256::new();
        for c in chunk_hashes {
            h.update(c);
        }
        h.finalize().into()
    } else {
        Sha256::digest(stream).into()
    }
}

/// A chunk's hash by its manifest's format: BLAKE3 for format 5, else SHA-256.
pub fn chunk_hash_of(m: &engine::manifest::Manifest, bytes: &[u8]) -> [u8; 32] {
    if m.format_version == 5 {
        blake3::hash(bytes).into()
    } else {
        Sha256::digest(bytes).into()
    }
}

/// The chunk hash the manifest records, from the field its format names (`blake3` in format
/// 5, else `sha256`); the other field must be absent.
pub fn chunk_hash_field<'a>(
    m: &engine::manifest::Manifest,
    c: &'a engine::manifest::ChunkEntry,
) -> &'a str {
    let (mine, other) = if m.format_version == 5 {
        (&c.blake3, &c.sha256)
    } else {
        (&c.sha256, &c.blake3)
    };
    assert!(other.is_empty(), "chunk {}: both hashes", c.key);
    mine
}

/// The stream hash the manifest records, from the field its format names.
pub fn stream_hash_field(m: &engine::manifest::Manifest) -> &str {
    let (mine, other) = if m.format_version == 5 {
        (&m.stream_blake3, &m.stream_sha256)
    } else {
        (&m.stream_sha256, &m.stream_blake3)
    };
    assert!(other.is_empty(), "both stream hashes");
    mine
}
