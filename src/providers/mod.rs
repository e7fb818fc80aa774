//! Provider clients. One folder per provider will hold its wire types (`api.rs`), the mapping
//! to and from `model` (`map.rs`) and its client, behind one `Provider` trait. What is shared by
//! all of them lives here: the typed error every client returns and the retry policy that
//! decides when and how long to wait. Providers observe and carry out changes; they never
//! decide what to change (that is `plan`'s job).

pub mod error;
pub mod retry;

pub use error::{ErrorKind, ProviderError};
pub use retry::{Decision, RetryPolicy};
