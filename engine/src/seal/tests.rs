use std::io::Read;

use super::*;

fn identity() -> (age::x25519::Identity, String) {
    let id = age::x25519::Identity::generate();
    let r = id.to_public().to_string();
    (id, r)
}

fn opener(ids: &[&age::x25519::Identity]) -> Opener {
    let text: String = ids
        .iter()
        .map(|i| format!("# a comment\n{}\n", i.to_string().expose_secret()))
        .collect();
    Opener::parse(&text).expect("identity file")
}

fn sealed(sealer: &Sealer, plain: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(plain.len() + 4096);
    b.extend_from_slice(plain);
    sealer.seal_in_place(&mut b).expect("seal");
    b
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 300) as u8).collect()
}

#[test]
fn round_trips_at_segment_edges_and_age_reads_it() {
    let (id, r) = identity();
    let sealer = Sealer::new(&[r]).expect("sealer");
    let open = opener(&[&id]);
    for n in [
        1,
        SEGMENT - 1,
        SEGMENT,
        SEGMENT + 1,
        3 * SEGMENT,
        5 * 1024 * 1024 + 3,
    ] {
        let plain = data(n);
        let s = sealed(&sealer, &plain);
        assert_eq!(s.len() as u64, sealed_len(1, n as u64), "{n}");
        assert_eq!(opened_len(1, s.len() as u64), Some(n as u64), "{n}");
        // The age crate itself decrypts what this module wrote.
        let d = age::Decryptor::new(&s[..]).expect("age header");
        let mut out = Vec::new();
        d.decrypt(std::iter::once(&id as &dyn age::Identity))
            .expect("age opens it")
            .read_to_end(&mut out)
            .expect("age reads it");
        assert_eq!(out, plain, "{n}");
        let mut b = s.clone();
        open.open_in_place(&mut b, 1).expect("open");
        assert_eq!(&b[..], &plain[..], "{n}");
    }
}

#[test]
fn every_upload_attempt_gets_its_own_key_and_nonce() {
    let (_, r) = identity();
    let sealer = Sealer::new(&[r]).expect("sealer");
    let plain = data(100_000);
    let (a, b) = (sealed(&sealer, &plain), sealed(&sealer, &plain));
    assert_eq!(a.len(), b.len());
    let head = header_len(1) as usize;
    assert_ne!(a[head - 16..head], b[head - 16..head], "nonce reused");
    assert_ne!(a[head..], b[head..], "same ciphertext twice");
}

#[test]
fn several_recipients_each_open_it() {
    let (a, ra) = identity();
    let (b, rb) = identity();
    let sealer = Sealer::new(&[ra, rb]).expect("sealer");
    let plain = data(70_000);
    let s = sealed(&sealer, &plain);
    assert_eq!(s.len() as u64, sealed_len(2, plain.len() as u64));
    for id in [&a, &b] {
        let mut c = s.clone();
        opener(&[id]).open_in_place(&mut c, 2).expect("open");
        assert_eq!(&c[..], &plain[..]);
    }
}

#[test]
fn a_stranger_or_a_flipped_byte_is_refused() {
    let (_, r) = identity();
    let (stranger, _) = identity();
    let sealer = Sealer::new(&[r]).expect("sealer");
    let s = sealed(&sealer, &data(200_000));
    let mut c = s.clone();
    assert!(matches!(
        opener(&[&stranger]).open_in_place(&mut c, 1),
        Err(SealError::NoIdentity)
    ));
    let (owner, r2) = identity();
    let sealer = Sealer::new(&[r2]).expect("sealer");
    let s = sealed(&sealer, &data(200_000));
    let open = opener(&[&owner]);
    let head = header_len(1) as usize;
    // A flipped byte in the payload, the nonce, the MAC, a stanza; a truncated part.
    for at in [head + 5, s.len() - 1, head - 3, head - 20, 40] {
        let mut c = s.clone();
        c[at] ^= 1;
        let e = open.open_in_place(&mut c, 1).expect_err("tampered");
        assert!(
            matches!(
                e,
                SealError::Tampered(_) | SealError::Malformed(_) | SealError::NoIdentity
            ),
            "{at}: {e}"
        );
    }
    let mut c = s.clone();
    c.truncate(s.len() - 17);
    assert!(open.open_in_place(&mut c, 1).is_err());
    let mut c = s.clone();
    assert!(open.open_in_place(&mut c, 2).is_err(), "wrong stanza count");
}

#[test]
fn opened_len_inverts_sealed_len() {
    for n in [
        1u64,
        2,
        65_535,
        65_536,
        65_537,
        131_072,
        8 << 20,
        (8 << 20) + 1,
    ] {
        for k in [1, 2, 5] {
            assert_eq!(opened_len(k, sealed_len(k, n)), Some(n), "{n} {k}");
        }
    }
    // Sizes no plaintext seals to.
    assert_eq!(opened_len(1, header_len(1) + 15), None);
    assert_eq!(opened_len(1, 3), None);
    assert_eq!(opened_len(1, sealed_len(1, 65_536) + 1), None);
}

#[test]
fn bad_keys_are_named_without_their_secret() {
    assert!(matches!(Sealer::new(&[]), Err(SealError::NoRecipients)));
    let e = Sealer::new(&["age1notakey".into()]).err().expect("refused");
    assert!(e.to_string().contains("age1notakey"), "{e}");
    let (id, _) = identity();
    let secret = id.to_string().expose_secret().to_string();
    let broken = format!("{}X", secret);
    let e = Opener::parse(&format!("# c\n{broken}\n"))
        .err()
        .expect("refused");
    assert!(e.contains("line 2"), "{e}");
    assert!(!e.contains(&secret[20..]), "the secret leaked into {e}");
    assert!(Opener::parse("# only a comment\n").is_err());
}

#[test]
fn each_check_catches_its_own_tampering() {
    let (id, r) = identity();
    let sealer = Sealer::new(&[r]).expect("sealer");
    let open = opener(&[&id]);
    let s = sealed(&sealer, &data(150_000));
    let head = header_len(1) as usize;
    let tampered = |c: &mut BytesMut| open.open_in_place(c, 1).expect_err("tampered");
    // The header MAC, re-encoded so it stays well-formed base64.
    let mac_at = head - NONCE - 44;
    let mut mac = BASE64_STANDARD_NO_PAD
        .decode(&s[mac_at..mac_at + 43])
        .expect("mac");
    mac[0] ^= 1;
    let mut c = s.clone();
    c[mac_at..mac_at + 43].copy_from_slice(BASE64_STANDARD_NO_PAD.encode(&mac).as_bytes());
    assert!(matches!(
        tampered(&mut c),
        SealError::Tampered("header MAC")
    ));
    // The nonce (another payload key) and a payload byte: the segment's tag.
    for at in [head - 1, head + 70_000] {
        let mut c = s.clone();
        c[at] ^= 1;
        assert!(
            matches!(tampered(&mut c), SealError::Tampered("payload")),
            "{at}"
        );
    }
    // Two segments swapped: each is bound to its position.
    let mut c = s.clone();
    let seg = SEGMENT + TAG;
    let (a, b) = (head, head + seg);
    let first = c[a..a + seg].to_vec();
    c.copy_within(b..b + seg, a);
    c[b..b + seg].copy_from_slice(&first);
    assert!(matches!(tampered(&mut c), SealError::Tampered("payload")));
}
