//! Identities that cannot be forged: a node keeps its id in a key file,
//! links only to the node it expects, and tells its peers' broadcasts
//! (signed, verified) from a forgery in another node's name (dropped,
//! counted).
//!
//! Run with `cargo run -p rs2p --example identities`.

use std::time::Duration;

use rs2p::proto::wire::{Frame, MsgType, SubFlag};
use rs2p::{MeshSocket, Value};
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A key file keeps the id across restarts (created 0600 when missing).
    let dir = std::env::temp_dir().join(format!("rs2p-identities-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("alice.key");
    let first = MeshSocket::builder().key_file(&key).spawn().await?;
    let alice_id = first.id().clone();
    first.close().await?;
    let alice = MeshSocket::builder().key_file(&key).spawn().await?;
    println!("alice keeps her id across restarts: {}", alice.id() == &alice_id);

    // Bob links only if the node at that address proves it is alice.
    let bob = MeshSocket::builder().spawn().await?;
    let peer = bob.connect_expecting(alice.out_addr().clone(), alice.id().clone()).await?;
    println!("bob linked to the proven {peer}");

    // Alice's broadcasts carry her signature: bob sees them verified.
    alice.broadcast(vec![Value::from("signed by alice")]).await?;
    let m = tokio::time::timeout(Duration::from_secs(5), bob.next_message()).await?.ok_or("stopped")?;
    println!("bob got {:?} from alice, verified: {}", m.packets()?, m.verified());

    // Mallory speaks py2p's wire format to bob and claims to be alice.
    let mut mallory = tokio::net::TcpStream::connect(bob.out_addr().to_string()).await?;
    let me = rs2p::PeerId::random(b"mallory");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let hello = Frame::build(
        MsgType::Whisper,
        &me,
        now,
        SubFlag::Handshake,
        &[
            Value::Binary(me.as_bytes().to_vec()),
            Value::Binary(bob.protocol().id().as_bytes().to_vec()),
            Value::Array(vec![Value::from("127.0.0.1"), Value::from(1)]),
            Value::Array(vec![Value::from(0x13)]),
        ],
    );
    let forged = Frame::build(MsgType::Broadcast, alice.id(), now, 0u64, &[Value::from("I am alice")]);
    mallory.write_all(hello.wire_bytes()).await?;
    mallory.write_all(forged.wire_bytes()).await?;
    // Bob knows alice signs: the unsigned claim waits for a signature that
    // never comes, then is dropped and counted.
    for _ in 0..80 {
        if bob.status().await?.stats.unsigned > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (dropped, delivered) = (bob.status().await?.stats.unsigned, bob.recv(10).len());
    println!("bob dropped {dropped} forged message(s) in alice's name, delivered {delivered}");
    if dropped != 1 || delivered != 0 {
        return Err("the forgery was not refused".into());
    }

    for n in [alice, bob] {
        n.close().await?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
