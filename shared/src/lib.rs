//! crm-relay's library: everything that is not a `main`.
//! Ingress (parse, verify, enqueue), the consumer (claim, enrich, diff, forward) and the
//! stores behind them live here; the functions under `functions/` only wire ports together.

pub mod aws;
pub mod catalogue;
pub mod config;
pub mod consume;
pub mod enrich;
pub mod error;
pub mod event;
pub mod forward;
pub mod http_client;
pub mod ingest;
pub mod lambda;
pub mod lifecycle;
pub mod local;
pub mod logging;
pub mod parse;
pub mod ports;
pub mod routes;
pub mod routes_source;
pub mod routing;
pub mod secret;
pub mod verify;
