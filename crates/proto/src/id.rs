//! Identifiers: node ids, protocol ids and message ids.
//!
//! py2p writes node ids and protocol ids as base58 (bitcoin alphabet) of a big
//! integer, with no leading-zero padding (`base58.b58encode_int`), and sends
//! them as msgpack **bin**. Ids are compared as integers when two nodes must
//! agree on which of two connections to keep.

use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;
use sha2::{Digest, Sha256, Sha384};

/// The py2p protocol version string mixed into protocol ids.
pub const PROTOCOL_VERSION: &str = "0.7";

/// Longest node id accepted from the network, in bytes.
///
/// py2p ids are base58 of a 384-bit hash (about 66 characters); anything much
/// longer is junk and closes the connection.
pub const MAX_ID_LEN: usize = 128;

/// Encodes `bytes` read as a big-endian unsigned integer in base58, the way
/// py2p's `b58encode_int` does (no leading `1`s for leading zero bytes; zero
/// itself is `"1"`).
pub fn b58encode_int(bytes: &[u8]) -> String {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    if first == bytes.len() {
        return "1".to_owned();
    }
    bs58::encode(&bytes[first..]).into_string()
}

/// A node's id, as the base58 text py2p puts on the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerId(Bytes);

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// Empty, or longer than an id may be.
    #[error("a node id is 1 to {MAX_ID_LEN} characters")]
    Length,
    /// A character outside base58 (py2p's ids are base58, Bitcoin alphabet).
    #[error("{0:?} is not a base58 character (node ids are base58)")]
    NotBase58(char),
}

impl std::str::FromStr for PeerId {
    type Err = IdParseError;

    /// A node id as people write it: base58 (Bitcoin alphabet).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const B58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        if let Some(c) = s.chars().find(|c| !B58.contains(*c)) {
            return Err(IdParseError::NotBase58(c));
        }
        PeerId::from_wire(s.as_bytes()).ok_or(IdParseError::Length)
    }
}

impl PeerId {
    /// Wraps id bytes as received from the wire (no validation beyond what
    /// the caller did).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        PeerId(bytes.into())
    }

    /// An id received from the network: `None` when empty or longer than
    /// [`MAX_ID_LEN`]. The one place the id-length rule is written.
    pub fn from_wire(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() <= MAX_ID_LEN).then(|| PeerId(Bytes::copy_from_slice(bytes)))
    }

    /// Whether `len` is an acceptable length for an id from the network.
    pub fn valid_len(len: usize) -> bool {
        len != 0 && len <= MAX_ID_LEN
    }

    /// A fresh id: base58 of 384 bits, the shape py2p uses. `seed` should be
    /// random; the driver passes OS randomness, tests a fixed seed.
    pub fn random(seed: &[u8]) -> Self {
        let hash = Sha384::digest(seed);
        PeerId(Bytes::from(b58encode_int(&hash)))
    }

    /// The id as py2p computes it: `sha384(str((host, port)) + protocol_id +
    /// salt)`, base58-encoded.
    pub fn derive(host: &str, port: u16, protocol: &ProtocolId, salt: &[u8]) -> Self {
        let mut h = Sha384::new();
        h.update(format!("('{host}', {port})").as_bytes());
        h.update(protocol.as_bytes());
        h.update(salt);
        PeerId(Bytes::from(b58encode_int(&h.finalize())))
    }

    /// The raw bytes (base58 text) of the id.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as text (lossy for ids that are not UTF-8, which py2p never
    /// produces).
    pub fn as_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Compares two ids as the integers their base58 text encodes, as py2p's
    /// connection-conflict rule does (`b58decode_int(a) > b58decode_int(b)`).
    ///
    /// The bitcoin alphabet is in ASCII order, so once leading zero digits
    /// (`'1'`) are stripped, a longer string is a larger number and equal
    /// lengths compare byte-wise. Ids that are not base58 still get a total,
    /// deterministic order.
    pub fn numeric_cmp(&self, other: &PeerId) -> Ordering {
        fn digits(b: &[u8]) -> &[u8] {
            let start = b.iter().position(|&c| c != b'1').unwrap_or(b.len());
            &b[start..]
        }
        let (a, b) = (digits(&self.0), digits(&other.0));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str_lossy())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str_lossy();
        let short: String = s.chars().take(10).collect();
        write!(f, "PeerId({short}…)")
    }
}

/// How a network's connections are secured; part of the protocol id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encryption {
    /// No encryption (py2p's `"Plaintext"`).
    Plaintext,
    /// TLS (py2p's `"SSL"`).
    Ssl,
}

impl Encryption {
    /// The name py2p mixes into the protocol id.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Plaintext => "Plaintext",
            Encryption::Ssl => "SSL",
        }
    }
}

/// A network's identity: py2p's `Protocol(subnet, encryption)`.
///
/// Nodes whose protocol ids differ refuse each other's connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Protocol {
    /// The subnet name (`"mesh"` by default for a mesh socket).
    pub subnet: String,
    /// The encryption in use.
    pub encryption: Encryption,
}

impl Protocol {
    /// A protocol with the given subnet and encryption.
    pub fn new(subnet: impl Into<String>, encryption: Encryption) -> Self {
        Protocol { subnet: subnet.into(), encryption }
    }

    /// The protocol id: `base58(int(sha256(subnet + encryption + "0.7")))`.
    pub fn id(&self) -> ProtocolId {
        let mut h = Sha256::new();
        h.update(self.subnet.as_bytes());
        h.update(self.encryption.as_str().as_bytes());
        h.update(PROTOCOL_VERSION.as_bytes());
        ProtocolId(Bytes::from(b58encode_int(&h.finalize())))
    }
}

impl Default for Protocol {
    /// py2p's mesh default: `Protocol('mesh', 'Plaintext')`.
    fn default() -> Self {
        Protocol::new("mesh", Encryption::Plaintext)
    }
}

/// A protocol id as sent in the handshake (base58 text, msgpack bin).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ProtocolId(Bytes);

impl ProtocolId {
    /// The raw bytes of the id.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProtocolId({})", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// A message id: the sha256 of the msgpack payload, as carried in the frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId(pub [u8; 32]);

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl fmt::Display for MsgId {
    /// Lower-case hex, 64 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ids_match_py2p_capture() {
        // Values from shared/py2p-frames/FRAMES.md, captured from py2p 0.7.878.
        let mesh = Protocol::new("mesh", Encryption::Plaintext).id();
        assert_eq!(mesh.as_bytes(), b"EpAmyZWv9rZUKmjQgU3FTUD4GrJHvVEXizmghVBc8eGD");
        let sync1 = Protocol::new("sync1", Encryption::Plaintext).id();
        assert_eq!(sync1.as_bytes(), b"p7sAnBsK3n5enFXH7vEGQjzS6t6RH1CeEoYekNjr5Jn");
        let sync0 = Protocol::new("sync0", Encryption::Plaintext).id();
        assert_eq!(sync0.as_bytes(), b"EB8PreScNDAFMALGBs1uyocDXLXCxZKzWEP5oR6VVh2z");
    }

    #[test]
    fn b58_int_strips_leading_zeros() {
        assert_eq!(b58encode_int(&[0, 0, 1]), "2");
        assert_eq!(b58encode_int(&[0, 0]), "1");
        assert_eq!(b58encode_int(&[58]), "21");
    }

    #[test]
    fn numeric_order_matches_integer_order() {
        let ids: Vec<u128> = vec![0, 1, 57, 58, 59, 3363, 1 << 40, u128::MAX / 3, u128::MAX];
        for &a in &ids {
            for &b in &ids {
                let pa = PeerId::from_bytes(b58encode_int(&a.to_be_bytes()));
                let pb = PeerId::from_bytes(b58encode_int(&b.to_be_bytes()));
                assert_eq!(pa.numeric_cmp(&pb), a.cmp(&b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn random_ids_look_like_py2p_ids() {
        let id = PeerId::random(b"seed");
        assert!((60..=68).contains(&id.as_bytes().len()));
        assert!(bs58::decode(id.as_bytes()).into_vec().is_ok());
    }
}
