//! The ports' contract on the embedded SQLite store (`relay serve`), plus the embedded
//! queue's own delivery rules, which SQS leaves to Lambda's event source mapping.

use integration_tests::contract;
use integration_tests::scratch::ScratchDir;
use shared::local::SqliteStore;
use shared::ports::DedupStore;
use std::sync::Arc;

fn open_store(dir: &ScratchDir) -> SqliteStore {
    SqliteStore::open(dir.path()).expect("open the embedded store")
}

macro_rules! on_sqlite {
    ($($name:ident => $check:path;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let dir = ScratchDir::new(stringify!($name));
            let store = open_store(&dir);
            $check(&store).await;
        }
    )*};
}

macro_rules! queue_on_sqlite {
    ($($name:ident => $check:path;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let dir = ScratchDir::new(stringify!($name));
            let store = open_store(&dir);
            $check(&store, &store).await;
        }
    )*};
}

on_sqlite! {
    dedup_claim_then_held => contract::dedup_claim_then_held;
    dedup_expired_lease_is_taken_over => contract::dedup_expired_lease_is_taken_over;
    dedup_completed_until_it_expires => contract::dedup_completed_until_it_expires;
    dedup_release => contract::dedup_release;
    snapshot_versions => contract::snapshot_versions;
    snapshot_delete_portal => contract::snapshot_delete_portal;
    tokens_crud => contract::tokens_crud;
    attempts_oldest_first => contract::attempts_oldest_first;
    destination_disable_enable => contract::destination_disable_enable;
    polling_one_in_flight_per_group => contract::polling_one_in_flight_per_group;
}

queue_on_sqlite! {
    queue_send_receive => contract::queue_send_receive;
    queue_group_order => contract::queue_group_order;
    queue_retry_after => contract::queue_retry_after;
    queue_park_dead_letter => contract::queue_park_dead_letter;
    queue_redrive => contract::queue_redrive;
}

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
