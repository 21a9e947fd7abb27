//! Per-connection tasks: one reader, one writer, nothing per message.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rs2p_proto::mesh::{CloseReason, ConnId, LinkCodec};
use rs2p_proto::wire::{Compression, Frame, FrameDecoder, Limits, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Largest number of bytes a coalescing writer gathers into one write.
pub(crate) const MAX_COALESCED_WRITE: usize = 256 * 1024;

/// Read buffer growth step for a quiet connection.
const READ_CHUNK_IDLE: usize = 2 * 1024;
/// Read buffer growth step while reads keep filling the buffer.
const READ_CHUNK_BUSY: usize = 64 * 1024;
/// A writer keeps at most this much buffer between writes while more is
/// queued; an idle writer keeps none.
const WRITE_BUF_KEEP: usize = 64 * 1024;

use crate::config::{MAX_BATCH_BYTES, MAX_BATCH_FRAMES};

/// What readers and writers tell the actor.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// Checked packets, in arrival order.
    Packets(ConnId, Vec<Packet>),
    /// The connection ended (EOF, I/O error, undecodable input).
    Closed(ConnId, CloseReason),
}

/// What the actor tells a writer.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    /// Frames to write, in order (one batch per actor step).
    Frames(Vec<Frame>),
    Codec(LinkCodec),
    /// Flush what is queued, then close the socket.
    Close,
}

/// A connection's read half.
pub(crate) trait ReadHalf: AsyncRead + Unpin + Send + 'static {
    /// Waits until the stream has something to read, without holding a
    /// buffer, so that an idle connection costs no read buffer at all.
    /// Halves that cannot tell return at once.
    fn ready(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl ReadHalf for tokio::net::tcp::OwnedReadHalf {
    async fn ready(&mut self) -> std::io::Result<()> {
        self.readable().await
    }
}

impl<T: AsyncRead + Send + 'static> ReadHalf for tokio::io::ReadHalf<T> {
    async fn ready(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads frames until the stream ends or breaks a rule.
///
/// A partial frame that makes no progress for `stall` closes the connection
/// (py2p's 60 s rule). Batches go to the actor through a bounded channel, so
/// a fast sender is slowed down by TCP once the actor falls behind.
pub(crate) async fn read_loop<R: ReadHalf>(
    conn: ConnId,
    mut rd: R,
    limits: Limits,
    compression: Vec<Compression>,
    stall: Duration,
    to_actor: mpsc::Sender<ConnEvent>,
    traffic: Arc<Traffic>,
) {
    let mut dec = FrameDecoder::new(limits, &compression);
    // When the current partial frame began: it must be complete within
    // `stall` of its first byte, however slowly the bytes drip in.
    let mut partial_since: Option<tokio::time::Instant> = None;
    // Between frames the read buffer is released and the reader waits for
    // readiness without one; a read starts with READ_CHUNK_IDLE of room and
    // grows to READ_CHUNK_BUSY while reads keep filling the buffer.
    let mut chunk = READ_CHUNK_IDLE;
    let reason = loop {
        if partial_since.is_none() {
            if let Err(e) = rd.ready().await {
                break CloseReason::Io(e.kind());
            }
        }
        if dec.buffer().capacity() - dec.buffer().len() < chunk / 2 {
            dec.buffer().reserve(chunk);
        }
        let free = dec.buffer().capacity() - dec.buffer().len();
        let read = match partial_since {
            Some(since) => match tokio::time::timeout_at(since + stall, rd.read_buf(dec.buffer())).await {
                Ok(r) => r,
                Err(_) => break CloseReason::Stalled,
            },
            None => rd.read_buf(dec.buffer()).await,
        };
        match read {
            Ok(0) => break CloseReason::ClosedByPeer,
            // Only a read that filled all the free space suggests more is
            // waiting; one large message (a peer list) is not a burst.
            Ok(n) => {
                traffic.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                chunk = if n >= free { READ_CHUNK_BUSY } else { READ_CHUNK_IDLE }
            }
            Err(e) => break CloseReason::Io(e.kind()),
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        let mut failure = None;
        let mut completed = false;
        let mut frames = 0u64;
        loop {
            match dec.next_packet() {
                Ok(Some(p)) => {
                    completed = true;
                    frames += 1;
                    batch_bytes += p.frame.wire_bytes().len();
                    batch.push(p);
                    if batch.len() >= MAX_BATCH_FRAMES || batch_bytes >= MAX_BATCH_BYTES {
                        batch_bytes = 0;
                        let full = std::mem::take(&mut batch);
                        if to_actor.send(ConnEvent::Packets(conn, full)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(?conn, error = %e, "closing connection: undecodable frame");
                    failure = Some(CloseReason::Decode(e));
                    break;
                }
            }
        }
        // Once per read, not per frame: the counters are the node's, shared
        // by all its connections' tasks.
        if frames > 0 {
            traffic.frames_in.fetch_add(frames, Ordering::Relaxed);
        }
        if !dec.has_partial() {
            partial_since = None;
            if chunk == READ_CHUNK_IDLE {
                // Nothing buffered and no burst under way: an idle
                // connection keeps no read buffer.
                dec.release_buffer();
            }
        } else if partial_since.is_none() || completed {
            // A frame completed, so what is buffered now is a new frame.
            partial_since = Some(tokio::time::Instant::now());
        }
        if !batch.is_empty() && to_actor.send(ConnEvent::Packets(conn, batch)).await.is_err() {
            return;
        }
        if let Some(r) = failure {
            break r;
        }
    };
    let _ = to_actor.send(ConnEvent::Closed(conn, reason)).await;
}

/// A connection's send queue as both ends see it: how full it is (the
/// actor adds what it queues, the writer takes off what it takes), and how
/// the writer says it has room again: the actor raises `wanted` when it had
/// to keep frames aside; the writer, on taking the next command, lowers it
/// and sends its id on `tx` (once per raise, so the channel never holds
/// more than one entry per connection).
#[derive(Debug, Clone)]
pub(crate) struct RoomSignal {
    pub(crate) level: Arc<QueueLevel>,
    pub(crate) wanted: Arc<AtomicBool>,
    pub(crate) tx: mpsc::Sender<ConnId>,
}

/// Frames and bytes in a send queue.
#[derive(Debug, Default)]
pub(crate) struct QueueLevel {
    pub(crate) frames: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
}

impl QueueLevel {
    /// Whether `frames` more frames of `bytes` bytes fit under the bounds (a
    /// batch always fits an empty queue, however large).
    pub(crate) fn fits(&self, frames: usize, bytes: usize, max_frames: usize, max_bytes: usize) -> bool {
        let (f, b) = (self.frames.load(Ordering::Acquire), self.bytes.load(Ordering::Acquire));
        f == 0 || (f + frames <= max_frames && b + bytes <= max_bytes)
    }

    pub(crate) fn add(&self, frames: usize, bytes: usize) {
        self.frames.fetch_add(frames, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(crate) fn sub(&self, frames: usize, bytes: usize) {
        self.frames.fetch_sub(frames, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes a batch of frames takes on the wire (before compression).
pub(crate) fn wire_len(frames: &[Frame]) -> usize {
    frames.iter().map(|f| f.wire_bytes().len()).sum()
}

/// A connection's two queues, as its writer sees them: control frames
/// (the broadcast tree's, keepalives) go ahead of queued payload.
pub(crate) struct Lanes {
    pub(crate) data: mpsc::Receiver<WriterCmd>,
    pub(crate) control: mpsc::Receiver<Vec<Frame>>,
}

enum Next {
    Control(Vec<Frame>),
    Data(WriterCmd),
}

/// Frames and bytes that crossed the node's connections (both ways),
/// shared by every reader and writer of a node.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

/// How long a failed write waits before reporting the connection lost.
/// A peer that says goodbye and closes makes our next write fail (its
/// socket answers with a reset) while its goodbye may still wait in our
/// reader: reported at once, the write error would overtake the goodbye,
/// and a peer that left on purpose would look like a lost connection.
const WRITE_ERROR_GRACE: Duration = Duration::from_millis(100);

/// Reports a failed write, after [`WRITE_ERROR_GRACE`] (the reader's own
/// report, if it has one, comes first and is the one that counts).
async fn write_failed(conn: ConnId, e: std::io::Error, to_actor: &mpsc::Sender<ConnEvent>) {
    tokio::time::sleep(WRITE_ERROR_GRACE).await;
    let _ = to_actor.send(ConnEvent::Closed(conn, CloseReason::Io(e.kind()))).await;
}

/// Writes queued frames with the link's codec, control lane first.
///
/// Toward rs2p peers (`coalesce`), everything queued is gathered into one
/// write; toward py2p, each frame gets its own write (see
/// [`LinkCodec::coalesce`]).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    conn: ConnId,
    mut wr: W,
    mut lanes: Lanes,
    to_actor: mpsc::Sender<ConnEvent>,
    room: RoomSignal,
    traffic: Arc<Traffic>,
) {
    let mut codec = LinkCodec::HANDSHAKE;
    let mut buf = BytesMut::new();
    let mut closing = false;
    loop {
        // Busy: take what waits, control first, without a select.
        let ready = match lanes.control.try_recv() {
            Ok(c) => Some(Next::Control(c)),
            Err(_) => lanes.data.try_recv().ok().map(Next::Data),
        };
        let first = match ready {
            Some(next) => next,
            None => tokio::select! {
                biased;
                Some(c) = lanes.control.recv() => Next::Control(c),
                cmd = lanes.data.recv() => match cmd {
                    Some(c) => Next::Data(c),
                    None => break,
                },
            },
        };
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let frames = match item {
                Next::Control(frames) => frames,
                Next::Data(cmd) => {
                    if let WriterCmd::Frames(frames) = &cmd {
                        room.level.sub(frames.len(), wire_len(frames));
                    }
                    if room.wanted.swap(false, Ordering::AcqRel) {
                        let _ = room.tx.try_send(conn);
                    }
                    match cmd {
                        WriterCmd::Codec(c) => {
                            codec = c;
                            Vec::new()
                        }
                        WriterCmd::Close => {
                            closing = true;
                            Vec::new()
                        }
                        WriterCmd::Frames(frames) => frames,
                    }
                }
            };
            let mut bytes = 0;
            let count = frames.len();
            for f in frames {
                let before = buf.len();
                if codec.compression.is_none() {
                    buf.extend_from_slice(f.wire_bytes());
                } else {
                    buf.extend_from_slice(&f.encode_for(codec.compression));
                }
                bytes += buf.len() - before;
                if !codec.coalesce {
                    if let Err(e) = wr.write_all(&buf).await {
                        return write_failed(conn, e, &to_actor).await;
                    }
                    buf.clear();
                }
            }
            if count > 0 {
                traffic.frames_out.fetch_add(count as u64, Ordering::Relaxed);
                traffic.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            if closing {
                break;
            }
            if buf.len() < MAX_COALESCED_WRITE {
                next = match lanes.control.try_recv() {
                    Ok(c) => Some(Next::Control(c)),
                    Err(_) => lanes.data.try_recv().ok().map(Next::Data),
                };
            }
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                return write_failed(conn, e, &to_actor).await;
            }
            buf.clear();
        }
        if buf.capacity() > WRITE_BUF_KEEP || lanes.data.is_empty() {
            // Idle, or a burst grew it: do not hold on to that memory.
            buf = BytesMut::new();
        }
        if closing {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}
