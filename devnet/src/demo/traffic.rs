//! Traffic through the three-hop circuit while the relays change under it: a new short stream
//! every [`OPEN_EVERY`], each on a fresh circuit (three nested TLS sessions, so every hop sees a
//! new connection), and long-lived streams that echo data throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use wireleap_devnet::client::{CircuitClient, ClientConfig, Hop, StreamEnd};
use wireleap_protocol::{Network, Servicekey};

/// How often a short stream starts.
const OPEN_EVERY: Duration = Duration::from_millis(20);
/// Most short streams in flight; the opener waits rather than piling up more.
const MAX_IN_FLIGHT: usize = 64;
/// Bound on any one stream step (open, echo, end).
const STREAM_WAIT: Duration = Duration::from_secs(20);
/// Long-lived streams per circuit client (they share its first-hop connection).
const LONG_PER_CLIENT: usize = 5;

/// Where the traffic goes: the hops (first relay first), the servicekey paying for them, and the
/// echo target at the end.
#[derive(Debug, Clone)]
pub(crate) struct Circuit {
    /// The servicekey the sharetokens come from.
    pub(crate) sk: Servicekey,
    /// Fronting, entropic, backing.
    pub(crate) hops: Vec<Hop>,
    /// A TCP echo server.
    pub(crate) target: SocketAddr,
}

impl Circuit {
    fn client(&self) -> Result<CircuitClient, String> {
        CircuitClient::new(self.sk.clone(), self.hops.clone(), ClientConfig::default())
            .map_err(|e| format!("circuit client: {e}"))
    }
}

/// One short stream on a fresh circuit: 32 bytes there and back, then a clean end.
pub(crate) async fn short_stream(c: &Circuit) -> Result<(), String> {
    let run = async {
        let client = c.client()?;
        let mut s = client
            .open(&c.target.to_string(), Network::Tcp)
            .await
            .map_err(|e| format!("open: {e}"))?;
        let sent = *b"wireleap demo: 32 bytes of echo.";
        s.write_all(&sent)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = [0u8; 32];
        s.read_exact(&mut back)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if back != sent {
            return Err("the echo differs from what was sent".to_owned());
        }
        s.finish();
        match s.wait_end().await {
            StreamEnd::Clean => Ok(()),
            other => Err(format!("end: {other:?}")),
        }
    };
    tokio::time::timeout(STREAM_WAIT, run)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {STREAM_WAIT:?}")))
}

/// Running traffic; [`Traffic::finish`] stops it and returns what it saw.
#[derive(Debug)]
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    opener: JoinHandle<()>,
    long: Vec<JoinHandle<Result<u64, String>>>,
}

/// What the traffic saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Short streams that round-tripped and ended cleanly.
    pub(crate) ok: u64,
    /// Short streams that failed, with why.
    pub(crate) failed: Vec<String>,
    /// Long-lived streams in all.
    pub(crate) long: usize,
    /// Long-lived streams that were cut, with why.
    pub(crate) cut: Vec<String>,
}

impl Traffic {
    /// Starts `long` long-lived streams and the short-stream opener on the current runtime.
    pub(crate) fn start(circuit: &Circuit, long: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::with_capacity(long);
        let mut client: Option<Arc<CircuitClient>> = None;
        for i in 0..long {
            if i % LONG_PER_CLIENT == 0 {
                client = circuit.client().ok().map(Arc::new);
            }
            let (client, stop, target) = (client.clone(), Arc::clone(&stop), circuit.target);
            handles.push(tokio::spawn(async move {
                let client = client.ok_or("no circuit client")?;
                long_stream(&client, target, i, &stop).await
            }));
        }
        let opener = {
            let (stop, ok, failures, circuit) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failures),
                Arc::new(circuit.clone()),
            );
            tokio::spawn(async move {
                let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                let mut tick = tokio::time::interval(OPEN_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut tasks = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        break;
                    };
                    let (ok, failures, circuit) =
                        (Arc::clone(&ok), Arc::clone(&failures), Arc::clone(&circuit));
                    tasks.push(tokio::spawn(async move {
                        match short_stream(&circuit).await {
                            Ok(()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(why) => failures
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(why),
                        }
                        drop(slot);
                    }));
                    tasks.retain(|t| !t.is_finished());
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        };
        Self {
            stop,
            ok,
            failures,
            opener,
            long: handles,
        }
    }

    /// Short streams that succeeded so far.
    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Short streams that failed so far.
    pub(crate) fn failed(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops opening streams, ends the long-lived ones and waits for every stream to end.
    pub(crate) async fn finish(self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.opener.await;
        let long = self.long.len();
        let mut cut = Vec::new();
        for h in self.long {
            match h.await {
                Ok(Ok(_rounds)) => {}
                Ok(Err(why)) => cut.push(why),
                Err(e) => cut.push(format!("task: {e}")),
            }
        }
        let failed = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Counts {
            ok: self.ok.load(Ordering::Relaxed),
            failed,
            long,
            cut,
        }
    }
}

/// One long-lived stream: 1 KiB echoed every 50 ms until `stop`, then a clean end.
async fn long_stream(
    client: &CircuitClient,
    target: SocketAddr,
    i: usize,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let step = |what: &'static str| move |_| format!("{what}: no answer within {STREAM_WAIT:?}");
    let mut s = tokio::time::timeout(STREAM_WAIT, client.open(&target.to_string(), Network::Tcp))
        .await
        .map_err(step("open"))?
        .map_err(|e| format!("open: {e}"))?;
    let chunk = vec![u8::try_from(i % 251).unwrap_or(0); 1024];
    let mut back = vec![0u8; chunk.len()];
    let mut rounds = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::timeout(STREAM_WAIT, s.write_all(&chunk))
            .await
            .map_err(step("write"))?
            .map_err(|e| format!("write after {rounds} rounds: {e}"))?;
        tokio::time::timeout(STREAM_WAIT, s.read_exact(&mut back))
            .await
            .map_err(step("read"))?
            .map_err(|e| format!("read after {rounds} rounds: {e}"))?;
        if back != chunk {
            return Err(format!("round {rounds}: the echo differs"));
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.finish();
    match tokio::time::timeout(STREAM_WAIT, s.wait_end()).await {
        Ok(StreamEnd::Clean) => Ok(rounds),
        Ok(other) => Err(format!("end after {rounds} rounds: {other:?}")),
        Err(_) => Err(format!("end: no answer within {STREAM_WAIT:?}")),
    }
}

/// A TCP echo server on 127.0.0.1 (the destination of every stream), served by the current
/// runtime until it shuts down.
pub(crate) async fn tcp_echo() -> std::io::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}
