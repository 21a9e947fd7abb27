//! Frames: building them, splitting a byte stream into them, and checking
//! them into [`Packet`]s.

use bytes::{BufMut, Bytes, BytesMut};
use rmpv::Value;
use sha2::{Digest, Sha256};

use super::msgpack::{self, read_array_len, read_bytes_range, read_uint};
use super::{compress, Compression, DecodeError, Limits, MsgType};
use crate::id::{MsgId, PeerId};

/// Bytes before the payload: the length prefix and the sha256 checksum.
const HEADER: usize = 4 + 32;

/// A complete, uncompressed wire frame:
/// `[length][sha256(payload)][payload]`.
///
/// Cheap to clone (reference-counted). Relays pass the same `Frame` to every
/// outgoing link, so the payload bytes, and with them the message id, are
/// exactly the ones received.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes, {:?})", self.0.len(), self.id())
    }
}

impl Frame {
    /// Builds a frame for `[msg_type, sender, time, subflag, packets...]`.
    pub fn build(msg_type: MsgType, sender: &PeerId, time: u64, subflag: impl Into<u64>, packets: &[Value]) -> Frame {
        let mut b = FrameBuilder::new(msg_type, sender, time, subflag, packets.len());
        for p in packets {
            b.value(p);
        }
        b.finish()
    }

    /// Builds a frame around an already encoded msgpack payload.
    pub fn from_payload(payload: &[u8]) -> Frame {
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        buf.resize(HEADER, 0);
        buf.extend_from_slice(payload);
        Frame::seal(buf)
    }

    /// Fills in the length prefix and checksum of `buf`, which holds
    /// [`HEADER`] placeholder bytes and then the payload.
    fn seal(mut buf: Vec<u8>) -> Frame {
        // Oversized payloads get a saturated prefix; senders check sizes
        // against the frame limit before anything goes out.
        let len = u32::try_from(buf.len() - 4).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let digest = Sha256::digest(&buf[HEADER..]);
        buf[4..HEADER].copy_from_slice(&digest);
        Frame(Bytes::from(buf))
    }

    /// The same frame in an allocation of its own (a received frame is a
    /// slice of its read buffer, which it keeps alive while it lives).
    pub fn detached(&self) -> Frame {
        Frame(Bytes::copy_from_slice(&self.0))
    }

    /// The whole frame, length prefix included, as sent on an uncompressed
    /// link.
    pub fn wire_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The body (checksum + payload): what a compressed link compresses.
    pub fn body(&self) -> &[u8] {
        &self.0[4..]
    }

    /// The msgpack payload.
    pub fn payload(&self) -> &[u8] {
        &self.0[36..]
    }

    /// The message id (the checksum).
    pub fn id(&self) -> MsgId {
        let mut id = [0u8; 32];
        id.copy_from_slice(&self.0[4..36]);
        MsgId(id)
    }

    /// The frame as it goes on a link that compresses with `method`.
    pub fn encode_for(&self, method: Option<Compression>) -> Bytes {
        match method {
            None | Some(Compression::Identity) => self.0.clone(),
            Some(m) => {
                let c = compress(m, self.body());
                let mut buf = BytesMut::with_capacity(4 + c.len());
                buf.put_u32(c.len() as u32);
                buf.put_slice(&c);
                buf.freeze()
            }
        }
    }
}

/// Writes a frame's payload field by field, straight into the frame's one
/// buffer (no intermediate [`Value`] tree, no copy): the encoders of
/// [`super::message`] use it.
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// Starts `[msg_type, sender, time, subflag, ...]` with `packets` more
    /// values to come after the sub-flag.
    pub fn new(msg_type: MsgType, sender: &PeerId, time: u64, subflag: impl Into<u64>, packets: usize) -> Self {
        // Encoded in place after room for the prefix and checksum, which are
        // filled in last: one allocation, no copy.
        let mut buf = Vec::with_capacity(HEADER + 96 + sender.as_bytes().len() + 32 * packets);
        buf.resize(HEADER, 0);
        let mut b = FrameBuilder { buf };
        b.array_len(4 + packets);
        b.uint(msg_type.code());
        b.bin(sender.as_bytes());
        b.uint(time);
        b.uint(subflag.into());
        b
    }

    /// Appends an array header of `n` items (the items follow).
    pub fn array_len(&mut self, n: usize) -> &mut Self {
        // Lengths come from in-memory collections: below u32::MAX in practice,
        // and a saturated header is rejected by every peer's size check.
        rmp::encode::write_array_len(&mut self.buf, u32::try_from(n).unwrap_or(u32::MAX)).expect("vec write");
        self
    }

    /// Appends a map header of `n` pairs (the keys and values follow).
    pub fn map_len(&mut self, n: usize) -> &mut Self {
        rmp::encode::write_map_len(&mut self.buf, u32::try_from(n).unwrap_or(u32::MAX)).expect("vec write");
        self
    }

    /// Appends an unsigned integer in its smallest encoding.
    pub fn uint(&mut self, v: u64) -> &mut Self {
        rmp::encode::write_uint(&mut self.buf, v).expect("vec write");
        self
    }

    /// Appends msgpack bin (py2p's `bytes`).
    pub fn bin(&mut self, b: &[u8]) -> &mut Self {
        rmp::encode::write_bin(&mut self.buf, b).expect("vec write");
        self
    }

    /// Appends any value.
    pub fn value(&mut self, v: &Value) -> &mut Self {
        msgpack::write_value(&mut self.buf, v);
        self
    }

    /// Bytes written so far (prefix and checksum room included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing but the header has been written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() <= HEADER
    }

    /// Fills in the length prefix and checksum.
    pub fn finish(self) -> Frame {
        Frame::seal(self.buf)
    }
}

/// The fixed fields every py2p message starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `packets[0]`: the message type (see [`super::MsgType`]).
    pub msg_type: u64,
    /// `packets[1]`: the original sender's id.
    pub sender: PeerId,
    /// `packets[2]`: the sender's UNIX time in seconds.
    pub time: u64,
    /// `packets[3]`: the sub-flag (see [`super::SubFlag`]).
    pub subflag: u64,
}

impl Header {
    /// The message type, if py2p defines it.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_u64(self.msg_type)
    }

    /// Whether the message has type `t` and sub-flag `f`.
    pub fn is(&self, t: MsgType, f: super::SubFlag) -> bool {
        self.msg_type == t.code() && self.subflag == f.code()
    }
}

/// A checked frame from the network: checksum verified, payload validated as
/// msgpack within the limits, header parsed. The rest of the payload is
/// decoded only when someone asks for it.
#[derive(Clone, PartialEq)]
pub struct Packet {
    /// The frame, uncompressed.
    pub frame: Frame,
    /// The parsed header.
    pub header: Header,
    /// Offset of the packets after the sub-flag within the payload.
    rest_offset: usize,
    /// Number of packets after the sub-flag.
    rest_count: u64,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet").field("header", &self.header).field("rest_count", &self.rest_count).finish()
    }
}

impl Packet {
    /// The same packet in an allocation of its own (see
    /// [`Frame::detached`]), for a packet kept a while: a received one
    /// would keep its whole read buffer alive.
    pub fn detached(&self) -> Packet {
        let mut p = self.clone();
        p.frame = self.frame.detached();
        p.header.sender = PeerId::from_bytes(Bytes::copy_from_slice(self.header.sender.as_bytes()));
        p
    }

    /// Checks an uncompressed frame and parses its header.
    ///
    /// # Errors
    /// Any [`DecodeError`]; the frame must then be dropped and its connection
    /// closed.
    pub fn parse(frame: Frame, limits: &Limits) -> Result<Packet, DecodeError> {
        let payload = frame.payload();
        let mut pos = 0;
        let n = read_array_len(payload, &mut pos)?;
        if n < 4 {
            return Err(DecodeError::Malformed("fewer than 4 header fields"));
        }
        let msg_type = read_uint(payload, &mut pos)?;
        let sender = read_bytes_range(payload, &mut pos)?;
        if !PeerId::valid_len(sender.len()) {
            return Err(DecodeError::Malformed("sender id length"));
        }
        let time = read_uint(payload, &mut pos)?;
        let subflag = read_uint(payload, &mut pos)?;
        let rest_offset = pos;
        let end = msgpack::skip_values(payload, pos, n - 4, limits.max_depth)?;
        if end != payload.len() {
            return Err(DecodeError::Msgpack("trailing bytes"));
        }
        let sender = PeerId::from_bytes(frame.0.slice(36 + sender.start..36 + sender.end));
        Ok(Packet { frame, header: Header { msg_type, sender, time, subflag }, rest_offset, rest_count: n - 4 })
    }

    /// Number of packets after the sub-flag.
    pub fn len(&self) -> usize {
        self.rest_count as usize
    }

    /// Whether there are no packets after the sub-flag.
    pub fn is_empty(&self) -> bool {
        self.rest_count == 0
    }

    /// The packets after the sub-flag, decoded.
    ///
    /// # Errors
    /// Cannot fail for a packet built by [`Packet::parse`] except on a bug;
    /// returns [`DecodeError::Msgpack`] rather than panicking.
    pub fn values(&self) -> Result<Vec<Value>, DecodeError> {
        msgpack::decode_values(self.frame.payload(), self.rest_offset, self.rest_count)
    }

    /// The packets after the sub-flag, borrowed from the frame (see
    /// [`msgpack::decode_value_refs`]).
    ///
    /// # Errors
    /// As [`Packet::values`].
    pub fn value_refs(&self) -> Result<Vec<rmpv::ValueRef<'_>>, DecodeError> {
        msgpack::decode_value_refs(self.frame.payload(), self.rest_offset, self.rest_count)
    }
}

/// Splits a byte stream into frames and checks them.
///
/// Feed it bytes with [`FrameDecoder::buffer`], take packets with
/// [`FrameDecoder::next_packet`]; `Ok(None)` means "need more bytes". The
/// announced length is checked against [`Limits::max_frame_len`] before any
/// of the body is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    limits: Limits,
    enabled: Vec<Compression>,
    first: bool,
}

impl FrameDecoder {
    /// A decoder accepting the given compression methods (uncompressed frames
    /// are always accepted, as py2p does).
    pub fn new(limits: Limits, enabled: &[Compression]) -> Self {
        FrameDecoder { buf: BytesMut::new(), limits, enabled: enabled.to_vec(), first: true }
    }

    /// The read buffer, to append received bytes to.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Frees the read buffer's memory if nothing is buffered (an idle
    /// connection need not keep what a burst grew).
    pub fn release_buffer(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Whether part of a frame is buffered (for the stalled-frame timeout).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame, checked.
    ///
    /// # Errors
    /// A [`DecodeError`] means the stream is corrupt or hostile: close it.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        // A TLS record (handshake or alert, version 3.x) where the first
        // frame should start: name the real problem instead of a bogus size.
        if self.first && matches!(self.buf[..3], [0x15 | 0x16, 0x03, 0x00..=0x04]) {
            return Err(DecodeError::LooksLikeTls);
        }
        if len > self.limits.max_frame_len {
            return Err(DecodeError::FrameTooLarge { len: len as u64, max: self.limits.max_frame_len });
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.first = false;
        let raw = self.buf.split_to(4 + len).freeze();
        let frame = decode_body(raw, &self.limits, &self.enabled)?;
        Packet::parse(frame, &self.limits).map(Some)
    }
}

fn checksum_ok(body: &[u8]) -> bool {
    body.len() >= 32 && Sha256::digest(&body[32..]).as_slice() == &body[..32]
}

/// Turns a raw frame (prefix + possibly compressed body) into an uncompressed
/// [`Frame`] whose checksum holds.
///
/// py2p tries each negotiated method and falls back to the raw bytes; we
/// check the raw bytes first (rs2p links and py2p's handshakes are raw), then
/// the method the body's magic bytes name, then snappy, which has no magic.
fn decode_body(raw: Bytes, limits: &Limits, enabled: &[Compression]) -> Result<Frame, DecodeError> {
    let body = &raw[4..];
    // A raw payload is a msgpack array; checking that first saves hashing
    // compressed bytes.
    let looks_raw = matches!(body.get(32), Some(0x90..=0x9f | 0xdc | 0xdd));
    if looks_raw && checksum_ok(body) {
        if body.len() > limits.max_decompressed_len {
            return Err(DecodeError::DecompressedTooLarge { max: limits.max_decompressed_len });
        }
        return Ok(Frame(raw));
    }
    let detected = super::detect(body);
    let mut candidates: Vec<Compression> = Vec::with_capacity(2);
    candidates.extend(detected);
    candidates.push(Compression::Snappy);
    let mut last_err = DecodeError::BadChecksum;
    for m in candidates {
        // Snappy has no magic: for bytes that merely fail the other checks,
        // a huge length in its header means "not snappy", not "a bomb".
        let guessing = detected != Some(m);
        let allowed = enabled.contains(&m)
            || (matches!(m, Compression::Zlib | Compression::Gzip)
                && (enabled.contains(&Compression::Zlib) || enabled.contains(&Compression::Gzip)));
        if !allowed {
            continue;
        }
        match super::decompress(m, body, limits.max_decompressed_len) {
            Ok(plain) if checksum_ok(&plain) => {
                let mut buf = BytesMut::with_capacity(4 + plain.len());
                buf.put_u32(plain.len() as u32);
                buf.put_slice(&plain);
                return Ok(Frame(buf.freeze()));
            }
            Ok(_) => {}
            Err(e @ DecodeError::DecompressedTooLarge { .. }) if !guessing => return Err(e),
            Err(_) if guessing => {}
            Err(e) => last_err = e,
        }
    }
    if body.len() < 32 {
        return Err(DecodeError::TooShort(body.len()));
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PeerId {
        PeerId::from_bytes(&b"4m7iSUJVN1yVcdVziYECsfcHMKvfx2dE6SGq9gP87UPnr8FsJBoJaNBuphV4f2N1ob"[..])
    }

    #[test]
    fn build_parse_round_trip() {
        let f = Frame::build(
            MsgType::Broadcast,
            &id(),
            1_795_279_776,
            0u64,
            &[Value::from("hello"), Value::Binary(vec![1])],
        );
        let p = Packet::parse(f.clone(), &Limits::default()).unwrap();
        assert_eq!(p.header.msg_type, 0);
        assert_eq!(p.header.sender, id());
        assert_eq!(p.header.time, 1_795_279_776);
        assert_eq!(p.values().unwrap(), vec![Value::from("hello"), Value::Binary(vec![1])]);
    }

    #[test]
    fn decoder_handles_every_split_point_and_compression() {
        let f = Frame::build(MsgType::Whisper, &id(), 7, 2u64, &[Value::from("x".repeat(500))]);
        for method in [
            None,
            Some(Compression::Zlib),
            Some(Compression::Gzip),
            Some(Compression::Bz2),
            Some(Compression::Lzma),
            Some(Compression::Snappy),
        ] {
            let wire = f.encode_for(method);
            let mut stream = wire.to_vec();
            stream.extend_from_slice(&wire);
            for split in 0..stream.len() {
                let mut d = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
                d.buffer().extend_from_slice(&stream[..split]);
                let mut got = Vec::new();
                while let Some(p) = d.next_packet().unwrap() {
                    got.push(p);
                }
                d.buffer().extend_from_slice(&stream[split..]);
                while let Some(p) = d.next_packet().unwrap() {
                    got.push(p);
                }
                assert_eq!(got.len(), 2, "{method:?} split {split}");
                assert!(got.iter().all(|p| p.frame == f));
            }
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_buffering() {
        let mut d = FrameDecoder::new(Limits { max_frame_len: 1000, ..Limits::default() }, &[]);
        d.buffer().extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_packet(), Err(DecodeError::FrameTooLarge { .. })));
    }

    #[test]
    fn release_buffer_keeps_partial_frames() {
        let f = Frame::build(MsgType::Broadcast, &id(), 7, 0u64, &[Value::from("x".repeat(100))]);
        let wire = f.wire_bytes();
        let mut d = FrameDecoder::new(Limits::default(), &[]);
        d.buffer().reserve(64 * 1024);
        d.buffer().extend_from_slice(&wire[..10]);
        d.release_buffer();
        assert_eq!(d.buffer().len(), 10, "a partial frame must survive");
        d.buffer().extend_from_slice(&wire[10..]);
        assert!(d.next_packet().unwrap().is_some());
        d.release_buffer();
        assert_eq!(d.buffer().capacity(), 0, "an empty buffer is freed");
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let f = Frame::build(MsgType::Broadcast, &id(), 7, 0u64, &[]);
        let mut bytes = f.wire_bytes().to_vec();
        bytes[10] ^= 1;
        let mut d = FrameDecoder::new(Limits::default(), &Compression::DEFAULT_PREFERENCE);
        d.buffer().extend_from_slice(&bytes);
        assert_eq!(d.next_packet().unwrap_err(), DecodeError::BadChecksum);
    }
}
