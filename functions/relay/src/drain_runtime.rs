//! Where `relay serve`'s consumers run: a runtime of their own, beside intake's. Intake
//! answers the CRM (Bitrix24 gives a handler a few seconds and never resends); on one shared
//! runtime its requests waited in the workers' queues behind consumer tasks, so under a
//! backlog intake's latency, and with a fixed number of clients its rate, were set by the
//! drain. Apart, the OS shares the cores between the two runtimes' threads, and a request
//! is picked up as soon as its thread wakes.

use std::io;

/// A multi-thread runtime for the drain loops, one worker per core.
pub fn build() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("relay-drain")
        .enable_all()
        .build()
}
