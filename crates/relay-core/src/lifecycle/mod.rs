//! The Bitrix24 app's life around the event flow: a verified install that stores the portal's
//! tokens, the offline-event poller that recovers what online delivery lost, and `relay bind`,
//! which registers each family's URL for that family's events. Ingress and the poller call in.

pub mod bind;
pub mod events;
pub mod install;
pub mod offline;
pub mod portal_endpoint;
