//! Integration tests: the real gateway on 127.0.0.1:0 in front of a
//! recording upstream, asserting both the answer and what the upstream
//! received.

mod access_rules;
mod adversarial;
mod cli;
mod client_faults;
mod database;
mod decisions;
mod forwarding;
mod h2;
mod lifecycle;
mod limits;
mod observability;
mod paths;
mod resources;
mod scaleout;
mod sessions;
mod support;
mod tls;
mod websocket;
