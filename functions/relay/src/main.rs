//! `relay`: crm-relay on one machine. `serve` runs every function of the flow in one process
//! on the embedded store; `invoke` runs one Lambda handler on a sample event; `replay`,
//! `attempts` and `dead-letters` look after events that did not arrive.

mod app_mode;
mod attempts;
mod backend;
mod bind;
mod cli_error;
mod dead_letters;
mod drain;
mod http_server;
mod invoke;
mod logs;
mod poll;
mod printing_outbox;
mod replay;
mod routes;
mod routes_command;
mod serve;
mod sign;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "relay",
    version,
    about = "crm-relay: Bitrix24 and SalesMan webhooks, verified, enriched and forwarded"
)]
struct Cli {
    /// Folder of the embedded store (SQLite, outbox.jsonl).
    #[arg(long, global = true, env = "RELAY_DATA_DIR", default_value = ".relay")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every family's URL and drain the queue, on the embedded store.
    Serve(serve::ServeArgs),
    /// Run one function's handler in-process on a sample event and print its response.
    Invoke(invoke::InvokeArgs),
    /// Move dead-lettered events back to the queue.
    Replay(replay::ReplayArgs),
    /// Print the delivery attempts of one event.
    Attempts(attempts::AttemptsArgs),
    /// List the events parked in the dead-letter queue.
    DeadLetters,
    /// Sign a body the Standard Webhooks way with RELAY_SIGNING_SECRET, to test a receiver.
    Sign(sign::SignArgs),
    /// Drain the Bitrix24 offline-event log of installed portals onto the queue once.
    Poll(poll::PollArgs),
    /// Register (or list, or remove) each family's URL for its Bitrix24 events on a portal.
    Bind(bind::BindArgs),
    /// Check a routes file, or try it on a forwarded body.
    Routes(routes_command::RoutesArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args, &cli.data_dir).await,
        Command::Invoke(args) => invoke::run(args, &cli.data_dir).await,
        Command::Replay(args) => replay::run(args, &cli.data_dir).await,
        Command::Attempts(args) => attempts::run(args, &cli.data_dir).await,
        Command::DeadLetters => dead_letters::run(&cli.data_dir).await,
        Command::Sign(args) => sign::run(args),
        Command::Poll(args) => poll::run(args, &cli.data_dir).await,
        Command::Bind(args) => bind::run(args, &cli.data_dir).await,
        Command::Routes(args) => routes_command::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("relay: {err}");
            ExitCode::FAILURE
        }
    }
}
