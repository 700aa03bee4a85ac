//! End-to-end tests: the real binaries, in temp home directories, on loopback.
//!
//! One test binary for the package (modules below). Every test starts its own processes on port
//! 0, waits on readiness instead of sleeping, bounds every loop, and leaves no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod support;

mod apache;
mod cli_upgrade;
mod client;
mod config;
mod enrollment;
mod health;
mod identity;
mod ledger;
mod lifecycle;
mod metrics;
mod package;
mod privsep;
mod recovery;
mod rollout;
mod staged;
mod status;
mod supervisor;
mod swap;
mod transport;
mod trust;
mod units;
mod upgrade;
mod usage;
mod verified;
