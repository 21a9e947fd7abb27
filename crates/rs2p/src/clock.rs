//! The driver's clock: the one place the driver reads time.
//!
//! The monotonic part comes from `tokio::time`, so tests that pause tokio's
//! clock drive the protocol's deadlines deterministically; the wall-clock
//! part (py2p stamps messages with UNIX seconds) from the system clock.

use std::time::{SystemTime, UNIX_EPOCH};

use rs2p_proto::Now;
use tokio::time::Instant;

/// Converts between tokio instants and the core's [`Now`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock { start: Instant::now() }
    }

    /// The time now, as the core takes it.
    pub(crate) fn now(&self) -> Now {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Now { mono_ms: self.start.elapsed().as_millis() as u64, unix_ms }
    }

    /// The tokio instant of a core deadline (monotonic ms).
    pub(crate) fn instant(&self, mono_ms: u64) -> Instant {
        self.start + std::time::Duration::from_millis(mono_ms)
    }
}
