//! The durable dictionary: a replica's entries kept in an embedded store,
//! so that a node restarted from its data directory still has them.
//!
//! One file, `dictionary.redb` in the data directory, one table: key →
//! the entry as anti-entropy sends it (versions, owners, tombstones and
//! per-field versions), prefixed with 8 bytes of its SHA-256 so that a
//! damaged value is caught on load rather than served. redb gives atomic,
//! crash-safe transactions in a single file with no background threads,
//! and lets each commit choose whether to fsync, which is what the
//! [`Fsync`] policies need.
//!
//! The actor never waits on the disk: it hands each round's changes to a
//! thread of this module ([`StoreLink::submit`]) and answers the writes of
//! that round when the thread reports them committed.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use rs2p_proto::id::PeerId;
use rs2p_proto::mesh::PeerAddr;
use rs2p_proto::wire::message::EntryRecord;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::Error;

/// When a write to the dictionary counts as done (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Each round of changes is committed and fsynced on its own before
    /// its writes are acknowledged.
    Always,
    /// Group commit (default): changes that arrive while a commit is on
    /// its way to the disk go into the next one; a write is acknowledged
    /// once a commit holding it is on disk.
    #[default]
    Batch,
    /// Acknowledged at once; committed without fsync, with an fsynced
    /// commit every second: a crash may lose the last second of writes.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            "never" => Ok(Fsync::Never),
            other => Err(format!("unknown fsync policy {other:?} (always, batch or never)")),
        }
    }
}

/// What to do with a store that fails its checks on start (`--on-corrupt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCorrupt {
    /// Refuse to start, with an error naming the file (default).
    #[default]
    Fail,
    /// Move the file aside (`dictionary.redb.corrupt-<UNIX time>`) and start
    /// empty: the node then takes the dictionary back from its peers.
    Resync,
}

const ENTRIES: TableDefinition<'static, &'static [u8], &'static [u8]> = TableDefinition::new("entries");
const FILE: &str = "dictionary.redb";
/// Rounds of changes waiting for the store thread, at most (then the actor
/// keeps them and merges them into the next round).
pub(crate) const STORE_QUEUE_CAP: usize = 64;
/// How often the `never` policy fsyncs.
const NEVER_SYNC_EVERY: Duration = Duration::from_secs(1);

/// A store to run a node with: opened, with its policy.
pub(crate) struct Init {
    pub(crate) opened: Opened,
    pub(crate) fsync: Fsync,
    pub(crate) dir: PathBuf,
}

/// A store opened, and what it held.
pub(crate) struct Opened {
    pub(crate) db: Database,
    pub(crate) records: Vec<EntryRecord>,
}

/// Opens (or creates) the store in `dir` and reads every entry.
///
/// # Errors
/// [`Error::Store`] when the directory or file cannot be used, or a value
/// fails its checksum (unless `on_corrupt` is [`OnCorrupt::Resync`]).
pub(crate) fn open(dir: &Path, on_corrupt: OnCorrupt) -> Result<Opened, Error> {
    std::fs::create_dir_all(dir).map_err(|e| store_error(dir, format!("cannot create the data directory: {e}")))?;
    let path = dir.join(FILE);
    match try_open(&path) {
        Ok(opened) => Ok(opened),
        Err(reason) if on_corrupt == OnCorrupt::Resync && path.exists() => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let aside = dir.join(format!("{FILE}.corrupt-{secs}"));
            std::fs::rename(&path, &aside)
                .map_err(|e| store_error(&path, format!("{reason}; cannot move it aside: {e}")))?;
            tracing::error!(file = %path.display(), moved_to = %aside.display(), %reason, "dictionary store damaged: set aside, resyncing from peers");
            try_open(&path).map_err(|r| store_error(&path, r))
        }
        Err(reason) => Err(store_error(
            &path,
            format!("{reason} (start with --on-corrupt resync to set it aside and take the dictionary from peers)"),
        )),
    }
}

fn try_open(path: &Path) -> Result<Opened, String> {
    let db = Database::create(path).map_err(|e| format!("cannot open the store: {e}"))?;
    let mut records = Vec::new();
    {
        let txn = db.begin_read().map_err(|e| e.to_string())?;
        match txn.open_table(ENTRIES) {
            Ok(table) => {
                for item in table.iter().map_err(|e| e.to_string())? {
                    let (k, v) = item.map_err(|e| format!("cannot read the store: {e}"))?;
                    let rec = decode(v.value())
                        .filter(|r| r.key.as_ref() == k.value())
                        .ok_or_else(|| format!("damaged entry for key {:?}", String::from_utf8_lossy(k.value())))?;
                    records.push(rec);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(format!("cannot read the store: {e}")),
        }
    }
    Ok(Opened { db, records })
}

fn store_error(path: &Path, reason: String) -> Error {
    Error::Store { path: path.to_path_buf(), reason }
}

/// The peers a durable node was last linked to (`DIR/peers`, one `ID
/// HOST:PORT` per line), so that a node restarted from its data directory
/// redials them: without it a node started with no `--connect` (the first
/// of a network, say) would stay alone after a restart, since its peers,
/// each with its share of links, have no reason to dial it.
pub(crate) fn load_peers(dir: &Path) -> Vec<(PeerAddr, PeerId)> {
    let Ok(text) = std::fs::read_to_string(dir.join(PEERS_FILE)) else { return Vec::new() };
    text.lines()
        .filter_map(|line| {
            let (id, addr) = line.split_once(' ')?;
            let id = PeerId::from_wire(id.as_bytes())?;
            Some((addr.parse().ok()?, id))
        })
        .collect()
}

/// Saves `peers` as [`load_peers`] reads them (written aside, then renamed
/// over the old file, so a crash leaves one or the other whole).
pub(crate) fn save_peers(dir: &Path, peers: &[(PeerAddr, PeerId)]) {
    let text: String = peers.iter().map(|(addr, id)| format!("{id} {addr}\n")).collect();
    let tmp = dir.join(format!("{PEERS_FILE}.new"));
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(PEERS_FILE))) {
        tracing::warn!(dir = %dir.display(), "cannot save the peer list: {e}");
    }
}

const PEERS_FILE: &str = "peers";

/// A stored value: 8 bytes of the record's SHA-256, then the record.
pub(crate) fn encode(rec: &EntryRecord) -> Vec<u8> {
    let body = rec.to_bytes();
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&Sha256::digest(&body)[..8]);
    out.extend_from_slice(&body);
    out
}

fn decode(v: &[u8]) -> Option<EntryRecord> {
    let (sum, body) = (v.get(..8)?, v.get(8..)?);
    (Sha256::digest(body)[..8] == *sum).then(|| EntryRecord::from_bytes(body)).flatten()
}

/// One round of changes: each key with its stored value, or `None` to
/// forget it.
pub(crate) type Changes = Vec<(Bytes, Option<Vec<u8>>)>;

struct Job {
    seq: u64,
    changes: Changes,
    /// The peers to remember now (`DIR/peers`), if they changed.
    peers: Option<Vec<(PeerAddr, PeerId)>>,
}

/// The actor's end of the store thread.
pub(crate) struct StoreLink {
    jobs: std_mpsc::SyncSender<Job>,
    /// Highest round committed, or why a commit failed.
    pub(crate) committed: mpsc::Receiver<Result<u64, String>>,
    pub(crate) policy: Fsync,
    next_seq: u64,
    /// Changes not yet handed to the thread (its queue was full).
    waiting: Changes,
    /// A peer list not yet handed to the thread.
    waiting_peers: Option<Vec<(PeerAddr, PeerId)>>,
    /// Highest round handed to the thread.
    pub(crate) submitted: u64,
    /// Highest round on disk.
    pub(crate) committed_round: u64,
    /// The store's file, for errors.
    pub(crate) path: PathBuf,
}

impl StoreLink {
    /// Starts the store thread over `db` (the store in `dir`).
    pub(crate) fn start(db: Database, policy: Fsync, dir: PathBuf) -> (StoreLink, std::thread::JoinHandle<()>) {
        let (jobs, rx) = std_mpsc::sync_channel::<Job>(STORE_QUEUE_CAP);
        let (done_tx, committed) = mpsc::channel(STORE_QUEUE_CAP);
        let path = dir.join(FILE);
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("rs2p-store".into())
            .spawn(move || run(db, policy, rx, done_tx, p))
            .expect("spawning the store thread");
        let link = StoreLink {
            jobs,
            committed,
            policy,
            next_seq: 1,
            waiting: Vec::new(),
            waiting_peers: None,
            submitted: 0,
            committed_round: 0,
            path,
        };
        (link, thread)
    }

    /// Hands over what still waits, waiting for room if need be, and lets
    /// the thread finish (for the node's shutdown; blocking).
    pub(crate) fn finish(self) {
        let StoreLink { jobs, committed, waiting, waiting_peers, next_seq, .. } = self;
        // Nobody reads the thread's reports any more: it must not wait to
        // give one while we wait for room in its queue.
        drop(committed);
        if !waiting.is_empty() || waiting_peers.is_some() {
            let _ = jobs.send(Job { seq: next_seq, changes: waiting, peers: waiting_peers });
        }
    }

    /// The round a dictionary write answered now must wait for, if any
    /// (none with [`Fsync::Never`], or when everything is on disk).
    pub(crate) fn must_wait(&self) -> Option<u64> {
        let round = self.covering_round();
        (self.policy != Fsync::Never && round > self.committed_round).then_some(round)
    }

    /// Hands `changes` to the thread (or keeps them for the next try, if its
    /// queue is full). Returns the round whose commit covers them.
    pub(crate) fn submit(&mut self, changes: Changes) -> u64 {
        self.waiting.extend(changes);
        self.retry();
        self.next_seq
    }

    /// Has the thread remember `peers` (`DIR/peers`): the file is written
    /// there, not on the actor's turn.
    pub(crate) fn save_peers(&mut self, peers: Vec<(PeerAddr, PeerId)>) {
        self.waiting_peers = Some(peers);
        self.retry();
    }

    /// Hands over what waits, if the thread has room.
    pub(crate) fn retry(&mut self) {
        if self.waiting.is_empty() && self.waiting_peers.is_none() {
            return;
        }
        let job =
            Job { seq: self.next_seq, changes: std::mem::take(&mut self.waiting), peers: self.waiting_peers.take() };
        match self.jobs.try_send(job) {
            Ok(()) => {
                self.submitted = self.next_seq;
                self.next_seq += 1;
            }
            Err(std_mpsc::TrySendError::Full(job) | std_mpsc::TrySendError::Disconnected(job)) => {
                self.waiting = job.changes;
                self.waiting_peers = job.peers;
            }
        }
    }

    /// The round a write answered now must wait for: the one that will
    /// hold this turn's changes, or the last handed over.
    pub(crate) fn covering_round(&self) -> u64 {
        if self.waiting.is_empty() {
            self.submitted
        } else {
            self.next_seq
        }
    }
}

fn run(
    db: Database,
    policy: Fsync,
    jobs: std_mpsc::Receiver<Job>,
    done: mpsc::Sender<Result<u64, String>>,
    path: PathBuf,
) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let first = match policy {
            // Wake up to fsync what `never` committed without it.
            Fsync::Never if unsynced => match jobs.recv_timeout(NEVER_SYNC_EVERY) {
                Ok(job) => Some(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
            _ => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
        };
        let mut batch = Vec::new();
        let mut seq = 0;
        let mut peers = None;
        if let Some(job) = first {
            seq = job.seq;
            batch.push(job.changes);
            peers = job.peers.or(peers);
            // Group commit: whatever queued up while the last commit ran.
            if policy != Fsync::Always {
                while let Ok(job) = jobs.try_recv() {
                    seq = job.seq;
                    batch.push(job.changes);
                    peers = job.peers.or(peers);
                }
            }
        }
        if let (Some(peers), Some(dir)) = (peers, path.parent()) {
            save_peers(dir, &peers);
        }
        // A job that only carried peers: nothing to commit.
        if seq > 0 && batch.iter().all(Vec::is_empty) && !(policy == Fsync::Never && unsynced) {
            let _ = done.blocking_send(Ok(seq));
            continue;
        }
        let fsync = match policy {
            Fsync::Never => last_sync.elapsed() >= NEVER_SYNC_EVERY,
            _ => true,
        };
        let result = commit(&db, &batch, fsync).map_err(|e| format!("writing {}: {e}", path.display()));
        if fsync {
            last_sync = Instant::now();
            unsynced = false;
        } else {
            unsynced = true;
        }
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        // The node may have stopped listening: what it handed over is
        // still written, until its end of the queue is gone.
        if seq > 0 {
            let _ = done.blocking_send(result.map(|()| seq));
        }
    }
    // The node stopped: what `never` left unsynced goes to disk now.
    if unsynced {
        let _ = commit(&db, &[], true);
    }
}

fn commit(db: &Database, batch: &[Changes], fsync: bool) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if fsync { redb::Durability::Immediate } else { redb::Durability::None })?;
    {
        let mut table = txn.open_table(ENTRIES)?;
        for changes in batch {
            for (key, value) in changes {
                match value {
                    Some(v) => {
                        table.insert(key.as_ref(), v.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_ref())?;
                    }
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rs2p_proto::Value;

    fn rec(key: &str, v: i64) -> EntryRecord {
        EntryRecord {
            key: Bytes::copy_from_slice(key.as_bytes()),
            base_ts_ms: 1,
            base_owner: Bytes::from_static(b"me"),
            base_proof: None,
            base: Value::from(v),
            fields: Vec::new(),
            holdings: Vec::new(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rs2p-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn entries_come_back_and_forgotten_ones_do_not() {
        let dir = temp("back");
        let opened = open(&dir, OnCorrupt::Fail).unwrap();
        assert!(opened.records.is_empty());
        let changes = vec![
            (Bytes::from_static(b"a"), Some(encode(&rec("a", 1)))),
            (Bytes::from_static(b"b"), Some(encode(&rec("b", 2)))),
        ];
        commit(&opened.db, &[changes], true).unwrap();
        commit(&opened.db, &[vec![(Bytes::from_static(b"b"), None)]], true).unwrap();
        drop(opened);
        let again = open(&dir, OnCorrupt::Fail).unwrap();
        assert_eq!(again.records, vec![rec("a", 1)]);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_value_is_caught_and_can_be_set_aside() {
        let dir = temp("damaged");
        let opened = open(&dir, OnCorrupt::Fail).unwrap();
        let mut bad = encode(&rec("a", 1));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        commit(&opened.db, &[vec![(Bytes::from_static(b"a"), Some(bad))]], true).unwrap();
        drop(opened);
        let err = open(&dir, OnCorrupt::Fail).err().expect("refused").to_string();
        assert!(err.contains("damaged entry") && err.contains("--on-corrupt resync"), "{err}");
        let fresh = open(&dir, OnCorrupt::Resync).unwrap();
        assert!(fresh.records.is_empty());
        let aside = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("dictionary.redb.corrupt-"));
        assert!(aside, "the damaged file was kept aside");
        drop(fresh);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_peer_list_comes_back() {
        let dir = temp("peers");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_peers(&dir).is_empty());
        let peers = vec![
            ("10.0.0.1:4000".parse().unwrap(), PeerId::from_bytes(&b"abc"[..])),
            ("[::1]:5".parse().unwrap(), PeerId::from_bytes(&b"def"[..])),
        ];
        save_peers(&dir, &peers);
        assert_eq!(load_peers(&dir), peers);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused() {
        let dir = temp("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), vec![0x42; 4096]).unwrap();
        let err = open(&dir, OnCorrupt::Fail).err().expect("refused").to_string();
        assert!(err.contains("dictionary.redb"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
