//! GitHub: the App's side of the conversation. `webhook` owns verifying and reading
//! deliveries; installation auth, commit statuses and the reconcile queue that acts on them
//! follow with `telbase serve`.

pub mod webhook;
