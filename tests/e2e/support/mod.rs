//! Helpers shared by the e2e tests.

pub mod load;
pub mod process;
pub mod relay;
pub mod releases;
pub mod standin;
pub mod supervised;
pub mod target;
pub mod tls;
pub mod webserver;

pub use process::{Home, eventually};
