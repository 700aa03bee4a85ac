//! One relay started in the background (`start`) in a temp home, enrolled at a stand-in network:
//! the common setup of the metrics and fronting tests, and a full-duplex echo round trip.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wireleap_devnet::client::{CircuitClient, Hop, StreamEnd};
use wireleap_protocol::{Network, PublicKey};

use super::standin::Standin;
use super::{Home, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// A started relay. Dropping it kills the daemon (through its home).
pub struct StartedRelay {
    pub home: Home,
    /// The relay as a circuit hop (its own listen address).
    pub hop: Hop,
}

/// Starts a relay with `role` in `s`'s contract, loopback targets allowed, and `extra` top-level
/// config keys (`"key": value, ...` or empty); waits until it listens and is enrolled.
pub fn start(s: &Standin, role: &str, extra: &str) -> StartedRelay {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("{extra},")
    };
    let home = Home::with_config(&format!(
        r#"{{"address": "127.0.0.1:0", {extra} "danger_zone": {{"allow_loopback": true}},
            "contracts": {{"{}": {{"address": "wireleap://127.0.0.1:13499", "role": "{role}"}}}}}}"#,
        s.net.contract_url()
    ));
    let key: String = serde_json::from_str(&home.read("key.pub")).unwrap();
    home.ok(&["start"]);
    eventually(WAIT, "the listen address in the log", || {
        home.read("wireleap-relay.log")
            .contains("Listening for H/2 requests on https://")
    });
    s.wait_enrolled(&key, WAIT);
    let hop = Hop::new(
        format!("wireleap://{}", home.listen_addr()),
        PublicKey::try_from_b64(&key).unwrap(),
    );
    StartedRelay { home, hop }
}

/// Streams `len` patterned bytes to an echo `target` through `c`, full duplex, checks they come
/// back intact, then a clean end.
pub async fn round_trip(c: &CircuitClient, target: SocketAddr, len: usize) {
    let s = tokio::time::timeout(WAIT, c.open(&target.to_string(), Network::Tcp))
        .await
        .unwrap()
        .unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(s);
    let (back, ()) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            async {
                let mut back = vec![0u8; len];
                r.read_exact(&mut back).await.unwrap();
                back
            },
            async { w.write_all(&data).await.unwrap() }
        )
    })
    .await
    .unwrap();
    assert!(back == data, "bytes differ after the round trip");
    let mut s = r.unsplit(w);
    s.finish();
    assert_eq!(
        tokio::time::timeout(WAIT, s.wait_end()).await.unwrap(),
        StreamEnd::Clean
    );
}
