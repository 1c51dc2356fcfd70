//! S3 providers bend the protocol; the fault proxy emulates their quirks in front of garage.
//! Checksum headers: Backblaze B2 and older Ceph RGW answer 400 to any x-amz-checksum-*
//! header. With the default `checksum = "crc32c"` the first backup stops with exit 4 and a
//! message naming the setting (the run stays resumable; `check` says the same); with
//! `checksum = "md5"` (Content-MD5, which every S3 server takes) the run resumes and backup,
//! incremental, restore, verify and retention pass with no header refused; `"none"` too.

use harness::btrfs::mutate;
use harness::{Flavor, Opts, Setup};

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
    let s = Setup::new(
        Flavor::Moto,
        Opts {
            chunk_size: "5MiB".into(),
            part_size: "5MiB".into(),
            concurrency: 2,
            ..Opts::default()
        },
    );
    let proxy = s.through_proxy_with(|c| c.page_size = Some(2));
    s.crash(&["backup"], "after-chunk-seal=2*off->return");
    s.resume_and_prove(Some(1));
    mutate(&s.subvolume, 4);
    s.run(&["backup", "--once"]).assert_code(0);
    let listed = s.run(&["list", "--json"]);
    listed.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    let backups = doc.to_string().matches("\"backup_id\"").count();
    assert!(
        backups >= 2,
        "list saw {backups} backups:\n{}",
        listed.stdout
    );

    let newest = s.restore_newest_and_verify();
    assert!(!newest.chunks.is_empty());

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
    assert_eq!(
        chunks,
        kept.chunks.len(),
        "chunks of pruned chains left: {objects:?}"
    );
    assert!(
        proxy.forwarded(fault_injection::proxy::Op::List).0 >= 5,
        "few listings went through the proxy"
    );
}
