//! The mesh's own messages: handshake, peer exchange, routed-reply
//! requests and responses, link renegotiation.

use rmpv::Value;

use super::{bytes_of, peer_id_of, uint_list, Malformed};
use crate::addr::PeerAddr;
use crate::id::{MsgId, PeerId};
use crate::wire::{Frame, FrameBuilder, MsgType, Packet, SubFlag};

/// Why an rs2p peer closes a link on purpose ([`MeshMessage::Goodbye`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Farewell {
    /// The node is shutting down.
    Quit = 0,
    /// The node's application asked to drop this peer.
    Disconnect = 1,
    /// The conflict rule keeps another link to the same peer: this one
    /// goes, the peer stays.
    Replaced = 2,
}

/// The first message on every connection, sent by both ends (a whisper):
/// `[2, id, t, 0x05, node_id, protocol_id, [host, port], [methods]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The sender's node id.
    pub id: PeerId,
    /// The sender's protocol id, as raw bytes (compared, never parsed).
    pub protocol: Vec<u8>,
    /// Where the sender says it can be dialled (`None` if unparseable:
    /// py2p does not check it either).
    pub addr: Option<PeerAddr>,
    /// Compression methods the sender accepts, in its preference order.
    pub methods: Vec<u64>,
}

/// A message the mesh handles itself. Anything else (user broadcasts and
/// whispers, sync messages, applications' own sub-flags) is a payload for
/// the layers above: [`MeshMessage::decode`] answers `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq)]
pub enum MeshMessage {
    /// Whisper `0x05`: see [`Handshake`].
    Handshake(Handshake),
    /// Whisper `0x07`: `[[[host, port], id], ...]`, the sender's peers.
    /// Entries that do not parse are skipped.
    Peers(Vec<(PeerAddr, PeerId)>),
    /// Whisper `0x08` with `'*'` (str or bin): "send me your peers".
    PeerRequest,
    /// Broadcast `0x08`: `[request_id, wanted_id]`, "who is connected to
    /// `wanted`?" (flooded).
    RouteRequest {
        /// The asker's token, echoed in the response (py2p sends a str).
        request_id: Value,
        /// The node the asker wants to reach.
        wanted: PeerId,
    },
    /// Broadcast `0x0A`: `[request_id, [[host, port], id]]`, "`id` is at
    /// `addr`" (flooded back to the asker).
    RouteResponse {
        /// The token of the request answered.
        request_id: Value,
        /// The wanted node's advertised address.
        addr: PeerAddr,
        /// The wanted node.
        id: PeerId,
    },
    /// Renegotiate `0x01`: `[[methods]]`, the sender's new method list.
    Compression(Vec<u64>),
    /// Renegotiate `0x09`: "resend your last user message".
    Resend,
    /// Whisper `0x22` (rs2p, tree links): `[origin, ids, origin, ids,
    /// ...]`, per origin (a node id, bin) the ids (32 bytes each,
    /// concatenated in one bin) of its messages the sender has, announced
    /// instead of pushed.
    IHave(Vec<(PeerId, Vec<MsgId>)>),
    /// Whisper `0x23` (rs2p, tree links): `[origin, ids, ...]` as
    /// `IHave`: "push these origins' messages to me from now on, and send
    /// me these ones" (ids, possibly none).
    Graft(Vec<(PeerId, Vec<MsgId>)>),
    /// Whisper `0x25` (rs2p, tree links): `[origin, ids, ...]` as `IHave`:
    /// "send me these messages", leaving the tree as it is.
    Want(Vec<(PeerId, Vec<MsgId>)>),
    /// Whisper `0x24` (rs2p, tree links): `[origin, ...]`, "stop pushing
    /// these origins' messages to me".
    Prune(Vec<PeerId>),
    /// Whisper `0x26` (rs2p links): `[why]`, sent just before closing a
    /// link on purpose.
    Goodbye(Farewell),
    /// Whisper `0x27` (rs2p links that both advertise `AUTH`): `[0,
    /// nonce]`, "prove your id: sign this".
    AuthChallenge([u8; 32]),
    /// Whisper `0x27`: `[1, public_key, signature]`, the answer to a
    /// challenge (what is signed: [`crate::mesh::auth_context`]).
    AuthProof {
        /// The prover's Ed25519 public key; its hash is the id it claims.
        key: [u8; 32],
        /// Its signature.
        signature: [u8; 64],
    },
    /// Whisper `0x27`: `[2]`, "your proof is good: the link is up here"
    /// (so a `connect` returns only once both ends count the link).
    AuthOk,
    /// Broadcast `0x28` (to rs2p peers that advertise `SIGNED`): `[public_key,
    /// signature, ids]`, the sender's signature over the ids of broadcasts
    /// it originated (what is signed: [`crate::mesh::signatures_context`]).
    Signatures {
        /// The signer's Ed25519 public key; its hash is the header's sender.
        key: [u8; 32],
        /// Its signature.
        signature: [u8; 64],
        /// The ids of the broadcasts it vouches for, at most
        /// [`MAX_IDS_PER_MESSAGE`].
        ids: Vec<MsgId>,
    },
    /// Message type `0x03` (rs2p, tree links): "are you there?".
    Ping,
    /// Message type `0x04` (rs2p, tree links): "here I am".
    Pong,
}

/// Most ids in one announcement or graft message (all origins together),
/// and most origins in one prune.
pub const MAX_IDS_PER_MESSAGE: usize = 1024;

/// Reads `[origin, ids, origin, ids, ...]`.
fn id_groups_of(v: &[Value]) -> Result<Vec<(PeerId, Vec<MsgId>)>, Malformed> {
    if v.len() % 2 != 0 {
        return Err(Malformed("id groups must pair origins with ids"));
    }
    let mut total = 0;
    let mut groups = Vec::with_capacity(v.len() / 2);
    for pair in v.chunks_exact(2) {
        let origin = peer_id_of(&pair[0]).ok_or(Malformed("id group origin"))?;
        let b = pair[1].as_slice().ok_or(Malformed("message id list"))?;
        total += b.len() / 32;
        if b.len() % 32 != 0 || total > MAX_IDS_PER_MESSAGE {
            return Err(Malformed("message id list size"));
        }
        groups.push((origin, b.chunks_exact(32).map(|c| MsgId(c.try_into().unwrap_or([0; 32]))).collect()));
    }
    Ok(groups)
}

/// Message ids side by side, as one bin.
pub(crate) fn ids_bytes(ids: &[MsgId]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32 * ids.len());
    for id in ids {
        bytes.extend_from_slice(&id.0);
    }
    bytes
}

fn write_id_groups(groups: &[(PeerId, Vec<MsgId>)], start: impl FnOnce(usize) -> FrameBuilder) -> Frame {
    let mut b = start(2 * groups.len());
    for (origin, ids) in groups {
        b.bin(origin.as_bytes()).bin(&ids_bytes(ids));
    }
    b.finish()
}

/// Reads `[origin, ...]`.
fn origins_of(v: &[Value]) -> Result<Vec<PeerId>, Malformed> {
    if v.len() > MAX_IDS_PER_MESSAGE {
        return Err(Malformed("too many origins"));
    }
    v.iter().map(|o| peer_id_of(o).ok_or(Malformed("prune origin"))).collect()
}

fn values(p: &Packet) -> Result<Vec<Value>, Malformed> {
    p.values().map_err(|_| Malformed("undecodable packets"))
}

impl MeshMessage {
    /// Reads a mesh message; `Ok(None)` for a payload of the layers above.
    ///
    /// # Errors
    /// [`Malformed`] when the header names a mesh message (or a type py2p
    /// reserves) whose fields do not fit.
    pub fn decode(p: &Packet) -> Result<Option<MeshMessage>, Malformed> {
        let h = &p.header;
        let Some(kind) = h.kind() else { return Err(Malformed("unknown message type")) };
        let flag = SubFlag::from_u64(h.subflag);
        Ok(Some(match (kind, flag) {
            (MsgType::Whisper, Some(SubFlag::Handshake)) => MeshMessage::Handshake(decode_handshake(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Peers)) => MeshMessage::Peers(decode_peers(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Request)) => {
                // py2p's own request sends a str '*', which py2p itself fails
                // to match; both forms are a request.
                let v = values(p)?;
                if v.first().and_then(bytes_of) != Some(b"*") {
                    return Err(Malformed("peer request without '*'"));
                }
                MeshMessage::PeerRequest
            }
            (MsgType::Broadcast, Some(SubFlag::Request)) => {
                let mut v = values(p)?;
                if v.len() < 2 {
                    return Err(Malformed("route request field count"));
                }
                let wanted = peer_id_of(&v[1]).ok_or(Malformed("route request id"))?;
                MeshMessage::RouteRequest { request_id: v.swap_remove(0), wanted }
            }
            (MsgType::Broadcast, Some(SubFlag::Response)) => {
                let mut v = values(p)?;
                if v.len() < 2 || bytes_of(&v[0]).is_none() {
                    return Err(Malformed("route response request id"));
                }
                let route = v[1].as_array().filter(|a| a.len() == 2).ok_or(Malformed("route response route"))?;
                let addr = PeerAddr::from_value(&route[0]).ok_or(Malformed("route response address"))?;
                let id = peer_id_of(&route[1]).ok_or(Malformed("route response id"))?;
                MeshMessage::RouteResponse { request_id: v.swap_remove(0), addr, id }
            }
            (MsgType::Renegotiate, Some(SubFlag::Compression)) => {
                let v = values(p)?;
                MeshMessage::Compression(v.first().and_then(uint_list).ok_or(Malformed("compression renegotiation"))?)
            }
            (MsgType::Renegotiate, Some(SubFlag::Resend)) => MeshMessage::Resend,
            (MsgType::Renegotiate, _) => return Err(Malformed("unknown renegotiation")),
            (MsgType::Whisper, Some(SubFlag::IHave)) => MeshMessage::IHave(id_groups_of(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Graft)) => MeshMessage::Graft(id_groups_of(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Want)) => MeshMessage::Want(id_groups_of(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Prune)) => MeshMessage::Prune(origins_of(&values(p)?)?),
            (MsgType::Whisper, Some(SubFlag::Goodbye)) => {
                let v = values(p)?;
                MeshMessage::Goodbye(match v.first().and_then(Value::as_u64) {
                    Some(0) => Farewell::Quit,
                    Some(1) => Farewell::Disconnect,
                    Some(2) => Farewell::Replaced,
                    _ => return Err(Malformed("goodbye reason")),
                })
            }
            (MsgType::Whisper, Some(SubFlag::Auth)) => {
                let v = values(p)?;
                let fixed = |i: usize| bytes_of(v.get(i)?);
                match v.first().and_then(Value::as_u64) {
                    Some(0) if v.len() == 2 => MeshMessage::AuthChallenge(
                        fixed(1).and_then(|b| b.try_into().ok()).ok_or(Malformed("auth challenge"))?,
                    ),
                    Some(1) if v.len() == 3 => MeshMessage::AuthProof {
                        key: fixed(1).and_then(|b| b.try_into().ok()).ok_or(Malformed("auth key"))?,
                        signature: fixed(2).and_then(|b| b.try_into().ok()).ok_or(Malformed("auth signature"))?,
                    },
                    Some(2) if v.len() == 1 => MeshMessage::AuthOk,
                    _ => return Err(Malformed("auth message")),
                }
            }
            (MsgType::Broadcast, Some(SubFlag::Signatures)) => {
                let v = values(p)?;
                let fixed = |i: usize| bytes_of(v.get(i)?);
                let ids = fixed(2).ok_or(Malformed("signed ids"))?;
                if v.len() != 3 || ids.len() % 32 != 0 || ids.len() / 32 > MAX_IDS_PER_MESSAGE {
                    return Err(Malformed("signature message shape"));
                }
                MeshMessage::Signatures {
                    key: fixed(0).and_then(|b| b.try_into().ok()).ok_or(Malformed("signer key"))?,
                    signature: fixed(1).and_then(|b| b.try_into().ok()).ok_or(Malformed("signature"))?,
                    ids: ids.chunks_exact(32).map(|c| MsgId(c.try_into().unwrap_or([0; 32]))).collect(),
                }
            }
            (MsgType::Ping, _) => MeshMessage::Ping,
            (MsgType::Pong, _) => MeshMessage::Pong,
            (MsgType::Broadcast | MsgType::Whisper, _) => return Ok(None),
        }))
    }

    /// The message's type and sub-flag.
    pub fn kind(&self) -> (MsgType, SubFlag) {
        match self {
            MeshMessage::Handshake(_) => (MsgType::Whisper, SubFlag::Handshake),
            MeshMessage::Peers(_) => (MsgType::Whisper, SubFlag::Peers),
            MeshMessage::PeerRequest => (MsgType::Whisper, SubFlag::Request),
            MeshMessage::RouteRequest { .. } => (MsgType::Broadcast, SubFlag::Request),
            MeshMessage::RouteResponse { .. } => (MsgType::Broadcast, SubFlag::Response),
            MeshMessage::Compression(_) => (MsgType::Renegotiate, SubFlag::Compression),
            MeshMessage::Resend => (MsgType::Renegotiate, SubFlag::Resend),
            MeshMessage::IHave(_) => (MsgType::Whisper, SubFlag::IHave),
            MeshMessage::Graft(_) => (MsgType::Whisper, SubFlag::Graft),
            MeshMessage::Prune(_) => (MsgType::Whisper, SubFlag::Prune),
            MeshMessage::Want(_) => (MsgType::Whisper, SubFlag::Want),
            MeshMessage::Goodbye(_) => (MsgType::Whisper, SubFlag::Goodbye),
            MeshMessage::AuthChallenge(_) | MeshMessage::AuthProof { .. } | MeshMessage::AuthOk => {
                (MsgType::Whisper, SubFlag::Auth)
            }
            MeshMessage::Signatures { .. } => (MsgType::Broadcast, SubFlag::Signatures),
            MeshMessage::Ping => (MsgType::Ping, SubFlag::Ping),
            MeshMessage::Pong => (MsgType::Pong, SubFlag::Pong),
        }
    }

    /// The message as a frame from `sender` at `time` (UNIX seconds).
    pub fn encode(&self, sender: &PeerId, time: u64) -> Frame {
        let (t, f) = self.kind();
        let start = |n| FrameBuilder::new(t, sender, time, f, n);
        match self {
            MeshMessage::Handshake(hs) => {
                let mut b = start(4);
                b.bin(hs.id.as_bytes()).bin(&hs.protocol);
                match &hs.addr {
                    Some(a) => b.value(&a.to_value()),
                    None => b.value(&Value::Nil),
                };
                b.array_len(hs.methods.len());
                for &m in &hs.methods {
                    b.uint(m);
                }
                b.finish()
            }
            MeshMessage::Peers(list) => {
                let mut b = start(1);
                b.array_len(list.len());
                for (addr, id) in list {
                    b.array_len(2).value(&addr.to_value()).bin(id.as_bytes());
                }
                b.finish()
            }
            // As bin: py2p compares it with b'*' and only answers that form.
            MeshMessage::PeerRequest => {
                let mut b = start(1);
                b.bin(b"*");
                b.finish()
            }
            MeshMessage::RouteRequest { request_id, wanted } => {
                let mut b = start(2);
                b.value(request_id).bin(wanted.as_bytes());
                b.finish()
            }
            MeshMessage::RouteResponse { request_id, addr, id } => {
                let mut b = start(2);
                b.value(request_id).array_len(2).value(&addr.to_value()).bin(id.as_bytes());
                b.finish()
            }
            MeshMessage::Compression(methods) => {
                let mut b = start(1);
                b.array_len(methods.len());
                for &m in methods {
                    b.uint(m);
                }
                b.finish()
            }
            MeshMessage::Resend | MeshMessage::Ping | MeshMessage::Pong => start(0).finish(),
            MeshMessage::IHave(groups) | MeshMessage::Graft(groups) | MeshMessage::Want(groups) => {
                write_id_groups(groups, start)
            }
            MeshMessage::Goodbye(why) => {
                let mut b = start(1);
                b.uint(*why as u64);
                b.finish()
            }
            MeshMessage::AuthChallenge(nonce) => {
                let mut b = start(2);
                b.uint(0).bin(nonce);
                b.finish()
            }
            MeshMessage::AuthProof { key, signature } => {
                let mut b = start(3);
                b.uint(1).bin(key).bin(signature);
                b.finish()
            }
            MeshMessage::AuthOk => {
                let mut b = start(1);
                b.uint(2);
                b.finish()
            }
            MeshMessage::Signatures { key, signature, ids } => {
                let mut b = start(3);
                b.bin(key).bin(signature).bin(&ids_bytes(ids));
                b.finish()
            }
            MeshMessage::Prune(origins) => {
                let mut b = start(origins.len());
                for o in origins {
                    b.bin(o.as_bytes());
                }
                b.finish()
            }
        }
    }
}

fn decode_handshake(v: &[Value]) -> Result<Handshake, Malformed> {
    if v.len() != 4 {
        return Err(Malformed("handshake field count"));
    }
    let (Some(id), Some(protocol)) = (bytes_of(&v[0]), bytes_of(&v[1])) else {
        return Err(Malformed("handshake id fields must be bytes"));
    };
    let id = PeerId::from_wire(id).ok_or(Malformed("handshake id length"))?;
    let methods = uint_list(&v[3]).ok_or(Malformed("handshake compression list"))?;
    Ok(Handshake { id, protocol: protocol.to_vec(), addr: PeerAddr::from_value(&v[2]), methods })
}

fn decode_peers(v: &[Value]) -> Result<Vec<(PeerAddr, PeerId)>, Malformed> {
    let list = v.first().and_then(Value::as_array).ok_or(Malformed("peer list"))?;
    Ok(list
        .iter()
        .filter_map(|e| {
            let pair = e.as_array().filter(|p| p.len() == 2)?;
            Some((PeerAddr::from_value(&pair[0])?, peer_id_of(&pair[1])?))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Limits;

    fn round_trip(m: MeshMessage) {
        let sender = PeerId::random(b"sender");
        let f = m.encode(&sender, 1_700_000_000);
        let p = Packet::parse(f, &Limits::default()).unwrap();
        assert_eq!(p.header.sender, sender);
        assert_eq!(MeshMessage::decode(&p), Ok(Some(m)));
    }

    #[test]
    fn every_mesh_message_round_trips() {
        let id = PeerId::random(b"x");
        let addr = PeerAddr::new("127.0.0.1", 4444);
        round_trip(MeshMessage::Handshake(Handshake {
            id: id.clone(),
            protocol: b"proto".to_vec(),
            addr: Some(addr.clone()),
            methods: vec![0x13, 0x2f],
        }));
        round_trip(MeshMessage::Peers(vec![(addr.clone(), id.clone())]));
        round_trip(MeshMessage::PeerRequest);
        round_trip(MeshMessage::RouteRequest { request_id: Value::from("r1"), wanted: id.clone() });
        round_trip(MeshMessage::RouteResponse { request_id: Value::from("r1"), addr, id: id.clone() });
        round_trip(MeshMessage::Compression(vec![0x13, 0x11]));
        round_trip(MeshMessage::Resend);
        let other = PeerId::random(b"o");
        round_trip(MeshMessage::IHave(vec![
            (id.clone(), vec![MsgId([1; 32]), MsgId([2; 32])]),
            (other.clone(), vec![MsgId([4; 32])]),
        ]));
        round_trip(MeshMessage::Graft(vec![(id.clone(), vec![])]));
        round_trip(MeshMessage::Graft(vec![(other.clone(), vec![MsgId([3; 32])])]));
        round_trip(MeshMessage::Want(vec![(other.clone(), vec![MsgId([5; 32]), MsgId([6; 32])])]));
        round_trip(MeshMessage::Prune(vec![id.clone(), other]));
        round_trip(MeshMessage::Goodbye(Farewell::Quit));
        round_trip(MeshMessage::Goodbye(Farewell::Disconnect));
        round_trip(MeshMessage::Goodbye(Farewell::Replaced));
        round_trip(MeshMessage::AuthChallenge([7; 32]));
        round_trip(MeshMessage::AuthProof { key: [8; 32], signature: [9; 64] });
        round_trip(MeshMessage::AuthOk);
        round_trip(MeshMessage::Signatures {
            key: [1; 32],
            signature: [2; 64],
            ids: vec![MsgId([3; 32]), MsgId([4; 32])],
        });
        round_trip(MeshMessage::Ping);
        round_trip(MeshMessage::Pong);
    }

    #[test]
    fn payloads_are_not_mesh_messages_and_junk_is_malformed() {
        let s = PeerId::random(b"s");
        let parse = |t, f: u64, v: &[Value]| Packet::parse(Frame::build(t, &s, 1, f, v), &Limits::default()).unwrap();
        let user = parse(MsgType::Broadcast, 0, &[Value::from("hi")]);
        assert_eq!(MeshMessage::decode(&user), Ok(None));
        let store = parse(MsgType::Broadcast, SubFlag::Store.code(), &[]);
        assert_eq!(MeshMessage::decode(&store), Ok(None));
        let short = parse(MsgType::Whisper, SubFlag::Handshake.code(), &[Value::from(1)]);
        assert_eq!(MeshMessage::decode(&short), Err(Malformed("handshake field count")));
        let no_star = parse(MsgType::Whisper, SubFlag::Request.code(), &[Value::from("?")]);
        assert!(MeshMessage::decode(&no_star).is_err());
        let str_star = parse(MsgType::Whisper, SubFlag::Request.code(), &[Value::from("*")]);
        assert_eq!(MeshMessage::decode(&str_star), Ok(Some(MeshMessage::PeerRequest)));
        let origin = Value::Binary(s.as_bytes().to_vec());
        let odd = parse(MsgType::Whisper, SubFlag::IHave.code(), &[origin.clone(), Value::Binary(vec![0; 33])]);
        assert_eq!(MeshMessage::decode(&odd), Err(Malformed("message id list size")));
        let unpaired = parse(MsgType::Whisper, SubFlag::Graft.code(), std::slice::from_ref(&origin));
        assert!(MeshMessage::decode(&unpaired).is_err());
        let many = vec![origin.clone(), Value::Binary(vec![0; 32 * 600]), origin, Value::Binary(vec![0; 32 * 600])];
        let too_many = parse(MsgType::Whisper, SubFlag::IHave.code(), &many);
        assert_eq!(MeshMessage::decode(&too_many), Err(Malformed("message id list size")));
        // A peer list keeps its good entries and skips the rest.
        let list = Value::Array(vec![
            Value::from(3),
            Value::Array(vec![PeerAddr::new("h", 1).to_value(), Value::Binary(b"id".to_vec())]),
            Value::Array(vec![PeerAddr::new("h", 2).to_value(), Value::Binary(vec![b'x'; 500])]),
        ]);
        let peers = parse(MsgType::Whisper, SubFlag::Peers.code(), &[list]);
        assert_eq!(
            MeshMessage::decode(&peers),
            Ok(Some(MeshMessage::Peers(vec![(PeerAddr::new("h", 1), PeerId::from_bytes(b"id".to_vec()))])))
        );
    }
}
