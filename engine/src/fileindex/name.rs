//! `Name`: one directory entry's name, bytes (not UTF-8), without an allocation of its own
//! when short. Pure.

use std::borrow::Borrow;
use std::cmp::Ordering;

/// Names of up to this many bytes are kept inline (most are: `file-0000123.txt` is 16).
const INLINE: usize = 22;

/// A name as a directory keeps it: 24 bytes, like the `Vec<u8>` it replaces, but without the
/// heap block (32 bytes and malloc's own) for a name of up to 22 bytes. Ordered, compared
/// and hashed as its bytes, so a map of names is searched with a `&[u8]`.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Name {
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..*len as usize],
            Repr::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for Name {
    fn from(b: &[u8]) -> Name {
        if b.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..b.len()].copy_from_slice(b);
            Name(Repr::Inline {
                len: b.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Heap(b.into()))
        }
    }
}

impl From<Vec<u8>> for Name {
    fn from(b: Vec<u8>) -> Name {
        if b.len() <= INLINE {
            Name::from(b.as_slice())
        } else {
            Name(Repr::Heap(b.into_boxed_slice()))
        }
    }
}

impl<const N: usize> From<&[u8; N]> for Name {
    fn from(b: &[u8; N]) -> Name {
        Name::from(&b[..])
    }
}

impl std::ops::Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_bytes().hash(h)
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_short_and_long_are_their_bytes_in_their_order() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        let long = vec![b'x'; INLINE + 1];
        let names: Vec<Name> = [
            &b""[..],
            b"a",
            b"a\xff",
            b"ab",
            &[b'x'; INLINE],
            &long,
            b"\xfe\x00",
        ]
        .iter()
        .map(|b| Name::from(*b))
        .collect();
        for (a, b) in names.iter().zip(names.iter().skip(1)) {
            assert_eq!(a.cmp(b), a.as_bytes().cmp(b.as_bytes()), "{a:?} {b:?}");
        }
        assert_eq!(&*Name::from(long.clone()), &long[..]);
        assert_eq!(Name::from(b"ab".to_vec()), Name::from(b"ab"));
        let m: std::collections::BTreeMap<Name, u64> = names.iter().cloned().zip(0..).collect();
        assert_eq!(m.get(&b"a\xff"[..]), Some(&2));
        assert_eq!(m.get(&long[..]), Some(&5));
        assert_eq!(m.get(&b"b"[..]), None);
    }
}
