//! Telbase: a GitOps reconciler that makes a repository's `telbase.yaml` true on Vercel,
//! Google Cloud Run, Neon, Cloud SQL, Turso and Cloudflare.
//!
//! The crate is organised by responsibility (see `docs/architecture.md` in the project's
//! shared docs): `model` holds the types every stage shares, `config` turns the file into a
//! `DesiredState`, `plan` compares it with what the providers report (pure, no I/O),
//! `providers` observe and change resources at each provider over one HTTP layer, `apply`
//! carries a plan out, `emulator` serves the provider APIs locally, `conformance` checks
//! HTTP exchanges against the providers' published descriptions, `secrets` holds age keys,
//! sealing and opening and the envelope of stored secrets, `store` is Telbase's own database
//! (stored secrets, on SQLite), and `cli` is the command-line edge.

#![forbid(unsafe_code)]

pub mod abuse;
pub mod apply;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod control;
pub mod emulator;
pub mod gha;
pub mod github;
pub mod model;
pub mod plan;
pub mod providers;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod web;
