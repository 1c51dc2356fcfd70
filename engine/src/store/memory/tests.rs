use super::*;

fn block(n: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; n])
}

fn part(store_data: &Bytes, number: u32, etag: String) -> CompletePart {
    CompletePart {
        part_number: number,
        etag,
        crc32c: crc32c::crc32c(store_data),
    }
}

#[tokio::test]
async fn multipart_has_s3_semantics() {
    let s = MemoryStore::new("b");
    let opts = PutOptions::default();
    let id = s.create_multipart("k", &opts).await.expect("create");
    let (a, b) = (block(MIN_PART as usize, 1), block(10, 2));
    let ea = s
        .upload_part("k", &id, 1, a.clone(), crc32c::crc32c(&a))
        .await
        .expect("part 1");
    // A damaged part is refused by its checksum.
    let bad = s.upload_part("k", &id, 2, b.clone(), 0).await;
    assert!(bad.is_err());
    assert_eq!(s.list_parts("k", &id).await.expect("list").len(), 1);
    // Completing with a part the server lacks is InvalidPart.
    let missing = s
        .complete_multipart(
            "k",
            &id,
            &[part(&a, 1, ea.clone()), part(&b, 2, "x".into())],
        )
        .await;
    assert_eq!(
        missing.err().map(|e| e.kind),
        Some(StoreErrorKind::InvalidPart)
    );
    let eb = s
        .upload_part("k", &id, 2, b.clone(), crc32c::crc32c(&b))
        .await
        .expect("part 2");
    assert_eq!(s.list_uploads("").await.expect("uploads").len(), 1);
    let etag = s
        .complete_multipart("k", &id, &[part(&a, 1, ea), part(&b, 2, eb)])
        .await
        .expect("complete");
    assert!(etag.ends_with("-2\""), "{etag}");
    // The upload is gone once completed; the object is whole and ranges are served.
    assert_eq!(
        s.list_parts("k", &id).await.err().map(|e| e.kind),
        Some(StoreErrorKind::NoSuchUpload)
    );
    assert!(s.list_uploads("").await.expect("uploads").is_empty());
    let o = s.head_object("k").await.expect("head").expect("exists");
    assert_eq!(o.size, MIN_PART + 10);
    assert_eq!(o.etag.as_deref(), Some(etag.as_str()));
    let r = s.get_range("k", MIN_PART - 1, 3).await.expect("range");
    assert_eq!(&r[..], &[1, 2, 2]);
    assert!(
        s.get_range("k", MIN_PART, 11).await.is_err(),
        "past the end"
    );
}

#[tokio::test]
async fn small_parts_aborts_and_unknown_uploads() {
    let s = MemoryStore::new("b");
    let id = s
        .create_multipart("k", &PutOptions::default())
        .await
        .expect("create");
    let a = block(10, 1);
    let e1 = s
        .upload_part("k", &id, 1, a.clone(), crc32c::crc32c(&a))
        .await
        .expect("part");
    let e2 = s
        .upload_part("k", &id, 2, a.clone(), crc32c::crc32c(&a))
        .await
        .expect("part");
    let small = s
        .complete_multipart("k", &id, &[part(&a, 1, e1), part(&a, 2, e2)])
        .await;
    assert!(small.is_err_and(|e| e.message.contains("EntityTooSmall")));
    s.abort_multipart("k", &id).await.expect("abort");
    s.abort_multipart("k", &id)
        .await
        .expect("abort twice is fine");
    assert_eq!(
        s.upload_part("k", &id, 3, a.clone(), crc32c::crc32c(&a))
            .await
            .err()
            .map(|e| e.kind),
        Some(StoreErrorKind::NoSuchUpload)
    );
    assert_eq!(
        s.upload_part("other", "nope", 1, a.clone(), crc32c::crc32c(&a))
            .await
            .err()
            .map(|e| e.kind),
        Some(StoreErrorKind::NoSuchUpload)
    );
    s.delete("absent").await.expect("deletes are idempotent");
}

#[tokio::test]
async fn archived_objects_need_a_restore() {
    let s = MemoryStore::new("b");
    let opts = PutOptions {
        storage_class: Some("DEEP_ARCHIVE".into()),
        ..PutOptions::default()
    };
    s.put_object("a", block(4, 7), &opts).await.expect("put");
    let head = s.head_object("a").await.expect("head").expect("exists");
    assert_eq!(head.readiness(), Readiness::Archived);
    assert_eq!(
        s.get_object("a").await.err().map(|e| e.kind),
        Some(StoreErrorKind::InvalidObjectState)
    );
    s.restore_object("a", 1, "Bulk").await.expect("restore");
    assert_eq!(&s.get_object("a").await.expect("get")[..], &[7; 4]);
    assert_eq!(s.list("").await.expect("list").len(), 1);
    assert_eq!(s.head_object("zz").await.expect("head"), None);
}
