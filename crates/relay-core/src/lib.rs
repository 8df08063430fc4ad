//! crm-relay's domain: every decision about an event, and the ports it is made through.
//! Ingress (parse, verify, enqueue) and the consumer (claim, enrich, diff, forward) live here;
//! the stores behind the ports are `relay-aws` and `relay-local`, the Lambda glue is
//! `relay-lambda`. This crate links no AWS SDK, no SQLite and no HTTP server, so the domain
//! can only reach a store through a port (`scripts/checks.d/05-crate-tree.sh` keeps it so).

pub mod catalogue;
pub mod clock;
pub mod compose;
pub mod config;
pub mod consume;
pub mod enrich;
pub mod error;
pub mod event;
pub mod forward;
pub mod http_client;
pub mod ingest;
pub mod lifecycle;
pub mod logging;
pub mod parse;
pub mod ports;
pub mod routes;
pub mod routing;
pub mod secret;
pub mod verify;
