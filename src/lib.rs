//! Tollgate: an authenticating reverse proxy.
//!
//! A request walks a fixed list of steps, each a small function over plain
//! values; only the forward step does I/O:
//!
//! ```text
//! target → route → credential → token → client ip → scope → method → limit → forward → log
//! ```
//!
//! Module map:
//!
//! - [`config`]: YAML → schema structs → validation → runtime [`config::Settings`].
//! - [`snapshot`]: the one `ArcSwap<Snapshot>` every request loads, and reload.
//! - [`target`]: request-target canonicalisation (`bad_path`).
//! - [`routes`]: segment-aware longest-prefix route table.
//! - [`tokens`]: token hashes, records, the in-memory index and the sources
//!   (file, SQLite, PostgreSQL) it is loaded from.
//! - [`auth`]: credential extraction and the authorisation decision.
//! - [`clientip`]: the client address through `client_ip.trusted_proxies`.
//! - [`ratelimit`]: per-token and failed-auth-per-IP limiters.
//! - [`proxy`]: the pooled upstream client and header hygiene.
//! - [`gateway`]: the per-request outer/inner functions.
//! - [`reject`]: every gateway-made refusal and its response.
//! - [`server`]: listeners, connections, TLS, signals and drain.
//! - [`admin`], [`metrics`], [`accesslog`]: observability.
//! - [`cli`]: the command line; [`demo`]: the built-in demo.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod clientip;
pub mod config;
pub mod credential;
pub mod demo;
pub mod explain;
pub mod gateway;
pub mod method;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reject;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod target;
pub mod tokens;
