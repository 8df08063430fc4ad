//! The ports' contract on the embedded SQLite store (`relay serve`), plus the embedded
//! queue's own delivery rules, which SQS leaves to Lambda's event source mapping.

use integration_tests::contract;
use integration_tests::scratch::ScratchDir;
use relay_core::ports::DedupStore;
use relay_local::SqliteStore;
use std::sync::Arc;

fn open_store(dir: &ScratchDir) -> SqliteStore {
    SqliteStore::open(dir.path()).expect("open the embedded store")
}

macro_rules! on_sqlite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let dir = ScratchDir::new(stringify!($name));
            let store = open_store(&dir);
            contract::$name(&store).await;
        }
    )*};
}

macro_rules! queue_on_sqlite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let dir = ScratchDir::new(stringify!($name));
            let store = open_store(&dir);
            contract::$name(&store, &store).await;
        }
    )*};
}

integration_tests::store_contract_tests!(on_sqlite);
// Only the embedded queue is polled; SQS hands messages to Lambda's event source mapping.
on_sqlite! {
    polling_one_in_flight_per_group,
    polling_retry_delay_holds_group,
    polling_returned_message_is_not_overtaken,
    polling_park_moves_group_on,
    polling_stale_receipt_changes_nothing,
}

integration_tests::queue_contract_tests!(queue_on_sqlite);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedup_racing_claims_have_one_winner() {
    let dir = ScratchDir::new("dedup_racing");
    let store: Arc<dyn DedupStore> = Arc::new(open_store(&dir));
    contract::dedup_racing_claims_have_one_winner(store).await;
}

#[tokio::test]
async fn polling_visibility_and_max_receives() {
    let dir = ScratchDir::new("polling_max_receives");
    let store = open_store(&dir);
    store.set_max_receive_count(3);
    contract::polling_visibility_and_max_receives(&store, 3).await;
}
