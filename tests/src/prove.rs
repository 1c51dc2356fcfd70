//! Proofs shared by the scenario tests: hashes, the manifest schema, what a resume sent again
//! and that it ended published.

use super::*;

pub fn xxhash_of(data: &[u8]) -> u128 {
    engine::pipeline::part_hashes(data).0
}

pub fn crc32c_of(data: &[u8]) -> u32 {
    engine::pipeline::part_hashes(data).1
}

/// Validates a manifest against the JSON schema kept in the repository.
pub fn assert_matches_schema(doc: &serde_json::Value) {
    assert_valid(doc, "manifest.schema.json");
}

/// What `schemas/<schema>` finds wrong with `doc` (empty: valid).
pub fn schema_errors(doc: &serde_json::Value, schema: &str) -> Vec<String> {
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas")
        .join(schema);
    let compiled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&schema_path).expect("schema file"))
            .expect("schema JSON");
    let validator = jsonschema::validator_for(&compiled).expect("schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

/// Validates `doc` against `schemas/<schema>` (e.g. `output/status.schema.json`).
pub fn assert_valid(doc: &serde_json::Value, schema: &str) {
    let errors = schema_errors(doc, schema);
    assert!(
        errors.is_empty(),
        "{} violates {schema}:\n{}\n{doc:#}",
        if schema.starts_with("output/") {
            "output"
        } else {
            "manifest"
        },
        errors.join("\n")
    );
}

/// What a resume must prove after a crash, and the figures it measured.
#[derive(Debug, Clone, Copy)]
pub struct ResumeFigures {
    pub stream_bytes: u64,
    /// Bytes that were on the server before the resume but were sent again.
    pub resent_bytes: u64,
    pub reused_bytes: u64,
}

impl Setup {
    /// Bytes stored under keys containing `filter`: completed chunk objects plus parts of
    /// open uploads.
    pub fn bytes_on_server(&self, filter: &str) -> u64 {
        let chunks: u64 = self
            .objects()
            .iter()
            .filter(|(k, _)| k.contains("/chunk-") && k.contains(filter))
            .map(|(_, s)| *s)
            .sum();
        let client = self.s3.client();
        let bucket = self.s3.bucket.clone();
        let filter = filter.to_string();
        let parts: u64 = block_on(async move {
            let r = client
                .list_multipart_uploads()
                .bucket(&bucket)
                .send()
                .await
                .expect("list uploads");
            let mut total = 0u64;
            for u in r
                .uploads()
                .iter()
                .filter(|u| u.key().unwrap_or_default().contains(&filter))
            {
                let lp = client
                    .list_parts()
                    .bucket(&bucket)
                    .key(u.key().unwrap_or_default())
                    .upload_id(u.upload_id().unwrap_or_default())
                    .send()
                    .await;
                total += match lp {
                    Ok(lp) => lp
                        .parts()
                        .iter()
                        .map(|p| p.size().unwrap_or(0) as u64)
                        .sum::<u64>(),
                    // moto 5.2 names the root element ListPartsResponse, which the SDK refuses:
                    // read the sizes from the raw XML.
                    Err(e) => {
                        let body = e
                            .raw_response()
                            .and_then(|r| r.body().bytes())
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_else(|| panic!("list parts: {e:?}"));
                        body.split("<Size>")
                            .skip(1)
                            .map(|s| {
                                s.split('<')
                                    .next()
                                    .unwrap_or("0")
                                    .parse::<u64>()
                                    .expect("size")
                            })
                            .sum()
                    }
                };
            }
            total
        });
        chunks + parts
    }

    /// Backup ids of the runs the journal holds open.
    pub fn open_runs(&self) -> Vec<String> {
        let status = self.run(&["status", "--json"]);
        status.assert_code(0);
        let st: serde_json::Value = serde_json::from_str(&status.stdout).expect("status json");
        st["in_progress"]
            .as_array()
            .expect("in_progress")
            .iter()
            .map(|r| r["backup_id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Resumes with the production binary and proves the outcome: the run completes, exactly
    /// `expected_manifests` manifests exist, every backup directory with chunks has its
    /// manifest, the pointer names the newest, nothing is left open, and the newest backup
    /// restores to its source snapshot.
    /// With `None`, the expected count is the number of local snapshots: every snapshot
    /// belongs to exactly one run, and after a resume every run is published.
    pub fn resume_and_prove(&self, expected_manifests: Option<usize>) -> ResumeFigures {
        let open = self.open_runs();
        let before: u64 = open
            .iter()
            .map(|b| self.bytes_on_server(&format!("/{b}/")))
            .sum();
        let out = self.run(&["resume", "--json"]);
        out.assert_code(0);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        let runs = doc["runs"].as_array().expect("runs").clone();
        let sum =
            |field: &str| -> u64 { runs.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum() };
        let (uploaded, reused, resumed_total) = (
            sum("uploaded_bytes"),
            sum("reused_bytes"),
            sum("total_bytes"),
        );
        let manifests: Vec<String> = self
            .objects()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.ends_with("/manifest.json"))
            .collect();
        let expected = expected_manifests.unwrap_or_else(|| self.snapshots().len());
        assert_eq!(
            manifests.len(),
            expected,
            "manifests: {manifests:?}, snapshots: {:?}",
            self.snapshots()
        );
        for (k, _) in self.objects().iter().filter(|(k, _)| k.contains("/chunk-")) {
            let dir = &k[..k.rfind('/').expect("slash") + 1];
            assert!(
                manifests.iter().any(|m| m.starts_with(dir)),
                "chunk {k} belongs to no manifest"
            );
        }
        let pointer = self.pointer();
        let newest = manifests.iter().max().expect("a manifest");
        assert_eq!(
            &pointer.manifest_key, newest,
            "the pointer names the newest backup"
        );
        assert!(
            self.open_uploads().is_empty(),
            "open uploads left: {:?}",
            self.open_uploads()
        );
        assert!(self.open_runs().is_empty(), "runs still open after resume");
        let m = self.prove_restorable(&pointer.manifest_key);
        // Sent again = what the resume uploaded beyond what was missing from the server.
        let missing = resumed_total.saturating_sub(before);
        ResumeFigures {
            stream_bytes: m.total_bytes,
            resent_bytes: uploaded.saturating_sub(missing),
            reused_bytes: reused,
        }
    }
}
