//! Telbase: a GitOps reconciler that makes a repository's `telbase.yaml` true on Vercel,
//! Google Cloud Run, Neon, Cloud SQL, Turso and Cloudflare.
//!
//! The crate is organised by responsibility (see `docs/architecture.md` in the project's
//! shared docs): `model` holds the types every stage shares, `config` turns the file into a
//! `DesiredState`, and `cli` is the command-line edge.

#![forbid(unsafe_code)]

pub mod apply;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod emulator;
pub mod model;
pub mod plan;
pub mod providers;
