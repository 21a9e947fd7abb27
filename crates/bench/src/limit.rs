//! "The limit": a minimal tokio program that forwards length-prefixed frames
//! along the same chain, with nothing else to do (no hashing, no parsing
//! beyond the length, no dedup), batching writes: everything read in one
//! go is written downstream in one write, as rs2p's writers coalesce.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Buf, BytesMut};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Reads frames from `rd`; forwards each batch to `wr` (if any); counts
/// frames and reports each frame's arrival on `arrivals` (if any).
async fn forward(
    mut rd: TcpStream,
    mut wr: Option<TcpStream>,
    count: Arc<AtomicU64>,
    arrivals: Option<mpsc::UnboundedSender<Instant>>,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Take every complete frame.
        let mut end = 0;
        let mut frames = 0;
        while buf.len() >= end + 4 {
            let len = u32::from_be_bytes([buf[end], buf[end + 1], buf[end + 2], buf[end + 3]]) as usize;
            if buf.len() < end + 4 + len {
                break;
            }
            end += 4 + len;
            frames += 1;
        }
        if end == 0 {
            continue;
        }
        let chunk = buf.split_to(end);
        count.fetch_add(frames, Ordering::Relaxed);
        if let Some(tx) = &arrivals {
            let _ = tx.send(Instant::now());
        }
        if let Some(w) = wr.as_mut() {
            if w.write_all(chunk.chunk()).await.is_err() {
                return;
            }
        }
    }
}

struct Chain {
    head: TcpStream,
    counts: Vec<Arc<AtomicU64>>,
    arrivals: mpsc::UnboundedReceiver<Instant>,
}

/// Node 0 is the sender (returned as `head`); nodes 1.. forward.
async fn chain(n: usize) -> Result<Chain> {
    let mut listeners = Vec::new();
    for _ in 1..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await?);
    }
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let head = TcpStream::connect(addrs[0]).await?;
    head.set_nodelay(true)?;
    let mut counts = Vec::new();
    let (tx, arrivals) = mpsc::unbounded_channel();
    for (i, l) in listeners.into_iter().enumerate() {
        let (up, _) = l.accept().await?;
        up.set_nodelay(true)?;
        let down = match addrs.get(i + 1) {
            Some(a) => {
                let s = TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                Some(s)
            }
            None => None,
        };
        let c = Arc::new(AtomicU64::new(0));
        counts.push(c.clone());
        let last = down.is_none();
        tokio::spawn(forward(up, down, c, last.then(|| tx.clone())));
    }
    Ok(Chain { head, counts, arrivals })
}

fn frame(size: usize) -> Vec<u8> {
    let mut f = (size as u32).to_be_bytes().to_vec();
    f.extend(std::iter::repeat_n(0xABu8, size));
    f
}

/// Workload 1 on the limit program.
pub async fn throughput(n: usize, count: usize, size: usize) -> Result<Json> {
    let mut c = chain(n).await?;
    let far = c.counts.last().cloned().expect("a far node");
    let one = frame(size);
    let start = Instant::now();
    // The sender batches too: 256 frames per write.
    let mut batch = Vec::with_capacity(one.len() * 256);
    let mut sent = 0;
    while sent < count {
        batch.clear();
        for _ in 0..256.min(count - sent) {
            batch.extend_from_slice(&one);
            sent += 1;
        }
        c.head.write_all(&batch).await?;
    }
    let (last, secs) = crate::await_arrivals(&far, count, start).await;
    Ok(json!({"rate": last as f64 / secs, "lost": count as u64 - last, "secs": secs}))
}

/// Workload 2 on the limit program (far node only: it has no deliveries
/// elsewhere).
pub async fn latency(n: usize, messages: usize) -> Result<Json> {
    let mut c = chain(n).await?;
    let one = frame(16);
    let mut far = Vec::new();
    for _ in 0..messages {
        let start = Instant::now();
        c.head.write_all(&one).await?;
        let at = tokio::time::timeout(Duration::from_secs(5), c.arrivals.recv()).await?.expect("chain alive");
        far.push(at.duration_since(start).as_secs_f64() * 1e6);
    }
    Ok(json!({"far_p50_us": crate::rs2p_sys::pct(&mut far, 0.5), "far_p99_us": crate::rs2p_sys::pct(&mut far, 0.99)}))
}
