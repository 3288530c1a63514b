//! Tollgate: an authenticating reverse proxy.
//!
//! A request walks a fixed list of steps, each a small function over plain
//! values; only the forward step does I/O:
//!
//! ```text
//! target → route → credential → token → client ip → scope → method → limit → forward → log
//! ```
//!
//! The request path (see `ARCHITECTURE.md` for the whole picture):
//!
//! ```text
//! gateway::handle: admit (steps 1–8) → prepare → forward → filter → log
//! ```
//!
//! Module map, from the command line down:
//!
//! - [`cli`]: the command line; [`demo`]: the built-in demo;
//!   [`diagnostics`]: the gateway's own log on stderr.
//! - [`server`]: listeners, connections, the connection watchdog, reloads,
//!   signals and drain; [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`gateway`]: the per-request phases over one `Exchange`;
//!   [`explain`] runs the same admission with a trace.
//! - [`policy`]: `Settings → Policy` (routes with their upstreams, the
//!   credential rules, limiters, TLS), the current snapshot and the state
//!   retained across reloads.
//! - [`auth`]: credential extraction, token lookup, authorisation.
//! - [`proxy`]: upstream clients and pools, header hygiene, bodies.
//! - [`target`], [`routes`], [`method`], [`clientip`]: path
//!   canonicalisation, longest-prefix routes, what counts as writing, the
//!   client address.
//! - [`tokens`]: token ids, hashes, records, the index and its sources.
//! - [`ratelimit`]: per-token and failed-auth limiters (local or Redis).
//! - [`reject`]: every gateway-made answer; [`accesslog`], [`metrics`].
//! - [`config`]: YAML → schema → validated `Settings`; [`tls`]: server
//!   TLS configs.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod clientip;
pub mod config;
pub mod demo;
pub mod diagnostics;
pub mod explain;
pub mod gateway;
pub mod method;
pub mod metrics;
pub mod policy;
pub mod progress;
pub mod proxy;
pub mod ratelimit;
pub mod reject;
pub mod routes;
pub mod server;
pub mod target;
pub mod tls;
pub mod tokens;
