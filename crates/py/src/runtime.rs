//! The package's tokio runtime, and waiting on it from Python threads
//! without holding the GIL and without becoming deaf to Ctrl-C.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How often a blocked call looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime every node of the process runs on (two worker threads, made
/// on first use).
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rs2p")
            .enable_all()
            .build()
            .expect("the rs2p runtime starts")
    })
}

/// Runs `fut` on the runtime and waits for it with the GIL released, so
/// other Python threads run meanwhile. A signal (Ctrl-C) interrupts the
/// wait with its exception; the operation itself then goes on in the
/// background, as a cancelled wait does in the Rust API.
pub fn wait<F>(py: Python<'_>, fut: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut task = runtime().spawn(fut);
    loop {
        let done = py.detach(|| runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut task).await }));
        match done {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => return Err(PyRuntimeError::new_err(format!("rs2p task failed: {e}"))),
            Err(_) => py.check_signals()?,
        }
    }
}
