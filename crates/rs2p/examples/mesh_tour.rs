//! A tour of the mesh API: three nodes on loopback form a network, flood a
//! broadcast, whisper, reply through the network, and shut down.
//!
//! Run with `cargo run -p rs2p --example mesh_tour`.

use std::time::Duration;

use rs2p::{Event, MeshSocket, Value};

fn show(packets: &[Value]) -> String {
    packets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Three nodes; port 0 lets the OS pick free ports.
    let alice = MeshSocket::builder().bind("127.0.0.1:0").spawn().await?;
    let bob = MeshSocket::builder().bind("127.0.0.1:0").spawn().await?;
    // Carol keeps to one connection so that a reply to her must be routed.
    let carol = MeshSocket::builder().max_outgoing(1).maintain_outgoing(false).spawn().await?;
    println!("alice {}\nbob   {}\ncarol {}", alice.id(), bob.id(), carol.id());

    let mut events = alice.events();
    bob.connect(alice.out_addr().clone()).await?;
    carol.connect(bob.out_addr().clone()).await?;
    if let Some(Event::Connected { peer }) = events.recv().await {
        println!("alice joined the network through {peer}");
    }

    // A broadcast reaches everyone once, relayed where needed.
    alice.broadcast(vec![Value::from("hello, mesh"), Value::Binary(vec![1, 2, 3])]).await?;
    for (name, node) in [("bob", &bob), ("carol", &carol)] {
        let msg = tokio::time::timeout(Duration::from_secs(5), node.next_message()).await?.ok_or("stopped")?;
        println!("{name} got [{}] from {}", show(&msg.packets()?), msg.sender());
    }

    // A handler sees messages before the queue; returning true consumes them.
    bob.register_handler(|m| {
        let ping = m.packets().map(|p| p.first().and_then(|v| v.as_str()) == Some("ping")).unwrap_or(false);
        if ping {
            println!("bob's handler consumed a ping");
        }
        ping
    })
    .await?;
    alice.whisper(bob.id(), vec![Value::from("ping")]).await?;

    // Carol broadcasts; alice replies although she may not be connected to
    // carol: the reply finds its way through the network.
    carol.broadcast(vec![Value::from("who's there?")]).await?;
    let msg = tokio::time::timeout(Duration::from_secs(5), alice.next_message()).await?.ok_or("stopped")?;
    let route = msg.reply(vec![Value::from("alice here")]).await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), carol.next_message()).await?.ok_or("stopped")?;
    println!("carol got [{}] ({route:?})", show(&answer.packets()?));

    println!("alice's routing table:");
    for p in alice.routing_table().await? {
        println!(
            "  {} {} {}",
            p.id,
            p.addr.map(|a| a.to_string()).unwrap_or_default(),
            if p.outgoing { "out" } else { "in" }
        );
    }
    for n in [alice, bob, carol] {
        n.close().await?;
    }
    Ok(())
}
