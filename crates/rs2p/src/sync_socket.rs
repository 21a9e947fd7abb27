//! [`SyncSocket`]: a dictionary replicated across every node of the mesh
//! (py2p's `SyncSocket`), convergent between rs2p nodes.
//!
//! See [`crate::proto::sync`] for the protocol and the consistency model.

use std::ops::Deref;

use bytes::Bytes;
use rs2p_proto::id::{Encryption, PeerId, Protocol};
use rs2p_proto::Value;

use rs2p_proto::sync::Command;

use crate::command::{Query, Responder};
use crate::{Builder, Error, MeshSocket};

/// Builds a [`SyncSocket`]: every [`Builder`] setting, plus the sync ones.
#[derive(Debug, Clone)]
pub struct SyncBuilder {
    mesh: Builder,
    subnet: String,
    encryption: Encryption,
    cfg: rs2p_proto::sync::Config,
}

impl Default for SyncBuilder {
    fn default() -> Self {
        SyncBuilder {
            mesh: Builder::default(),
            subnet: "sync".into(),
            encryption: Encryption::Plaintext,
            cfg: rs2p_proto::sync::Config::default(),
        }
    }
}

impl SyncBuilder {
    /// Changes the mesh settings (bind address, limits, ...). The protocol
    /// is set by [`SyncBuilder::subnet`] and [`SyncBuilder::leasing`].
    pub fn mesh(mut self, f: impl FnOnce(Builder) -> Builder) -> Self {
        self.mesh = f(self.mesh);
        self
    }

    /// Address to listen on (see [`Builder::bind`]).
    pub fn bind(mut self, addr: impl Into<String>) -> Self {
        self.mesh = self.mesh.bind(addr);
        self
    }

    /// The subnet name, default `"sync"`. As in py2p, the network's subnet
    /// is this plus `"1"` with leasing and `"0"` without, so the two kinds
    /// of network never mix.
    pub fn subnet(mut self, subnet: impl Into<String>) -> Self {
        self.subnet = subnet.into();
        self
    }

    /// The encryption part of the protocol. Default plaintext.
    pub fn encryption(mut self, e: Encryption) -> Self {
        self.encryption = e;
        self
    }

    /// TLS on every connection (py2p's "SSL" mode; see [`Builder::tls`]).
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.encryption = Encryption::Ssl;
        self.mesh = self.mesh.tls(tls);
        self
    }

    /// py2p's leasing (default on): a key written by one node cannot be
    /// written by another for an hour after its last write.
    pub fn leasing(mut self, on: bool) -> Self {
        self.cfg.leasing = on;
        self
    }

    /// How long deletes are remembered (default 24 h). A node cut off for
    /// longer may bring back a key deleted meanwhile.
    pub fn tombstone_ttl(mut self, d: std::time::Duration) -> Self {
        self.cfg.tombstone_ttl_ms = d.as_millis() as u64;
        self
    }

    /// Interval between anti-entropy rounds with a random rs2p peer
    /// (default 2 s).
    pub fn anti_entropy_interval(mut self, d: std::time::Duration) -> Self {
        self.cfg.anti_entropy_interval_ms = d.as_millis().max(1) as u64;
        self
    }

    /// Keep the dictionary in `dir` (created if missing), so that a node
    /// restarted from it still has every entry, versions, owners and
    /// tombstones included, and repairs only what changed meanwhile from
    /// its peers (anti-entropy). The node's key is kept there too
    /// (`node.key`, unless [`Builder::key_file`] says otherwise), so it
    /// keeps its id and the leases on its keys. Default: memory only.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.mesh.durability.dir = Some(dir.into());
        self
    }

    /// When a write counts as done with a [`SyncBuilder::data_dir`]
    /// (default [`crate::Fsync::Batch`]: acknowledged once on disk, with
    /// group commit).
    pub fn fsync(mut self, policy: crate::Fsync) -> Self {
        self.mesh.durability.fsync = policy;
        self
    }

    /// What to do with a damaged store on start (default
    /// [`crate::OnCorrupt::Fail`]).
    pub fn on_corrupt(mut self, what: crate::OnCorrupt) -> Self {
        self.mesh.durability.on_corrupt = what;
        self
    }

    /// Starts the node (loading its dictionary first, with a data
    /// directory).
    ///
    /// # Errors
    /// As [`Builder::spawn`], and [`Error::Store`] when the data directory's
    /// store cannot be opened or fails its checks.
    pub async fn spawn(self) -> Result<SyncSocket, Error> {
        let suffix = if self.cfg.leasing { "1" } else { "0" };
        let protocol = Protocol::new(format!("{}{suffix}", self.subnet), self.encryption);
        let mut b = self.mesh.protocol(protocol);
        b.sync = Some(self.cfg);
        Ok(SyncSocket { mesh: b.spawn().await? })
    }
}

/// A node holding a replica of the network's dictionary (py2p's
/// `SyncSocket`). It is also a [`MeshSocket`] (through `Deref`), as py2p's
/// `SyncSocket` extends `MeshSocket`.
///
/// Keys are bytes (a `&str` key is its UTF-8 bytes, as in py2p); values
/// are any msgpack [`Value`]. Reads are answered by the local replica;
/// writes apply locally at once and flood to the network.
///
/// ```no_run
/// # async fn demo() -> Result<(), rs2p::Error> {
/// use rs2p::{SyncSocket, Value};
/// let a = SyncSocket::builder().spawn().await?;
/// let b = SyncSocket::builder().spawn().await?;
/// b.connect(a.out_addr().clone()).await?;
/// a.set("greeting", Value::from("hello")).await?;
/// // ... once it has propagated:
/// assert_eq!(b.get("greeting").await?, Some(Value::from("hello")));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SyncSocket {
    mesh: MeshSocket,
}

impl Deref for SyncSocket {
    type Target = MeshSocket;
    fn deref(&self) -> &MeshSocket {
        &self.mesh
    }
}

fn key(k: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(k.as_ref())
}

impl SyncSocket {
    /// A builder with default settings.
    pub fn builder() -> SyncBuilder {
        SyncBuilder::default()
    }

    /// The mesh under the dictionary.
    pub fn mesh(&self) -> &MeshSocket {
        &self.mesh
    }

    /// Sets `key` to `value` (py2p's `sock[key] = value` / `set`). Setting
    /// nil deletes, as in py2p.
    ///
    /// # Errors
    /// [`Error::Leased`] when another node holds the key's lease (naming it
    /// and when the lease ends), [`Error::MessageTooLarge`] when the write
    /// would exceed the frame limit (nothing is applied), [`Error::Closed`].
    pub async fn set(&self, k: impl AsRef<[u8]>, value: impl Into<Value>) -> Result<(), Error> {
        self.mesh.run(Command::Set { key: key(k), value: value.into() }, Responder::Done).await
    }

    /// Sets many pairs (py2p's `update`), in order; stops at the first
    /// refused key (earlier ones stay written).
    ///
    /// # Errors
    /// As [`SyncSocket::set`].
    pub async fn update<K: AsRef<[u8]>, V: Into<Value>>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        let pairs: Vec<(Bytes, Value)> = pairs.into_iter().map(|(k, v)| (key(k), v.into())).collect();
        self.mesh.run(Command::Update { pairs }, Responder::Done).await
    }

    /// The value at `key`, if any (py2p's `get`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn get(&self, k: impl AsRef<[u8]>) -> Result<Option<Value>, Error> {
        Ok(self.get_with_meta(k).await?.map(|(v, _, _)| v))
    }

    /// The value at `key`, or `default` (py2p's `get(key, ifError)`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn get_or(&self, k: impl AsRef<[u8]>, default: Value) -> Result<Value, Error> {
        Ok(self.get(k).await?.unwrap_or(default))
    }

    /// The value at `key` (py2p's `sock[key]`).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] if it holds none.
    pub async fn index(&self, k: impl AsRef<[u8]>) -> Result<Value, Error> {
        self.get(k).await?.ok_or(Error::KeyNotFound)
    }

    /// The value at `key` with its owner and timestamp (UNIX seconds), py2p's
    /// metadata.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn get_with_meta(&self, k: impl AsRef<[u8]>) -> Result<Option<(Value, PeerId, u64)>, Error> {
        self.mesh.sync_get(key(k)).await
    }

    /// Deletes `key` (py2p's `del sock[key]`).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`], [`Error::Leased`], [`Error::Closed`].
    pub async fn delete(&self, k: impl AsRef<[u8]>) -> Result<(), Error> {
        self.mesh.run(Command::Delete { key: key(k) }, Responder::Done).await
    }

    /// Removes `key` and returns its value (py2p's `pop(key)`).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`], [`Error::Leased`], [`Error::Closed`].
    pub async fn pop(&self, k: impl AsRef<[u8]>) -> Result<Value, Error> {
        Ok(self.mesh.run(Command::Pop { key: Some(key(k)) }, Responder::Popped).await?.1)
    }

    /// Removes `key` and returns its value, or returns `default` if it holds
    /// none (py2p's `pop(key, default)`).
    ///
    /// # Errors
    /// [`Error::Leased`], [`Error::Closed`].
    pub async fn pop_or(&self, k: impl AsRef<[u8]>, default: Value) -> Result<Value, Error> {
        match self.pop(k).await {
            Err(Error::KeyNotFound) => Ok(default),
            other => other,
        }
    }

    /// Removes and returns some pair (py2p's `popitem`).
    ///
    /// # Errors
    /// [`Error::KeyNotFound`] when empty, [`Error::Leased`], [`Error::Closed`].
    pub async fn popitem(&self) -> Result<(Bytes, Value), Error> {
        self.mesh.run(Command::Pop { key: None }, Responder::Popped).await
    }

    /// Merges `delta` into the map at `key`, creating it (py2p's
    /// `apply_delta`). Concurrent deltas to different fields all survive.
    ///
    /// # Errors
    /// [`Error::NotAMap`] if `key` holds something else, [`Error::Leased`],
    /// [`Error::MessageTooLarge`], [`Error::Closed`].
    pub async fn apply_delta(&self, k: impl AsRef<[u8]>, delta: Vec<(Value, Value)>) -> Result<(), Error> {
        self.mesh.run(Command::Delta { key: key(k), delta }, Responder::Done).await
    }

    /// Every pair with its owner and timestamp.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn entries(&self) -> Result<Vec<(Bytes, Value, PeerId, u64)>, Error> {
        self.mesh.query(Query::Items).await
    }

    /// Every pair (py2p's `items`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn items(&self) -> Result<Vec<(Bytes, Value)>, Error> {
        Ok(self.entries().await?.into_iter().map(|(k, v, _, _)| (k, v)).collect())
    }

    /// Every key (py2p's `keys`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn keys(&self) -> Result<Vec<Bytes>, Error> {
        Ok(self.entries().await?.into_iter().map(|(k, ..)| k).collect())
    }

    /// Every value (py2p's `values`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn values(&self) -> Result<Vec<Value>, Error> {
        Ok(self.entries().await?.into_iter().map(|(_, v, ..)| v).collect())
    }

    /// A copy of the dictionary (py2p's `copy`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn copy(&self) -> Result<std::collections::BTreeMap<Bytes, Value>, Error> {
        Ok(self.items().await?.into_iter().collect())
    }

    /// Number of keys (py2p's `len`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn len(&self) -> Result<usize, Error> {
        self.mesh.query(Query::Len).await
    }

    /// Whether the dictionary is empty.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }
}
