//! The synced dictionary: three nodes share one dictionary, with leases,
//! deltas from several writers, deletes and events.
//!
//! Run with `cargo run -p rs2p --example sync_dict`.

use std::time::Duration;

use rs2p::{Error, Event, SyncSocket, Value};

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = SyncSocket::builder().spawn().await?;
    let b = SyncSocket::builder().spawn().await?;
    b.connect(a.out_addr().clone()).await?;
    let mut events = b.events();

    a.set("greeting", "hello").await?;
    a.update([("answer", Value::from(42)), ("pi", Value::F64(std::f64::consts::PI))]).await?;
    settle().await;
    println!("b reads greeting = {}", b.get("greeting").await?.unwrap_or(Value::Nil));

    // Leasing (on by default): a's keys are a's for an hour.
    match b.set("greeting", "hijack").await {
        Err(Error::Leased { owner, until }) => println!("b refused: leased to {owner} until {until}"),
        other => println!("unexpected: {other:?}"),
    }

    // A third node joins and receives the whole dictionary at once.
    let c = SyncSocket::builder().spawn().await?;
    c.connect(b.out_addr().clone()).await?;
    settle().await;
    println!("c joined and holds {} keys", c.len().await?);

    // Deltas merge into a map; each writer's fields survive.
    a.apply_delta("profile", vec![(Value::from("name"), Value::from("Ada"))]).await?;
    settle().await;
    a.apply_delta("profile", vec![(Value::from("lang"), Value::from("Rust"))]).await?;
    a.delete("pi").await?;
    settle().await;
    println!("c reads profile = {}", c.get("profile").await?.unwrap_or(Value::Nil));
    println!("c's dictionary: {:?}", c.keys().await?);

    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
        match e {
            Event::Update { key, value, owner, .. } => {
                println!("b saw update {} = {value} by {owner}", String::from_utf8_lossy(&key))
            }
            Event::Delete { key } => println!("b saw delete {}", String::from_utf8_lossy(&key)),
            _ => {}
        }
    }
    for n in [a, b, c] {
        n.close().await?;
    }
    Ok(())
}
