//! A tiny HTTP/1.1 release server on 127.0.0.1 port 0, with misbehaving routes: endless data,
//! a stall, a trickle, a short body, failures before success. Every loop is bounded in count
//! and time; the server task is aborted when the `Server` is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The most any route keeps a connection open or sends.
const MAX_ROUTE_TIME: Duration = Duration::from_secs(20);
const MAX_ENDLESS_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// 200 with these bytes and a Content-Length.
    Bytes(Vec<u8>),
    /// 200, no Content-Length, data until the client goes away (bounded).
    Endless,
    /// 200 with a Content-Length claiming `declared` bytes (and sending none).
    DeclaredLength(u64),
    /// 200, send these bytes, then stall (bounded).
    StallAfter(Vec<u8>),
    /// 200, one byte every `every`, forever (bounded).
    Trickle(Duration),
    /// 200 without Content-Length; send these bytes and close.
    CloseAfter(Vec<u8>),
    /// Read the request, never answer (bounded).
    Silent,
    /// `failures` times this status, then the bytes.
    FailThen {
        status: u16,
        failures: usize,
        then: Vec<u8>,
    },
}

#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let conns = Arc::new(AtomicUsize::new(0));
        let task = {
            let routes = routes.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                // At most 200 connections per test server.
                while conns.fetch_add(1, Ordering::SeqCst) < 200 {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let routes = routes.clone();
                    let hits = hits.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(MAX_ROUTE_TIME, handle(stream, routes, hits))
                            .await;
                    });
                }
            })
        };
        Self {
            addr,
            routes,
            hits,
            task,
        }
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/releases/", self.addr)
    }

    pub(crate) fn route(&self, path: &str, route: Route) {
        self.routes
            .lock()
            .unwrap()
            .insert(format!("/releases/{path}"), route);
    }

    /// Serves every file of `dir` at `v<version>/<name>`.
    pub(crate) fn serve_dir(&self, version: &str, dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            self.route(
                &format!("v{version}/{name}"),
                Route::Bytes(std::fs::read(entry.path()).unwrap()),
            );
        }
    }

    pub(crate) fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(&format!("/releases/{path}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    mut stream: TcpStream,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let hit = {
        let mut hits = hits.lock().unwrap();
        let n = hits.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let route = routes.lock().unwrap().get(&path).cloned();
    let ok_len = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let ok_close = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    let status =
        |code: u16| format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    match route {
        None => {
            let _ = stream.write_all(status(404).as_bytes()).await;
        }
        Some(Route::Bytes(data)) => {
            let _ = stream.write_all(ok_len(data.len()).as_bytes()).await;
            let _ = stream.write_all(&data).await;
        }
        Some(Route::Endless) => {
            let _ = stream.write_all(ok_close.as_bytes()).await;
            let chunk = vec![0x5au8; 64 * 1024];
            let mut sent = 0u64;
            while sent < MAX_ENDLESS_BYTES {
                if stream.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
        }
        Some(Route::DeclaredLength(n)) => {
            let _ = stream
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").as_bytes())
                .await;
            tokio::time::sleep(MAX_ROUTE_TIME).await;
        }
        Some(Route::StallAfter(data)) => {
            let _ = stream.write_all(ok_close.as_bytes()).await;
            let _ = stream.write_all(&data).await;
            let _ = stream.flush().await;
            tokio::time::sleep(MAX_ROUTE_TIME).await;
        }
        Some(Route::Trickle(every)) => {
            let _ = stream.write_all(ok_close.as_bytes()).await;
            for _ in 0..10_000 {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
        }
        Some(Route::CloseAfter(data)) => {
            let _ = stream.write_all(ok_close.as_bytes()).await;
            let _ = stream.write_all(&data).await;
        }
        Some(Route::Silent) => {
            tokio::time::sleep(MAX_ROUTE_TIME).await;
        }
        Some(Route::FailThen {
            status: code,
            failures,
            then,
        }) => {
            if hit <= failures {
                let _ = stream.write_all(status(code).as_bytes()).await;
            } else {
                let _ = stream.write_all(ok_len(then.len()).as_bytes()).await;
                let _ = stream.write_all(&then).await;
            }
        }
    }
    let _ = stream.shutdown().await;
}
