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
mod drain_runtime;
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

/// Under load, glibc's allocator was an eighth of `relay serve`'s CPU (`_int_malloc`,
/// `malloc_consolidate`, `_int_free`: every request, envelope, SQLite row and forward
/// allocates, on threads that hand buffers to one another). mimalloc's thread-local free
/// lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Option numbers of mimalloc 3's `mi_option_e` (`mimalloc.h`), which libmimalloc-sys does
/// not name; the test below checks them against the linked library's defaults.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before giving it back to the OS (mimalloc 2's
/// default). Giving it back at once cost `relay serve` about 1.7% of its CPU under load
/// (`madvise`, TLB shootdowns, and page faults on memory touched again moments later:
/// 4.3% of samples, against 2.6% with 10 ms). A second, mimalloc 3's default, keeps too much:
/// see `keep_freed_memory_briefly`.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// With its defaults, mimalloc keeps freed memory for a second and commits arenas ahead of use,
/// so eight 1 MiB hostile bodies at once took `relay serve` to 91-109 MiB of RSS where glibc
/// stays near 55 (tests/adversarial.rs holds it under 100). Committing on use and purging
/// after `PURGE_DELAY_MS`, set here: 66-77 MiB in eight runs, against 72-77 purging at once
/// and 83-99 after 100 ms, measured the same way.
fn keep_freed_memory_briefly() {
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table; any value is valid
    // for these two options, and `main` calls this before the runtime starts any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
    }
}

fn main() -> ExitCode {
    keep_freed_memory_briefly();
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The option numbers above name the options meant: their defaults in the linked
    /// mimalloc (purge delay 1000 ms in mimalloc 3's options.c, arena eager commit 2) come
    /// back under those numbers.
    #[test]
    fn the_allocator_option_numbers_name_the_options_meant() {
        // SAFETY: reads mimalloc's option table.
        let (purge_delay, eager_commit) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT),
            )
        };
        assert_eq!((purge_delay, eager_commit), (1000, 2));
    }
}
