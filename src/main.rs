//! The `acre` command line: run a node process, or the demo.

mod demo;
mod idle;
mod launch;

use acre::engine::node::{Node, NodeConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "acre",
    version,
    about = "Acre: a FaRM-style transactional distributed memory engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a 3-node cluster on each transport and time one-sided READ, WRITE and CAS across nodes.
    Demo(demo::DemoArgs),
    /// Start node processes, leave them idle, and report the CPU time they use.
    IdleCpu(idle::IdleArgs),
    /// Run one node process until SIGTERM or SIGINT.
    Node {
        /// The node's configuration file (TOML; see docs/ARCHITECTURE.md, "Node runtime").
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::IdleCpu(args) => idle::run(&args),
        Command::Node { config } => run_node(&config),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("acre: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run_node(config_path: &std::path::Path) -> anyhow::Result<ExitCode> {
    // Block the termination signals before any thread starts, so only `wait_for_termination`
    // receives them and shutdown is ordinary code.
    acre::engine::signal::block_termination().context("block termination signals")?;
    let config = NodeConfig::from_file(config_path)?;
    let node_id = config.node;
    let node = Node::start(config).with_context(|| format!("start node {node_id}"))?;
    acre::engine::signal::wait_for_termination().context("wait for a signal")?;
    node.stop();
    Ok(ExitCode::SUCCESS)
}
