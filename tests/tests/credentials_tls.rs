//! With a plain `http://` endpoint, S3 requests go without root certificates (loading them
//! cost 35 ms of a cold start), but credentials fetched over HTTPS still verify against the
//! system's roots: a container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`)
//! served over TLS by a certificate of a test CA. With that CA in `SSL_CERT_FILE` the tool
//! gets its keys there and reaches garage; trusting only another CA, it refuses the endpoint.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use harness::{Flavor, Opts, Setup};

/// Runs `openssl` with `args` (split at spaces), each `{d}` standing for `dir`.
fn openssl(dir: &Path, args: &str) {
    let args = args.replace("{d}", &dir.display().to_string());
    harness::btrfs::sh("openssl", &args.split(' ').collect::<Vec<_>>());
}

/// Two CAs (`ca.pem`, `other.pem`) and a certificate for 127.0.0.1 signed by the first
/// (`server.pem`, `server.key`), all in `dir`.
fn test_ca(dir: &Path) {
    for name in ["ca", "other"] {
        openssl(
            dir,
            &format!(
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=btrfs-to-s3-test-{name} \
                 -keyout {{d}}/{name}.key -out {{d}}/{name}.pem"
            ),
        );
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {d}/server.key \
         -out {d}/server.csr",
    );
    openssl(
        dir,
        "x509 -req -in {d}/server.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial \
         -days 2 -extfile {d}/ext.cnf -out {d}/server.pem",
    );
}

/// An HTTPS server answering every GET with `body` and counting them in `hits`; prints its
/// port first.
struct CredServer {
    child: Child,
    port: u16,
}

impl CredServer {
    fn start(dir: &Path, body: &str) -> CredServer {
        let script = r#"
import http.server, ssl, sys
body = sys.argv[1].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open("hits", "a") as f:
            f.write(self.path + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("server.pem", "server.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, body])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let port = line.trim().parse().expect("a port");
        CredServer { child, port }
    }
}

impl Drop for CredServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn garage_over_http_with_credentials_fetched_over_https() {
    let s = Setup::new(Flavor::Garage, Opts::default());
    let env = s.s3.env();
    let key = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .expect("the server's key")
    };
    assert!(
        s.default_config().contains("endpoint = \"http://"),
        "this test needs a plain endpoint"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    test_ca(dir.path());
    let body = serde_json::json!({
        "AccessKeyId": key("AWS_ACCESS_KEY_ID"),
        "SecretAccessKey": key("AWS_SECRET_ACCESS_KEY"),
        "Token": "test-session-token",
        "Expiration": "2099-01-01T00:00:00Z",
    })
    .to_string();
    let server = CredServer::start(dir.path(), &body);
    std::fs::create_dir_all(dir.path().join("no-certs")).expect("mkdir");
    let run = |cert_file: &str| {
        let out = Command::new(harness::tool_bin("btrfs-to-s3"))
            .arg("--config")
            .arg(&s.config)
            .args(["list", "--json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("https://127.0.0.1:{}/creds", server.port),
            )
            .env("SSL_CERT_FILE", dir.path().join(cert_file))
            .env("SSL_CERT_DIR", dir.path().join("no-certs"))
            .stdin(Stdio::null())
            .output()
            .expect("run btrfs-to-s3");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hits = || {
        std::fs::read_to_string(dir.path().join("hits"))
            .unwrap_or_default()
            .lines()
            .count()
    };

    // The test CA trusted: the keys come over TLS and garage accepts them.
    let (code, stderr) = run("ca.pem");
    assert_eq!(code, 0, "with the CA trusted: {stderr}");
    assert!(hits() >= 1, "the credentials endpoint was never asked");

    // Only another CA trusted: the TLS handshake with the credentials endpoint fails, so the
    // run does.
    let before = hits();
    let (code, stderr) = run("other.pem");
    assert_ne!(
        code, 0,
        "an endpoint no root vouches for must not be trusted"
    );
    assert_eq!(
        hits(),
        before,
        "a request got through an untrusted TLS connection"
    );
    assert!(
        stderr.contains("could not get credentials") && !stderr.contains("could not reach"),
        "the error names the credentials, not the server: {stderr}"
    );
}
