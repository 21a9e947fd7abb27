//! The `rs2p` command: run a node, or a local demo network.

mod demo;
mod node;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// rs2p: a py2p-compatible peer-to-peer mesh node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node (add --json for the JSON-lines scripting interface).
    Node(node::NodeArgs),
    /// Start a local network of nodes in this process, flood it, report.
    Demo(demo::DemoArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::Node(a) => node::run(a).await,
            Command::Demo(a) => demo::run(a).await,
        }
    })
}
