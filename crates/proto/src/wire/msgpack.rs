//! msgpack helpers: a bounded, allocation-free validator, the py2p header
//! parser, and value (de)serialisation through `rmpv`.
//!
//! Remote payloads are first walked by [`validate`]: iteratively (no
//! recursion), checking every declared length and container size against the
//! bytes actually present and the nesting depth against a limit. Only a
//! payload that passes is handed to `rmpv`, so a header that claims a billion
//! items can never make anything allocate for them.

use rmpv::Value;

use super::DecodeError;

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let end = pos.checked_add(n).filter(|&e| e <= buf.len()).ok_or(DecodeError::Msgpack("truncated"))?;
    let s = &buf[*pos..end];
    *pos = end;
    Ok(s)
}

fn be(buf: &[u8], pos: &mut usize, n: usize) -> Result<u64, DecodeError> {
    Ok(take(buf, pos, n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
}

/// Walks `count` consecutive msgpack values starting at `pos` and returns the
/// offset just past them.
///
/// # Errors
/// [`DecodeError::Msgpack`] for truncated or invalid encodings (including a
/// container that declares more items than bytes remain),
/// [`DecodeError::TooDeep`] past `max_depth` levels of nesting.
pub fn skip_values(buf: &[u8], mut pos: usize, count: u64, max_depth: usize) -> Result<usize, DecodeError> {
    // Remaining item counts of the open containers; the bottom entry is the
    // caller's `count`. Its length is bounded by `max_depth + 1`.
    let mut stack: Vec<u64> = vec![count];
    while let Some(top) = stack.last_mut() {
        if *top == 0 {
            stack.pop();
            continue;
        }
        *top -= 1;
        let marker = *buf.get(pos).ok_or(DecodeError::Msgpack("truncated"))?;
        pos += 1;
        let children: u64 = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0x80..=0x8f => 2 * u64::from(marker & 0x0f),
            0x90..=0x9f => u64::from(marker & 0x0f),
            0xa0..=0xbf => {
                take(buf, &mut pos, usize::from(marker & 0x1f))?;
                0
            }
            0xc1 => return Err(DecodeError::Msgpack("reserved marker 0xc1")),
            0xc4 | 0xd9 => skip_blob(buf, &mut pos, 1)?,
            0xc5 | 0xda => skip_blob(buf, &mut pos, 2)?,
            0xc6 | 0xdb => skip_blob(buf, &mut pos, 4)?,
            0xc7 => skip_ext(buf, &mut pos, 1)?,
            0xc8 => skip_ext(buf, &mut pos, 2)?,
            0xc9 => skip_ext(buf, &mut pos, 4)?,
            0xca => fixed(buf, &mut pos, 4)?,
            0xcb => fixed(buf, &mut pos, 8)?,
            0xcc | 0xd0 => fixed(buf, &mut pos, 1)?,
            0xcd | 0xd1 => fixed(buf, &mut pos, 2)?,
            0xce | 0xd2 => fixed(buf, &mut pos, 4)?,
            0xcf | 0xd3 => fixed(buf, &mut pos, 8)?,
            0xd4 => fixed(buf, &mut pos, 2)?,
            0xd5 => fixed(buf, &mut pos, 3)?,
            0xd6 => fixed(buf, &mut pos, 5)?,
            0xd7 => fixed(buf, &mut pos, 9)?,
            0xd8 => fixed(buf, &mut pos, 17)?,
            0xdc => be(buf, &mut pos, 2)?,
            0xdd => be(buf, &mut pos, 4)?,
            0xde => 2 * be(buf, &mut pos, 2)?,
            0xdf => 2 * be(buf, &mut pos, 4)?,
        };
        if children > 0 {
            // Every item takes at least one byte: a container cannot hold
            // more items than there are bytes left.
            if children > (buf.len() - pos) as u64 {
                return Err(DecodeError::Msgpack("container larger than its frame"));
            }
            if stack.len() > max_depth {
                return Err(DecodeError::TooDeep(max_depth));
            }
            stack.push(children);
        }
    }
    Ok(pos)
}

fn fixed(buf: &[u8], pos: &mut usize, n: usize) -> Result<u64, DecodeError> {
    take(buf, pos, n)?;
    Ok(0)
}

fn skip_blob(buf: &[u8], pos: &mut usize, len_bytes: usize) -> Result<u64, DecodeError> {
    let len = be(buf, pos, len_bytes)?;
    take(buf, pos, usize::try_from(len).map_err(|_| DecodeError::Msgpack("truncated"))?)?;
    Ok(0)
}

fn skip_ext(buf: &[u8], pos: &mut usize, len_bytes: usize) -> Result<u64, DecodeError> {
    let len = be(buf, pos, len_bytes)?;
    take(buf, pos, 1)?;
    take(buf, pos, usize::try_from(len).map_err(|_| DecodeError::Msgpack("truncated"))?)?;
    Ok(0)
}

/// Checks that `buf` is exactly one well-formed msgpack value within
/// `max_depth`.
///
/// # Errors
/// As [`skip_values`], plus trailing bytes after the value.
pub fn validate(buf: &[u8], max_depth: usize) -> Result<(), DecodeError> {
    let end = skip_values(buf, 0, 1, max_depth)?;
    if end != buf.len() {
        return Err(DecodeError::Msgpack("trailing bytes"));
    }
    Ok(())
}

/// Reads an array header at `pos`, returning its length.
pub(crate) fn read_array_len(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let marker = *buf.get(*pos).ok_or(DecodeError::Msgpack("truncated"))?;
    *pos += 1;
    match marker {
        0x90..=0x9f => Ok(u64::from(marker & 0x0f)),
        0xdc => be(buf, pos, 2),
        0xdd => be(buf, pos, 4),
        _ => Err(DecodeError::Malformed("expected an array")),
    }
}

/// Reads a non-negative integer at `pos`.
pub(crate) fn read_uint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let marker = *buf.get(*pos).ok_or(DecodeError::Msgpack("truncated"))?;
    *pos += 1;
    let v = match marker {
        0x00..=0x7f => u64::from(marker),
        0xcc => be(buf, pos, 1)?,
        0xcd => be(buf, pos, 2)?,
        0xce => be(buf, pos, 4)?,
        0xcf => be(buf, pos, 8)?,
        0xd0..=0xd3 => {
            let n = 1usize << (marker - 0xd0);
            let raw = be(buf, pos, n)?;
            let shift = 64 - 8 * n as u32;
            let signed = ((raw << shift) as i64) >> shift;
            u64::try_from(signed).map_err(|_| DecodeError::Malformed("negative integer"))?
        }
        _ => return Err(DecodeError::Malformed("expected an integer")),
    };
    Ok(v)
}

/// Reads a bin or str at `pos`, returning its byte range.
pub(crate) fn read_bytes_range(buf: &[u8], pos: &mut usize) -> Result<std::ops::Range<usize>, DecodeError> {
    let marker = *buf.get(*pos).ok_or(DecodeError::Msgpack("truncated"))?;
    *pos += 1;
    let len = match marker {
        0xa0..=0xbf => u64::from(marker & 0x1f),
        0xc4 | 0xd9 => be(buf, pos, 1)?,
        0xc5 | 0xda => be(buf, pos, 2)?,
        0xc6 | 0xdb => be(buf, pos, 4)?,
        _ => return Err(DecodeError::Malformed("expected bytes")),
    };
    let start = *pos;
    take(buf, pos, usize::try_from(len).map_err(|_| DecodeError::Msgpack("truncated"))?)?;
    Ok(start..*pos)
}

/// Decodes `count` values starting at `pos` of a buffer that already passed
/// [`skip_values`] with the same bounds.
///
/// # Errors
/// [`DecodeError::Msgpack`] if the bytes are not valid msgpack after all.
pub fn decode_values(buf: &[u8], pos: usize, count: u64) -> Result<Vec<Value>, DecodeError> {
    let mut rd = buf.get(pos..).ok_or(DecodeError::Msgpack("truncated"))?;
    // `count` was checked against the bytes present, so this is bounded.
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(rd.len()));
    for _ in 0..count {
        out.push(rmpv::decode::read_value(&mut rd).map_err(|_| DecodeError::Msgpack("invalid value"))?);
    }
    Ok(out)
}

/// As [`decode_values`], but borrowing strings and binaries from `buf`
/// (no copies): for readers that only look, such as a JSON writer.
///
/// # Errors
/// [`DecodeError::Msgpack`] if the bytes are not valid msgpack after all.
pub fn decode_value_refs(buf: &[u8], pos: usize, count: u64) -> Result<Vec<rmpv::ValueRef<'_>>, DecodeError> {
    let mut rd = buf.get(pos..).ok_or(DecodeError::Msgpack("truncated"))?;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(rd.len()));
    for _ in 0..count {
        out.push(rmpv::decode::read_value_ref(&mut rd).map_err(|_| DecodeError::Msgpack("invalid value"))?);
    }
    Ok(out)
}

/// Appends the msgpack encoding of `value` to `out`, with the smallest
/// encodings (as py2p's u-msgpack-python does).
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    // Writing into a Vec cannot fail.
    rmpv::encode::write_value(out, value).expect("in-memory msgpack encoding");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(&mut out, v);
        out
    }

    #[test]
    fn validates_every_kind() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::Boolean(true),
            Value::from(-5),
            Value::from(200u8),
            Value::from(-70000),
            Value::from(u64::MAX),
            Value::F32(1.5),
            Value::F64(-2.25),
            Value::from("text"),
            Value::Binary(vec![1, 2, 3]),
            Value::Map(vec![(Value::from(1), Value::Binary(vec![])), (Value::Nil, Value::from("x"))]),
            Value::Ext(5, vec![9; 16]),
            Value::Ext(6, vec![9; 3]),
            Value::Binary(vec![7; 70_000]),
            Value::from("s".repeat(300)),
        ]);
        let bytes = enc(&v);
        validate(&bytes, 8).unwrap();
        assert_eq!(decode_values(&bytes, 0, 1).unwrap(), vec![v]);
    }

    #[test]
    fn rejects_huge_declared_containers_without_allocating() {
        // array32 claiming 4 billion items, followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(validate(&bytes, 8), Err(DecodeError::Msgpack("container larger than its frame")));
        let bytes = [0xdf, 0xff, 0xff, 0xff, 0xff];
        assert!(validate(&bytes, 8).is_err());
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 0x00];
        assert_eq!(validate(&bytes, 8), Err(DecodeError::Msgpack("truncated")));
    }

    #[test]
    fn rejects_deep_nesting_iteratively() {
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0xc0);
        assert_eq!(validate(&bytes, 64), Err(DecodeError::TooDeep(64)));
        let mut ok = vec![0x91u8; 64];
        ok.push(0xc0);
        validate(&ok, 64).unwrap();
    }

    #[test]
    fn rejects_trailing_and_reserved() {
        assert!(validate(&[0xc0, 0xc0], 4).is_err());
        assert!(validate(&[0xc1], 4).is_err());
        assert!(validate(&[], 4).is_err());
    }

    #[test]
    fn integers_use_umsgpack_encodings() {
        assert_eq!(enc(&Value::from(5)), [0x05]);
        assert_eq!(enc(&Value::from(200)), [0xcc, 200]);
        assert_eq!(enc(&Value::from(1_795_279_776u64)), [0xce, 0x6b, 0x01, 0xcb, 0xa0]);
        assert_eq!(enc(&Value::from(-1)), [0xff]);
        assert_eq!(enc(&Value::from(-100)), [0xd0, 0x9c]);
        assert_eq!(enc(&Value::F64(2.5))[0], 0xcb);
    }
}
