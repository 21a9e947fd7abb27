//! Sync tests: the lease rule, merge order independence, and a deterministic
//! simulation of many nodes with loss, reordering and partitions.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sim::Sim;
use crate::wire::{MsgType, SubFlag};

fn pid(s: &str) -> PeerId {
    PeerId::from_bytes(s.as_bytes().to_vec())
}

fn at(secs: u64) -> Now {
    Now { mono_ms: secs * 1000, unix_ms: secs * 1000 }
}

/// Local writes, as commands make them.
impl Replica {
    fn set(&mut self, now: Now, key: Bytes, value: Value) -> Result<(), WriteError> {
        self.on_command(now, Command::Set { key, value }).map(drop)
    }

    fn delete(&mut self, now: Now, key: Bytes) -> Result<(), WriteError> {
        self.on_command(now, Command::Delete { key }).map(drop)
    }

    fn apply_delta(&mut self, now: Now, key: Bytes, delta: Vec<(Value, Value)>) -> Result<(), WriteError> {
        self.on_command(now, Command::Delta { key, delta }).map(drop)
    }
}

fn deliver(r: &mut Replica, now: Now, conn: ConnId, packet: &Packet) {
    r.handle(now, Input::Message { conn, packet: packet.clone() });
}

fn replica(me: &str, leasing: bool) -> Replica {
    Replica::new(pid(me), Config { leasing, ..Config::default() }, 1)
}

/// A py2p-style store broadcast (no rs2p version field) from `owner` at
/// `secs`.
fn py2p_store(owner: &str, secs: u64, key: &str, value: Value) -> Packet {
    let f = Frame::build(
        MsgType::Broadcast,
        &pid(owner),
        secs,
        SubFlag::Store,
        &[Value::Binary(key.as_bytes().to_vec()), value],
    );
    Packet::parse(f, &Default::default()).unwrap()
}

fn py2p_delta(owner: &str, secs: u64, key: &str, delta: Vec<(Value, Value)>) -> Packet {
    let f = Frame::build(
        MsgType::Broadcast,
        &pid(owner),
        secs,
        SubFlag::Delta,
        &[Value::Binary(key.as_bytes().to_vec()), Value::Map(delta)],
    );
    Packet::parse(f, &Default::default()).unwrap()
}

#[test]
fn py2p_lease_rule_every_branch() {
    // The stored entry: owner "M", written at t=10_000 s. Now = 10_100 s.
    let now = at(10_100);
    // (leasing, new owner, new ts, delta, accepted, branch)
    let cases: &[(bool, &str, u64, bool, bool, &str)] = &[
        (true, "M", 10_050, false, true, "same owner"),
        (true, "M", 9_000, false, true, "same owner, even older"),
        (false, "Z", 9_000, true, true, "delta without leasing"),
        (true, "Z", 10_050, true, false, "delta with leasing, lease held"),
        (true, "A", 10_000, false, true, "equal ts, stored owner greater"),
        (true, "Z", 10_000, false, false, "equal ts, stored owner smaller"),
        (false, "Z", 10_050, false, true, "newer without leasing"),
        (true, "Z", 10_050, false, false, "newer with leasing, lease held"),
        (false, "Z", 9_999, false, false, "older without leasing"),
    ];
    for &(leasing, owner, ts, delta, accepted, branch) in cases {
        let mut r = replica("me", leasing);
        deliver(&mut r, now, ConnId(1), &py2p_store("M", 10_000, "k", Value::from("stored")));
        assert_eq!(r.get(b"k"), Some(Value::from("stored")));
        assert_eq!(r.py2p_accepts(now, b"k", &pid(owner), ts, delta), accepted, "{branch}");
    }
    // No entry: always accepted. Lease expired (older than an hour): accepted.
    let r = replica("me", true);
    assert!(r.py2p_accepts(now, b"k", &pid("Z"), 1, false), "no entry");
    let mut r = replica("me", true);
    deliver(&mut r, now, ConnId(1), &py2p_store("M", 10_000, "k", Value::from("stored")));
    assert!(r.py2p_accepts(at(13_601), b"k", &pid("Z"), 13_601, false), "lease lapsed");
    assert!(!r.py2p_accepts(at(13_600), b"k", &pid("Z"), 13_600, false), "lease still held at exactly an hour");
}

#[test]
fn py2p_writes_are_gated_and_applied() {
    let now = at(10_100);
    let mut r = replica("me", true);
    deliver(&mut r, now, ConnId(1), &py2p_store("M", 10_000, "k", Value::from("first")));
    deliver(&mut r, now, ConnId(1), &py2p_store("Z", 10_050, "k", Value::from("refused")));
    assert_eq!(r.get(b"k"), Some(Value::from("first")));
    assert_eq!(r.meta(b"k"), Some((pid("M"), 10_000)));
    deliver(&mut r, now, ConnId(1), &py2p_store("M", 10_060, "k", Value::Nil));
    assert_eq!(r.get(b"k"), None, "owner's delete");
    assert!(r.entry(b"k").unwrap().is_tombstone());
    // Without leasing, deltas from anyone merge.
    let mut r = replica("me", false);
    for (i, who) in ["A", "B", "C"].iter().enumerate() {
        deliver(
            &mut r,
            now,
            ConnId(1),
            &py2p_delta(who, 10_000 + i as u64, "d", vec![(Value::from(*who), Value::from(i))]),
        );
    }
    let v = r.get(b"d").unwrap();
    assert_eq!(v.as_map().unwrap().len(), 3);
}

#[test]
fn local_writes_are_judged_in_milliseconds_not_by_py2ps_same_second_tie() {
    // The holder wrote at second 100. py2p would let a node with a smaller
    // id take the key in that same second (its versions are seconds);
    // rs2p's are milliseconds, so half a second later the lease holds for
    // every id, as every rs2p replica will judge it.
    for me in ["aaa", "zzz"] {
        let mut r = replica(me, true);
        deliver(&mut r, at(100), ConnId(1), &py2p_store("mmm", 100, "k", Value::from("theirs")));
        let same = Now { mono_ms: 100_500, unix_ms: 100_500 };
        assert!(
            matches!(r.set(same, Bytes::from_static(b"k"), Value::from("mine")), Err(WriteError::Leased { .. })),
            "{me}"
        );
    }
}

#[test]
fn a_rivals_store_with_the_rs2p_version_field_is_bound_by_the_lease() {
    // The hole of issue #13: a store carrying `[ts_ms]` used to skip the
    // lease. Owner M holds k; Z, under its own id, writes with and without
    // the field, before and after M's; M keeps the key at every replica.
    let frames = [
        rs2p_store("M", 10_000_000, "k", "owner's"),
        rs2p_store("Z", 10_050_000, "k", "taken (ts_ms)"),
        py2p_store("Z", 10_060, "k", Value::from("taken (py2p)")),
        rs2p_store("M", 10_100_000, "k", "owner's again"),
    ];
    for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 2, 3, 0], [2, 0, 3, 1]] {
        let mut r = replica("me", true);
        for i in order {
            deliver(&mut r, at(10_200), ConnId(1), &frames[i]);
        }
        assert_eq!(r.get(b"k"), Some(Value::from("owner's again")), "{order:?}");
        assert_eq!(r.meta(b"k").unwrap().0, pid("M"));
    }
    // A delete by the rival, too.
    let mut r = replica("me", true);
    deliver(&mut r, at(10_200), ConnId(1), &frames[0]);
    deliver(&mut r, at(10_200), ConnId(1), &rs2p_delete("Z", 10_010_000, "k"));
    assert_eq!(r.get(b"k"), Some(Value::from("owner's")));
    // Without leasing, the later write wins as before.
    let mut r = replica("me", false);
    deliver(&mut r, at(10_200), ConnId(1), &frames[0]);
    deliver(&mut r, at(10_200), ConnId(1), &frames[1]);
    assert_eq!(r.get(b"k"), Some(Value::from("taken (ts_ms)")));
}

/// A store broadcast as rs2p sends it: with `[ts_ms]`.
fn rs2p_store(owner: &str, ts_ms: u64, key: &str, value: &str) -> Packet {
    rs2p_write(owner, ts_ms, key, Value::from(value))
}

fn rs2p_delete(owner: &str, ts_ms: u64, key: &str) -> Packet {
    rs2p_write(owner, ts_ms, key, Value::Nil)
}

fn rs2p_write(owner: &str, ts_ms: u64, key: &str, value: Value) -> Packet {
    let f = SyncMessage::encode_store(&pid(owner), ts_ms / 1000, key.as_bytes(), &value, Some(ts_ms), &[]);
    Packet::parse(f, &Default::default()).unwrap()
}

#[test]
fn local_lease_blocks_and_frees() {
    let mut r = replica("me", true);
    deliver(&mut r, at(100), ConnId(1), &py2p_store("other", 100, "k", Value::from("theirs")));
    match r.set(at(200), Bytes::from_static(b"k"), Value::from("mine")) {
        Err(WriteError::Leased { owner, until }) => {
            assert_eq!(owner, pid("other"));
            assert_eq!(until, 100 + 3600);
        }
        other => panic!("expected a lease refusal, got {other:?}"),
    }
    assert!(matches!(r.delete(at(200), Bytes::from_static(b"k")), Err(WriteError::Leased { .. })));
    assert!(matches!(
        r.apply_delta(at(200), Bytes::from_static(b"k"), vec![]),
        Err(WriteError::NotAMap) | Err(WriteError::Leased { .. })
    ));
    // After the hour, the key is free.
    r.set(at(100 + 3600), Bytes::from_static(b"k"), Value::from("mine")).unwrap();
    assert_eq!(r.get(b"k"), Some(Value::from("mine")));
    assert_eq!(r.meta(b"k").unwrap().0, pid("me"));
    // Our own key: always writable; without leasing anyone's is.
    r.set(at(100 + 3601), Bytes::from_static(b"k"), Value::from("again")).unwrap();
    let mut free = replica("me", false);
    deliver(&mut free, at(100), ConnId(1), &py2p_store("other", 100, "k", Value::from("theirs")));
    free.set(at(101), Bytes::from_static(b"k"), Value::from("mine")).unwrap();
    // A deleted key holds no lease.
    let mut r = replica("me", true);
    deliver(&mut r, at(100), ConnId(1), &py2p_store("other", 100, "k", Value::from("x")));
    deliver(&mut r, at(100), ConnId(1), &py2p_store("other", 101, "k", Value::Nil));
    r.set(at(102), Bytes::from_static(b"k"), Value::from("mine")).unwrap();
}

#[test]
fn local_api_errors() {
    let mut r = replica("me", true);
    assert_eq!(r.delete(at(1), Bytes::from_static(b"nope")), Err(WriteError::NotFound));
    r.set(at(1), Bytes::from_static(b"s"), Value::from("text")).unwrap();
    assert_eq!(r.apply_delta(at(2), Bytes::from_static(b"s"), vec![]), Err(WriteError::NotAMap));
    r.apply_delta(at(2), Bytes::from_static(b"m"), vec![(Value::from("a"), Value::from(1))]).unwrap();
    assert_eq!(r.len(), 2);
    // Two local writes in the same millisecond still order.
    r.set(at(3), Bytes::from_static(b"s"), Value::from("one")).unwrap();
    r.set(at(3), Bytes::from_static(b"s"), Value::from("two")).unwrap();
    assert_eq!(r.get(b"s"), Some(Value::from("two")));
    let events: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    let updates = events.iter().filter(|a| matches!(a, Output::Event(Event::Update { .. }))).count();
    assert_eq!(updates, 4);
}

#[test]
fn change_events_only_while_reported_and_counts_stay_right() {
    let mut r = replica("me", false);
    r.set_report_changes(false);
    r.set(at(1), Bytes::from_static(b"a"), Value::from(1)).unwrap();
    r.set(at(2), Bytes::from_static(b"b"), Value::from(2)).unwrap();
    r.delete(at(3), Bytes::from_static(b"a")).unwrap();
    assert_eq!(r.len(), 1, "liveness is tracked without events");
    let quiet: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(quiet.iter().all(|a| !matches!(a, Output::Event(_))), "{quiet:?}");
    r.set_report_changes(true);
    r.set(at(4), Bytes::from_static(b"a"), Value::from(3)).unwrap();
    r.delete(at(5), Bytes::from_static(b"b")).unwrap();
    assert_eq!(r.len(), 1);
    let events: Vec<Event> = std::iter::from_fn(|| r.poll_output())
        .filter_map(|a| match a {
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&events[..], [Event::Update { key: a, .. }, Event::Delete { key: b }] if &a[..] == b"a" && &b[..] == b"b")
    );
}

// ----- merge order independence -------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Set(u8, u64, u8, Option<u8>),
    Delta(u8, u64, u8, u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u64..20, 0u8..3, proptest::option::of(0u8..4)).prop_map(|(k, t, o, v)| Op::Set(k, t, o, v)),
        (0u8..3, 0u64..20, 0u8..3, 0u8..3, 0u8..4).prop_map(|(k, t, o, f, v)| Op::Delta(k, t, o, f, v)),
    ]
}

fn frame_of(op: &Op) -> Packet {
    let owners = ["A", "B", "C"];
    let (sub, key, ts, owner, payload) = match op {
        Op::Set(k, t, o, v) => (SubFlag::Store, *k, *t, *o, v.map(Value::from).unwrap_or(Value::Nil)),
        Op::Delta(k, t, o, f, v) => {
            (SubFlag::Delta, *k, *t, *o, Value::Map(vec![(Value::from(format!("f{f}")), Value::from(*v))]))
        }
    };
    let f = Frame::build(
        MsgType::Broadcast,
        &pid(owners[owner as usize]),
        1_000 + ts / 1000,
        sub,
        &[Value::Binary(vec![b'k', key]), payload, Value::Array(vec![Value::from(1_000_000 + ts)])],
    );
    Packet::parse(f, &Default::default()).unwrap()
}

fn snapshot(r: &Replica) -> Vec<(Bytes, Entry)> {
    // Sorted: each replica's map has its own hash order.
    let mut v: Vec<(Bytes, Entry)> = r.entries.iter().map(|(k, s)| (k.clone(), s.entry.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_delivery_order_gives_the_same_replica(
        ops in proptest::collection::vec(op(), 1..24),
        seed in any::<u64>(),
        leasing in any::<bool>(),
    ) {
        // Writes 0-19 ms apart, a 5 ms lease: holdings start, join, expire
        // and refuse each other.
        let now = at(2_000);
        let replica = |me: &str, leasing: bool| {
            Replica::new(pid(me), Config { leasing, lease_ms: 5, ..Config::default() }, 1)
        };
        let mut a = replica("me", leasing);
        for o in &ops {
            deliver(&mut a, now, ConnId(1), &frame_of(o));
        }
        let mut shuffled = ops.clone();
        let mut rng = StdRng::seed_from_u64(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.random_range(0..=i));
        }
        // Deliver some twice, too: duplicates must not matter.
        let mut b = replica("me", leasing);
        for o in shuffled.iter().chain(ops.iter().take(3)) {
            deliver(&mut b, now, ConnId(1), &frame_of(o));
        }
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        prop_assert_eq!(a.state_digest(), b.state_digest());
        prop_assert_eq!(a.leaf.clone(), b.leaf.clone());
    }

    #[test]
    fn entry_merge_is_commutative_associative_idempotent(
        ops in proptest::collection::vec(op(), 1..12),
        split in 0usize..12,
        leasing in any::<bool>(),
    ) {
        // Build three partial replicas and merge them in different orders.
        let now = at(2_000);
        let lease = 5;
        let parts: Vec<Replica> = (0..3).map(|p| {
            let mut r = Replica::new(pid("me"), Config { leasing, lease_ms: lease, ..Config::default() }, 1);
            for (i, o) in ops.iter().enumerate() {
                if (i + split) % 3 == p { deliver(&mut r, now, ConnId(1), &frame_of(o)); }
            }
            r
        }).collect();
        let merge_all = |order: [usize; 3]| {
            let mut out: BTreeMap<Bytes, Entry> = BTreeMap::new();
            for &p in &order {
                for (k, e) in snapshot(&parts[p]) {
                    match out.get_mut(&k) {
                        Some(cur) if leasing => { cur.merge_leased(&e, lease); cur.merge_leased(&e, lease); }
                        Some(cur) => { cur.merge(&e); cur.merge(&e); }
                        None => { out.insert(k, e); }
                    }
                }
            }
            out
        };
        let x = merge_all([0, 1, 2]);
        prop_assert_eq!(&x, &merge_all([2, 1, 0]));
        prop_assert_eq!(&x, &merge_all([1, 2, 0]));
    }
}

// ----- simulation --------------------------------------------------------

/// A write as the ledger keeps it.
#[derive(Clone)]
enum Payload {
    Set(Value),
    Delta(Vec<(Value, Value)>),
}

/// What a simulated run must end with, computed from every acknowledged
/// write by a model written apart from the replica's code: without leases,
/// every write folded by version order; with leases, the lease rule
/// (`lease.rs`) applied to the whole history at once.
#[derive(Default)]
struct Ledger {
    writes: BTreeMap<Bytes, Vec<(Version, Payload)>>,
    acked: usize,
}

impl Ledger {
    fn record(&mut self, key: &Bytes, replica: &Replica, payload: Payload) {
        // A local write's version is the newest of its key (the hybrid
        // clock is ahead of every version the writer had seen).
        let version = replica.entry(key).expect("written").latest().clone();
        self.writes.entry(key.clone()).or_default().push((version, payload));
        self.acked += 1;
    }

    fn expected(&self, leasing: bool, lease_ms: u64) -> BTreeMap<Bytes, Entry> {
        self.writes.iter().map(|(k, w)| (k.clone(), model_value(w, leasing, lease_ms))).collect()
    }
}

fn fold(writes: &[&(Version, Payload)]) -> Entry {
    let mut e = Entry::new(Version::new(0, PeerId::from_bytes(Bytes::new())), Value::Nil);
    for (v, p) in writes {
        match p {
            Payload::Set(x) => e.apply_set(v, x),
            Payload::Delta(d) => e.apply_delta(v, d),
        };
    }
    e
}

/// The value of a key from its whole write history.
fn model_value(writes: &[(Version, Payload)], leasing: bool, lease_ms: u64) -> Entry {
    if !leasing {
        return fold(&writes.iter().collect::<Vec<_>>());
    }
    // Each owner's writes, in time order, cut wherever two are a lease or
    // more apart: the holdings.
    let mut by_owner: BTreeMap<&[u8], Vec<&(Version, Payload)>> = BTreeMap::new();
    for w in writes {
        by_owner.entry(w.0.owner.as_bytes()).or_default().push(w);
    }
    let mut holdings: Vec<(u64, &[u8], u64, Entry)> = Vec::new(); // (start, owner, end, writes)
    for (owner, mut ws) in by_owner {
        ws.sort_by_key(|w| w.0.ts_ms);
        let mut run: Vec<&(Version, Payload)> = Vec::new();
        for w in ws {
            if let Some(last) = run.last() {
                if w.0.ts_ms - last.0.ts_ms >= lease_ms {
                    holdings.push((run[0].0.ts_ms, owner, last.0.ts_ms, fold(&run)));
                    run.clear();
                }
            }
            run.push(w);
        }
        holdings.push((run[0].0.ts_ms, owner, run.last().unwrap().0.ts_ms, fold(&run)));
    }
    holdings.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut free_from = 0;
    let mut granted: Vec<&Entry> = Vec::new();
    for (start, _, end, e) in &holdings {
        if *start >= free_from {
            free_from = if e.is_tombstone() { *end } else { end + lease_ms };
            granted.push(e);
        }
    }
    let mut value = granted[0].clone();
    for e in &granted[1..] {
        value.merge(e);
    }
    value
}

/// Whether every write the entry keeps (its holdings' too) has its proof,
/// and every holding that starts before it ends the proof of its start.
fn proven(e: &Entry) -> bool {
    let register = |e: &Entry| {
        (e.base_version.ts_ms == 0 || e.base_version.proof.is_some())
            && e.fields.iter().all(|f| f.version.proof.is_some())
    };
    register(e)
        && match e.holdings.as_deref() {
            None => true,
            Some(Holdings::One { start_ms, end_ms, start, .. }) => start_ms == end_ms || start.is_some(),
            Some(Holdings::Many(hs)) => {
                hs.iter().all(|h| register(&h.writes) && (h.start_ms == h.end_ms || h.start.is_some()))
            }
        }
}

/// The part of an entry a reader sees (holdings aside).
fn visible(e: &Entry) -> (Version, Value, Vec<entry::Field>) {
    (e.base_version.clone(), e.base.clone(), e.fields.clone())
}

fn run_seed(seed: u64, n: usize, leasing: bool, keyed: bool) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    // A short lease, so that leases run out and are taken over within a
    // run, and partitions make rival holders.
    let lease_ms = 400;
    let cfg = Config { leasing, lease_ms, anti_entropy_interval_ms: 1_000, ..Config::default() };
    let mut sim = if keyed { Sim::with_keyed_sync(n, cfg) } else { Sim::with_sync(n, cfg) };
    sim.shuffle(seed ^ 0x9e37);
    for i in 1..n {
        sim.connect(i, rng.random_range(0..i));
    }
    sim.run();
    sim.advance(3_000);
    let keys: Vec<Bytes> = (0..6).map(|k| Bytes::from(format!("key{k}"))).collect();
    let mut ledger = Ledger::default();
    let mut refused = 0;
    for round in 0..40 {
        let node = rng.random_range(0..n);
        let key = keys[rng.random_range(0..keys.len())].clone();
        let (command, payload) = match rng.random_range(0..10) {
            0..=5 => {
                let v = Value::from(format!("v{round}-{node}"));
                (Command::Set { key: key.clone(), value: v.clone() }, Payload::Set(v))
            }
            6..=7 => (Command::Delete { key: key.clone() }, Payload::Set(Value::Nil)),
            _ => {
                let d = vec![(Value::from(format!("f{}", round % 3)), Value::from(round))];
                (Command::Delta { key: key.clone(), delta: d.clone() }, Payload::Delta(d))
            }
        };
        match sim.command(node, command).expect("writes are answered at once") {
            Ok(_) => ledger.record(&key, sim.nodes[node].replica().unwrap(), payload),
            Err(_) => refused += 1,
        }
        // Deliver part of what is in flight, so writes overlap.
        let steps = rng.random_range(0..40);
        sim.run_steps(steps);
        match rng.random_range(0..20) {
            0 => {
                // Loss: a connection dies with its frames in flight.
                let links = sim.link_ids();
                if !links.is_empty() {
                    sim.break_link(links[rng.random_range(0..links.len())]);
                }
            }
            1 => {
                let side: Vec<u8> = (0..n).map(|_| rng.random_range(0..2)).collect();
                sim.partition(side);
            }
            2 => sim.heal(),
            3 => {
                sim.now = sim.now.plus_ms(rng.random_range(0..1500));
                sim.tick_all();
            }
            _ => {}
        }
        sim.now = sim.now.plus_ms(rng.random_range(0..3));
    }
    sim.heal();
    // Let maintenance redial and anti-entropy repair.
    sim.advance(30_000);
    assert!(sim.connected(), "seed {seed}: mesh did not heal");
    let reference = snapshot(sim.nodes[0].replica().unwrap());
    for i in 1..n {
        let s = snapshot(sim.nodes[i].replica().unwrap());
        assert_eq!(s, reference, "seed {seed}: node {i} differs from node 0");
    }
    // Keyed writers prove every write, and no honest write was refused as
    // forged (repairs included).
    for node in &sim.nodes {
        let r = node.replica().unwrap();
        assert_eq!(r.stats().forged_writes, 0, "seed {seed}: an honest write was refused");
        if keyed {
            assert!(r.entries().all(|(_, e)| proven(e)), "seed {seed}: a write without its proof");
        }
    }
    // Every key is exactly what the model makes of the acknowledged
    // writes: without leases, none is lost; with them, only those of a
    // holding refused for starting inside another's lease.
    let got: BTreeMap<Bytes, Entry> = reference.into_iter().collect();
    for (k, want) in &ledger.expected(leasing, lease_ms) {
        assert_eq!(got.get(k).map(visible), Some(visible(want)), "seed {seed}: key {k:?}");
    }
    (ledger.acked, refused)
}

#[test]
fn simulated_networks_converge_without_losing_acknowledged_writes() {
    let seeds: u64 = std::env::var("RS2P_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut acked = 0;
    let mut refused = 0;
    for seed in 0..seeds {
        let (a, r) = run_seed(seed, 3 + (seed % 6) as usize, seed % 3 == 0, seed % 2 == 1);
        acked += a;
        refused += r;
    }
    assert!(refused > 0, "some leased writes were refused");
    let report = format!(
        "sync simulation: {seeds} seeds (3-8 nodes, half of them keyed, shuffled delivery, link loss, partitions), \
         {acked} acknowledged writes, {refused} refused by leases: all replicas identical and equal to a \
         model of every acknowledged write (without leases none lost; with them the lease rule's verdict)\n"
    );
    eprint!("{report}");
    // The test command asks for this report in a file and prints it, since
    // cargo hides passing tests' output.
    if let Ok(path) = std::env::var("RS2P_SIM_REPORT") {
        std::fs::write(&path, report).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

#[test]
fn joining_node_gets_the_whole_state_by_anti_entropy() {
    let mut sim = Sim::with_sync(3, Config::default());
    sim.connect(1, 0);
    sim.run();
    for i in 0..500u32 {
        let set = Command::Set { key: Bytes::from(format!("k{i}")), value: Value::from(i) };
        assert_eq!(sim.command(0, set), Some(Ok(crate::node::Reply::Sync(Reply::Done))));
    }
    sim.run();
    assert_eq!(sim.nodes[1].replica().unwrap().len(), 500);
    // Node 2 joins after the writes were flooded: only anti-entropy can
    // bring it the 500 keys (rs2p peers get no per-key state transfer).
    sim.connect(2, 1);
    sim.run();
    assert_eq!(sim.nodes[2].replica().unwrap().len(), 500);
    assert_eq!(sim.nodes[2].replica().unwrap().state_digest(), sim.nodes[0].replica().unwrap().state_digest());
}

#[test]
fn changes_taken_and_restored_rebuild_the_same_replica() {
    let now = at(2_000);
    let mut a = replica("me", false);
    a.track_changes(true);
    let ops = [
        Op::Set(0, 1, 0, Some(1)),
        Op::Set(1, 2, 1, None),
        Op::Delta(2, 3, 2, 0, 1),
        Op::Delta(2, 4, 0, 1, 2),
        Op::Set(0, 5, 1, Some(3)),
    ];
    for o in &ops {
        deliver(&mut a, now, ConnId(1), &frame_of(o));
    }
    let changes = a.take_changes();
    assert_eq!(changes.len(), 3, "one per key changed: {changes:?}");
    assert!(a.take_changes().is_empty(), "taken once");
    let mut b = replica("me", false);
    b.restore(changes.into_iter().filter_map(|(_, rec)| rec));
    assert_eq!(snapshot(&a), snapshot(&b));
    assert_eq!(a.state_digest(), b.state_digest());
    assert!(b.take_changes().is_empty(), "restoring is not a change");
    // A purged tombstone is reported as gone.
    let mut c = Replica::new(pid("me"), Config { leasing: false, tombstone_ttl_ms: 1_000, ..Config::default() }, 1);
    c.track_changes(true);
    deliver(&mut c, now, ConnId(1), &frame_of(&Op::Set(1, 2, 1, None)));
    assert!(matches!(c.take_changes().as_slice(), [(_, Some(_))]));
    c.handle(at(10_000), Input::Timeout);
    assert!(matches!(c.take_changes().as_slice(), [(_, None)]), "the purge is a change: forget the key");
}

/// A keyed replica (it proves its writes) with the key `[n; 32]`.
fn keyed_replica(n: u8, leasing: bool) -> (Replica, crate::identity::Identity) {
    let key = crate::identity::Identity::from_secret([n; 32]);
    let cfg = Config { leasing, identity: Some(key.clone()), ..Config::default() };
    (Replica::new(key.id(), cfg, u64::from(n)), key)
}

fn entries_packet(sender: &PeerId, records: Vec<EntryRecord>) -> Packet {
    Packet::parse(SyncMessage::Entries(records).encode(sender, 1_700_000_000), &Default::default()).unwrap()
}

fn frames(r: &mut Replica) -> Vec<Packet> {
    std::iter::from_fn(|| r.poll_output())
        .filter_map(|o| match o {
            Output::Broadcast(f) => Some(Packet::parse(f, &Default::default()).unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_keyed_writers_records_need_its_proof_from_whoever_relays_them() {
    let now = at(1_700_000_000);
    for leasing in [false, true] {
        let (mut alice, _) = keyed_replica(1, leasing);
        let mallory = crate::identity::Identity::from_secret([3; 32]);
        let (key, ak) = (Bytes::from_static(b"k"), alice.me.clone());
        alice.set(now, key.clone(), Value::from("alice's")).unwrap();
        let flooded = frames(&mut alice);
        let genuine = alice.entry(&key).unwrap().to_record(&key);
        assert!(genuine.base_proof.is_some() || genuine.holdings[0].base_proof.is_some());
        let (mut bob, _) = keyed_replica(2, leasing);
        bob.learn_keyed(&ak);
        let relay = mallory.id();

        // Forgeries in alice's name, from a third party.
        let unproven = EntryRecord {
            key: key.clone(),
            base_ts_ms: now.unix_ms + 5,
            base_owner: Bytes::copy_from_slice(ak.as_bytes()),
            base_proof: None,
            base: Value::from("forged"),
            fields: Vec::new(),
            holdings: Vec::new(),
        };
        let content = proof::content_hash(proof::Content::Set(&unproven.base));
        let leaf = proof::leaf(&key, &ak, unproven.base_ts_ms, &content);
        let mallorys =
            EntryRecord { base_proof: proof::sign_batch(&mallory, &[(leaf, content)]).pop(), ..unproven.clone() };
        let mut altered = genuine.clone();
        match altered.holdings.first_mut() {
            Some(h) => h.base = Value::from("altered"),
            None => altered.base = Value::from("altered"),
        }
        for (i, forged) in [unproven, mallorys, altered].into_iter().enumerate() {
            deliver(&mut bob, now, ConnId(9), &entries_packet(&relay, vec![forged]));
            assert_eq!(bob.get(&key), None, "leasing {leasing}: forgery {i} was taken");
            assert_eq!(bob.stats().forged_writes, i as u64 + 1);
        }
        // py2p's per-key state transfer in alice's name: it has no proof.
        let transfer = SyncMessage::StateTransfer {
            key: key.clone(),
            value: Value::from("transferred"),
            owner: ak.clone(),
            timestamp: now.unix(),
        };
        deliver(
            &mut bob,
            now,
            ConnId(9),
            &Packet::parse(transfer.encode(&relay, now.unix()), &Default::default()).unwrap(),
        );
        assert_eq!(bob.get(&key), None, "leasing {leasing}: a state transfer in alice's name was taken");
        assert_eq!(bob.stats().forged_writes, 4);
        // A forged live store: alice's broadcast with mallory's proof.
        let SyncMessage::Store { value, ts_ms, .. } = SyncMessage::decode(&flooded[0]).unwrap() else { panic!() };
        let c = proof::content_hash(proof::Content::Set(&value));
        let bad = proof::sign_batch(&mallory, &[(proof::leaf(&key, &ak, ts_ms.unwrap(), &c), c)]);
        let f = SyncMessage::encode_store(&ak, ts_ms.unwrap() / 1000, &key, &value, ts_ms, &bad);
        deliver(&mut bob, now, ConnId(9), &Packet::parse(f, &Default::default()).unwrap());
        assert_eq!(bob.get(&key), None, "leasing {leasing}: a live store with a forged proof was taken");
        assert_eq!(bob.stats().forged_writes, 5);

        // Alice's own record, relayed by anyone, is taken with its proof,
        // so bob can repair others with it in turn.
        deliver(&mut bob, now, ConnId(9), &entries_packet(&relay, vec![genuine.clone()]));
        assert_eq!(bob.get(&key), Some(Value::from("alice's")));
        let relayed = bob.entry(&key).unwrap().to_record(&key);
        let (mut carol, _) = keyed_replica(4, leasing);
        carol.learn_keyed(&ak);
        deliver(&mut carol, now, ConnId(9), &entries_packet(&bob.me.clone(), vec![relayed]));
        assert_eq!(carol.get(&key), Some(Value::from("alice's")));
        assert_eq!(carol.stats().forged_writes, 0);

        // A writer never seen proving its writes (a py2p node) is taken as
        // py2p takes it.
        let py2p = EntryRecord {
            key: Bytes::from_static(b"py"),
            base_owner: Bytes::from_static(b"a py2p node's id"),
            ..EntryRecord { base: Value::from("py2p's"), ..genuine.clone() }
        };
        let py2p = EntryRecord { base_proof: None, holdings: Vec::new(), ..py2p };
        deliver(&mut bob, now, ConnId(9), &entries_packet(&relay, vec![py2p]));
        assert_eq!(bob.get(b"py"), Some(Value::from("py2p's")));
        assert_eq!(bob.stats().forged_writes, 5);
    }
}

#[test]
fn a_holdings_bounds_are_its_writers_own() {
    let t = 1_700_000_000;
    let (mut alice, _) = keyed_replica(1, true);
    let key = Bytes::from_static(b"k");
    alice.set(at(t), key.clone(), Value::from("first")).unwrap();
    alice.set(at(t + 10), key.clone(), Value::from("second")).unwrap();
    let flooded = frames(&mut alice);
    let genuine = alice.entry(&key).unwrap().to_record(&key);
    // A replica that got alice's writes in reverse order keeps the first
    // one's proof for the holding's start: its record checks elsewhere.
    let (mut late, _) = keyed_replica(5, true);
    for p in flooded.iter().rev() {
        deliver(&mut late, at(t + 10), ConnId(1), p);
    }
    let (mut other, _) = keyed_replica(6, true);
    other.learn_keyed(&alice.me);
    deliver(
        &mut other,
        at(t + 20),
        ConnId(9),
        &entries_packet(&late.me, vec![late.entry(&key).unwrap().to_record(&key)]),
    );
    assert_eq!(other.stats().forged_writes, 0);
    assert_eq!(other.entry(&key).unwrap().digest(&key), alice.entry(&key).unwrap().digest(&key));
    let h = &genuine.holdings[0];
    assert!(h.start_ms < h.end_ms && h.start_proof.is_some(), "{h:?}");
    let ak = alice.me.clone();
    let relay = pid("relay");
    let forge = |f: &dyn Fn(&mut crate::wire::message::HoldingRecord)| {
        let mut r = genuine.clone();
        f(&mut r.holdings[0]);
        r
    };
    let cases: [(&str, EntryRecord); 4] = [
        ("start backdated", forge(&|h| h.start_ms -= 5_000)),
        ("start proof taken away", forge(&|h| h.start_proof = None)),
        ("end pushed later", forge(&|h| h.end_ms += 5_000)),
        ("start proof of another write", forge(&|h| h.start_proof = h.base_proof.clone())),
    ];
    for (what, forged) in cases {
        let (mut bob, _) = keyed_replica(2, true);
        bob.learn_keyed(&ak);
        deliver(&mut bob, at(t + 20), ConnId(9), &entries_packet(&relay, vec![forged]));
        assert_eq!(bob.get(&key), None, "{what}: taken");
        assert_eq!(bob.stats().forged_writes, 1, "{what}");
    }
    let (mut bob, _) = keyed_replica(2, true);
    bob.learn_keyed(&ak);
    deliver(&mut bob, at(t + 20), ConnId(9), &entries_packet(&relay, vec![genuine]));
    assert_eq!(bob.get(&key), Some(Value::from("second")));
    assert!(proven(bob.entry(&key).unwrap()));
    assert_eq!(bob.entry(&key).unwrap().digest(&key), alice.entry(&key).unwrap().digest(&key));
}

#[test]
fn a_keyed_network_repairs_a_joiner_with_proven_writes() {
    let mut sim = Sim::with_keyed_sync(3, Config::default());
    sim.connect(1, 0);
    sim.run();
    let pairs: Vec<(Bytes, Value)> = (0..600u32).map(|i| (Bytes::from(format!("k{i}")), Value::from(i))).collect();
    assert_eq!(sim.command(0, Command::Update { pairs }), Some(Ok(crate::node::Reply::Sync(Reply::Done))));
    let delta = vec![(Value::from("a"), Value::from(1)), (Value::from("b"), Value::from(2))];
    sim.command(1, Command::Delta { key: Bytes::from_static(b"m"), delta });
    sim.run();
    // Node 2 joins afterwards: everything reaches it through node 1's
    // records, which carry node 0's proofs (node 2 knows node 0 as keyed
    // only from them).
    sim.connect(2, 1);
    sim.run();
    let joiner = sim.nodes[2].replica().unwrap();
    assert_eq!(joiner.len(), 601);
    assert_eq!(joiner.state_digest(), sim.nodes[0].replica().unwrap().state_digest());
    assert_eq!(joiner.stats().forged_writes, 0);
    assert!(joiner.entries().all(|(_, e)| proven(e)));
    assert!(joiner.is_keyed(&sim.nodes[0].mesh().config().id));
}

#[test]
fn a_restored_replica_knows_who_proves_their_writes() {
    let now = at(1_700_000_000);
    let (mut alice, _) = keyed_replica(1, true);
    alice.set(now, Bytes::from_static(b"k"), Value::from("alice's")).unwrap();
    let (mut bob, _) = keyed_replica(2, true);
    bob.track_changes(true);
    for p in frames(&mut alice) {
        deliver(&mut bob, now, ConnId(1), &p);
    }
    let stored: Vec<EntryRecord> = bob.take_changes().into_iter().filter_map(|(_, r)| r).collect();
    let (mut restarted, _) = keyed_replica(2, true);
    assert!(!restarted.is_keyed(&alice.me));
    restarted.restore(stored);
    assert!(restarted.is_keyed(&alice.me), "learned from the stored proofs");
    // So an unproven record in alice's name is refused at once.
    let forged = EntryRecord {
        key: Bytes::from_static(b"other"),
        base_ts_ms: now.unix_ms + 1,
        base_owner: Bytes::copy_from_slice(alice.me.as_bytes()),
        base_proof: None,
        base: Value::from("forged"),
        fields: Vec::new(),
        holdings: Vec::new(),
    };
    deliver(&mut restarted, now, ConnId(9), &entries_packet(&pid("relay"), vec![forged]));
    assert_eq!(restarted.get(b"other"), None);
    assert_eq!(restarted.stats().forged_writes, 1);
}

#[test]
fn a_replica_that_requires_proofs_takes_no_unproven_write() {
    let now = at(1_700_000_000);
    let (mut alice, _) = keyed_replica(1, true);
    alice.set(now, Bytes::from_static(b"proven"), Value::from("alice's")).unwrap();
    let flooded = frames(&mut alice);
    let (mut bob, _) = keyed_replica(2, true);
    bob.cfg.require_proofs = true;
    // Writers bob never met: a record, a live store and a state transfer,
    // none proven, all refused; alice's proven store taken.
    let stranger = pid("a node bob never met");
    let record = EntryRecord {
        key: Bytes::from_static(b"a"),
        base_ts_ms: now.unix_ms,
        base_owner: Bytes::copy_from_slice(stranger.as_bytes()),
        base_proof: None,
        base: Value::from(1),
        fields: Vec::new(),
        holdings: Vec::new(),
    };
    deliver(&mut bob, now, ConnId(9), &entries_packet(&stranger, vec![record]));
    deliver(&mut bob, now, ConnId(9), &rs2p_store("a node bob never met", now.unix_ms, "b", "unproven"));
    let transfer = SyncMessage::StateTransfer {
        key: Bytes::from_static(b"c"),
        value: Value::from(3),
        owner: stranger.clone(),
        timestamp: now.unix(),
    };
    deliver(
        &mut bob,
        now,
        ConnId(9),
        &Packet::parse(transfer.encode(&stranger, now.unix()), &Default::default()).unwrap(),
    );
    deliver(&mut bob, now, ConnId(9), &py2p_store("a node bob never met", now.unix(), "d", Value::from(4)));
    assert_eq!(bob.len(), 0);
    assert_eq!(bob.stats().forged_writes, 4);
    deliver(&mut bob, now, ConnId(1), &flooded[0]);
    assert_eq!(bob.get(b"proven"), Some(Value::from("alice's")));
}

#[test]
fn a_node_that_requires_signatures_requires_proofs() {
    for require in [false, true] {
        let mut cfg = crate::sim::config_for(0, &crate::id::Protocol::default());
        cfg.require_signed = require;
        let id = cfg.id.clone();
        let node = crate::node::Node::new(crate::mesh::Mesh::new(cfg, 1), Some(Replica::new(id, Config::default(), 1)));
        assert_eq!(node.replica().unwrap().config().require_proofs, require);
    }
}

#[test]
fn restored_proofs_share_their_batch_and_still_check() {
    let now = at(1_700_000_000);
    let (mut alice, _) = keyed_replica(1, false);
    let pairs: Vec<(Bytes, Value)> = (0..10).map(|i| (Bytes::from(format!("k{i}")), Value::from(i))).collect();
    alice.on_command(now, Command::Update { pairs }).unwrap();
    let stored: Vec<EntryRecord> = {
        alice.track_changes(true);
        let records: Vec<EntryRecord> = alice.entries().map(|(k, e)| e.to_record(k)).collect();
        records.into_iter().map(|r| EntryRecord::from_bytes(&r.to_bytes()).unwrap()).collect()
    };
    let (mut restarted, _) = keyed_replica(1, false);
    restarted.restore(stored);
    let trees: Vec<_> = restarted
        .entries()
        .map(|(_, e)| match &e.base_version.proof.0.as_ref().unwrap().path {
            crate::wire::message::PathNodes::Shared(t) => Arc::as_ptr(t),
            crate::wire::message::PathNodes::Own(_) => std::ptr::null(),
        })
        .collect();
    assert!(trees.iter().all(|t| !t.is_null() && *t == trees[0]), "one shared tree");
    let (mut bob, _) = keyed_replica(2, false);
    bob.learn_keyed(&alice.me);
    let records: Vec<EntryRecord> = restarted.entries().map(|(k, e)| e.to_record(k)).collect();
    deliver(&mut bob, now, ConnId(9), &entries_packet(&alice.me, records));
    assert_eq!(bob.len(), 10);
    assert_eq!(bob.stats().forged_writes, 0);
}
