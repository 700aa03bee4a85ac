//! The downloader against a local server on 127.0.0.1: endless data, slow retrieval,
//! truncation, retries, and "nothing reaches its final path unless everything verified".

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_release::fetch::{Destination, Fetcher, Limits, Progress};
use relay_release::layout::statement_name;
use relay_release::{Error, Layout, Product, verify_release_files};

use crate::support::server::{Route, Server};
use crate::support::{ASSET, VERSION, expected, project_keys, scenario_dir};

const STATEMENT_PATH: &str = "v0.7.1/wireleap-relay_linux-x86_64.hash";
const ASSET_PATH: &str = "v0.7.1/wireleap-relay_linux-x86_64";

pub(crate) fn limits() -> Limits {
    Limits {
        connect_timeout: Duration::from_secs(2),
        read_gap: Duration::from_millis(400),
        deadline: Duration::from_secs(10),
        attempts: 2,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
    }
}

pub(crate) fn fetcher(server: &Server, limits: Limits) -> Fetcher {
    Fetcher::try_new(Layout::try_new(&server.base_url()).unwrap(), limits).unwrap()
}

fn destination(dir: &Path) -> Destination {
    Destination {
        binary: dir.join("wireleap-relay.next"),
        statement: dir.join("wireleap-relay.next.hash"),
        supervisor: None,
    }
}

/// Serves the `valid` fixture, then lets the test replace routes.
async fn serve_valid() -> Server {
    let server = Server::start().await;
    server.serve_dir(VERSION, &scenario_dir("valid"));
    server
}

async fn stage(server: &Server, limits: Limits, dest_dir: &Path) -> Result<(), Error> {
    fetcher(server, limits)
        .stage_release(&project_keys(), &expected(), &destination(dest_dir), |_| {})
        .await
        .map(|_| ())
}

/// The destination directory holds nothing: no final file, no temp file.
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn valid_release_is_staged_and_verifies_again() {
    let server = serve_valid().await;
    let dir = tempfile::tempdir().unwrap();
    let dest = destination(dir.path());
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let seen2 = seen.clone();
    let fetcher = fetcher(&server, limits());
    let staged = fetcher
        .stage_release(&project_keys(), &expected(), &dest, move |p| {
            seen2.lock().unwrap().push(p);
        })
        .await
        .unwrap();
    assert_eq!(staged.binary, dest.binary);
    assert_eq!(
        std::fs::read(&dest.binary).unwrap(),
        std::fs::read(scenario_dir("valid").join(ASSET)).unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dest.binary)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
    let progress = seen.lock().unwrap().clone();
    assert_eq!(
        progress.first(),
        Some(&Progress {
            done: 0,
            total: 4096
        })
    );
    assert_eq!(
        progress.last(),
        Some(&Progress {
            done: 4096,
            total: 4096
        })
    );
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done));
    // The supervisor's own check of what was staged.
    verify_release_files(&dest.statement, &dest.binary, &project_keys(), &expected()).unwrap();
    // The changelog is listed in the statement and checked against it.
    let notes = fetcher.fetch_changelog(&staged.verified).await.unwrap();
    assert!(notes.starts_with("# 0.7.1"));
    // Two files only, no temp file left.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[tokio::test]
async fn prefix_injected_digest_is_refused_before_the_binary_is_requested() {
    let server = Server::start().await;
    server.serve_dir(VERSION, &scenario_dir("prefix-injected"));
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::UnsignedText { .. }), "{err:?}");
    assert_eq!(server.hits(ASSET_PATH), 0);
    assert_empty(dir.path());
}

#[tokio::test]
async fn endless_data_binary_is_cut_at_its_signed_size() {
    let server = serve_valid().await;
    server.route(ASSET_PATH, Route::Endless);
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::Oversized { limit: 4096, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(server.hits(ASSET_PATH), 1, "not retried");
    assert_empty(dir.path());
}

#[tokio::test]
async fn endless_data_declared_too_long_fails_before_the_body() {
    let server = serve_valid().await;
    server.route(ASSET_PATH, Route::DeclaredLength(10 << 30));
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::Oversized { .. }), "{err:?}");
    assert_empty(dir.path());
}

#[tokio::test]
async fn endless_data_statement_is_cut_at_64_kib() {
    let server = serve_valid().await;
    server.route(STATEMENT_PATH, Route::Endless);
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::StatementTooLarge { .. }), "{err:?}");
    assert_empty(dir.path());
}

#[tokio::test]
async fn slow_retrieval_stalled_server_times_out_and_is_retried() {
    let server = serve_valid().await;
    let valid = std::fs::read(scenario_dir("valid").join(ASSET)).unwrap();
    server.route(ASSET_PATH, Route::StallAfter(valid[..1000].to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(server.hits(ASSET_PATH), 2, "tried `attempts` times");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_empty(dir.path());
}

#[tokio::test]
async fn slow_retrieval_stalled_headers_time_out() {
    let server = serve_valid().await;
    server.route(STATEMENT_PATH, Route::Silent);
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::Stalled { .. }), "{err:?}");
}

#[tokio::test]
async fn slow_retrieval_trickle_hits_the_overall_deadline() {
    let server = serve_valid().await;
    server.route(ASSET_PATH, Route::Trickle(Duration::from_millis(20)));
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = stage(
        &server,
        Limits {
            deadline: Duration::from_millis(600),
            ..limits()
        },
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_empty(dir.path());
}

#[tokio::test]
async fn truncated_download_is_refused_after_retries() {
    let server = serve_valid().await;
    let valid = std::fs::read(scenario_dir("valid").join(ASSET)).unwrap();
    server.route(ASSET_PATH, Route::CloseAfter(valid[..3000].to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 4096,
                got: 3000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.hits(ASSET_PATH), 2);
    assert_empty(dir.path());
}

#[tokio::test]
async fn digest_mismatch_download_is_refused() {
    let server = Server::start().await;
    server.serve_dir(VERSION, &scenario_dir("digest-mismatch"));
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert_eq!(server.hits(ASSET_PATH), 1, "not retried");
    assert_empty(dir.path());
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let server = serve_valid().await;
    let valid = std::fs::read(scenario_dir("valid").join(ASSET)).unwrap();
    server.route(
        ASSET_PATH,
        Route::FailThen {
            status: 503,
            failures: 2,
            then: valid,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    stage(
        &server,
        Limits {
            attempts: 3,
            ..limits()
        },
        dir.path(),
    )
    .await
    .unwrap();
    assert_eq!(server.hits(ASSET_PATH), 3);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = stage(&server, limits(), dir.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(server.hits(STATEMENT_PATH), 1);
}

#[tokio::test]
async fn refused_connection_is_a_retryable_connect_error() {
    // Bind then drop a listener: its port now refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let fetcher = Fetcher::try_new(
        Layout::try_new(&format!("http://127.0.0.1:{port}/")).unwrap(),
        limits(),
    )
    .unwrap();
    let err = fetcher
        .fetch_statement(&project_keys(), &expected())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn channels_are_read_from_the_base_url() {
    let server = Server::start().await;
    server.route(
        "channels.json",
        Route::Bytes(br#"{"relay": {"default": "0.7.1", "beta": "0.8.0-rc.1"}}"#.to_vec()),
    );
    let fetcher = fetcher(&server, limits());
    let v = fetcher
        .channel_version(&Product::relay(), "default")
        .await
        .unwrap();
    assert_eq!(v.to_string(), "0.7.1");
    let err = fetcher
        .channel_version(&Product::relay(), "nightly")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Channels { .. }), "{err:?}");
}

#[tokio::test]
async fn statement_name_follows_the_layout() {
    let server = serve_valid().await;
    let fetcher = fetcher(&server, limits());
    fetcher
        .fetch_statement(&project_keys(), &expected())
        .await
        .unwrap();
    assert_eq!(
        server.hits(&format!("v{VERSION}/{}", statement_name(ASSET))),
        1
    );
}
