//! The stand-in network (the devnet crate) running inside the test process, on its own tokio
//! runtime, so tests can flip its switches and read what it saw.

use std::time::Duration;

use wireleap_devnet::{Config, Devnet, RecordedRequest, Server};

use super::eventually;

/// A devnet and the runtime that drives it.
pub struct Standin {
    pub net: Devnet,
    _rt: tokio::runtime::Runtime,
}

impl Standin {
    /// Starts a devnet with fresh keys on loopback ports.
    pub fn start() -> Self {
        Self::start_with(Config::default())
    }

    pub fn start_with(config: Config) -> Self {
        let rt = super::runtime();
        let net = rt.block_on(Devnet::start(config)).unwrap();
        Self { net, _rt: rt }
    }

    /// Requests the directory saw to `/relays` with `method`.
    pub fn relays_requests(&self, method: &str) -> Vec<RecordedRequest> {
        self.net
            .requests_to(Server::Directory)
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with("/relays"))
            .collect()
    }

    /// Whether the directory has `pubkey` enrolled.
    pub fn is_enrolled(&self, pubkey: &str) -> bool {
        self.net
            .enrolled()
            .iter()
            .any(|e| e.pubkey.to_b64() == pubkey)
    }

    /// Waits until the directory has `pubkey` enrolled.
    pub fn wait_enrolled(&self, pubkey: &str, within: Duration) {
        eventually(within, "the relay to enroll", || self.is_enrolled(pubkey));
    }
}
