//! Traffic through a relay while something happens to it: a new short stream every 10 ms (each
//! on a fresh connection, as inner hops arrive) and long-lived streams echoing data throughout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use wireleap_devnet::client::{CircuitClient, ClientConfig, Hop, StreamEnd};
use wireleap_protocol::{Network, Servicekey};

const WAIT: Duration = Duration::from_secs(30);

/// One short stream on a fresh connection: 16 bytes there and back, then a clean end.
pub async fn short_stream(sk: &Servicekey, hop: &Hop, target: SocketAddr) -> Result<(), String> {
    let c = CircuitClient::new(sk.clone(), vec![hop.clone()], ClientConfig::default())
        .map_err(|e| e.to_string())?;
    let mut s = c
        .open(&target.to_string(), Network::Tcp)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"0123456789abcdef")
        .await
        .map_err(|e| e.to_string())?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
    s.finish();
    match s.wait_end().await {
        StreamEnd::Clean => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Running load; [`Load::finish`] stops it and returns the counts.
pub struct Load {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<(String, std::time::Instant)>>>,
    /// The slowest successful short stream, in microseconds.
    slowest: Arc<AtomicU64>,
    opener: JoinHandle<()>,
    long: Vec<JoinHandle<Result<u64, String>>>,
}

/// What the load saw.
#[derive(Debug)]
pub struct Counts {
    /// Short streams that round-tripped.
    pub opened: u64,
    /// Short streams that failed, with why.
    pub failed: Vec<String>,
    /// When each of [`Self::failed`] began.
    pub failed_began: Vec<std::time::Instant>,
    /// Long-lived streams that were cut, with why.
    pub cut: Vec<String>,
    /// Long-lived streams in all.
    pub long: usize,
    /// The slowest successful short stream (connect, TLS, HTTP/2, admission, 16 bytes there and
    /// back): the longest a client waited on the listener.
    pub slowest: Duration,
}

impl Counts {
    /// The failed opens whose connection was refused (the listening socket was not there).
    #[must_use]
    pub fn refused(&self) -> Vec<&String> {
        self.failed
            .iter()
            .filter(|f| f.to_lowercase().contains("refused"))
            .collect()
    }
}

impl Counts {
    /// Prints the counts after `what`, then asserts that no open failed, no long-lived stream
    /// was cut, and more than `min_opened` opens went through.
    pub fn assert_clean(&self, what: &str, min_opened: u64) {
        println!(
            "{what}: {} opens ok, {} failed; {} of {} long-lived streams cut",
            self.opened,
            self.failed.len(),
            self.cut.len(),
            self.long
        );
        assert!(self.failed.is_empty(), "failed opens: {:?}", self.failed);
        assert!(self.cut.is_empty(), "cut streams: {:?}", self.cut);
        assert!(self.opened > min_opened, "too little load: {}", self.opened);
    }
}

impl Load {
    /// Starts `long` long-lived streams (10 per connection) and the 10 ms opener on `rt`.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        sk: &Servicekey,
        hop: &Hop,
        target: SocketAddr,
        long: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        let mut client = None;
        for i in 0..long {
            if i % 10 == 0 {
                client = Some(Arc::new(
                    CircuitClient::new(sk.clone(), vec![hop.clone()], ClientConfig::default())
                        .unwrap(),
                ));
            }
            let (client, stop) = (Arc::clone(client.as_ref().unwrap()), Arc::clone(&stop));
            handles.push(rt.spawn(async move {
                let mut s = client
                    .open(&target.to_string(), Network::Tcp)
                    .await
                    .map_err(|e| format!("open: {e}"))?;
                let chunk = vec![i as u8; 1024];
                let mut back = vec![0u8; 1024];
                let mut rounds = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&chunk)
                        .await
                        .map_err(|e| format!("write after {rounds} rounds: {e}"))?;
                    s.read_exact(&mut back)
                        .await
                        .map_err(|e| format!("read after {rounds} rounds: {e}"))?;
                    if back != chunk {
                        return Err("bytes differ".to_owned());
                    }
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                s.finish();
                match tokio::time::timeout(WAIT, s.wait_end()).await {
                    Ok(StreamEnd::Clean) => Ok(rounds),
                    other => Err(format!("end after {rounds} rounds: {other:?}")),
                }
            }));
        }
        let slowest = Arc::new(AtomicU64::new(0));
        let opener = {
            let (stop, opened, failures, sk, hop, slowest) = (
                Arc::clone(&stop),
                Arc::clone(&opened),
                Arc::clone(&failures),
                sk.clone(),
                hop.clone(),
                Arc::clone(&slowest),
            );
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut tasks = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let (opened, failures, sk, hop, slowest) = (
                        Arc::clone(&opened),
                        Arc::clone(&failures),
                        sk.clone(),
                        hop.clone(),
                        Arc::clone(&slowest),
                    );
                    tasks.push(tokio::spawn(async move {
                        let began = std::time::Instant::now();
                        match tokio::time::timeout(WAIT, short_stream(&sk, &hop, target)).await {
                            Ok(Ok(())) => {
                                opened.fetch_add(1, Ordering::Relaxed);
                                let took =
                                    u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                                slowest.fetch_max(took, Ordering::Relaxed);
                            }
                            other => failures.lock().unwrap().push((format!("{other:?}"), began)),
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        };
        Self {
            stop,
            opened,
            failures,
            slowest,
            opener,
            long: handles,
        }
    }

    /// Stops the load and waits for every stream to end.
    /// Short streams opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn finish(self, rt: &tokio::runtime::Runtime) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(self.opener).unwrap();
        let long = self.long.len();
        let cut = self
            .long
            .into_iter()
            .filter_map(|t| rt.block_on(t).unwrap().err())
            .collect();
        let (failed, failed_began) = self.failures.lock().unwrap().iter().cloned().unzip();
        Counts {
            opened: self.opened.load(Ordering::Relaxed),
            failed,
            failed_began,
            cut,
            long,
            slowest: Duration::from_micros(self.slowest.load(Ordering::Relaxed)),
        }
    }
}
