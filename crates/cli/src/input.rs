//! Lines from stdin that cannot hurt the node: bounded in length, checked
//! for UTF-8, read as bytes.
//!
//! A line longer than [`MAX_LINE_BYTES`] is discarded as it streams in (only
//! its length is counted), so even a 250 MB line leaves memory flat; a line
//! that is not UTF-8 is reported, not fatal. Both come back as [`Line`]
//! values for the caller to answer, and reading carries on.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// How much is read from stdin at a time.
const READ_CHUNK: usize = 256 << 10;

/// The longest command line accepted, in bytes: room for the largest frame
/// (16 MiB) as base64 (22.4 MB) plus its JSON.
pub const MAX_LINE_BYTES: usize = 32 << 20;

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of text, without its `\n` (or `\r\n`).
    Text(String),
    /// A line longer than the limit, discarded; how long it was.
    TooLong {
        /// Its length in bytes.
        bytes: u64,
    },
    /// A line that is not UTF-8.
    NotUtf8 {
        /// Where its first invalid byte is.
        at: usize,
    },
}

impl Line {
    /// What to tell the user about a line that is not a command.
    pub fn problem(&self) -> Option<String> {
        match self {
            Line::Text(_) => None,
            Line::TooLong { bytes } => {
                Some(format!("line of {bytes} bytes discarded: the limit is {MAX_LINE_BYTES} bytes"))
            }
            Line::NotUtf8 { at } => Some(format!("line discarded: not UTF-8 (invalid byte at offset {at})")),
        }
    }
}

/// Reads [`Line`]s from any reader.
pub struct LineReader<R> {
    inner: BufReader<R>,
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of an over-long line seen so far, while skipping the rest.
    skipping: Option<u64>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader with the default limit.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, MAX_LINE_BYTES, READ_CHUNK)
    }

    /// A reader whose lines may be at most `limit` bytes, reading `chunk`
    /// bytes at a time.
    pub fn with_limit(inner: R, limit: usize, chunk: usize) -> Self {
        LineReader { inner: BufReader::with_capacity(chunk, inner), limit, buf: Vec::new(), skipping: None }
    }

    /// The next line, or `None` at the end of input.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                // End of input: a last line without its newline still counts.
                if let Some(bytes) = self.skipping.take() {
                    return Ok(Some(Line::TooLong { bytes }));
                }
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.finish()));
            }
            let (chunk, newline) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let used = chunk.len() + usize::from(newline);
            if let Some(bytes) = &mut self.skipping {
                *bytes += chunk.len() as u64;
            } else if self.buf.len() + chunk.len() > self.limit {
                self.skipping = Some((self.buf.len() + chunk.len()) as u64);
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            self.inner.consume(used);
            if newline {
                if let Some(bytes) = self.skipping.take() {
                    return Ok(Some(Line::TooLong { bytes }));
                }
                return Ok(Some(self.finish()));
            }
        }
    }

    /// Whether a whole line is already buffered (reading it will not wait).
    pub fn has_buffered_line(&self) -> bool {
        self.inner.buffer().contains(&b'\n')
    }

    fn finish(&mut self) -> Line {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        match String::from_utf8(bytes) {
            Ok(s) => Line::Text(s),
            Err(e) => Line::NotUtf8 { at: e.utf8_error().valid_up_to() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], limit: usize) -> Vec<Line> {
        // A small buffer, so lines straddle reads.
        let mut r = LineReader::with_limit(input, limit, 7);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn bad_lines_are_reported_and_reading_goes_on() {
        let input = b"ok\r\n\xff\xfe\x00binary\nabcdefghijklmnopqrstuvwxyz\ncaf\xc3\xa9\n\nlast";
        assert_eq!(
            lines(input, 20).await,
            vec![
                Line::Text("ok".into()),
                Line::NotUtf8 { at: 0 },
                Line::TooLong { bytes: 26 },
                Line::Text("café".into()),
                Line::Text(String::new()),
                Line::Text("last".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_long_last_line_without_newline_is_reported() {
        assert_eq!(lines(&[b'x'; 100], 10).await, vec![Line::TooLong { bytes: 100 }]);
        assert_eq!(lines(b"", 10).await, vec![]);
    }

    #[tokio::test]
    async fn memory_stays_bounded_while_skipping() {
        let mut r = LineReader::with_limit(&[b'y'; 10_000][..], 100, 64);
        assert_eq!(r.next_line().await.unwrap(), Some(Line::TooLong { bytes: 10_000 }));
        assert!(r.buf.capacity() <= 100, "kept {} bytes", r.buf.capacity());
    }
}
