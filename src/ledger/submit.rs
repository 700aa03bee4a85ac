//! Submission of pending sharetokens to their contracts (spec §5.6 with §10 #4).
//!
//! A round claims the tokens that are due (`settlement_open + 1` for a new token, later for a
//! retry), POSTs each to `<contract URL>/submit` with a few in flight at once, and records every
//! outcome in one transaction:
//! - accepted (2xx with a JSON body, or 409 "already submitted" after a crash between the
//!   contract's answer and our commit): `archived` when `archive_dir` is set and the file was
//!   written in the reference layout `<archive_dir>/<contract>/<signature>.json`, else
//!   `submitted`;
//! - "settlement window already closed": `expired`, final;
//! - any other failure: retried one `auto_submit_interval` later, until `settlement_close`,
//!   when the token is expired (and kept).
//!
//! Each submission is retried as the reference's client retries it (spec §4.2: three attempts,
//! 5 s apart, as the same request); once a contract failed so, the round leaves its other tokens
//! for the next one. Who calls it: the [`super::Ledger`] actor, once per `auto_submit_interval`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use tracing::{debug, info, warn};
use wireleap_protocol::status;
use wireleap_protocol::unix_now;

use super::store::{Due, Outcome};
use super::writer::Writer;
use crate::directory::Admission;
use crate::directory::client::{self, Client, Retry};

/// Submissions in flight at once.
const CONCURRENCY: usize = 16;
/// Tokens claimed per batch of a round: as many as are submitted at once, so every claimed
/// token's submission starts at its claim and ends within its lease (see `lease`).
const CLAIM_LIMIT: usize = CONCURRENCY;
/// Batches per round at most (the next tick picks up the rest).
const MAX_BATCHES: usize = 1024;

/// The contracts whose submissions failed in this round after their retries (spec §4.2: three
/// attempts, 5 s apart): the round submits nothing more to them, so a contract that is down
/// costs a round about one submission's retries, not every due token's.
#[derive(Debug, Default)]
struct Unavailable(std::sync::Mutex<std::collections::HashSet<String>>);

impl Unavailable {
    fn failed(&self, url: &str) -> bool {
        let set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(url)
    }

    fn mark(&self, url: &str) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(url.to_owned());
    }
}

/// What a submission round needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// The signed API client.
    pub client: Client,
    /// Contract id → URL.
    pub admission: Admission,
    /// The tick; a failed token is retried one interval later.
    pub interval: Duration,
    /// `<home>/<archive_dir>`, if configured.
    pub archive_dir: Option<PathBuf>,
    /// How one submission is retried within a round ([`Retry::PERFORM`], spec §4.2).
    pub retry: Retry,
}

impl Submitter {
    /// How long a claimed token stays invisible to other rounds (and to another process
    /// sharing the ledger, the other generation during a handover): long enough for one
    /// submission and its retries' pauses (spec §4.2), short enough that a token whose process
    /// died mid-submission (kill -9) is submitted again soon. A submission whose attempts each
    /// run into the request timeout can outlast it, and another process may then submit the
    /// token as well: the contract answers that one 409, which counts as accepted.
    fn lease(&self) -> i64 {
        let secs = i64::try_from(self.interval.as_secs()).unwrap_or(i64::MAX);
        let pauses = self
            .retry
            .delay
            .saturating_mul(self.retry.attempts.saturating_sub(1));
        let pauses = i64::try_from(pauses.as_secs()).unwrap_or(i64::MAX);
        secs.saturating_mul(2)
            .clamp(2, 60)
            .max(pauses.saturating_add(5))
    }

    fn interval_secs(&self) -> i64 {
        i64::try_from(self.interval.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    /// One round: submit every due token. Returns how many were accepted.
    pub async fn round(&self, writer: &Writer) -> usize {
        let mut accepted = 0;
        let down = Unavailable::default();
        for _ in 0..MAX_BATCHES {
            let due = match writer.claim(unix_now(), self.lease(), CLAIM_LIMIT).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "ledger: could not read due sharetokens");
                    return accepted;
                }
            };
            if due.is_empty() {
                break;
            }
            let outcomes: Vec<(i64, Outcome)> = futures::stream::iter(due)
                .map(|d| {
                    let down = &down;
                    async move { (d.id, self.submit_one(&d, down).await) }
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            accepted += outcomes
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Accepted { .. }))
                .count();
            if let Err(e) = writer.record(outcomes).await {
                // The contract has them; a resubmission after the lease gets 409 = accepted.
                warn!(error = %e, "ledger: could not record submission outcomes");
                return accepted;
            }
        }
        crate::metrics::tokens_submitted(accepted);
        if accepted > 0 {
            info!(tokens = accepted, "sharetokens submitted");
        }
        accepted
    }

    async fn submit_one(&self, due: &Due, down: &Unavailable) -> Outcome {
        let now = unix_now();
        let Some(url) = self.admission.url_of(&due.contract) else {
            // The contract's id is not known yet (discovery pending) or it was removed.
            return Outcome::Postpone {
                next_attempt: now.saturating_add(self.interval_secs()),
            };
        };
        if down.failed(&url) {
            // Its retries already failed in this round: the rest wait for the next one, with
            // no attempt counted (none was made).
            return Outcome::Postpone {
                next_attempt: now.saturating_add(self.interval_secs()),
            };
        }
        let result = self
            .client
            .submit(&url, due.body.as_bytes(), self.retry)
            .await;
        // The contract is unavailable, not this token refused: network trouble, a 5xx, or a
        // reply that is not a status object (a 2xx that is not JSON is about this reply).
        if let Err(e) = &result
            && e.is_retryable()
            && !matches!(e, client::Error::Decode { .. })
        {
            down.mark(&url);
        }
        let outcome = classify(result, now, due.settlement_close, self.interval_secs());
        match &outcome {
            Outcome::Accepted { .. } => self.archive(due).await,
            Outcome::Retry { error, .. } => {
                debug!(id = %short(&due.signature), error = %error, "sharetoken submission failed; will retry");
                outcome
            }
            Outcome::Expire { error } => {
                crate::metrics::token_expired();
                warn!(id = %short(&due.signature), error = %error, "sharetoken expired unsubmitted");
                outcome
            }
            Outcome::Postpone { .. } => outcome,
        }
    }

    /// Writes the archive file if configured; the outcome says whether it was.
    async fn archive(&self, due: &Due) -> Outcome {
        let Some(dir) = self.archive_dir.clone() else {
            return Outcome::Accepted { archived: false };
        };
        let (contract, signature, body) = (
            due.contract.clone(),
            due.signature.clone(),
            due.body.clone(),
        );
        let written = tokio::task::spawn_blocking(move || {
            write_archive(&dir, &contract, &signature, body.as_bytes())
        })
        .await;
        match written {
            Ok(Ok(())) => Outcome::Accepted { archived: true },
            Ok(Err(e)) => {
                warn!(error = %e, id = %short(&due.signature), "could not archive a submitted sharetoken");
                Outcome::Accepted { archived: false }
            }
            Err(e) => {
                warn!(error = %e, "archive task failed");
                Outcome::Accepted { archived: false }
            }
        }
    }
}

/// Maps a submission result to the token's next state.
pub fn classify(
    result: Result<(), client::Error>,
    now: i64,
    settlement_close: i64,
    interval_secs: i64,
) -> Outcome {
    let e = match result {
        Ok(()) => return Outcome::Accepted { archived: false },
        Err(e) => e,
    };
    if let Some(s) = e.status() {
        if s.cause == status::cause::SETTLEMENT_CLOSED
            || s.description == status::cause::SETTLEMENT_CLOSED
        {
            return Outcome::Expire {
                error: e.to_string(),
            };
        }
        if s.code == status::CONFLICT.code {
            // Already accepted (we crashed, or lost the reply, after an earlier submission).
            return Outcome::Accepted { archived: false };
        }
    }
    if now >= settlement_close {
        return Outcome::Expire {
            error: e.to_string(),
        };
    }
    Outcome::Retry {
        next_attempt: now.saturating_add(interval_secs),
        error: e.to_string(),
    }
}

/// `<dir>/<contract>/<signature>.json` (spec §5.5 layout), written to a temp file, fsynced and
/// renamed into place so a crash never leaves half a file.
///
/// # Errors
/// The I/O error.
pub fn write_archive(
    dir: &Path,
    contract: &str,
    signature: &str,
    body: &[u8],
) -> std::io::Result<()> {
    if !is_safe_name(contract) || !is_safe_name(signature) {
        return Err(std::io::Error::other("unsafe file name"));
    }
    let sub = dir.join(contract);
    std::fs::create_dir_all(&sub)?;
    wireleap_home::durable::write_atomic(&sub.join(format!("{signature}.json")), body, 0o644)
}

/// base64url text only: no path separators or dots.
fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The first characters of a token id, for logs (never the whole token).
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wireleap_protocol::Status;

    fn status_err(s: Status) -> Result<(), client::Error> {
        Err(client::Error::Status {
            url: "u".into(),
            status: s,
            sent: true,
        })
    }

    #[test]
    fn ledger_classify_follows_the_settlement_rules() {
        assert_eq!(
            classify(Ok(()), 10, 20, 5),
            Outcome::Accepted { archived: false }
        );
        let closed = status::BAD_REQUEST.with_cause(status::cause::SETTLEMENT_CLOSED);
        assert!(matches!(
            classify(status_err(closed), 10, 20, 5),
            Outcome::Expire { .. }
        ));
        assert!(matches!(
            classify(status_err(status::INTERNAL.status()), 10, 20, 5),
            Outcome::Retry {
                next_attempt: 15,
                ..
            }
        ));
        assert!(matches!(
            classify(status_err(status::INTERNAL.status()), 20, 20, 5),
            Outcome::Expire { .. }
        ));
        assert_eq!(
            classify(status_err(status::CONFLICT.status()), 10, 20, 5),
            Outcome::Accepted { archived: false }
        );
    }

    /// A contract stub on loopback: answers every request with `answer` (status line + JSON
    /// body) and counts the requests.
    async fn stub(
        answer: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
        hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head, then as much body as Content-Length says.
                let body_len = loop {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        break Some((end + 4, len));
                    }
                };
                let Some((start, len)) = body_len else {
                    continue;
                };
                while buf.len() < start + len {
                    let n = c.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (code, body) = answer.lock().unwrap().clone();
                let reply = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
                let _ = c.shutdown().await;
            }
        });
        url
    }

    #[tokio::test]
    async fn ledger_submission_retries_a_500_and_treats_settlement_closed_as_final() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        use crate::ledger::store::{Row, Store};

        let answer = Arc::new(Mutex::new((500, status::INTERNAL.status().to_json())));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = stub(answer.clone(), hits.clone()).await;
        let now = unix_now();
        let mut store = Store::in_memory().unwrap();
        let row = Row {
            settlement_open: now - 10,
            settlement_close: now + 100,
            body: r#"{"public_key":"sk","signature":"sig","contract":{"public_key":"ctr"}}"#.into(),
        };
        store.insert_batch(&[row], now).unwrap();
        let writer = Writer::spawn(store).unwrap();
        let admission = Admission::new();
        admission.register("ctr", &url);
        let key = wireleap_protocol::keys::generate_signing_key();
        let sub = Submitter {
            client: Client::try_new(key, "test").unwrap(),
            admission,
            interval: Duration::from_secs(1),
            archive_dir: None,
            retry: Retry {
                attempts: 3,
                delay: Duration::from_millis(10),
            },
        };

        // 500: tried three times (spec §4.2), then again one interval later; the token stays
        // pending.
        assert_eq!(sub.round(&writer).await, 0);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        assert_eq!(writer.counts().await.unwrap().pending, 1);
        // Not due again before the interval passed.
        assert_eq!(sub.round(&writer).await, 0);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(2100)).await;

        // "settlement window already closed": expired, final.
        *answer.lock().unwrap() = (
            400,
            status::BAD_REQUEST
                .with_cause(status::cause::SETTLEMENT_CLOSED)
                .to_json(),
        );
        sub.round(&writer).await;
        assert_eq!(hits.load(Ordering::SeqCst), 4, "a refusal is not retried");
        let c = writer.counts().await.unwrap();
        assert_eq!((c.pending, c.expired), (0, 1));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        *answer.lock().unwrap() = (200, status::OK.status().to_json());
        sub.round(&writer).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            4,
            "an expired token is never retried"
        );
    }

    /// A contract whose submissions keep failing after their retries ends its part of the
    /// round: only those already in flight pay the retries, the rest wait for the next round.
    #[tokio::test]
    async fn a_contract_that_keeps_failing_costs_a_round_one_batch_of_retries() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        use crate::ledger::store::{Row, Store};

        let answer = Arc::new(Mutex::new((500, status::INTERNAL.status().to_json())));
        let hits = Arc::new(AtomicUsize::new(0));
        let url = stub(answer, hits.clone()).await;
        let now = unix_now();
        let mut store = Store::in_memory().unwrap();
        let rows: Vec<Row> = (0..64)
            .map(|i| Row {
                settlement_open: now - 10,
                settlement_close: now + 100,
                body: format!(
                    r#"{{"public_key":"sk","signature":"sig{i}","contract":{{"public_key":"ctr"}}}}"#
                ),
            })
            .collect();
        store.insert_batch(&rows, now).unwrap();
        let writer = Writer::spawn(store).unwrap();
        let admission = Admission::new();
        admission.register("ctr", &url);
        let sub = Submitter {
            client: Client::try_new(wireleap_protocol::keys::generate_signing_key(), "t").unwrap(),
            admission,
            interval: Duration::from_secs(60),
            archive_dir: None,
            retry: Retry {
                attempts: 3,
                delay: Duration::from_millis(20),
            },
        };
        assert_eq!(sub.round(&writer).await, 0);
        let tried = hits.load(Ordering::SeqCst);
        assert!(
            tried <= 3 * CONCURRENCY,
            "{tried} submissions for 64 tokens of a failing contract"
        );
        let c = writer.counts().await.unwrap();
        assert_eq!(c.pending, 64, "every token stays pending");
    }

    #[test]
    fn ledger_archive_uses_the_reference_layout_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        write_archive(dir.path(), "ctr", "sig_1-x", b"{}").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ctr/sig_1-x.json")).unwrap(),
            b"{}"
        );
        assert!(write_archive(dir.path(), "..", "s", b"{}").is_err());
        assert!(write_archive(dir.path(), "c", "a/b", b"{}").is_err());
    }
}
