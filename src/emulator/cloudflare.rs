//! The emulated Cloudflare API v4 under `/cloudflare/client/v4`: zones, zone settings, DNS records, Access.
//!
//! SKELETON: being built; every route answers 404 until it is.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Answer, Req, World, provider_error};
use crate::model::Provider;

#[derive(Default)]
pub(crate) struct State {}

/// Path segments that are part of a route's shape rather than an id, for counters.
pub(crate) fn literal(_segment: &str, _index: usize) -> bool {
    false
}

pub(crate) fn route(_w: &mut World, req: &Req<'_>, provider: Provider) -> Answer {
    let _ = req;
    provider_error(provider, 404, "not_found", "not emulated yet")
}

pub(crate) fn inventory(_s: &State, _m: &mut BTreeMap<String, u64>) {}

pub(crate) fn drift(_w: &mut World, _body: &Value) -> Result<Value, String> {
    Err("not emulated yet".into())
}
