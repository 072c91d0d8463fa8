//! A minimal RFC 6455 frame codec for the client side: masked frames out,
//! unmasked frames in, buffers reused across messages.

/// Largest message the load generator accepts from a server (reassembled).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
}

impl Kind {
    pub fn opcode(self) -> OpCode {
        match self {
            Kind::Text => OpCode::Text,
            Kind::Binary => OpCode::Binary,
        }
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    /// Bytes taken by the header itself (2..=14).
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses a frame header; `Ok(None)` when `buf` does not hold all of it yet.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(format!("frame with reserved bits set (0x{b0:02x})"));
    }
    let opcode = OpCode::from_bits(b0 & 0x0F)
        .ok_or_else(|| format!("frame with reserved opcode 0x{:x}", b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            (u64::from_be_bytes(word), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(format!("invalid control frame ({opcode:?}, fin {fin}, {len} bytes)"));
    }
    let payload_len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_MESSAGE)
        .ok_or_else(|| format!("frame of {len} bytes is larger than {MAX_MESSAGE}"))?;
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(Header { fin, opcode, mask, header_len: at, payload_len }))
}

/// Appends a frame header to `out`.
pub fn write_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: usize,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// XORs `data` with the mask key, 8 bytes at a time. `data` must start at
/// payload offset 0 (masking is position dependent).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// Appends a whole frame (masked when `mask` is given).
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    write_header(out, fin, opcode, mask, payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// Cheap per-connection xorshift64* generator for mask keys.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Client-side writer: every frame masked, appended to `buf`.
#[derive(Debug)]
pub struct Encoder {
    pub buf: Vec<u8>,
    rng: XorShift,
    close_sent: bool,
}

impl Encoder {
    pub fn new(seed: u64) -> Self {
        Encoder { buf: Vec::new(), rng: XorShift::new(seed), close_sent: false }
    }

    fn mask_key(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_ne_bytes()
    }

    /// Appends a final masked frame carrying `payload`.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let key = self.mask_key();
        encode_frame(&mut self.buf, true, opcode, Some(key), payload);
    }

    /// Appends a final masked frame of `len` bytes written in place by `fill`.
    pub fn frame_with(&mut self, opcode: OpCode, len: usize, fill: impl FnOnce(&mut [u8])) {
        let key = self.mask_key();
        write_header(&mut self.buf, true, opcode, Some(key), len);
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let payload = &mut self.buf[start..];
        fill(payload);
        apply_mask(payload, key);
    }

    /// Appends a close frame with `code`, once per connection.
    pub fn close(&mut self, code: u16) {
        if !self.close_sent {
            self.close_sent = true;
            self.frame(OpCode::Close, &code.to_be_bytes());
        }
    }

    pub fn close_sent(&self) -> bool {
        self.close_sent
    }
}

/// A message delivered by [`Decoder::next_message`].
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Data(Kind, &'a [u8]),
    /// The server's close frame (status code if it sent one); a close reply
    /// has already been queued on the encoder.
    Close(Option<u16>),
}

/// Client-side reader over a reusable buffer: unmasked frames, pings
/// answered, pongs dropped, fragmented messages reassembled.
#[derive(Debug, Default)]
pub struct Decoder {
    pub buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pub pos: usize,
    /// Spare capacity to make room for before each read.
    min_spare: usize,
    frag_kind: Option<Kind>,
    frag: Vec<u8>,
    closed: bool,
}

impl Decoder {
    pub fn new(min_spare: usize) -> Self {
        Decoder { min_spare, ..Decoder::default() }
    }

    /// Whether the server's close frame has been seen.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Compacts the buffer and reserves room for the next read.
    pub fn prepare_read(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < self.min_spare {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(self.min_spare);
    }

    /// The next complete data or close message in the buffer, if any.
    pub fn next_message(&mut self, tx: &mut Encoder) -> Result<Option<Message<'_>>, String> {
        loop {
            let Some(h) = parse_header(&self.buf[self.pos..])? else {
                return Ok(None);
            };
            if self.buf.len() - self.pos < h.header_len + h.payload_len {
                return Ok(None);
            }
            if h.mask.is_some() {
                return Err("server sent a masked frame".into());
            }
            let start = self.pos + h.header_len;
            let end = start + h.payload_len;
            self.pos = end;
            let kind = match h.opcode {
                OpCode::Ping => {
                    tx.frame(OpCode::Pong, &self.buf[start..end]);
                    continue;
                }
                OpCode::Pong => continue,
                OpCode::Close => {
                    let code = match self.buf[start..end] {
                        [a, b, ..] => Some(u16::from_be_bytes([a, b])),
                        _ => None,
                    };
                    self.closed = true;
                    tx.close(code.unwrap_or(1000));
                    return Ok(Some(Message::Close(code)));
                }
                OpCode::Text => Kind::Text,
                OpCode::Binary => Kind::Binary,
                OpCode::Continuation => {
                    let Some(kind) = self.frag_kind else {
                        return Err("continuation frame without a message to continue".into());
                    };
                    if self.frag.len() + h.payload_len > MAX_MESSAGE {
                        return Err(format!("message larger than {MAX_MESSAGE} bytes"));
                    }
                    self.frag.extend_from_slice(&self.buf[start..end]);
                    if h.fin {
                        self.frag_kind = None;
                        return Ok(Some(Message::Data(kind, &self.frag)));
                    }
                    continue;
                }
            };
            if self.frag_kind.is_some() {
                return Err("new data frame inside a fragmented message".into());
            }
            if h.fin {
                return Ok(Some(Message::Data(kind, &self.buf[start..end])));
            }
            self.frag_kind = Some(kind);
            self.frag.clear();
            self.frag.extend_from_slice(&self.buf[start..end]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn unmasked_round_trips_at_length_boundaries() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let data = payload(len);
            let mut dec = Decoder::new(1024);
            encode_frame(&mut dec.buf, true, OpCode::Binary, None, &data);
            let header_len = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(dec.buf.len(), header_len + len, "len {len}");
            let mut tx = Encoder::new(1);
            assert_eq!(
                dec.next_message(&mut tx).unwrap(),
                Some(Message::Data(Kind::Binary, &data[..]))
            );
            assert_eq!(dec.next_message(&mut tx).unwrap(), None);
            assert!(tx.buf.is_empty());
        }
    }

    #[test]
    fn masked_round_trips_at_length_boundaries() {
        for len in [0, 3, 8, 125, 126, 65535, 65536] {
            let data = payload(len);
            let mut tx = Encoder::new(len as u64 + 99);
            tx.frame(OpCode::Text, &data);
            let h = parse_header(&tx.buf).unwrap().unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, OpCode::Text);
            assert_eq!(h.payload_len, len);
            assert_eq!(tx.buf.len(), h.header_len + len);
            let key = h.mask.expect("client frames are masked");
            let mut body = tx.buf[h.header_len..].to_vec();
            // Unmask byte by byte, as RFC 6455 §5.3 describes it.
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
            assert_eq!(body, data, "len {len}");
        }
    }

    #[test]
    fn rfc_6455_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let h = parse_header(&wire).unwrap().unwrap();
        assert_eq!(
            h,
            Header {
                fin: true,
                opcode: OpCode::Text,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                header_len: 6,
                payload_len: 5
            }
        );
        let mut body = wire[6..].to_vec();
        apply_mask(&mut body, h.mask.unwrap());
        assert_eq!(body, b"Hello");
        let mut out = Vec::new();
        encode_frame(&mut out, true, OpCode::Text, Some([0x37, 0xfa, 0x21, 0x3d]), b"Hello");
        assert_eq!(out, wire);
    }

    #[test]
    fn mask_is_an_involution_at_odd_lengths() {
        for len in 0..40 {
            let data = payload(len);
            let mut buf = data.clone();
            apply_mask(&mut buf, [1, 2, 3, 4]);
            for (i, (m, d)) in buf.iter().zip(&data).enumerate() {
                assert_eq!(*m, d ^ [1, 2, 3, 4][i % 4]);
            }
            apply_mask(&mut buf, [1, 2, 3, 4]);
            assert_eq!(buf, data);
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let data = payload(300);
        let mut wire = Vec::new();
        encode_frame(&mut wire, true, OpCode::Text, None, &data);
        let mut dec = Decoder::new(16);
        let mut tx = Encoder::new(1);
        for &b in &wire[..wire.len() - 1] {
            dec.buf.push(b);
            assert_eq!(dec.next_message(&mut tx).unwrap(), None);
        }
        dec.buf.push(wire[wire.len() - 1]);
        assert_eq!(dec.next_message(&mut tx).unwrap(), Some(Message::Data(Kind::Text, &data[..])));
    }

    #[test]
    fn ping_is_answered_with_masked_pong_and_fragments_reassemble() {
        let mut dec = Decoder::new(16);
        encode_frame(&mut dec.buf, false, OpCode::Text, None, b"Hel");
        encode_frame(&mut dec.buf, true, OpCode::Ping, None, b"p!");
        encode_frame(&mut dec.buf, false, OpCode::Continuation, None, b"lo ");
        encode_frame(&mut dec.buf, true, OpCode::Pong, None, b"");
        encode_frame(&mut dec.buf, true, OpCode::Continuation, None, b"world");
        let mut tx = Encoder::new(7);
        assert_eq!(
            dec.next_message(&mut tx).unwrap(),
            Some(Message::Data(Kind::Text, &b"Hello world"[..]))
        );
        let h = parse_header(&tx.buf).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len), (OpCode::Pong, 2));
        let mut body = tx.buf[h.header_len..].to_vec();
        apply_mask(&mut body, h.mask.unwrap());
        assert_eq!(body, b"p!");
    }

    #[test]
    fn close_is_answered_once() {
        let mut dec = Decoder::new(16);
        encode_frame(&mut dec.buf, true, OpCode::Close, None, &1001u16.to_be_bytes());
        let mut tx = Encoder::new(3);
        assert_eq!(dec.next_message(&mut tx).unwrap(), Some(Message::Close(Some(1001))));
        assert!(dec.closed() && tx.close_sent());
        let len = tx.buf.len();
        tx.close(1000);
        assert_eq!(tx.buf.len(), len);
    }

    #[test]
    fn protocol_errors() {
        let mut tx = Encoder::new(3);
        for wire in [
            vec![0x81, 0x81, 1, 2, 3, 4, 0], // masked server frame
            vec![0x83, 0x00],                // reserved opcode
            vec![0xC1, 0x00],                // RSV1
            vec![0x09, 0x00],                // fragmented ping
            vec![0x80, 0x00],                // continuation of nothing
        ] {
            let mut dec = Decoder::new(16);
            dec.buf = wire.clone();
            assert!(dec.next_message(&mut tx).is_err(), "{wire:?}");
        }
    }
}
