//! The native part of the `rs2p` Python package (`rs2p._rs2p`): a node of
//! the rs2p core with the GIL released while it waits. The py2p-compatible
//! API (`rs2p.mesh`, `rs2p.sync`, `rs2p.base`, `rs2p.flags`) is written in
//! Python on top of it, in `python/rs2p`.

mod node;
mod runtime;
mod value;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _rs2p(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<node::Node>()?;
    m.add_class::<node::RawMessage>()?;
    m.add_function(wrap_pyfunction!(node::protocol_id, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
