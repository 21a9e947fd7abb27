//! `rs2p._rs2p.Node`: one rs2p node (mesh, optionally with the synced
//! dictionary) for the Python package, and `RawMessage`, a received message.
//!
//! Every call that waits releases the GIL. Sends are pipelined: a broadcast
//! is encoded on the caller's thread and queued in order without waiting
//! for the node's answer; at most [`SEND_WINDOW`] answers are outstanding,
//! so a slow network still slows the sender down.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pyo3::exceptions::{
    PyConnectionError, PyKeyError, PyOSError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use rs2p::proto::wire::{Frame, MsgType, DEFAULT_MAX_FRAME_LEN};
use rs2p::{
    CloseReason, Encryption, Error, Event, EventStream, MeshSocket, Message, MsgId, PeerAddr, PeerId, Pending,
    Protocol, SyncSocket, TlsConfig, Value,
};

use crate::runtime::{runtime, wait};
use crate::value::{to_py, to_value, to_values};

/// Broadcast answers a sender may leave outstanding before it waits.
const SEND_WINDOW: usize = 256;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An rs2p error as the Python exception py2p users expect.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Bind { source, .. } => source.into(),
        Error::Connect { reason: CloseReason::Io(kind), addr } => {
            std::io::Error::new(kind, format!("{addr}: {kind}")).into()
        }
        Error::Connect { reason: CloseReason::DialTimeout, addr } => {
            PyTimeoutError::new_err(format!("connecting to {addr}: no answer in time"))
        }
        e @ Error::Connect { .. } => PyConnectionError::new_err(e.to_string()),
        e @ (Error::Leased { .. } | Error::KeyNotFound) => PyKeyError::new_err(e.to_string()),
        e @ Error::NotAMap => PyTypeError::new_err(e.to_string()),
        e @ (Error::MessageTooLarge { .. } | Error::BadFrame(_) | Error::Config(_)) => {
            PyValueError::new_err(e.to_string())
        }
        e @ Error::NotConnected(_) => PyConnectionError::new_err(e.to_string()),
        e @ Error::Closed => PyRuntimeError::new_err(e.to_string()),
        e => PyOSError::new_err(e.to_string()),
    }
}

fn peer_id(id: &[u8]) -> PyResult<PeerId> {
    if id.is_empty() || id.len() > rs2p::proto::id::MAX_ID_LEN {
        return Err(PyValueError::new_err("a node id is 1 to 128 bytes"));
    }
    Ok(PeerId::from_bytes(id.to_vec()))
}

fn addr_tuple<'py>(py: Python<'py>, a: &PeerAddr) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, [a.host.clone().into_pyobject(py)?.into_any(), a.port.into_pyobject(py)?.into_any()])
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A message received from the network.
#[pyclass(frozen, module = "rs2p._rs2p")]
pub struct RawMessage {
    msg: Message,
}

#[pymethods]
impl RawMessage {
    /// The original sender's id.
    #[getter]
    fn sender<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.msg.sender().as_bytes())
    }

    /// The sender's UNIX time, in seconds.
    #[getter]
    fn time(&self) -> u64 {
        self.msg.time()
    }

    /// The message id: the sha256 of its payload.
    #[getter]
    fn id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.msg.id().0)
    }

    /// The message type: 0 broadcast, 2 whisper.
    #[getter]
    fn msg_type(&self) -> u64 {
        self.msg.raw().header.msg_type
    }

    /// The sub-flag (packet 0).
    #[getter]
    fn subflag(&self) -> u64 {
        self.msg.subflag()
    }

    /// The direct peer it arrived from, if known.
    #[getter]
    fn via<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.msg.via().map(|p| PyBytes::new(py, p.as_bytes()))
    }

    /// Whether it is proven to come from its sender (signed, or a whisper
    /// on the link its sender proved).
    #[getter]
    fn verified(&self) -> bool {
        self.msg.verified()
    }

    /// Bytes on the wire (length prefix included, uncompressed).
    #[getter]
    fn wire_len(&self) -> usize {
        self.msg.raw().frame.wire_bytes().len()
    }

    /// The payload as py2p shows it: the sub-flag, then the packets.
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let values = self.msg.packets().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let mut items = Vec::with_capacity(values.len() + 1);
        items.push(self.msg.subflag().into_pyobject(py)?.into_any());
        for v in &values {
            items.push(to_py(py, v)?);
        }
        PyTuple::new(py, items)
    }

    /// Whispers `packets` back to the sender, routed through the network
    /// when not directly connected. Returns whether it went directly.
    fn reply(&self, py: Python<'_>, packets: &Bound<'_, PyAny>) -> PyResult<bool> {
        let packets = to_values(packets)?;
        let msg = self.msg.clone();
        let route = wait(py, async move { msg.reply(packets).await })?.map_err(py_err)?;
        Ok(route == rs2p::ReplyRoute::Direct)
    }
}

/// One rs2p node.
#[pyclass(frozen, module = "rs2p._rs2p")]
pub struct Node {
    mesh: MeshSocket,
    sync: Option<SyncSocket>,
    /// The event subscription, made on first [`Node::subscribe`].
    events: Mutex<Option<EventStream>>,
    /// Answers of pipelined broadcasts, oldest first.
    inflight: Mutex<VecDeque<Pending<MsgId>>>,
}

impl Node {
    fn replica(&self) -> PyResult<&SyncSocket> {
        self.sync.as_ref().ok_or_else(|| PyRuntimeError::new_err("this node holds no synced dictionary"))
    }

    /// Collects the answers that came; if `limit` are still outstanding,
    /// waits for the oldest (GIL released) until fewer are.
    fn settle(&self, py: Python<'_>, limit: usize) -> PyResult<()> {
        loop {
            let oldest = {
                let mut q = lock(&self.inflight);
                while let Some(r) = q.front_mut().and_then(Pending::try_take) {
                    q.pop_front();
                    r.map_err(py_err)?;
                }
                if q.len() < limit.max(1) {
                    return Ok(());
                }
                q.pop_front()
            };
            if let Some(p) = oldest {
                wait(py, p.wait())?.map_err(py_err)?;
            }
        }
    }
}

fn event_tuple<'py>(py: Python<'py>, e: &Event) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let b = |x: &[u8]| PyBytes::new(py, x).into_any();
    let s = |x: &str| -> PyResult<Bound<'py, PyAny>> { Ok(x.into_pyobject(py)?.into_any()) };
    Ok(Some(match e {
        Event::Connected { peer } => PyTuple::new(py, [s("connect")?, b(peer.as_bytes())])?,
        Event::PeerUp { peer, .. } => PyTuple::new(py, [s("peer_up")?, b(peer.as_bytes())])?,
        Event::PeerDown { peer, reason } => {
            PyTuple::new(py, [s("peer_down")?, b(peer.as_bytes()), s(&reason.to_string())?])?
        }
        Event::ConnectFailed { reason, .. } => PyTuple::new(py, [s("connect_failed")?, s(&reason.to_string())?])?,
        Event::Update { key, value, owner, timestamp } => PyTuple::new(
            py,
            [s("update")?, b(key), to_py(py, value)?, b(owner.as_bytes()), timestamp.into_pyobject(py)?.into_any()],
        )?,
        Event::Delete { key } => PyTuple::new(py, [s("delete")?, b(key)])?,
        Event::Lagged(n) => PyTuple::new(py, [s("lagged")?, n.into_pyobject(py)?.into_any()])?,
        _ => return Ok(None),
    }))
}

#[pymethods]
impl Node {
    /// Binds `addr:port` and starts a node on `Protocol(subnet, encryption)`
    /// (`"Plaintext"` or `"SSL"`); `sync` adds the synced dictionary (the
    /// subnet then gets py2p's `"1"`/`"0"` leasing suffix).
    #[new]
    #[pyo3(signature = (addr, port, subnet, encryption, out_addr=None, sync=false, leasing=true, tls_pins=None, max_outgoing=4))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addr: &str,
        port: u16,
        subnet: &str,
        encryption: &str,
        out_addr: Option<(String, u16)>,
        sync: bool,
        leasing: bool,
        tls_pins: Option<Vec<Vec<u8>>>,
        max_outgoing: usize,
    ) -> PyResult<Self> {
        let encryption = match encryption {
            "Plaintext" => Encryption::Plaintext,
            "SSL" => Encryption::Ssl,
            other => return Err(PyValueError::new_err(format!("unknown encryption {other:?}: 'Plaintext' or 'SSL'"))),
        };
        let bind = if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") };
        let tls = match (encryption, tls_pins) {
            (Encryption::Plaintext, None) => None,
            (Encryption::Plaintext, Some(_)) => {
                return Err(PyValueError::new_err("tls_pins needs the 'SSL' encryption"))
            }
            (Encryption::Ssl, None) => Some(TlsConfig::new()),
            (Encryption::Ssl, Some(pins)) => {
                let pins = pins
                    .into_iter()
                    .map(|p| <[u8; 32]>::try_from(p.as_slice()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        PyValueError::new_err("a pinned fingerprint is 32 bytes (sha256 of the certificate)")
                    })?;
                Some(TlsConfig::new().pin(pins))
            }
        };
        let configure = move |mut b: rs2p::Builder| {
            b = b.bind(bind).max_outgoing(max_outgoing).queue_all_subflags(true);
            if let Some((host, port)) = out_addr {
                b = b.out_addr(PeerAddr::new(host, port));
            }
            if let Some(t) = tls {
                b = b.tls(t);
            }
            b
        };
        let subnet = subnet.to_string();
        let (mesh, sync) = if sync {
            // The builder adds py2p's leasing suffix to the subnet.
            let fut = async move {
                SyncSocket::builder()
                    .subnet(subnet)
                    .leasing(leasing)
                    .encryption(encryption)
                    .mesh(configure)
                    .spawn()
                    .await
            };
            let s = wait(py, fut)?.map_err(py_err)?;
            (s.mesh().clone(), Some(s))
        } else {
            let fut = async move {
                configure(MeshSocket::builder().protocol(Protocol::new(subnet, encryption))).spawn().await
            };
            (wait(py, fut)?.map_err(py_err)?, None)
        };
        Ok(Node { mesh, sync, events: Mutex::new(None), inflight: Mutex::new(VecDeque::new()) })
    }

    /// This node's id.
    #[getter]
    fn id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.mesh.id().as_bytes())
    }

    /// The address other nodes are told to dial.
    #[getter]
    fn out_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        addr_tuple(py, self.mesh.out_addr())
    }

    /// The address the listener is bound to.
    #[getter]
    fn local_addr<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        addr_tuple(py, &PeerAddr::from(self.mesh.local_addr()))
    }

    /// The network's protocol id.
    #[getter]
    fn protocol_id<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.mesh.protocol().id().as_bytes())
    }

    /// The sha256 fingerprint of this node's TLS certificate, if TLS is on.
    #[getter]
    fn tls_fingerprint<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.mesh.tls_fingerprint().map(|f| PyBytes::new(py, &f))
    }

    /// Dials `host:port` and waits for the handshake. Returns the peer's id,
    /// or `None` when the peer refused us for being on another network
    /// (py2p fails silently there). Raises `OSError` (refused, unreachable,
    /// timed out) when no connection could be made.
    #[pyo3(signature = (host, port, id=None))]
    fn connect<'py>(
        &self,
        py: Python<'py>,
        host: String,
        port: u16,
        id: Option<Vec<u8>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let expected = id.map(|i| peer_id(&i)).transpose()?;
        let mesh = self.mesh.clone();
        let r = wait(py, async move { mesh.connect_with_hint(PeerAddr::new(host, port), expected).await })?;
        match r {
            Ok(p) => Ok(Some(PyBytes::new(py, p.as_bytes()))),
            Err(Error::Connect {
                reason:
                    CloseReason::ProtocolMismatch { .. }
                    | CloseReason::ClosedByPeer
                    | CloseReason::SelfConnection
                    | CloseReason::HandshakeTimeout
                    | CloseReason::ProtocolViolation(_),
                ..
            }) => Ok(None),
            Err(Error::OwnAddress(_)) => Ok(None),
            Err(e) => Err(py_err(e)),
        }
    }

    /// Floods `packets` with `subflag`, pipelined (see the module docs).
    /// Returns the message id.
    fn broadcast<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        subflag: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let values = to_values(packets)?;
        let frame = Frame::build(MsgType::Broadcast, self.mesh.id(), unix_now(), subflag, &values);
        // Checked here, where the caller gets the error (the node checks
        // again; the binding uses the default frame limit).
        let len = frame.body().len();
        if len > DEFAULT_MAX_FRAME_LEN {
            return Err(py_err(Error::MessageTooLarge { len, max: DEFAULT_MAX_FRAME_LEN }));
        }
        let id = frame.id();
        self.settle(py, SEND_WINDOW)?;
        let mesh = self.mesh.clone();
        let pending = py.detach(move || mesh.publish_blocking(frame)).map_err(py_err)?;
        lock(&self.inflight).push_back(pending);
        Ok(PyBytes::new(py, &id.0))
    }

    /// Waits until every broadcast sent so far has been handed to the node.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.settle(py, 1)
    }

    /// Whispers `packets` with `subflag` to a directly connected peer.
    fn whisper<'py>(
        &self,
        py: Python<'py>,
        peer: Vec<u8>,
        subflag: u64,
        packets: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let values = to_values(packets)?;
        let peer = peer_id(&peer)?;
        let mesh = self.mesh.clone();
        let id = wait(py, async move { mesh.whisper_flagged(&peer, subflag, values).await })?.map_err(py_err)?;
        Ok(PyBytes::new(py, &id.0))
    }

    /// Whispers `packets` to `peer`, routed when not directly connected.
    /// Returns whether it went directly.
    fn send_to(&self, py: Python<'_>, peer: Vec<u8>, packets: &Bound<'_, PyAny>) -> PyResult<bool> {
        let values = to_values(packets)?;
        let peer = peer_id(&peer)?;
        let mesh = self.mesh.clone();
        let route = wait(py, async move { mesh.send_to(&peer, values).await })?.map_err(py_err)?;
        Ok(route == rs2p::ReplyRoute::Direct)
    }

    /// The routing table: `[(id, (host, port) or None, outgoing), ...]`.
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mesh = self.mesh.clone();
        let peers = wait(py, async move { mesh.routing_table().await })?.map_err(py_err)?;
        let rows = peers
            .iter()
            .map(|p| {
                let addr = match &p.addr {
                    Some(a) => addr_tuple(py, a)?.into_any(),
                    None => py.None().into_bound(py),
                };
                PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, p.id.as_bytes()).into_any(),
                        addr,
                        p.outgoing.into_pyobject(py)?.to_owned().into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Health and counters, as a dict.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let mesh = self.mesh.clone();
        let st = wait(py, async move { mesh.status().await })?.map_err(py_err)?;
        let d = PyDict::new(py);
        d.set_item("nominal", st.nominal)?;
        d.set_item("recent_errors", st.recent_errors)?;
        d.set_item("peers", st.peers)?;
        d.set_item("connections", st.connections)?;
        d.set_item("delivered", st.stats.delivered)?;
        d.set_item("duplicates", st.stats.duplicates)?;
        d.set_item("relayed", st.stats.relayed)?;
        d.set_item("dropped_messages", st.dropped_messages)?;
        d.set_item("dropped_frames", st.dropped_frames)?;
        Ok(d)
    }

    /// Asks every peer for its peer list.
    fn request_peers(&self, py: Python<'_>) -> PyResult<()> {
        let mesh = self.mesh.clone();
        wait(py, async move { mesh.request_peers().await })?.map_err(py_err)
    }

    /// Closes the connection to `peer`; `False` if not connected.
    fn disconnect(&self, py: Python<'_>, peer: Vec<u8>) -> PyResult<bool> {
        let peer = peer_id(&peer)?;
        let mesh = self.mesh.clone();
        match wait(py, async move { mesh.disconnect(&peer).await })? {
            Ok(()) => Ok(true),
            Err(Error::NotConnected(_)) => Ok(false),
            Err(e) => Err(py_err(e)),
        }
    }

    /// Sends what is queued, closes every connection, stops the node.
    /// Raises `RuntimeError` if it was already closed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let _ = self.settle(py, 1);
        let mesh = self.mesh.clone();
        wait(py, async move { mesh.close().await })?.map_err(py_err)
    }

    /// Subscribes to the node's events (connect, dictionary changes), from
    /// now on: [`Node::poll`] then returns them.
    fn subscribe(&self) {
        let mut e = lock(&self.events);
        if e.is_none() {
            *e = Some(self.mesh.events());
        }
    }

    /// Takes up to `n` received messages without waiting.
    fn take(&self, n: usize) -> Vec<RawMessage> {
        self.mesh.recv(n).into_iter().map(|msg| RawMessage { msg }).collect()
    }

    /// Waits up to `timeout` seconds for messages (when `messages`) or
    /// events, then takes up to `n` messages and every pending event:
    /// `(messages, events)`. The GIL is released while waiting.
    fn poll<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        timeout: f64,
        messages: bool,
    ) -> PyResult<(Vec<RawMessage>, Bound<'py, PyList>)> {
        let mut stream = lock(&self.events).take();
        let mesh = self.mesh.clone();
        let deadline = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let (stream_back, msgs, evs) = py.detach(move || {
            runtime().block_on(async move {
                let ready = async {
                    match (&mut stream, messages) {
                        (Some(s), true) => {
                            tokio::select! {
                                m = mesh.next_message() => (m, None),
                                e = s.recv() => (None, e),
                            }
                        }
                        (Some(s), false) => (None, s.recv().await),
                        (None, true) => (mesh.next_message().await, None),
                        (None, false) => std::future::pending().await,
                    }
                };
                let (first_msg, first_ev) = tokio::time::timeout(deadline, ready).await.unwrap_or((None, None));
                let mut msgs: Vec<Message> = first_msg.into_iter().collect();
                if messages && msgs.len() < n {
                    msgs.extend(mesh.recv(n - msgs.len()));
                }
                let mut evs: Vec<Event> = first_ev.into_iter().collect();
                if let Some(s) = stream.as_mut() {
                    while let Some(e) = s.try_recv() {
                        evs.push(e);
                    }
                }
                (stream, msgs, evs)
            })
        });
        if let Some(s) = stream_back {
            let mut slot = lock(&self.events);
            if slot.is_none() {
                *slot = Some(s);
            }
        }
        let events = PyList::empty(py);
        for e in &evs {
            if let Some(t) = event_tuple(py, e)? {
                events.append(t)?;
            }
        }
        Ok((msgs.into_iter().map(|msg| RawMessage { msg }).collect(), events))
    }

    // ----- the synced dictionary --------------------------------------------

    /// `(value, owner, timestamp)` at `key`, or `None`.
    fn get<'py>(&self, py: Python<'py>, key: Vec<u8>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let s = self.replica()?.clone();
        let got = wait(py, async move { s.get_with_meta(key).await })?.map_err(py_err)?;
        got.map(|(v, owner, ts)| {
            PyTuple::new(
                py,
                [to_py(py, &v)?, PyBytes::new(py, owner.as_bytes()).into_any(), ts.into_pyobject(py)?.into_any()],
            )
        })
        .transpose()
    }

    /// Sets `key` (nil deletes). Raises `KeyError` for a key leased to
    /// another node.
    fn set(&self, py: Python<'_>, key: Vec<u8>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value: Value = to_value(value)?;
        let s = self.replica()?.clone();
        wait(py, async move { s.set(key, value).await })?.map_err(py_err)
    }

    /// Deletes `key`; `KeyError` if it holds nothing or is leased.
    fn delete(&self, py: Python<'_>, key: Vec<u8>) -> PyResult<()> {
        let s = self.replica()?.clone();
        wait(py, async move { s.delete(key).await })?.map_err(py_err)
    }

    /// Merges the dict `delta` into the map at `key`; `TypeError` if the key
    /// holds something else.
    fn delta(&self, py: Python<'_>, key: Vec<u8>, delta: &Bound<'_, PyDict>) -> PyResult<()> {
        let fields = match to_value(delta.as_any())? {
            Value::Map(m) => m,
            _ => return Err(PyTypeError::new_err("a delta is a dict")),
        };
        let s = self.replica()?.clone();
        wait(py, async move { s.apply_delta(key, fields).await })?.map_err(py_err)
    }

    /// Every pair: `[(key, value, owner, timestamp), ...]`.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let s = self.replica()?.clone();
        let all = wait(py, async move { s.entries().await })?.map_err(py_err)?;
        let rows = all
            .iter()
            .map(|(k, v, o, t)| {
                PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, k).into_any(),
                        to_py(py, v)?,
                        PyBytes::new(py, o.as_bytes()).into_any(),
                        t.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// Number of keys.
    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        let s = self.replica()?.clone();
        wait(py, async move { s.len().await })?.map_err(py_err)
    }

    /// Removes `key` (any key with `None`) and returns `(key, value)`;
    /// `KeyError` if there is none.
    #[pyo3(signature = (key=None))]
    fn pop<'py>(&self, py: Python<'py>, key: Option<Vec<u8>>) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyAny>)> {
        let s = self.replica()?.clone();
        let (k, v): (Bytes, Value) = wait(py, async move {
            match key {
                Some(k) => s.pop(&k).await.map(|v| (Bytes::from(k), v)),
                None => s.popitem().await,
            }
        })?
        .map_err(py_err)?;
        Ok((PyBytes::new(py, &k), to_py(py, &v)?))
    }
}

/// The protocol id py2p derives from a subnet and an encryption name.
#[pyfunction]
pub fn protocol_id<'py>(py: Python<'py>, subnet: &str, encryption: &str) -> PyResult<Bound<'py, PyBytes>> {
    let e = match encryption {
        "Plaintext" => Encryption::Plaintext,
        "SSL" => Encryption::Ssl,
        other => return Err(PyValueError::new_err(format!("unknown encryption {other:?}: 'Plaintext' or 'SSL'"))),
    };
    Ok(PyBytes::new(py, Protocol::new(subnet, e).id().as_bytes()))
}
