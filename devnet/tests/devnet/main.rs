//! The devnet's one integration-test binary: servers over real HTTP, the circuit client
//! against an in-test relay peer, and the CLI.

// Test helpers outside #[test] functions may panic on setup failure: that is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod circuit;
mod cli;
mod servers;
mod support;
