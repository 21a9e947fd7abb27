//! Which peers the node knows, so that a user may name one by a prefix of
//! its id: the connected peers (from the node's peer events) and the senders
//! of recent messages (who can be replied to through the network).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use rs2p::PeerId;

/// How many recent message senders are remembered for `reply`.
const RECENT_SENDERS_CAP: usize = 1024;

/// The node's peers and recent senders, shared by the input and event tasks.
#[derive(Debug, Default)]
pub struct PeerBook {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    up: BTreeMap<String, PeerId>,
    senders: VecDeque<PeerId>,
    /// Addresses of user `connect`s whose failure the command itself
    /// reports (so the failure event is not printed a second time).
    dialing: BTreeMap<String, usize>,
}

/// Why a peer id could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No id was given.
    Missing,
    /// No known peer's id starts with the prefix.
    Unknown(String),
    /// Several do; their ids.
    Ambiguous(String, Vec<String>),
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::Missing => f.write_str("a peer id (or a unique prefix of one) is required"),
            Unresolved::Unknown(p) => write!(f, "no connected peer with id starting {p:?}"),
            Unresolved::Ambiguous(p, c) => {
                write!(f, "{p:?} matches {} peers: {}; type more of the id", c.len(), c.join(", "))
            }
        }
    }
}

impl PeerBook {
    /// A peer came up.
    pub fn up(&self, id: &PeerId) {
        self.lock().up.insert(id.to_string(), id.clone());
    }

    /// A peer went down.
    pub fn down(&self, id: &PeerId) {
        self.lock().up.remove(&id.to_string());
    }

    /// A message arrived from `sender`.
    pub fn heard_from(&self, sender: &PeerId) {
        let mut g = self.lock();
        if g.senders.back() == Some(sender) {
            return;
        }
        g.senders.retain(|s| s != sender);
        if g.senders.len() >= RECENT_SENDERS_CAP {
            g.senders.pop_front();
        }
        g.senders.push_back(sender.clone());
    }

    /// A user `connect` to `addr` starts.
    pub fn dialing(&self, addr: &str) {
        *self.lock().dialing.entry(addr.to_string()).or_default() += 1;
    }

    /// A user `connect` to `addr` succeeded: no failure event will come.
    pub fn dialed(&self, addr: &str) {
        let mut g = self.lock();
        if let Some(n) = g.dialing.get_mut(addr) {
            *n -= 1;
            if *n == 0 {
                g.dialing.remove(addr);
            }
        }
    }

    /// Whether a failure event for `addr` belongs to a user `connect` (its
    /// answer reports it); consumes that expectation.
    pub fn failure_is_answered(&self, addr: &str) -> bool {
        let had = self.lock().dialing.contains_key(addr);
        if had {
            self.dialed(addr);
        }
        had
    }

    /// How many peers are connected.
    pub fn count(&self) -> usize {
        self.lock().up.len()
    }

    /// The connected peers' ids, for completion.
    pub fn ids(&self) -> Vec<String> {
        self.lock().up.keys().cloned().collect()
    }

    /// The connected peer named by `prefix`.
    pub fn connected(&self, prefix: &str) -> Result<PeerId, Unresolved> {
        let g = self.lock();
        resolve(prefix, g.up.values())
    }

    /// The peer named by `prefix` among connected peers and recent senders;
    /// an id that names none of them is taken whole (a reply is routed).
    pub fn anyone(&self, prefix: &str) -> Result<PeerId, Unresolved> {
        let g = self.lock();
        let mut known: Vec<&PeerId> = g.up.values().chain(g.senders.iter()).collect();
        known.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        known.dedup();
        match resolve(prefix, known.into_iter()) {
            Err(Unresolved::Unknown(_)) => Ok(PeerId::from_bytes(prefix.as_bytes().to_vec())),
            other => other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn resolve<'a>(prefix: &str, ids: impl Iterator<Item = &'a PeerId>) -> Result<PeerId, Unresolved> {
    if prefix.is_empty() {
        return Err(Unresolved::Missing);
    }
    let matches: Vec<&PeerId> = ids.filter(|id| id.as_bytes().starts_with(prefix.as_bytes())).collect();
    // A whole id is never ambiguous, even if it prefixes another.
    if let Some(exact) = matches.iter().find(|id| id.as_bytes() == prefix.as_bytes()) {
        return Ok((*exact).clone());
    }
    match &matches[..] {
        [] => Err(Unresolved::Unknown(prefix.to_string())),
        [one] => Ok((*one).clone()),
        many => Err(Unresolved::Ambiguous(prefix.to_string(), many.iter().map(|id| id.to_string()).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::from_bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn prefixes_resolve_uniquely_or_are_refused_with_candidates() {
        let book = PeerBook::default();
        for s in ["2DdFPuCk", "2TymoojJ", "3EGKUdcV"] {
            book.up(&id(s));
        }
        assert_eq!(book.connected("3"), Ok(id("3EGKUdcV")));
        assert_eq!(book.connected("2D"), Ok(id("2DdFPuCk")));
        assert_eq!(
            book.connected("2"),
            Err(Unresolved::Ambiguous("2".into(), vec!["2DdFPuCk".into(), "2TymoojJ".into()]))
        );
        assert_eq!(book.connected(""), Err(Unresolved::Missing));
        assert_eq!(book.connected("9"), Err(Unresolved::Unknown("9".into())));
        assert_eq!(
            Unresolved::Ambiguous("2".into(), vec!["2DdFPuCk".into(), "2TymoojJ".into()]).to_string(),
            "\"2\" matches 2 peers: 2DdFPuCk, 2TymoojJ; type more of the id"
        );
        book.down(&id("2TymoojJ"));
        assert_eq!(book.connected("2"), Ok(id("2DdFPuCk")));
    }

    #[test]
    fn replies_reach_recent_senders_and_whole_ids() {
        let book = PeerBook::default();
        book.heard_from(&id("5far"));
        assert_eq!(book.anyone("5"), Ok(id("5far")));
        assert_eq!(book.connected("5"), Err(Unresolved::Unknown("5".into())));
        assert_eq!(book.anyone("7neverseen"), Ok(id("7neverseen")));
    }
}
