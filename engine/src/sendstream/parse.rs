//! The push parser: the send stream in slices of any size, commands out once their CRC
//! matched. Pure: no I/O, no clock.

use super::{
    attr, Command, DataRef, Kind, StreamError, CMD_HEADER_LEN, MAGIC, MAX_ATTR_BYTES,
    MAX_COMMAND_BYTES, MAX_VERSION, STREAM_HEADER_LEN,
};

/// The kernel's `crc32c(seed, …)`: no inversion in or out.
pub use crate::crc::raw as crc32c_raw;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the 17-byte stream header.
    StreamHeader,
    /// Collecting a 10-byte command header.
    CmdHeader,
    /// Collecting an attribute's header (2 or 4 bytes).
    TlvHeader,
    /// Inside an attribute's value: `left` bytes to go; `keep` unless it is DATA (or the
    /// parser keeps data); `data` if it is DATA, whose CRC is taken apart.
    Value { left: u32, keep: bool, data: bool },
    /// After the end command: nothing more may come.
    Ended,
}

/// Parses one send stream. `feed` it the stream in order, then `finish`.
pub struct Parser {
    state: State,
    /// Stream bytes consumed.
    pos: u64,
    version: u32,
    head: [u8; STREAM_HEADER_LEN],
    have: usize,
    /// The command being read (its kind and offset also kept apart for messages), its stored
    /// CRC, running CRC and payload bytes to go.
    cmd: Option<Command>,
    kind: Kind,
    offset: u64,
    stored_crc: u32,
    crc: u32,
    /// The CRC of the DATA attribute's value alone. The data is read once: while it passes
    /// `crc` waits, and at its end takes `shift(crc, len) ^ data_crc` (`crate::crc`).
    data_crc: u32,
    shift: crate::crc::Shift,
    left: u32,
    /// Keep DATA too (`with_data`: applying a stream needs its bytes; indexing does not).
    keep_data: bool,
    /// Commands handed back (`recycle`), their buffers reused for the next ones, and the
    /// bytes their buffers hold.
    spare: Vec<Command>,
    spare_bytes: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            state: State::StreamHeader,
            pos: 0,
            version: 0,
            head: [0; STREAM_HEADER_LEN],
            have: 0,
            cmd: None,
            kind: Kind::End,
            offset: 0,
            stored_crc: 0,
            crc: 0,
            data_crc: 0,
            shift: crate::crc::Shift::default(),
            left: 0,
            keep_data: false,
            spare: Vec::new(),
            spare_bytes: 0,
        }
    }

    /// A parser whose commands also carry their DATA (`Command::data_bytes`), still bounded
    /// by `MAX_ATTR_BYTES` a command (the kernel writes at most 128 KiB of data in one).
    pub fn with_data() -> Parser {
        Parser {
            keep_data: true,
            ..Parser::new()
        }
    }

    /// The stream's version (0 until its header has been read).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Stream bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether the end command has been read.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Consumes `bytes`, appending every command completed in them to `out`. After an error
    /// the parser is spent: the stream is damaged at or before the error's offset.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Command>) -> Result<(), StreamError> {
        while !bytes.is_empty() {
            match self.state {
                State::StreamHeader => {
                    let n = self.collect(&mut bytes, STREAM_HEADER_LEN);
                    self.pos += n as u64;
                    if self.have == STREAM_HEADER_LEN {
                        self.stream_header()?;
                    }
                }
                State::CmdHeader => {
                    let n = self.collect(&mut bytes, CMD_HEADER_LEN);
                    self.pos += n as u64;
                    if self.have == CMD_HEADER_LEN {
                        self.command_header(out)?;
                    }
                }
                State::TlvHeader => {
                    let (kind, offset) = (self.kind, self.offset);
                    // The type first: in v2 and later a DATA attribute has no length.
                    let want = if self.have >= 2 && self.data_without_len() {
                        2
                    } else if self.have >= 2 {
                        4
                    } else {
                        2
                    };
                    let before = self.have;
                    if self.left < (want - before) as u32 {
                        return Err(StreamError::HeaderCut { kind, offset });
                    }
                    let n = self.collect(&mut bytes, want);
                    self.payload_consumed(before, n);
                    if self.have == 2 && want == 2 {
                        let t = self.tlv_type();
                        if t == 0 || t > attr::MAX {
                            return Err(StreamError::UnknownAttribute {
                                kind,
                                offset,
                                attr: t,
                            });
                        }
                        if self.data_without_len() {
                            self.start_value(self.left, out)?;
                        }
                    } else if self.have == 4 {
                        let len = u16::from_le_bytes([self.head[2], self.head[3]]);
                        self.start_value(u32::from(len), out)?;
                    }
                }
                State::Value { left, keep, data } => {
                    let n = (left as usize).min(bytes.len());
                    let (now, rest) = bytes.split_at(n);
                    bytes = rest;
                    if keep {
                        if let Some(cmd) = self.cmd.as_mut() {
                            cmd.buf.extend_from_slice(now);
                        }
                    }
                    if data {
                        self.data_crc = crc32c_raw(self.data_crc, now);
                    } else {
                        self.crc = crc32c_raw(self.crc, now);
                    }
                    self.left -= n as u32;
                    self.pos += n as u64;
                    let left = left - n as u32;
                    self.state = State::Value { left, keep, data };
                    if left == 0 {
                        if data {
                            self.data_done();
                        }
                        self.value_done(out)?;
                    }
                }
                State::Ended => {
                    return Err(StreamError::AfterEnd { offset: self.pos });
                }
            }
        }
        Ok(())
    }

    /// Takes back commands the caller is done with (all of `done`), so that their buffers
    /// serve the next ones instead of new allocations (as many as one slice of a stream
    /// makes: up to 16 MiB of buffers).
    pub fn recycle(&mut self, done: &mut Vec<Command>) {
        for c in done.drain(..) {
            let bytes = c.buf.capacity() + 12 * c.attrs.capacity();
            if self.spare_bytes + bytes <= 16 << 20 {
                self.spare_bytes += bytes;
                self.spare.push(c);
            }
        }
    }

    /// The stream is over: it must have ended with the end command.
    pub fn finish(&self) -> Result<(), StreamError> {
        let inside = match self.state {
            State::Ended => return Ok(()),
            State::StreamHeader => "the stream header".to_string(),
            State::CmdHeader if self.have == 0 => {
                "the stream, before its end command (the sender stopped early)".to_string()
            }
            State::CmdHeader => "a command header".to_string(),
            State::TlvHeader | State::Value { .. } => {
                format!("{} at byte {}", self.kind, self.offset)
            }
        };
        Err(StreamError::Truncated {
            offset: self.pos,
            inside,
        })
    }

    /// Moves up to `want - have` bytes from `bytes` into `head`; returns how many.
    fn collect(&mut self, bytes: &mut &[u8], want: usize) -> usize {
        let n = (want - self.have).min(bytes.len());
        self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        *bytes = &bytes[n..];
        n
    }

    fn tlv_type(&self) -> u16 {
        u16::from_le_bytes([self.head[0], self.head[1]])
    }

    fn data_without_len(&self) -> bool {
        self.version >= 2 && self.tlv_type() == attr::DATA
    }

    /// Header bytes `head[before..before + n]` of the payload were consumed.
    fn payload_consumed(&mut self, before: usize, n: usize) {
        self.crc = crc32c_raw(self.crc, &self.head[before..before + n]);
        self.left -= n as u32;
        self.pos += n as u64;
    }

    fn stream_header(&mut self) -> Result<(), StreamError> {
        if &self.head[..MAGIC.len()] != MAGIC {
            return Err(StreamError::Magic {
                found: String::from_utf8_lossy(&self.head[..MAGIC.len()]).into_owned(),
            });
        }
        let v = &self.head[MAGIC.len()..STREAM_HEADER_LEN];
        let version = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        if version == 0 || version > MAX_VERSION {
            return Err(StreamError::Version(version));
        }
        self.version = version;
        self.have = 0;
        self.state = State::CmdHeader;
        Ok(())
    }

    fn command_header(&mut self, out: &mut Vec<Command>) -> Result<(), StreamError> {
        let h = &self.head[..CMD_HEADER_LEN];
        let offset = self.pos - CMD_HEADER_LEN as u64;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let code = u16::from_le_bytes([h[4], h[5]]);
        let stored = u32::from_le_bytes([h[6], h[7], h[8], h[9]]);
        let kind = Kind::from_code(code).ok_or(StreamError::UnknownCommand { code, offset })?;
        if kind.min_version() > self.version {
            return Err(StreamError::CommandTooNew {
                kind,
                offset,
                needs: kind.min_version(),
                version: self.version,
            });
        }
        if len > MAX_COMMAND_BYTES {
            return Err(StreamError::CommandTooLarge { kind, offset, len });
        }
        let mut zeroed = [0u8; CMD_HEADER_LEN];
        zeroed[..6].copy_from_slice(&h[..6]);
        self.crc = crc32c_raw(0, &zeroed);
        self.stored_crc = stored;
        self.left = len;
        self.have = 0;
        self.kind = kind;
        self.offset = offset;
        if let Some(c) = self.spare.last() {
            self.spare_bytes -= c.buf.capacity() + 12 * c.attrs.capacity();
        }
        let mut cmd = self.spare.pop().unwrap_or(Command {
            kind,
            offset,
            len,
            attrs: Vec::new(),
            buf: Vec::new(),
            data: None,
        });
        cmd.kind = kind;
        cmd.offset = offset;
        cmd.len = len;
        cmd.attrs.clear();
        cmd.buf.clear();
        cmd.data = None;
        self.cmd = Some(cmd);
        if len == 0 {
            self.command_done(out)
        } else {
            self.state = State::TlvHeader;
            Ok(())
        }
    }

    /// An attribute's header is complete: its value is `len` bytes.
    fn start_value(&mut self, len: u32, out: &mut Vec<Command>) -> Result<(), StreamError> {
        let t = self.tlv_type();
        let pos = self.pos;
        let left = self.left;
        let cmd = self.cmd.as_mut().ok_or(StreamError::Truncated {
            offset: pos,
            inside: "an attribute outside any command".into(),
        })?;
        if len > left {
            return Err(StreamError::AttributeOverrun {
                kind: cmd.kind,
                offset: cmd.offset,
                attr: t,
            });
        }
        let is_data = t == attr::DATA;
        let keep = !is_data || self.keep_data;
        if keep {
            if cmd.buf.len() + len as usize > MAX_ATTR_BYTES {
                return Err(StreamError::TooManyAttributeBytes {
                    kind: cmd.kind,
                    offset: cmd.offset,
                });
            }
            cmd.attrs.push((t, cmd.buf.len() as u32, len));
        }
        if is_data {
            if cmd.data.is_some() {
                return Err(StreamError::TwoData {
                    kind: cmd.kind,
                    offset: cmd.offset,
                });
            }
            cmd.data = Some(DataRef {
                offset: pos,
                len: u64::from(len),
                crc: 0,
            });
            // The data's own CRC, from a zero seed.
            self.data_crc = 0;
        }
        self.have = 0;
        self.state = State::Value {
            left: len,
            keep,
            data: is_data,
        };
        if len == 0 {
            if is_data {
                self.data_done();
            }
            self.value_done(out)?;
        }
        Ok(())
    }

    /// The DATA value is complete: its own CRC is `data_crc`, and the command's CRC goes on
    /// as if it had read the data too.
    fn data_done(&mut self) {
        if let Some(d) = self.cmd.as_mut().and_then(|c| c.data.as_mut()) {
            d.crc = self.data_crc;
            self.crc = self.shift.apply(self.crc, d.len) ^ self.data_crc;
        }
    }

    fn value_done(&mut self, out: &mut Vec<Command>) -> Result<(), StreamError> {
        if self.left == 0 {
            self.command_done(out)
        } else {
            self.state = State::TlvHeader;
            Ok(())
        }
    }

    fn command_done(&mut self, out: &mut Vec<Command>) -> Result<(), StreamError> {
        let cmd = self.cmd.take().ok_or(StreamError::Truncated {
            offset: self.pos,
            inside: "a command never started".into(),
        })?;
        if self.crc != self.stored_crc {
            return Err(StreamError::Crc {
                kind: cmd.kind,
                offset: cmd.offset,
                stored: self.stored_crc,
                computed: self.crc,
            });
        }
        self.have = 0;
        self.state = if cmd.kind == Kind::End {
            State::Ended
        } else {
            State::CmdHeader
        };
        out.push(cmd);
        Ok(())
    }
}
