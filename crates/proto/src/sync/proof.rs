//! Proofs that sync writes are their writers': what lets a replica check a
//! write it receives from a third party (anti-entropy, a restart's store)
//! as surely as one its writer flooded.
//!
//! A broadcast write is checked by the mesh's signature over the messages
//! of a batch (`mesh/signed.rs`), but that signature covers whole messages,
//! which replicas do not keep: they keep entries, and repair each other
//! with records rebuilt from them. So an rs2p writer that signs
//! ([`super::Config::identity`]) also signs its writes themselves:
//! - each write is a **leaf**: a hash of the key, the writer's id, the
//!   write's millisecond time and what it wrote ([`content_hash`]: a set's
//!   value, or one field of a delta with its value);
//! - the writes of one local command (at most [`MAX_BATCH_WRITES`] per
//!   batch, a delta's fields never split) form a hash tree whose root the
//!   writer signs once ([`sign_batch`]): one Ed25519 signature per batch,
//!   not per write;
//! - each write keeps its [`WriteProof`]: the signed root (shared by the
//!   batch), its index and the sibling hashes up to the root. The proof
//!   travels with the write everywhere: in the live store (the trailing
//!   rs2p field, which py2p ignores), in anti-entropy records and in the
//!   durable store, so a repaired entry stays checkable by anyone.
//!
//! A receiver checks a proof by hashing the leaf up to the root and
//! checking the root's signature with the writer's key, which must hash to
//! the writer's id ([`crate::identity::key_of`]). Roots already checked are
//! remembered ([`Checker`]), so the writes of one batch cost one signature
//! check per replica, then a few hashes each.
//!
//! Tree nodes are SHA-256 truncated to 16 bytes (128 bits): a forger needs
//! a second preimage of a node, which 128 bits put out of reach; a
//! collision (64 bits of work) only lets a writer make two writes of its
//! own share a proof, which it could sign anyway. Leaves and inner nodes
//! hash under different prefixes, so neither can pass for the other.

use std::collections::HashMap;
use std::sync::Arc;

use rmpv::Value;
use sha2::{Digest, Sha256};

use crate::id::PeerId;
use crate::identity::{self, Identity, VerifyError};
use crate::wire::message::{BatchNodes, PathNodes, SignedRoot, TreeNode, WriteProof, MAX_PROOF_PATH};

/// Most writes one signature covers (a delta with more fields is one batch
/// of its own): a proof then has at most 8 path nodes (128 bytes).
pub const MAX_BATCH_WRITES: usize = 256;

/// Most checked roots remembered; past it the memory starts over (the next
/// write of a forgotten batch costs one signature check again).
pub const MAX_CHECKED_ROOTS: usize = 1 << 16;

/// The padding of a tree whose width is not a power of two.
const EMPTY: TreeNode = [0; 16];

/// What one write wrote.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// A set of the whole value (nil: a delete).
    Set(&'a Value),
    /// One field of a delta: its key and value.
    Field(&'a Value, &'a Value),
}

fn truncated(h: Sha256) -> TreeNode {
    let d = h.finalize();
    d[..16].try_into().expect("16 of 32 bytes")
}

/// The hash of what a write wrote (the values as msgpack).
pub fn content_hash(content: Content<'_>) -> TreeNode {
    let mut h = Sha256::new();
    match content {
        Content::Set(v) => {
            h.update([0]);
            rmpv::encode::write_value(&mut h, v).expect("hashing cannot fail");
        }
        Content::Field(k, v) => {
            h.update([1]);
            rmpv::encode::write_value(&mut h, k).expect("hashing cannot fail");
            rmpv::encode::write_value(&mut h, v).expect("hashing cannot fail");
        }
    }
    truncated(h)
}

/// The leaf of a write: `owner` wrote `content` to `key` at `ts_ms`.
pub fn leaf(key: &[u8], owner: &PeerId, ts_ms: u64, content: &TreeNode) -> TreeNode {
    let mut h = Sha256::new();
    h.update(b"\0rs2p sync write v1\0");
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update((owner.as_bytes().len() as u64).to_be_bytes());
    h.update(owner.as_bytes());
    h.update(ts_ms.to_be_bytes());
    h.update(content);
    truncated(h)
}

fn parent(left: &TreeNode, right: &TreeNode) -> TreeNode {
    let mut h = Sha256::new();
    h.update([1]);
    h.update(left);
    h.update(right);
    truncated(h)
}

/// What a writer signs for a batch: a domain tag and the root.
pub fn root_context(root: &TreeNode) -> Vec<u8> {
    let mut m = b"rs2p sync write batch v1\0".to_vec();
    m.extend_from_slice(root);
    m
}

/// Signs one batch of writes, given as `(leaf, content hash)` pairs: one
/// proof per write, in order. An empty batch gives none.
pub fn sign_batch(identity: &Identity, writes: &[(TreeNode, TreeNode)]) -> Vec<Arc<WriteProof>> {
    if writes.is_empty() {
        return Vec::new();
    }
    let mut levels: Vec<Vec<TreeNode>> = vec![writes.iter().map(|w| w.0).collect()];
    while levels.last().map_or(0, Vec::len) > 1 {
        let below = levels.last().expect("a level");
        let up = below.chunks(2).map(|pair| parent(&pair[0], pair.get(1).unwrap_or(&EMPTY))).collect();
        levels.push(up);
    }
    let root = levels.last().expect("a level")[0];
    let signed =
        Arc::new(SignedRoot { public_key: identity.public_key(), signature: identity.sign(&root_context(&root)) });
    let depth = levels.len() - 1;
    let shared = (1..=BatchNodes::MAX_DEPTH).contains(&depth).then(|| Arc::new(BatchNodes::new(depth)));
    writes
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let path: crate::wire::message::ProofPath =
                (0..depth).map(|l| *levels[l].get((i >> l) ^ 1).unwrap_or(&EMPTY)).collect();
            let path = match &shared {
                Some(nodes) => {
                    nodes.fill(i as u32, &path);
                    PathNodes::Shared(nodes.clone())
                }
                None => PathNodes::Own(path.into_vec().into_boxed_slice()),
            };
            Arc::new(WriteProof { root: signed.clone(), index: i as u32, path, content: w.1 })
        })
        .collect()
}

/// The root a leaf at `index` with `path` hashes up to; `None` if the index
/// does not fit the path.
pub fn root_of(leaf: TreeNode, index: u32, path: &[TreeNode]) -> Option<TreeNode> {
    if path.len() > MAX_PROOF_PATH || (path.len() < 32 && u64::from(index) >> path.len() != 0) {
        return None;
    }
    Some(path.iter().enumerate().fold(leaf, |node, (l, sibling)| {
        if (index >> l) & 1 == 1 {
            parent(sibling, &node)
        } else {
            parent(&node, sibling)
        }
    }))
}

/// Why a proof was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof is for other content than the write holds.
    #[error("the proof is for another write")]
    OtherContent,
    /// The index does not fit the path.
    #[error("malformed proof path")]
    BadPath,
    /// The root was signed by someone else than the write claims.
    #[error("the batch was signed by another writer")]
    OtherSigner,
    /// The key or signature does not check.
    #[error("{0}")]
    Signature(#[from] VerifyError),
}

impl ProofError {
    /// The reason as a static string, for logs.
    pub fn as_reason(self) -> &'static str {
        match self {
            ProofError::OtherContent => "the proof is for another write",
            ProofError::BadPath => "malformed proof path",
            ProofError::OtherSigner => "the batch was signed by another writer",
            ProofError::Signature(e) => e.as_reason(),
        }
    }
}

/// The roots a replica has checked, with their signer: a batch costs one
/// signature check, whatever the number of its writes that arrive.
#[derive(Debug, Default)]
pub struct Checker {
    roots: HashMap<TreeNode, Checked>,
    /// The first 16 bytes of the signatures of `roots`: a proof whose
    /// batch is checked already is told apart without hashing it.
    signatures: std::collections::HashSet<u128, foldhash::fast::FixedState>,
}

/// A checked batch root.
#[derive(Debug)]
struct Checked {
    signer: PeerId,
    root: Arc<SignedRoot>,
    /// The batch's tree, filled by the proofs checked so far, which keep
    /// their paths in it.
    nodes: Option<Arc<BatchNodes>>,
}

fn signature_tag(signature: &[u8; 64]) -> u128 {
    u128::from_le_bytes(signature[..16].try_into().expect("16 of 64 bytes"))
}

impl Checker {
    /// Checks that `proof` proves `owner` wrote `content` to `key` at
    /// `ts_ms`. Gives back the proof to keep, sharing the batch's checked
    /// root with the other writes of the batch.
    ///
    /// # Errors
    /// The first check that failed.
    pub fn check(
        &mut self,
        key: &[u8],
        owner: &PeerId,
        ts_ms: u64,
        content: &TreeNode,
        proof: Arc<WriteProof>,
    ) -> Result<Arc<WriteProof>, ProofError> {
        if *content != proof.content {
            return Err(ProofError::OtherContent);
        }
        let path = proof.path();
        let root = root_of(leaf(key, owner, ts_ms, content), proof.index, &path).ok_or(ProofError::BadPath)?;
        if !self.roots.contains_key(&root) {
            let key = identity::key_of(owner, &proof.root.public_key)?;
            identity::verify_with(&key, &root_context(&root), &proof.root.signature)?;
            self.remember(root, owner, &proof.root);
        }
        let known = self.roots.get_mut(&root).expect("checked above");
        if known.signer != *owner {
            return Err(ProofError::OtherSigner);
        }
        // The proof to keep: the batch's checked root, and its path in the
        // batch's shared tree (filled with it).
        let nodes = match &known.nodes {
            Some(n) if n.depth() == path.len() => Some(n.clone()),
            Some(_) => None,
            None if (1..=BatchNodes::MAX_DEPTH).contains(&path.len()) => {
                let n = Arc::new(BatchNodes::new(path.len()));
                known.nodes = Some(n.clone());
                Some(n)
            }
            None => None,
        };
        let mut proof = proof;
        if !Arc::ptr_eq(&known.root, &proof.root) {
            // In place when this copy is the only one (a decoded record).
            Arc::make_mut(&mut proof).root = known.root.clone();
        }
        if let Some(nodes) = nodes {
            if !matches!(&proof.path, PathNodes::Shared(n) if Arc::ptr_eq(n, &nodes)) {
                nodes.fill(proof.index, &path);
                Arc::make_mut(&mut proof).path = PathNodes::Shared(nodes);
            }
        }
        Ok(proof)
    }

    /// Whether a batch with this signature was checked (a hint: the proof
    /// itself is still checked in full by [`Checker::check`]).
    pub fn knows_signature(&self, signature: &[u8; 64]) -> bool {
        self.signatures.contains(&signature_tag(signature))
    }

    fn remember(&mut self, root: TreeNode, owner: &PeerId, signed: &Arc<SignedRoot>) {
        if self.roots.len() >= MAX_CHECKED_ROOTS {
            self.roots.clear();
            self.signatures.clear();
        }
        self.signatures.insert(signature_tag(&signed.signature));
        self.roots.insert(root, Checked { signer: owner.clone(), root: signed.clone(), nodes: None });
    }

    /// Checks at once the roots that `proofs` (`(owner, leaf, proof)`)
    /// claim and that are not checked yet, one per batch (Ed25519 batch
    /// verification): records from many batches then cost about half a
    /// signature check per batch. If any fails, none is remembered, and
    /// [`Checker::check`] checks each alone (and reports the bad ones).
    pub fn check_roots<'a>(&mut self, proofs: impl IntoIterator<Item = (&'a PeerId, TreeNode, &'a Arc<WriteProof>)>) {
        let mut fresh: Vec<(TreeNode, &PeerId, identity::VerifyingKey, &Arc<SignedRoot>)> = Vec::new();
        let mut claimed = std::collections::HashSet::new();
        for (owner, leaf, proof) in proofs {
            let Some(root) = root_of(leaf, proof.index, &proof.path()) else { continue };
            if self.roots.contains_key(&root) || !claimed.insert(root) {
                continue;
            }
            if let Ok(key) = identity::key_of(owner, &proof.root.public_key) {
                fresh.push((root, owner, key, &proof.root));
            }
        }
        if fresh.len() < 2 {
            return;
        }
        let contexts: Vec<Vec<u8>> = fresh.iter().map(|f| root_context(&f.0)).collect();
        let items: Vec<_> = fresh.iter().zip(&contexts).map(|(f, c)| (&f.2, c.as_slice(), &f.3.signature)).collect();
        if identity::verify_batch(&items).is_err() {
            return;
        }
        for (root, owner, _, signed) in fresh {
            self.remember(root, owner, signed);
        }
    }
}

/// Proofs read back from a durable store, made to share their batch's
/// root and tree as checked ones do: the store holds what this node
/// checked or wrote, so nothing is hashed again (a restart with a million
/// keys stays a load, not a check).
#[derive(Debug, Default)]
pub struct Sharing {
    batches: HashMap<u128, (Arc<SignedRoot>, Option<Arc<BatchNodes>>)>,
}

impl Sharing {
    /// Makes `proof` share its batch's root and tree.
    pub fn share(&mut self, proof: &mut Arc<WriteProof>) {
        let depth = match &proof.path {
            PathNodes::Own(p) => p.len(),
            PathNodes::Shared(_) => return,
        };
        let (root, tree) = self.batches.entry(signature_tag(&proof.root.signature)).or_insert_with(|| {
            let tree = (1..=BatchNodes::MAX_DEPTH).contains(&depth).then(|| Arc::new(BatchNodes::new(depth)));
            (proof.root.clone(), tree)
        });
        let p = Arc::make_mut(proof);
        p.root = root.clone();
        if let (Some(tree), PathNodes::Own(path)) = (tree.as_ref(), &p.path) {
            if tree.depth() == path.len() {
                tree.fill(p.index, path);
                p.path = PathNodes::Shared(tree.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn writer(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn writes(me: &PeerId, n: usize) -> Vec<(TreeNode, TreeNode)> {
        (0..n)
            .map(|i| {
                let c = content_hash(Content::Set(&Value::from(i)));
                (leaf(format!("k{i}").as_bytes(), me, 1_000 + i as u64, &c), c)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn every_write_of_a_batch_checks_and_no_other_does(n in 1usize..70, victim in 0usize..70) {
            let w = writer(1);
            let me = w.id();
            let batch = writes(&me, n);
            let proofs = sign_batch(&w, &batch);
            prop_assert_eq!(proofs.len(), n);
            let mut checker = Checker::default();
            for (i, p) in proofs.iter().enumerate() {
                let (key, ts) = (format!("k{i}").into_bytes(), 1_000 + i as u64);
                let c = content_hash(Content::Set(&Value::from(i)));
                prop_assert!(checker.check(&key, &me, ts, &c, p.clone()).is_ok());
                // Checked once: later writes of the batch share its root.
                let again = checker.check(&key, &me, ts, &c, p.clone()).unwrap();
                prop_assert!(Arc::ptr_eq(&again.root, &proofs[0].root));
            }
            let v = victim % n;
            let p = &proofs[v];
            let (key, ts) = (format!("k{v}").into_bytes(), 1_000 + v as u64);
            let c = content_hash(Content::Set(&Value::from(v)));
            let other = content_hash(Content::Set(&Value::from("forged")));
            let forged = Arc::new(WriteProof { content: other, ..(**p).clone() });
            let mut fresh = Checker::default();
            // Another value, time, key or owner: refused, checked or not.
            for checker in [&mut checker, &mut fresh] {
                prop_assert!(checker.check(&key, &me, ts, &other, p.clone()).is_err());
                prop_assert!(checker.check(&key, &me, ts, &other, forged.clone()).is_err());
                prop_assert!(checker.check(&key, &me, ts - 1, &c, p.clone()).is_err());
                prop_assert!(checker.check(b"elsewhere", &me, ts, &c, p.clone()).is_err());
                prop_assert!(checker.check(&key, &writer(2).id(), ts, &c, p.clone()).is_err());
            }
        }
    }

    #[test]
    fn a_forger_cannot_reuse_a_signature_or_sign_for_another() {
        let (alice, mallory) = (writer(1), writer(2));
        let c = content_hash(Content::Field(&Value::from("f"), &Value::from(1)));
        let l = leaf(b"k", &alice.id(), 5, &c);
        // Mallory's own valid batch, claimed as alice's: wrong key.
        let p = sign_batch(&mallory, &[(l, c)]).remove(0);
        assert_eq!(
            Checker::default().check(b"k", &alice.id(), 5, &c, p.clone()),
            Err(ProofError::Signature(VerifyError::WrongKey))
        );
        // Alice's key with mallory's signature: bad signature.
        let mut root = SignedRoot { public_key: alice.public_key(), signature: p.root.signature };
        let forged = Arc::new(WriteProof { root: Arc::new(root), ..(*p).clone() });
        assert_eq!(
            Checker::default().check(b"k", &alice.id(), 5, &c, forged.clone()),
            Err(ProofError::Signature(VerifyError::BadSignature))
        );
        // Alice's real signature over another write's root.
        let real = sign_batch(&alice, &[(leaf(b"other", &alice.id(), 5, &c), c)]).remove(0);
        root = SignedRoot { public_key: alice.public_key(), signature: real.root.signature };
        let replayed = Arc::new(WriteProof { root: Arc::new(root), ..(*p).clone() });
        assert!(Checker::default().check(b"k", &alice.id(), 5, &c, replayed.clone()).is_err());
        // A root checked for alice is not mallory's to use (the leaf names
        // the writer, so the claimed write hashes to another root).
        let mut checker = Checker::default();
        checker.check(b"other", &alice.id(), 5, &c, real.clone()).unwrap();
        assert_eq!(
            checker.check(b"other", &mallory.id(), 5, &c, real.clone()),
            Err(ProofError::Signature(VerifyError::WrongKey))
        );
        // An index that does not fit its path.
        let bad = Arc::new(WriteProof { index: 1, ..(*real).clone() });
        assert_eq!(Checker::default().check(b"other", &alice.id(), 5, &c, bad.clone()), Err(ProofError::BadPath));
    }

    #[test]
    fn batches_checked_together_are_remembered_only_when_all_hold() {
        let w = writer(1);
        let me = w.id();
        let c = content_hash(Content::Set(&Value::from(1)));
        let batches: Vec<Arc<WriteProof>> =
            (0..4u64).map(|i| sign_batch(&w, &[(leaf(b"k", &me, i, &c), c)]).remove(0)).collect();
        let claims = |bs: &[Arc<WriteProof>]| -> Vec<(PeerId, TreeNode, Arc<WriteProof>)> {
            bs.iter().enumerate().map(|(i, p)| (me.clone(), leaf(b"k", &me, i as u64, &c), p.clone())).collect()
        };
        let mut checker = Checker::default();
        let all = claims(&batches);
        checker.check_roots(all.iter().map(|(o, l, p)| (o, *l, p)));
        assert_eq!(checker.roots.len(), 4, "all four checked at once");
        // One bad signature among them: none is remembered, and checking
        // each alone finds it.
        let mut bad = batches.clone();
        let mut sig = bad[2].root.signature;
        sig[0] ^= 1;
        bad[2] = Arc::new(WriteProof {
            root: Arc::new(SignedRoot { public_key: w.public_key(), signature: sig }),
            ..(*bad[2]).clone()
        });
        let mut checker = Checker::default();
        let some_bad = claims(&bad);
        checker.check_roots(some_bad.iter().map(|(o, l, p)| (o, *l, p)));
        assert!(checker.roots.is_empty());
        let verdicts: Vec<bool> =
            bad.iter().enumerate().map(|(i, p)| checker.check(b"k", &me, i as u64, &c, p.clone()).is_ok()).collect();
        assert_eq!(verdicts, [true, true, false, true]);
    }

    #[test]
    fn checked_proofs_keep_their_paths_in_one_shared_tree() {
        let w = writer(1);
        let me = w.id();
        for n in [2usize, 5, 70, 256] {
            let batch = writes(&me, n);
            let signed = sign_batch(&w, &batch);
            // As a receiver reads them: each with its own path, in any order.
            let mut order: Vec<usize> = (0..n).collect();
            order.reverse();
            order.rotate_left(n / 3);
            let mut checker = Checker::default();
            let mut kept = vec![None; n];
            for &i in &order {
                let path = PathNodes::Own(signed[i].path().into_vec().into_boxed_slice());
                let own = Arc::new(WriteProof { path, ..(*signed[i]).clone() });
                let c = content_hash(Content::Set(&Value::from(i)));
                kept[i] = Some(checker.check(format!("k{i}").as_bytes(), &me, 1_000 + i as u64, &c, own).unwrap());
            }
            let kept: Vec<Arc<WriteProof>> = kept.into_iter().map(Option::unwrap).collect();
            let tree = match &kept[0].path {
                PathNodes::Shared(t) => t.clone(),
                PathNodes::Own(_) => panic!("n = {n}: not shared"),
            };
            for (i, p) in kept.iter().enumerate() {
                assert!(matches!(&p.path, PathNodes::Shared(t) if Arc::ptr_eq(t, &tree)), "n = {n}, write {i}");
                assert_eq!(p.path(), signed[i].path(), "n = {n}, write {i}: the same path, read from the tree");
            }
        }
    }
}
