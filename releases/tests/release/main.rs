//! Integration tests of `relay-release`: one test per attack of upgrade-threats.md §2 (each
//! asserting its own `Error` variant), the downloader against a local HTTP server, interop
//! with `gpg` and `sq`, and the `release-tool` CLI.
//!
//! Fixtures live in `releases/testdata/<scenario>/`; `regenerate_fixtures` (ignored) rewrites
//! them from the test-only keys.

// Test code: a failed unwrap is a failed test (clippy's allow-unwrap-in-tests covers only
// `#[test]` functions, not the helpers of an integration-test binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod fetch;
mod interop;
mod rollout;
mod roots;
mod support;
mod tool;
