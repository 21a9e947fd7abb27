//! The compression methods py2p negotiates, with decompression capped.

use std::io::{Read, Write};

use super::DecodeError;

/// A compression method as numbered on the wire (py2p `flags.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Compression {
    /// bzip2 (`0x10`).
    Bz2 = 0x10,
    /// gzip container around deflate (`0x11`).
    Gzip = 0x11,
    /// xz container around LZMA2 (`0x12`), as Python's `lzma.compress`.
    Lzma = 0x12,
    /// zlib container around deflate (`0x13`).
    Zlib = 0x13,
    /// Raw snappy block (`0x20`), as python-snappy's `snappy.compress`.
    Snappy = 0x20,
    /// rs2p extension (`0x2F`): "send me frames uncompressed".
    ///
    /// rs2p advertises it first. py2p ignores methods it does not know, so a
    /// py2p peer still compresses with its own first choice, while two rs2p
    /// nodes agree on no compression (cheapest on fast links) and, seeing it,
    /// know each other as rs2p. Uncompressed frames are always accepted by
    /// py2p and rs2p alike.
    Identity = 0x2F,
}

impl Compression {
    /// rs2p's default preference order: identity first (rs2p peers), then
    /// py2p's own order (zlib, gzip, bz2, lzma), then snappy.
    pub const DEFAULT_PREFERENCE: [Compression; 6] = [
        Compression::Identity,
        Compression::Zlib,
        Compression::Gzip,
        Compression::Bz2,
        Compression::Lzma,
        Compression::Snappy,
    ];

    /// The method for a wire number, if rs2p implements it.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0x10 => Compression::Bz2,
            0x11 => Compression::Gzip,
            0x12 => Compression::Lzma,
            0x13 => Compression::Zlib,
            0x20 => Compression::Snappy,
            0x2F => Compression::Identity,
            _ => return None,
        })
    }

    /// The wire number.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Compresses `data` with `method`.
pub fn compress(method: Compression, data: &[u8]) -> Vec<u8> {
    fn finish<W: Write>(mut w: W, data: &[u8]) -> W {
        // Writing into a Vec cannot fail.
        w.write_all(data).expect("in-memory compression");
        w
    }
    match method {
        Compression::Identity => data.to_vec(),
        Compression::Zlib => {
            let w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            finish(w, data).finish().expect("in-memory zlib")
        }
        Compression::Gzip => {
            let w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            finish(w, data).finish().expect("in-memory gzip")
        }
        Compression::Bz2 => {
            let w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            finish(w, data).finish().expect("in-memory bz2")
        }
        Compression::Lzma => {
            let w = liblzma::write::XzEncoder::new(Vec::new(), 6);
            finish(w, data).finish().expect("in-memory xz")
        }
        Compression::Snappy => {
            snap::raw::Encoder::new().compress_vec(data).expect("snappy input within its size limit")
        }
    }
}

/// Guesses the method of a compressed body from its first bytes, so a
/// receiver needs no per-link state to decode (py2p instead tries every
/// negotiated method in turn). Snappy has no magic; it is the fallback.
pub fn detect(data: &[u8]) -> Option<Compression> {
    match data {
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [0x78, b, ..] if (u16::from(0x78u8) << 8 | u16::from(*b)) % 31 == 0 => Some(Compression::Zlib),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Compression::Lzma),
        [b'B', b'Z', b'h', ..] => Some(Compression::Bz2),
        _ => None,
    }
}

/// Decompresses `data`, producing at most `cap` bytes.
///
/// # Errors
/// [`DecodeError::DecompressedTooLarge`] when the output would exceed `cap`
/// (decompression stops there), [`DecodeError::BadChecksum`] when the data is
/// not valid for `method`.
pub fn decompress(method: Compression, data: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    fn capped<R: Read>(r: R, cap: usize) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
        r.take(limit).read_to_end(&mut out).map_err(|_| DecodeError::BadChecksum)?;
        if out.len() > cap {
            return Err(DecodeError::DecompressedTooLarge { max: cap });
        }
        Ok(out)
    }
    match method {
        Compression::Identity => {
            if data.len() > cap {
                return Err(DecodeError::DecompressedTooLarge { max: cap });
            }
            Ok(data.to_vec())
        }
        // Python decodes both with zlib.decompress(wbits=MAX_WBITS|32), which
        // auto-detects the container; follow the bytes, not the label.
        Compression::Zlib | Compression::Gzip => {
            if data.starts_with(&[0x1f, 0x8b]) {
                capped(flate2::read::MultiGzDecoder::new(data), cap)
            } else {
                capped(flate2::read::ZlibDecoder::new(data), cap)
            }
        }
        Compression::Bz2 => capped(bzip2::read::BzDecoder::new(data), cap),
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_auto_decoder(u64::MAX, 0).map_err(|_| DecodeError::BadChecksum)?;
            capped(liblzma::read::XzDecoder::new_stream(data, stream), cap)
        }
        Compression::Snappy => {
            let len = snap::raw::decompress_len(data).map_err(|_| DecodeError::BadChecksum)?;
            if len > cap {
                return Err(DecodeError::DecompressedTooLarge { max: cap });
            }
            snap::raw::Decoder::new().decompress_vec(data).map_err(|_| DecodeError::BadChecksum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_and_is_detected() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for m in Compression::DEFAULT_PREFERENCE {
            let c = compress(m, &data);
            assert_eq!(decompress(m, &c, 1 << 20).unwrap(), data, "{m:?}");
            match m {
                Compression::Identity | Compression::Snappy => {}
                _ => assert_eq!(
                    detect(&c).map(|d| d == m || matches!(d, Compression::Zlib | Compression::Gzip)),
                    Some(true)
                ),
            }
        }
    }

    #[test]
    fn decompression_stops_at_the_cap() {
        let bomb = compress(Compression::Zlib, &vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            decompress(Compression::Zlib, &bomb, 1 << 20),
            Err(DecodeError::DecompressedTooLarge { max: 1 << 20 })
        );
        for m in [Compression::Bz2, Compression::Lzma, Compression::Snappy, Compression::Gzip] {
            let bomb = compress(m, &vec![0u8; 4 << 20]);
            assert!(matches!(decompress(m, &bomb, 1 << 20), Err(DecodeError::DecompressedTooLarge { .. })), "{m:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for m in Compression::DEFAULT_PREFERENCE {
            let _ = decompress(m, b"\x78\x9cnot really zlib", 1024);
            let _ = decompress(m, &[0xff; 64], 1024);
        }
    }
}
