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

/// The runtime a test drives its clients and targets on: two workers, timers and I/O.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
