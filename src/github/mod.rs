//! GitHub: the App's side of the conversation. `webhook` owns verifying and reading
//! deliveries; `app` owns the App's API client (JWT, installation tokens, file contents,
//! commit statuses, the plan comment). The reconcile queue that acts on deliveries comes
//! with `telbase serve`.

pub mod app;
pub mod webhook;
