//! Test support shared by the integration tests: a moto server handle and loopback servers
//! that behave like Bitrix24, SalesMan and a user's destination (same URLs, same errors).

pub mod consumer_cases;
pub mod contract;
pub mod counting;
pub mod destination;
pub mod fake_bitrix24;
pub mod fake_bitrix24_events;
pub mod fake_salesman;
pub mod fanout_cases;
pub mod fidelity_cases;
pub mod loopback;
pub mod memory;
pub mod moto;
pub mod probe;
pub mod scratch;
pub mod sim_queue;
