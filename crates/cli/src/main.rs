//! The `rs2p` command: run a node, or a local demo network.

mod config;
mod console;
mod demo;
mod events;
mod input;
mod json_mode;
mod metrics;
mod node;
mod peer_book;
mod report;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// `rs2p --version`: the release, the wire protocol it speaks, the commit.
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (py2p 0.7.878 wire protocol, commit ", env!("RS2P_GIT_COMMIT"), ")");

/// rs2p: a py2p-compatible peer-to-peer mesh node.
#[derive(Debug, Parser)]
#[command(name = "rs2p", version = VERSION, about, args_override_self = true)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output: -q errors only, -qq nothing.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    quiet: u8,
    /// Log filter: error, warn, info, debug, trace, or tracing directives
    /// such as `rs2p=debug,rs2p_proto=trace`. Wins over -v/-q and RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Read flags from a TOML file (keys are the long flag names); flags
    /// on the command line win.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
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

/// The log filter the flags ask for: `--log-level`, else -v/-q, else
/// `RUST_LOG`, else warnings.
fn log_filter(cli: &Cli) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    if let Some(f) = &cli.log_level {
        return EnvFilter::new(f);
    }
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => return EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        (0, 1) => "error",
        (0, _) => "off",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    EnvFilter::new(level)
}

/// An error and its causes on one line, each cause once: a cause whose
/// words its parent already quotes is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn main() -> ExitCode {
    let command = Cli::command();
    let args = match config::expand(std::env::args().collect(), &command) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match command.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter(&cli))
        .init();
    let json = matches!(&cli.command, Command::Node(a) if a.json);
    let result =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
            let r = rt.block_on(async {
                match cli.command {
                    Command::Node(a) => node::run(a).await,
                    Command::Demo(a) => demo::run(a).await,
                }
            });
            // A read of stdin may still be blocked in a worker thread (after
            // a signal or `quit`, stdin is still open): do not wait for it.
            rt.shutdown_background();
            r
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = describe(&e);
            // A program reading JSON gets its failure as JSON, on stdout.
            if json {
                println!("{}", serde_json::json!({"event": "fatal", "message": message}));
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
