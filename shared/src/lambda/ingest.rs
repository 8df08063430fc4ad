//! Lambda glue for the ingest functions: Function URL request -> `Ingress::handle` -> response.
//! (Stub: filled by the ingress issue.)

use crate::event::Family;

/// Runs one family's ingest function: builds the SQS client once, then serves requests.
pub async fn run(family: Family) -> Result<(), lambda_http::Error> {
    let _ = family;
    Err("ingest function not implemented yet".into())
}
