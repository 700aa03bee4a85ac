//! wireleap-devnet: a stand-in Wireleap network for end-to-end tests and the README demo.
//!
//! It follows `shared/spec/wireleap-protocol.md` as a real server would (it is a tool, not a
//! mock): a service contract, a directory and a static release server, each on its own
//! loopback HTTP/1.1 listener, plus a circuit client that speaks the relay protocol (TLS 1.3 +
//! HTTP/2, nested per hop). It must never be deployed as a real network: it funds every
//! servicekey and trusts every relay that signs its requests.
//!
//! # Layout
//! - [`network`]: [`Devnet::start`], the ready line, in-process control.
//! - [`state`]: switches, recorded requests, shared state.
//! - `contract`, `directory`, `releases`: the three servers' handlers.
//! - `admin`: the `/_devnet/` admin API (see its module doc for the table).
//! - [`client`]: servicekey minting and the circuit client.

mod admin;
pub mod client;
mod contract;
mod directory;
pub mod network;
mod releases;
pub mod state;
mod web;

use axum::Router;

pub use admin::Snapshot;
pub use directory::CHANNELS_FILE;
pub use network::{Config, Devnet, Error, Ready};
pub use state::{Down, RecordedRequest, Server, Switches};

/// The full router of one server: its own routes, the admin API, the gate and the recorder.
fn router(server: Server, shared: state::Shared) -> Router {
    let ctx = web::Ctx { shared, server };
    let own = match server {
        Server::Contract => contract::routes(),
        Server::Directory => directory::routes(),
        Server::Releases => releases::routes(),
    };
    admin::routes()
        .merge(own)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), web::gate))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            web::record,
        ))
        .with_state(ctx)
}
