//! S3 providers bend the protocol; the fault proxy emulates their quirks in front of garage
//! (moto where a quirk rewrites what is signed). Under each quirk, with the matching
//! `[s3] provider`, `scenario` runs a backup killed mid-upload and resumed, an incremental,
//! `list`, a restore, `verify --deep` and retention; with the wrong profile the first backup
//! stops with exit 4 and a message naming the setting.
//!
//! Checksum headers: Backblaze B2 and older Ceph RGW answer 400 to any x-amz-checksum-*
//! header. With the default `checksum = "crc32c"` the first backup stops with exit 4 and a
//! message naming the setting (the run stays resumable; `check` says the same); with
//! `checksum = "md5"` (Content-MD5, which every S3 server takes) the run resumes and backup,
//! incremental, restore, verify and retention pass with no header refused; `"none"` too.

use fault_injection::proxy::{Op, Proxy};
use harness::btrfs::mutate;
use harness::{Flavor, Opts, Setup};

/// Sets `[s3]` keys (each `key = value` line replaces the harness's own, if any).
fn with_s3(s: &Setup, lines: &[&str]) {
    let mut text = std::fs::read_to_string(&s.config).expect("config");
    for line in lines {
        let key = line.split('=').next().expect("key").trim();
        text = text
            .lines()
            .filter(|l| l.split('=').next().map(str::trim) != Some(key))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        text = text.replace("[s3]\n", &format!("[s3]\n{line}\n"));
    }
    s.write_config(&text);
}

/// Backup killed after a committed part and resumed (ListParts, ListMultipartUploads, the
/// parts reused), an incremental, `list`, restore of the newest, `verify --deep`, and
/// retention pruning a chain (ListObjectsV2, DeleteObject): all through `proxy`.
fn scenario(s: &Setup, proxy: &Proxy) {
    s.crash(&["backup"], "after-part-upload=2*off->return");
    let f = s.resume_and_prove(Some(1));
    assert!(f.stream_bytes > 0);
    mutate(&s.subvolume, 4);
    s.run(&["backup", "--once"]).assert_code(0);
    let listed = s.run(&["list", "--json"]);
    listed.assert_code(0);
    assert!(
        listed.stdout.matches("\"backup_id\"").count() >= 2,
        "{}",
        listed.stdout
    );
    s.restore_newest_and_verify();
    let text = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&text.replace("keep_chains = 1000", "keep_chains = 1"));
    s.run(&["backup", "--full"]).assert_code(0);
    let objects = s.objects();
    let manifests = objects
        .iter()
        .filter(|(k, _)| k.ends_with("/manifest.json"))
        .count();
    assert_eq!(manifests, 1, "retention left {objects:?}");
    let kept = s.manifest(&s.pointer().manifest_key);
    let chunks = objects
        .iter()
        .filter(|(k, _)| k.contains("/chunk-"))
        .count();
    assert_eq!(chunks, kept.chunks.len(), "{objects:?}");
    assert!(
        proxy.forwarded(Op::Part).0 > 0,
        "no part went through the proxy"
    );
}

fn small(flavor: Flavor) -> Setup {
    Setup::new(
        flavor,
        Opts {
            chunk_size: "15MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            ..Opts::default()
        },
    )
}

/// Scaleway takes 1,000 parts per upload; emulated as 2 (a chunk of 3 parts crosses it).
/// With garage's profile the first backup stops, exit 4, naming provider and max_parts; with
/// scaleway's profile and max_parts = 2 the chunk is lowered to 2 parts and all passes.
#[test]
fn part_number_limit_needs_the_profile_and_then_works_throughout() {
    let s = small(Flavor::Garage);
    let proxy = s.through_proxy_with(|c| c.max_part_number = Some(2));
    let out = s.run(&["backup"]);
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("Part number must be an integer between 1 and 2")
            && out.stderr.contains("set provider in [s3]")
            && out.stderr.contains("max_parts"),
        "{}",
        out.stderr
    );
    assert!(!proxy.quirk_refusals().is_empty());

    let s = small(Flavor::Garage);
    let proxy = s.through_proxy_with(|c| c.max_part_number = Some(2));
    with_s3(&s, &["provider = \"scaleway\"", "max_parts = 2"]);
    let check = s.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains("scaleway (configured): at most 2 parts")
            && check
                .stdout
                .contains("chunk_size lowered from 15728640 to 10485760"),
        "{}",
        check.stdout
    );
    scenario(&s, &proxy);
    assert!(
        proxy.quirk_refusals().is_empty(),
        "{:?}",
        proxy.quirk_refusals()
    );
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.chunks.iter().all(|c| c.parts.len() <= 2));
}

/// Cloudflare R2 refuses, at CompleteMultipartUpload, non-trailing parts of unequal sizes.
/// The layout always cuts equal parts (compressed and sealed too), so backups pass.
#[test]
fn equal_part_sizes_as_r2_wants_compressed_and_sealed() {
    let s = small(Flavor::Garage);
    let proxy = s.through_proxy_with(|c| c.equal_parts = true);
    with_s3(&s, &["provider = \"r2\""]);
    let text = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&format!(
        "compression = \"zstd\"\n{text}{}",
        s.encryption_config()
    ));
    scenario(&s, &proxy);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(m.encryption.is_some() && m.compression.is_some());
    assert!(proxy.forwarded(Op::Complete).0 >= 3);
    assert!(
        proxy.quirk_refusals().is_empty(),
        "{:?}",
        proxy.quirk_refusals()
    );
}

/// Eventually consistent servers answer NoSuchUpload for a moment after creating an upload:
/// the parts are tried again within the grace, not the chunk restarted.
#[test]
fn uploads_hidden_for_a_moment_after_creation_are_waited_for() {
    let s = small(Flavor::Garage);
    let proxy =
        s.through_proxy_with(|c| c.hide_new_uploads = Some(std::time::Duration::from_millis(1500)));
    scenario(&s, &proxy);
    let refused = proxy.quirk_refusals();
    assert!(!refused.is_empty(), "the quirk never fired");
    assert!(
        refused
            .iter()
            .all(|(op, m)| *op == Op::Part && m.contains("does not exist")),
        "{refused:?}"
    );
}

/// ETags that are not MD5s (no part count either), and listings two entries a page, on moto
/// (the proxy rewrites what moto does not check): resume compares ETags from UploadPart and
/// ListParts, the manifest keeps what the server said.
#[test]
fn opaque_etags_and_paginated_listings_on_moto() {
    let s = small(Flavor::Moto);
    let proxy = s.through_proxy_with(|c| {
        c.opaque_etags = true;
        c.page_size = Some(2);
    });
    scenario(&s, &proxy);
    let m = s.manifest(&s.pointer().manifest_key);
    assert!(
        m.chunks
            .iter()
            .all(|c| c.etag.trim_matches('"').starts_with("opq")),
        "the client saw the server's own ETags: {:?}",
        m.chunks.iter().map(|c| &c.etag).collect::<Vec<_>>()
    );
}

fn setup() -> Setup {
    Setup::new(
        Flavor::Garage,
        Opts {
            chunk_size: "12MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            ..Opts::default()
        },
    )
}

fn with_checksum(s: &Setup, value: &str) {
    let text = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&text.replace("[s3]\n", &format!("[s3]\nchecksum = \"{value}\"\n")));
}

#[test]
fn garage_refusing_checksum_headers_needs_checksum_md5_and_then_works_throughout() {
    let s = setup();
    let proxy = s.through_proxy_with(|c| c.reject_checksum_headers = true);

    let out = s.run(&["backup"]);
    out.assert_code(4);
    assert!(
        out.stderr.contains("refuses x-amz-checksum-* headers")
            && out.stderr.contains("checksum = \"md5\""),
        "{}",
        out.stderr
    );
    assert!(!proxy.quirk_refusals().is_empty(), "no header was refused");
    assert_eq!(s.open_runs().len(), 1, "the run is not left resumable");
    let check = s.run(&["check"]);
    check.assert_code(4);
    assert!(
        check.stdout.contains("checksum = \"md5\""),
        "{}",
        check.stdout
    );

    with_checksum(&s, "md5");
    let refused = proxy.quirk_refusals().len();
    let f = s.resume_and_prove(Some(1));
    assert!(f.stream_bytes > 0);
    mutate(&s.subvolume, 9);
    s.run(&["backup", "--once"]).assert_code(0);
    s.restore_newest_and_verify();
    // Retention under the quirk: a second chain prunes the first.
    let text = std::fs::read_to_string(&s.config).expect("config");
    s.write_config(&text.replace("keep_chains = 1000", "keep_chains = 1"));
    s.run(&["backup", "--full"]).assert_code(0);
    let manifests = s
        .objects()
        .into_iter()
        .filter(|(k, _)| k.ends_with("/manifest.json"))
        .count();
    assert_eq!(manifests, 1, "retention kept {manifests} manifests");
    assert_eq!(
        proxy.quirk_refusals().len(),
        refused,
        "a request still carried a checksum header: {:?}",
        proxy.quirk_refusals()
    );
}

#[test]
fn garage_refusing_checksum_headers_works_with_checksum_none() {
    let s = setup();
    let proxy = s.through_proxy_with(|c| c.reject_checksum_headers = true);
    with_checksum(&s, "none");
    s.run(&["backup"]).assert_code(0);
    s.prove_restorable(&s.pointer().manifest_key);
    assert!(
        proxy.quirk_refusals().is_empty(),
        "{:?}",
        proxy.quirk_refusals()
    );
    let doc = s.run(&["check-config", "--json"]);
    assert!(
        doc.stdout.contains("\"checksum\": \"none\""),
        "{}",
        doc.stdout
    );
}

#[test]
fn a_bad_checksum_setting_is_refused_with_the_choices() {
    let s = setup();
    with_checksum(&s, "sha1");
    let out = s.run(&["backup"]);
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("checksum `sha1` is not crc32c, md5 or none"),
        "{}",
        out.stderr
    );
}

/// Listings two entries a page (max-keys, max-parts, max-uploads rewritten by the proxy; moto
/// does not check signatures): a killed backup's resume (ListParts, ListMultipartUploads), an
/// incremental, `list`, a restore, `verify --deep` and retention (ListObjectsV2) all follow
/// the continuation tokens.
#[test]
fn moto_listings_two_entries_a_page() {
    let s = small(Flavor::Moto);
    let proxy = s.through_proxy_with(|c| c.page_size = Some(2));
    scenario(&s, &proxy);
    assert!(
        proxy.forwarded(Op::List).0 >= 5,
        "few listings went through the proxy"
    );
}

/// One HTTP/1.1 request, unsigned (moto does not check), through `addr`: (status, body).
fn raw(addr: std::net::SocketAddr, method: &str, target: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(body).expect("write body");
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The emulation is real: parts of 5 MiB, 6 MiB and 1 KiB are refused at completion as R2
/// refuses them; 5, 5 and 1 are not.
#[test]
fn the_equal_parts_quirk_refuses_unequal_parts() {
    let s = small(Flavor::Moto);
    let proxy = s.through_proxy_with(|c| c.equal_parts = true);
    let addr = proxy.addr();
    let mib = 1024 * 1024;
    for (sizes, refused) in [
        (vec![5 * mib, 6 * mib, 1024], true),
        (vec![5 * mib, 5 * mib, 1024], false),
    ] {
        let key = format!("/{}/{}/quirk-{refused}", s.s3.bucket, s.prefix);
        let (st, body) = raw(addr, "POST", &format!("{key}?uploads"), b"");
        assert_eq!(st, 200, "{body}");
        let id = body
            .split("<UploadId>")
            .nth(1)
            .and_then(|r| r.split("</UploadId>").next())
            .expect("UploadId")
            .to_string();
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, n) in sizes.iter().enumerate() {
            let target = format!("{key}?partNumber={}&uploadId={id}", i + 1);
            let (st, reply) = raw(addr, "PUT", &target, &vec![b'x'; *n]);
            assert_eq!(st, 200, "{reply}");
            let etag = reply
                .lines()
                .find_map(|l| {
                    l.strip_prefix("ETag: ")
                        .or_else(|| l.strip_prefix("etag: "))
                })
                .expect("ETag")
                .trim()
                .to_string();
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let (st, reply) = raw(
            addr,
            "POST",
            &format!("{key}?uploadId={id}"),
            xml.as_bytes(),
        );
        if refused {
            assert_eq!(st, 400, "{reply}");
            assert!(
                reply.contains("All non-trailing parts must have the same length"),
                "{reply}"
            );
        } else {
            assert_eq!(st, 200, "{reply}");
        }
    }
    assert_eq!(proxy.quirk_refusals().len(), 1);
}
