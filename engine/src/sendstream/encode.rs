//! Builds send streams as the kernel writes them: test fixtures and fuzz seeds.

use super::{attr, parse::crc32c_raw, Kind, CMD_HEADER_LEN, MAGIC};

pub struct Encoder {
    out: Vec<u8>,
    version: u32,
}

pub fn u64le(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

pub fn time(sec: i64, nsec: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&sec.to_le_bytes());
    t[8..].copy_from_slice(&nsec.to_le_bytes());
    t
}

impl Encoder {
    /// A stream header of `version` (written as given, even if invalid).
    pub fn new(version: u32) -> Encoder {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        Encoder { out, version }
    }

    /// One command: `attrs` in order, then `data` as the DATA attribute (without a length
    /// from version 2 on). Lengths above u16 are cut: the caller builds what it means to.
    pub fn command(&mut self, kind: Kind, attrs: &[(u16, &[u8])], data: Option<&[u8]>) {
        let mut payload = Vec::new();
        for (t, v) in attrs {
            payload.extend_from_slice(&t.to_le_bytes());
            payload.extend_from_slice(&(v.len() as u16).to_le_bytes());
            payload.extend_from_slice(v);
        }
        if let Some(d) = data {
            payload.extend_from_slice(&attr::DATA.to_le_bytes());
            if self.version < 2 {
                payload.extend_from_slice(&(d.len() as u16).to_le_bytes());
            }
            payload.extend_from_slice(d);
        }
        let mut head = [0u8; CMD_HEADER_LEN];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..6].copy_from_slice(&kind.code().to_le_bytes());
        let crc = crc32c_raw(crc32c_raw(0, &head), &payload);
        head[6..].copy_from_slice(&crc.to_le_bytes());
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(&payload);
    }

    /// The stream so far, without an end command.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// The stream with its end command.
    pub fn finish(mut self) -> Vec<u8> {
        self.command(Kind::End, &[], None);
        self.out
    }
}

/// Recomputes every command's CRC where its length fits the bytes (fuzzing: mutants then
/// reach the attribute parsing instead of stopping at the first CRC).
pub fn resign(stream: &mut [u8]) {
    let mut at = super::STREAM_HEADER_LEN;
    while at + CMD_HEADER_LEN <= stream.len() {
        let h = &stream[at..at + CMD_HEADER_LEN];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let Some(end) = (at + CMD_HEADER_LEN)
            .checked_add(len)
            .filter(|&e| e <= stream.len())
        else {
            return;
        };
        stream[at + 6..at + CMD_HEADER_LEN].fill(0);
        let crc = crc32c_raw(0, &stream[at..end]);
        stream[at + 6..at + CMD_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}
