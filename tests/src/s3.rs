//! Real S3 servers on free loopback ports, one per test: garage (production S3 server) and
//! moto (AWS semantics: storage classes, SSE, archive restore). Each is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, Region};

pub fn tools_dir() -> PathBuf {
    std::env::var_os("BTRFS_TO_S3_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/btrfs-to-s3-tools"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} did not listen on port {port} within 30 s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Garage,
    Moto,
    /// Real AWS, opt-in: BTRFS_TO_S3_AWS_CONFIG names a TOML file with `bucket`, `region`
    /// and optionally `prefix`; credentials come from the standard AWS environment.
    Aws,
}

/// A running S3 server with one bucket and one key that may use it.
pub struct S3Server {
    pub flavor: Flavor,
    /// Empty for real AWS (the SDK's default endpoint).
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// Key prefix the tests must stay under (real AWS: a unique one, removed on drop).
    pub base_prefix: String,
    child: Option<Child>,
    /// garage's config file (garage only), for `garage_cli`.
    garage_conf: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.flavor == Flavor::Aws {
            self.remove_prefix();
        }
    }
}

struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl S3Server {
    pub fn start(flavor: Flavor) -> S3Server {
        match flavor {
            Flavor::Garage => S3Server::garage(),
            Flavor::Moto => S3Server::moto(),
            Flavor::Aws => S3Server::aws(),
        }
    }

    pub fn aws() -> S3Server {
        let path = std::env::var("BTRFS_TO_S3_AWS_CONFIG").unwrap_or_else(|_| {
            panic!("real-AWS tests need BTRFS_TO_S3_AWS_CONFIG=FILE (TOML: bucket, region, prefix) and AWS credentials in the environment; see scripts/test-aws.sh")
        });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let conf: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let get = |k: &str| conf.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let bucket = get("bucket").unwrap_or_else(|| panic!("{path}: `bucket` is required"));
        let region = get("region").unwrap_or_else(|| panic!("{path}: `region` is required"));
        let unique = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            std::process::id()
        );
        let base = get("prefix").unwrap_or_else(|| "btrfs-to-s3-tests".into());
        S3Server {
            flavor: Flavor::Aws,
            endpoint: String::new(),
            region,
            access_key: String::new(),
            secret_key: String::new(),
            bucket,
            base_prefix: format!("{}/{unique}", base.trim_matches('/')),
            child: None,
            garage_conf: None,
            _dir: None,
        }
    }

    /// Deletes every object and aborts every upload under `base_prefix` (real AWS cleanup, and
    /// `delete_bucket`). Errors are ignored: it also runs on drop.
    fn remove_prefix(&self) {
        let client = self.client();
        let (bucket, prefix) = (self.bucket.clone(), format!("{}/", self.base_prefix));
        crate::block_on(async move {
            if let Ok(r) = client
                .list_multipart_uploads()
                .bucket(&bucket)
                .prefix(&prefix)
                .send()
                .await
            {
                for u in r.uploads() {
                    let _ = client
                        .abort_multipart_upload()
                        .bucket(&bucket)
                        .key(u.key().unwrap_or_default())
                        .upload_id(u.upload_id().unwrap_or_default())
                        .send()
                        .await;
                }
            }
            let mut token = None;
            loop {
                let Ok(r) = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token)
                    .send()
                    .await
                else {
                    break;
                };
                for o in r.contents() {
                    let _ = client
                        .delete_object()
                        .bucket(&bucket)
                        .key(o.key().unwrap_or_default())
                        .send()
                        .await;
                }
                token = r.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        });
    }

    /// A fresh garage. Its ports are picked free but may be taken by another test's server
    /// before garage binds them (tests run in parallel): a setup that fails is made again on
    /// other ports, twice at most.
    pub fn garage() -> S3Server {
        for attempt in 1.. {
            match std::panic::catch_unwind(S3Server::garage_once) {
                Ok(s) => return s,
                Err(e) if attempt < 3 => {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "panic".into());
                    eprintln!("garage setup attempt {attempt} failed, trying other ports: {why}");
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn garage_once() -> S3Server {
        let bin = tools_dir().join("bin/garage");
        assert!(
            bin.exists(),
            "garage is not installed at {}: run scripts/install-deps.sh (cargo install garage --locked, once)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("b2s3-garage-")
            .tempdir()
            .expect("tempdir");
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let conf = dir.path().join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .expect("garage config");
        let log = dir.path().join("garage.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start garage");
        // Killed if the setup below fails: a half-set-up server must not keep its ports.
        let mut child = KillOnDrop(Some(child));
        wait_port(rpc, "garage", &log);
        let g = |args: &[&str]| {
            let mut c = Command::new(&bin);
            c.arg("-c").arg(&conf).args(args);
            run_ok(&mut c, &format!("garage {args:?}"))
        };
        let id = g(&["node", "id", "-q"]);
        let id = id.trim().split('@').next().expect("node id").to_string();
        g(&["layout", "assign", "-z", "dc1", "-c", "100G", &id]);
        g(&["layout", "apply", "--version", "1"]);
        let access_key = format!("GK{}", &secret[..24]);
        let secret_key = format!("{}{}", &secret[24..], &secret[..24]);
        g(&[
            "key",
            "import",
            "--yes",
            "-n",
            "test",
            &access_key,
            &secret_key,
        ]);
        let bucket = "b2s3-test".to_string();
        g(&["bucket", "create", &bucket]);
        g(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "test",
        ]);
        wait_port(s3, "garage S3 API", &log);
        let server = S3Server {
            flavor: Flavor::Garage,
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: "us-east-1".into(),
            access_key,
            secret_key,
            bucket,
            base_prefix: "test".into(),
            child: child.0.take(),
            garage_conf: Some(conf),
            _dir: Some(dir),
        };
        // The port was free when chosen, but another server started at the same time may
        // have taken it first (then this garage could not bind it, and the port answers for
        // someone else): only our own key on our own bucket proves it is ours. A panic here
        // drops (kills) this garage and `garage()` tries other ports.
        let client = server.client();
        let bucket = server.bucket.clone();
        let ours = crate::block_on(async move {
            for _ in 0..50 {
                if client.head_bucket().bucket(&bucket).send().await.is_ok() {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        });
        assert!(
            ours,
            "garage's S3 port {s3} does not answer for our key and bucket (taken by another server?)"
        );
        server
    }

    /// SIGKILLs the server process (garage only: its data survives on disk), the way a crash
    /// or an OOM kill would, while a run may be talking to it.
    pub fn kill(&mut self) {
        assert_eq!(
            self.flavor,
            Flavor::Garage,
            "only garage keeps its data over a kill"
        );
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts garage again after `kill` with the same configuration, ports and data, and
    /// waits until its S3 API listens.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again after kill");
        let conf = self.garage_conf.clone().expect("garage config");
        let log = conf.with_file_name("garage.log");
        let child = Command::new(tools_dir().join("bin/garage"))
            .arg("-c")
            .arg(&conf)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("garage log"),
            )
            .spawn()
            .expect("start garage again");
        self.child = Some(child);
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint port");
        wait_port(port, "garage S3 API (restarted)", &log);
    }

    /// Runs garage's own CLI against this server (garage only): what an operator would do
    /// to the bucket or the key while a run is going on.
    pub fn garage_cli(&self, args: &[&str]) -> String {
        let conf = self
            .garage_conf
            .as_ref()
            .expect("garage_cli is for the garage flavor");
        let mut c = Command::new(tools_dir().join("bin/garage"));
        c.arg("-c").arg(conf).args(args);
        run_ok(&mut c, &format!("garage {args:?}"))
    }

    pub fn moto() -> S3Server {
        let bin = tools_dir().join("venv/bin/moto_server");
        assert!(
            bin.exists(),
            "moto server is not installed at {}: run scripts/install-deps.sh (pip install 'moto[server]' in a venv)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("b2s3-moto-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let log = dir.path().join("moto.log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start moto");
        wait_port(port, "moto_server", &log);
        let s = S3Server {
            flavor: Flavor::Moto,
            endpoint: format!("http://127.0.0.1:{port}"),
            region: "us-east-1".into(),
            access_key: "AKIAMOTOTESTKEY00001".into(),
            secret_key: "moto-test-secret-key".into(),
            bucket: "b2s3-test".into(),
            base_prefix: "test".into(),
            child: Some(child),
            garage_conf: None,
            _dir: Some(dir),
        };
        s.create_bucket();
        s
    }

    /// Creates the bucket through the S3 API (moto's start, or a test recreating it).
    pub fn create_bucket(&self) {
        let client = self.client();
        let bucket = self.bucket.clone();
        crate::block_on(async move {
            client
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .expect("create bucket");
        });
    }

    /// Deletes the bucket as someone with access could: empties the test prefix (aborting
    /// its uploads), then DeleteBucket, which fails if anything else is left.
    pub fn delete_bucket(&self) {
        self.remove_prefix();
        let client = self.client();
        let bucket = self.bucket.clone();
        crate::block_on(async move {
            client
                .delete_bucket()
                .bucket(bucket)
                .send()
                .await
                .expect("delete bucket");
        });
    }

    /// An SDK client for assertions, independent of the tool under test.
    pub fn client(&self) -> aws_sdk_s3::Client {
        if self.flavor == Flavor::Aws {
            let region = self.region.clone();
            let sdk = crate::block_on(async move {
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(Region::new(region))
                    .load()
                    .await
            });
            return aws_sdk_s3::Client::new(&sdk);
        }
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates `<bucket>-locked` with Object Lock (and so versioning) and makes it this
    /// server's bucket.
    pub fn use_locked_bucket(&mut self) {
        let bucket = format!("{}-locked", self.bucket);
        let client = self.client();
        let b = bucket.clone();
        crate::block_on(async move {
            client
                .create_bucket()
                .bucket(&b)
                .object_lock_enabled_for_bucket(true)
                .send()
                .await
                .expect("create a bucket with Object Lock")
        });
        self.bucket = bucket;
    }

    /// Environment for the tool: standard AWS variables, nothing else.
    pub fn env(&self) -> Vec<(String, String)> {
        if self.flavor == Flavor::Aws {
            // The caller's own AWS environment is passed through unchanged.
            return Vec::new();
        }
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

fn rand_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() & 0xff) as u8
}
