//! Signed releases of the Wireleap relay: the release format, its signing and verification,
//! the downloader, and the `release-tool` binary.
//!
//! The format and the numbered verification steps are specified in `releases/SPEC.md`; code
//! that implements a step cites it ("SPEC step N"). The relay's Upgrader downloads and stages
//! releases with [`fetch::Fetcher`]; the supervisor verifies the staged files again, offline,
//! with [`verify::verify_release_files`] (it can depend on this crate with
//! `default-features = false` to leave out the HTTP stack and the tools).
//!
//! # Layout
//!
//! - [`error`]: the crate's [`Error`], one variant per failure, with `is_retryable()`.
//! - [`version`]: safe version parsing and the version floor (rollback protection).
//! - [`layout`]: product, target, asset names, release URLs and paths, `channels.json`.
//! - [`manifest`]: the signed statement's text: render and parse.
//! - [`keys`]: the keys trusted for a role, with its threshold, and signing keys.
//! - [`root`]: the signed root: keys, roles, thresholds, version, expiry; rotation.
//! - [`rollout`]: phased rollouts: the signed rollout document, positions, the schedule.
//! - [`outcome`]: upgrade outcome reports signed by relays, and how a rollout service counts
//!   them and decides to halt.
//! - [`trust`]: what a home directory and the build trust (roots, key files), with the
//!   permission checks.
//! - [`sign`]: clear-signing a statement (release tool and tests only).
//! - [`verify`]: steps 1-11, offline.
//! - [`durable`]: temp file + fsync + rename (step 12).
//! - [`fetch`] (feature `fetch`): download with caps, timeouts and retries, then stage.
//! - [`service`] (feature `service`): the rollout service of `release-tool rollout serve`.
//!
//! This crate never runs, installs or swaps a binary: it only says whether a release is
//! genuine and puts verified bytes where it is told.

pub mod durable;
pub mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod outcome;
pub mod rollout;
pub mod root;
#[cfg(feature = "service")]
pub mod service;
pub mod sign;
pub mod stamp;
pub mod trust;
pub mod verify;
pub mod version;

pub use error::Error;
pub use keys::{SigningKey, TrustedKeys};
pub use layout::{Channels, Layout, Product, ReleaseDir, Target};
pub use manifest::{FileEntry, Statement};
pub use root::{Role, Root};
pub use trust::Trust;
pub use verify::{
    Expected, ExpiryCheck, VerifiedStatement, verify_release_files, verify_statement,
};
pub use version::{VersionFloor, parse_version};
