//! Downloading a release with limits, then verifying and staging it (feature `fetch`).
//!
//! Called by the relay's Upgrader (and the operator's interactive `upgrade`). The statement is
//! fetched first, capped at 64 KiB, and verified (SPEC steps 1-10) before a byte of the binary is
//! requested. The binary is streamed into a temp file beside its destination, capped at its
//! signed size and hashed as it arrives (step 11). Only when everything verified are the
//! statement and the binary renamed to their final paths, after fsync (step 12).
//!
//! Every request has a connect timeout and a read-gap timeout (no byte for that long aborts
//! it), the whole staging has a deadline, and retryable failures are retried with exponential
//! backoff. This module never runs, installs or swaps anything.
//!
//! Chunks are written with blocking `std::fs` calls from the async task: they go to the page
//! cache and are short; the one long call, the final fsync, runs in `spawn_blocking`.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use semver::Version;
use url::Url;

use crate::Error;
use crate::FileEntry;
use crate::durable;
use crate::keys::TrustedKeys;
use crate::layout::{Channels, Layout};
use crate::root::MAX_ROOT_SIZE;
use crate::trust::{MAX_ROOT_STEPS, Trust};
use crate::verify::{Expected, FileCheck, MAX_STATEMENT_SIZE, VerifiedStatement, verify_statement};

/// The cap on `channels.json`.
pub const MAX_CHANNELS_SIZE: u64 = 64 * 1024;
/// The cap on a changelog.
pub const MAX_CHANGELOG_SIZE: u64 = 1024 * 1024;

/// Timeouts, retries and backoff of the downloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Timeout for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The longest silence tolerated while waiting for response headers or body bytes.
    pub read_gap: Duration,
    /// The deadline for a whole operation, retries and backoff included.
    pub deadline: Duration,
    /// How many times a request is tried in all (at least 1).
    pub attempts: u32,
    /// The first backoff delay; it doubles after each failed attempt.
    pub backoff_initial: Duration,
    /// The longest backoff delay.
    pub backoff_max: Duration,
}

/// Download progress of the binary, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes received (and verified against the cap) in the current attempt.
    pub done: u64,
    /// The signed size.
    pub total: u64,
}

/// Where a staged release goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The final path of the binary (e.g. `<home>/wireleap-relay.next`); written with mode 0755.
    pub binary: PathBuf,
    /// The final path of the statement (e.g. `<home>/wireleap-relay.next.hash`), kept so that
    /// the supervisor can verify again.
    pub statement: PathBuf,
    /// Where the release's supervisor goes when its statement lists one (e.g.
    /// `<home>/wireleap-relay-supervisor.next`); `None`: not fetched.
    pub supervisor: Option<PathBuf>,
}

/// A release that verified and reached its destination.
#[derive(Debug, Clone)]
pub struct StagedRelease {
    /// Where the binary is.
    pub binary: PathBuf,
    /// Where the statement is.
    pub statement_path: PathBuf,
    /// Where the release's supervisor is, if it carries one and it was asked for.
    pub supervisor: Option<PathBuf>,
    /// What the statement said.
    pub verified: VerifiedStatement,
}

/// The release downloader.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    layout: Layout,
    limits: Limits,
    /// Sent as [`RELAY_HEADER`] with each request, so that a rollout service can count which
    /// relays fetched what (a relay's public key is public).
    relay: Option<String>,
}

/// The header that names the asking relay (its public key) to the release server.
pub const RELAY_HEADER: &str = "wireleap-relay";

/// The deadline for a rollout document or a report: small documents.
pub const SMALL_DEADLINE: Duration = Duration::from_secs(30);

// === impl Limits ===

impl Limits {
    /// Default connect timeout (TUF clients: 10 s).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default read gap (TUF clients: 30 s socket timeout).
    pub const READ_GAP: Duration = Duration::from_secs(30);
    /// Default deadline for staging a release.
    pub const DEADLINE: Duration = Duration::from_secs(15 * 60);
    /// Default number of attempts (TUF clients: 4).
    pub const ATTEMPTS: u32 = 4;
    /// Default first backoff.
    pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
    /// Default longest backoff.
    pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

    /// The delay before attempt `attempt + 1`, after `attempt` (1-based) failed:
    /// `backoff_initial * 2^(attempt-1)`, at most `backoff_max`.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.backoff_initial
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Self::CONNECT_TIMEOUT,
            read_gap: Self::READ_GAP,
            deadline: Self::DEADLINE,
            attempts: Self::ATTEMPTS,
            backoff_initial: Self::BACKOFF_INITIAL,
            backoff_max: Self::BACKOFF_MAX,
        }
    }
}

// === impl Fetcher ===

impl Fetcher {
    /// A downloader for releases under `layout`.
    ///
    /// # Errors
    ///
    /// [`Error::Client`] if the HTTP client cannot be built (TLS setup).
    pub fn try_new(layout: Layout, limits: Limits) -> Result<Self, Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("relay-release/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client {
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            layout,
            limits,
            relay: None,
        })
    }

    /// Names the asking relay (its public key) in every request.
    #[must_use]
    pub fn with_relay(mut self, relay: String) -> Self {
        self.relay = Some(relay);
        self
    }

    /// The rollout document of `version` (`<base>/v<VERSION>/rollout`), verified with the
    /// rollout role's `keys` at `now`, `seen` being the highest serial accepted before for it.
    /// `None`: the server has none (HTTP 404), the version is not phased.
    ///
    /// # Errors
    ///
    /// Download errors; the errors of [`crate::rollout::verify`].
    pub async fn fetch_rollout(
        &self,
        version: &Version,
        keys: &TrustedKeys,
        now: std::time::SystemTime,
        seen: Option<u64>,
    ) -> Result<Option<crate::rollout::VerifiedRollout>, Error> {
        let url = self
            .layout
            .file_url(version, crate::rollout::ROLLOUT_NAME)?;
        let fetch = self.retrying(|| {
            self.get_bounded(&url, MAX_STATEMENT_SIZE, || Error::MalformedRollout {
                reason: format!("larger than {MAX_STATEMENT_SIZE} bytes"),
            })
        });
        let bytes = match tokio::time::timeout(SMALL_DEADLINE, fetch).await {
            Err(_) => {
                return Err(Error::DeadlineExceeded {
                    deadline: SMALL_DEADLINE,
                });
            }
            Ok(Err(Error::HttpStatus { status: 404, .. })) => return Ok(None),
            Ok(r) => r?,
        };
        crate::rollout::verify(&bytes, keys, version, now, seen).map(Some)
    }

    /// POSTs a signed outcome report (`<base>/reports`), once. The server answers 2xx when it
    /// took it.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`], [`Error::Stalled`], [`Error::Transfer`] (worth retrying later),
    /// [`Error::HttpStatus`] (retryable for a 5xx, 408 or 429; anything else will not change).
    pub async fn post_report(&self, envelope: Vec<u8>) -> Result<(), Error> {
        let url = self.join_base(crate::outcome::REPORTS_PATH)?;
        let mut request = self
            .client
            .post(url.clone())
            .header("content-type", "application/json")
            .body(envelope);
        if let Some(relay) = &self.relay {
            request = request.header(RELAY_HEADER, relay);
        }
        let response =
            tokio::time::timeout(self.limits.read_gap.min(SMALL_DEADLINE), request.send())
                .await
                .map_err(|_| Error::Stalled {
                    url: url.to_string(),
                    gap: self.limits.read_gap.min(SMALL_DEADLINE),
                })?
                .map_err(|e| classify(&url, &e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Error::HttpStatus {
                url: url.to_string(),
                status: response.status().as_u16(),
            })
        }
    }

    fn join_base(&self, path: &str) -> Result<Url, Error> {
        self.layout.base().join(path).map_err(|e| Error::Url {
            reason: format!("cannot join {path:?} to the base URL: {e}"),
        })
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Follows root rotations (SPEC "Roots"): asks for `<base>/root/<N+1>.root` until the
    /// server has none (HTTP 404), accepting and persisting each one that chains from the
    /// current root (HTTP 403 counts as "none" too), at most [`MAX_ROOT_STEPS`] of them. Each download is capped at
    /// [`MAX_ROOT_SIZE`] and bounded by the limits' timeouts. Without a root (key files or
    /// nothing trusted) there is nothing to follow. Returns the versions followed.
    ///
    /// # Errors
    ///
    /// Download errors; the errors of [`Trust::accept_next`]. Roots accepted before the error
    /// stay accepted.
    pub async fn update_root(&self, trust: &mut Trust) -> Result<Vec<u64>, Error> {
        let mut followed = Vec::new();
        let Some(mut current) = trust.root().map(crate::root::Root::version) else {
            return Ok(followed);
        };
        trust.persist_embedded()?;
        for _ in 0..MAX_ROOT_STEPS {
            let url = self.layout.root_url(current + 1)?;
            let got = self
                .with_deadline(self.retrying(|| {
                    self.get_bounded(&url, MAX_ROOT_SIZE, || Error::RootTooLarge {
                        limit: MAX_ROOT_SIZE,
                    })
                }))
                .await;
            let bytes = match got {
                Ok(bytes) => bytes,
                // No such file: no newer root (a static bucket may say 403 for it).
                Err(Error::HttpStatus {
                    status: 403 | 404, ..
                }) => break,
                Err(e) => return Err(e),
            };
            current = trust.accept_next(&bytes, SystemTime::now())?.version();
            tracing::info!(version = current, "followed a release root rotation");
            followed.push(current);
        }
        Ok(followed)
    }

    /// Downloads and verifies the statement for `expected` (SPEC steps 1-10), without the
    /// binary. The interactive `upgrade` uses it to show what would be installed.
    ///
    /// # Errors
    ///
    /// Download errors, then the verification variant of the first failing step;
    /// [`Error::DeadlineExceeded`].
    pub async fn fetch_statement(
        &self,
        keys: &TrustedKeys,
        expected: &Expected,
    ) -> Result<VerifiedStatement, Error> {
        self.with_deadline(self.statement_inner(keys, expected))
            .await
    }

    /// Downloads the statement and the binary for `expected`, verifies both, and only then
    /// moves them to `dest` (SPEC steps 1-12). `progress` is called as bytes of the binary
    /// arrive.
    ///
    /// # Errors
    ///
    /// The variant of the first failing step, or a download error after the last retry;
    /// [`Error::DeadlineExceeded`]. Nothing is left at `dest` on error.
    pub async fn stage_release<F>(
        &self,
        keys: &TrustedKeys,
        expected: &Expected,
        dest: &Destination,
        mut progress: F,
    ) -> Result<StagedRelease, Error>
    where
        F: FnMut(Progress) + Send,
    {
        self.with_deadline(async {
            // A supervisor staged for an earlier release is not this one's.
            if let Some(path) = &dest.supervisor {
                let _ = std::fs::remove_file(path);
            }
            let verified = self.statement_inner(keys, expected).await?;
            let url = self
                .layout
                .asset_url(&verified.statement.version, &verified.asset)?;
            let entry = verified.asset_entry()?.clone();
            let temp = self
                .download_retrying(&url, &entry, &dest.binary, &mut progress)
                .await?;
            // The release's supervisor, verified by the same statement.
            let supervisor = match (&dest.supervisor, verified.supervisor_entry()) {
                (Some(path), Some(entry)) => {
                    let entry = entry.clone();
                    let url = self
                        .layout
                        .asset_url(&verified.statement.version, &entry.name)?;
                    let temp = self
                        .download_retrying(&url, &entry, path, &mut |_| {})
                        .await?;
                    Some((temp, path.clone()))
                }
                (Some(path), None) => {
                    let _ = std::fs::remove_file(path);
                    None
                }
                (None, _) => None,
            };
            // Step 12: everything verified. The release's supervisor first, then the
            // statement, then the binary: a binary at its final path always has its statement
            // and (if the release carries one) its supervisor beside it.
            let persist = |temp: tempfile::NamedTempFile, path: PathBuf| async move {
                let at = path.clone();
                tokio::task::spawn_blocking(move || durable::persist(temp, &at, 0o755))
                    .await
                    .map_err(|e| Error::Io {
                        op: "stage",
                        path,
                        source: std::io::Error::other(e.to_string()),
                    })
                    .and_then(|r| r)
            };
            let staged_supervisor = match supervisor {
                Some((temp, path)) => {
                    persist(temp, path.clone()).await?;
                    Some(path)
                }
                None => None,
            };
            let rest = async {
                durable::write_file(&dest.statement, &verified.raw, 0o644)?;
                persist(temp, dest.binary.clone()).await
            };
            if let Err(e) = rest.await {
                // Best effort: nothing half staged. The error that matters is the one returned.
                let _ = std::fs::remove_file(&dest.statement);
                let _ = std::fs::remove_file(&dest.binary);
                if let Some(path) = &staged_supervisor {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
            let supervisor = staged_supervisor;
            Ok(StagedRelease {
                binary: dest.binary.clone(),
                statement_path: dest.statement.clone(),
                supervisor,
                verified,
            })
        })
        .await
    }

    /// Downloads `changelog.md` of a verified release and checks it against the statement if
    /// the statement lists it; an unlisted changelog is returned unchecked, capped at 1 MiB
    /// (it is only shown to the operator).
    ///
    /// # Errors
    ///
    /// Download errors; [`Error::Oversized`], [`Error::Truncated`], [`Error::DigestMismatch`]
    /// for a listed changelog; [`Error::MalformedStatement`] if it is not UTF-8.
    pub async fn fetch_changelog(&self, verified: &VerifiedStatement) -> Result<String, Error> {
        let name = crate::layout::CHANGELOG_NAME;
        let url = self.layout.changelog_url(&verified.statement.version)?;
        let entry = verified.statement.file(name);
        let cap = entry.map_or(MAX_CHANGELOG_SIZE, |e| e.size.min(MAX_CHANGELOG_SIZE));
        let bytes = self
            .with_deadline(self.retrying(|| {
                self.get_bounded(&url, cap, || Error::Oversized {
                    asset: name.to_owned(),
                    limit: cap,
                })
            }))
            .await?;
        if let Some(entry) = entry {
            let mut check = FileCheck::new(entry);
            check.update(&bytes)?;
            check.finish()?;
        }
        String::from_utf8(bytes).map_err(|_| Error::malformed(0, "changelog is not UTF-8"))
    }

    /// Downloads `channels.json` (capped at 64 KiB). It is not signed: a channel only names
    /// a version to ask for, and that version's statement is verified as any other.
    ///
    /// # Errors
    ///
    /// Download errors, [`Error::Channels`].
    pub async fn fetch_channels(&self) -> Result<Channels, Error> {
        let url = self.layout.channels_url()?;
        let bytes = self
            .with_deadline(self.retrying(|| {
                self.get_bounded(&url, MAX_CHANNELS_SIZE, || Error::Channels {
                    reason: format!("larger than {MAX_CHANNELS_SIZE} bytes"),
                })
            }))
            .await?;
        Channels::parse(&bytes)
    }

    /// The version a channel points at.
    ///
    /// # Errors
    ///
    /// As [`Self::fetch_channels`]; [`Error::Channels`] if the channel is not listed.
    pub async fn channel_version(
        &self,
        product: &crate::layout::Product,
        channel: &str,
    ) -> Result<Version, Error> {
        self.fetch_channels()
            .await?
            .version(product, channel)
            .cloned()
            .ok_or_else(|| Error::Channels {
                reason: format!("no channel {channel:?} for {product}"),
            })
    }

    async fn statement_inner(
        &self,
        keys: &TrustedKeys,
        expected: &Expected,
    ) -> Result<VerifiedStatement, Error> {
        // Unsafe names and versions fail here, before a URL is built.
        let url = self
            .layout
            .statement_url(&expected.version, &expected.asset())?;
        let bytes = self
            .retrying(|| {
                // Step 1: bounded read.
                self.get_bounded(&url, MAX_STATEMENT_SIZE, || Error::StatementTooLarge {
                    limit: MAX_STATEMENT_SIZE,
                })
            })
            .await?;
        // Steps 2-10.
        verify_statement(&bytes, keys, expected)
    }

    async fn with_deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.limits.deadline, fut)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded {
                deadline: self.limits.deadline,
            }))
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or has been tried
    /// `attempts` times, sleeping with backoff in between.
    async fn retrying<T, Fut>(&self, mut op: impl FnMut() -> Fut) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => self.before_retry(e, attempt).await?,
            }
            attempt += 1;
        }
    }

    /// After attempt `attempt` failed with `e`: returns `e` if it is final (not retryable,
    /// or the last attempt), else logs it and sleeps the backoff delay.
    async fn before_retry(&self, e: Error, attempt: u32) -> Result<(), Error> {
        if !e.is_retryable() || attempt >= self.limits.attempts.max(1) {
            return Err(e);
        }
        let delay = self.limits.backoff(attempt);
        tracing::warn!(error = %e, attempt, ?delay, "release download failed, retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// Sends a GET and waits for the headers (read-gap bounded); checks the status.
    async fn send(&self, url: &Url) -> Result<reqwest::Response, Error> {
        let mut request = self.client.get(url.clone());
        if let Some(relay) = &self.relay {
            request = request.header(RELAY_HEADER, relay);
        }
        let send = request.send();
        let response = tokio::time::timeout(self.limits.read_gap, send)
            .await
            .map_err(|_| Error::Stalled {
                url: url.to_string(),
                gap: self.limits.read_gap,
            })?
            .map_err(|e| classify(url, &e))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(Error::HttpStatus {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }

    /// The next body chunk, read-gap bounded.
    async fn chunk(
        &self,
        url: &Url,
        response: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, Error> {
        tokio::time::timeout(self.limits.read_gap, response.chunk())
            .await
            .map_err(|_| Error::Stalled {
                url: url.to_string(),
                gap: self.limits.read_gap,
            })?
            .map_err(|e| classify(url, &e))
    }

    /// A small document, refusing more than `cap` bytes.
    async fn get_bounded(
        &self,
        url: &Url,
        cap: u64,
        too_large: impl Fn() -> Error,
    ) -> Result<Vec<u8>, Error> {
        let mut response = self.send(url).await?;
        if response.content_length().is_some_and(|n| n > cap) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(url, &mut response).await? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// [`Self::download_asset`], retried as the limits say.
    async fn download_retrying<F>(
        &self,
        url: &Url,
        entry: &FileEntry,
        beside: &Path,
        progress: &mut F,
    ) -> Result<tempfile::NamedTempFile, Error>
    where
        F: FnMut(Progress) + Send,
    {
        // The retry loop is spelled out here: the progress callback is borrowed mutably by
        // each attempt, which a retry combinator's closure cannot hand out.
        let mut attempt = 1;
        loop {
            match self.download_asset(url, entry, beside, progress).await {
                Ok(temp) => return Ok(temp),
                Err(e) => self.before_retry(e, attempt).await?,
            }
            attempt += 1;
        }
    }

    /// One attempt at a signed file (`entry`): streamed into a temp file beside `beside`,
    /// capped and hashed as it arrives (step 11). The temp file is removed on error (dropped).
    async fn download_asset<F>(
        &self,
        url: &Url,
        entry: &FileEntry,
        beside: &Path,
        progress: &mut F,
    ) -> Result<tempfile::NamedTempFile, Error>
    where
        F: FnMut(Progress) + Send,
    {
        let mut check = FileCheck::new(entry);
        let mut response = self.send(url).await?;
        if response.content_length().is_some_and(|n| n > entry.size) {
            return Err(Error::Oversized {
                asset: entry.name.clone(),
                limit: entry.size,
            });
        }
        let mut temp = durable::temp_beside(beside)?;
        progress(Progress {
            done: 0,
            total: check.size(),
        });
        while let Some(chunk) = self.chunk(url, &mut response).await? {
            check.update(&chunk)?;
            temp.write_all(&chunk)
                .map_err(|e| Error::io("write", temp.path().to_path_buf(), e))?;
            progress(Progress {
                done: check.done(),
                total: check.size(),
            });
        }
        check.finish()?;
        Ok(temp)
    }
}

fn classify(url: &Url, e: &reqwest::Error) -> Error {
    // The URL is ours (base URL without credentials); reqwest's message may repeat it.
    let reason = error_chain(e);
    if e.is_connect() || (e.is_timeout() && !e.is_body()) {
        Error::Connect {
            url: url.to_string(),
            reason,
        }
    } else {
        Error::Transfer {
            url: url.to_string(),
            reason,
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let l = Limits {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            ..Limits::default()
        };
        assert_eq!(l.backoff(1), Duration::from_millis(100));
        assert_eq!(l.backoff(2), Duration::from_millis(200));
        assert_eq!(l.backoff(3), Duration::from_millis(350));
        assert_eq!(l.backoff(u32::MAX), Duration::from_millis(350));
    }
}
