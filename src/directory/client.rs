//! The signed API client for contract and directory calls (spec §4.2).
//!
//! Every request is signed with the relay key over the exact body bytes (GET bodies are the four
//! bytes `null`), carries the interface version headers it was asked for and the software
//! version, and every POST carries an `Idempotency-Key`. Replies are checked for a compatible
//! minor version; errors are the server's status object when it sent one. Unlike the reference,
//! every call is bounded in time and every reply in size.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use wireleap_protocol::signed::{self, Interface, RequestOptions};
use wireleap_protocol::status::{self, Status};
use wireleap_protocol::{ContractInfo, DirectoryInfo, RelayEntry, SigningKey};

/// Connect timeout for API calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request timeout for API calls (the reference has none; a hung directory must not hang
/// the relay).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply body accepted.
const MAX_REPLY: usize = 1 << 20;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or the connection broke; the message carries every
    /// cause (connection refused, DNS, TLS, timeout), not only reqwest's first line.
    #[error("{url}: {}", chain(source))]
    Network {
        /// The URL called.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{url}: {status}{}", if *.sent { "" } else { " (the reply was not a status object)" })]
    Status {
        /// The URL called.
        url: String,
        /// The status object (or one made from the HTTP status when the body was not one).
        status: Status,
        /// Whether the server sent `status` as a status object (not, say, a proxy's HTML page).
        sent: bool,
    },
    /// The server speaks another minor version of the interface.
    #[error("{url}: {source}")]
    Version {
        /// The URL called.
        url: String,
        /// Both versions.
        source: wireleap_protocol::version::VersionError,
    },
    /// The reply was not the JSON expected.
    #[error("{url}: could not decode the reply: {why}")]
    Decode {
        /// The URL called.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The reply was larger than [`MAX_REPLY`].
    #[error("{url}: reply larger than {MAX_REPLY} bytes")]
    TooLarge {
        /// The URL called.
        url: String,
    },
    /// The call's task ended before it did (the runtime is shutting down).
    #[error("{url}: the call was interrupted")]
    Interrupted {
        /// The URL called.
        url: String,
    },
    /// The proof-of-work challenge could not be answered.
    #[error("could not perform challenge-response proof of work for {url}: {why}")]
    Challenge {
        /// The URL called.
        url: String,
        /// Why.
        why: String,
    },
}

/// An error with its causes: `a: b: c` (each cause once).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// Whether the request provably never reached the server (the connection could not be
    /// made): only such a failure may be retried for a call that must not happen twice.
    pub fn is_unsent(&self) -> bool {
        matches!(self, Error::Network { source, .. } if source.is_connect())
    }

    /// Whether the same call may succeed later (spec §4.2: network trouble, a reply that is not
    /// a status object, 500 and 502; and 503).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Network { .. } | Error::Decode { .. } => true,
            Error::Status { status, sent, .. } => {
                !sent || status.is_retryable() || status.code == 503
            }
            _ => false,
        }
    }

    /// Whether the server refused the call for good: it said so with a status object (400 bad
    /// request, 401, 402, 403 "enrollment key is incorrect", 404 "resource not found", 405) or
    /// speaks another interface version. Trying again cannot help; a network failure, a 5xx, a
    /// 409 or a reply that is not a status object might.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::Version { .. } => true,
            Error::Status { status, sent, .. } => *sent && (400..=405).contains(&status.code),
            _ => false,
        }
    }

    /// The server's status, if it sent one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// How a call is retried (spec §4.2 `Perform`: 3 attempts, 5 s apart, on retryable errors).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Pause between attempts.
    pub delay: Duration,
}

impl Retry {
    /// A single attempt (enrollment, heartbeat, disenrollment).
    pub const ONCE: Retry = Retry {
        attempts: 1,
        delay: Duration::ZERO,
    };
    /// The reference's retry rule.
    pub const PERFORM: Retry = Retry {
        attempts: 3,
        delay: Duration::from_secs(5),
    };
}

/// The relay's API client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    key: SigningKey,
    software: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("software", &self.software)
            .finish_non_exhaustive()
    }
}

/// A successful reply: the body and the status it decoded to, if any.
#[derive(Debug)]
struct Reply {
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Client {
    /// A client signing with `key` and announcing `software` as `Wireleap-Relay-Version`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn try_new(key: SigningKey, software: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(format!("wireleap-relay/{software}"))
            .build()?;
        Ok(Self {
            http,
            key,
            software: software.to_owned(),
        })
    }

    /// `GET <contract>/info` (spec §4.1), retried as the reference does.
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn contract_info(&self, contract: &str, retry: Retry) -> Result<ContractInfo, Error> {
        let url = format!("{contract}/info");
        let reply = self
            .call_retrying(
                Method::GET,
                &url,
                signed::GET_BODY,
                &[Interface::RelayContract],
                retry,
            )
            .await?;
        decode(&url, &reply.body)
    }

    /// `GET <dir>/info` (spec §4.7) at `info_url` (from
    /// [`ContractInfo::directory_info_url`]), retried as the reference does. Only the `upgrade`
    /// command calls it, for the newest version of the relay's channel (spec §3.9).
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn directory_info(
        &self,
        info_url: &str,
        retry: Retry,
    ) -> Result<DirectoryInfo, Error> {
        let reply = self
            .call_retrying(
                Method::GET,
                info_url,
                signed::GET_BODY,
                &[Interface::RelayDir],
                retry,
            )
            .await?;
        decode(info_url, &reply.body)
    }

    /// Enroll (`with_dir_version`) or heartbeat (without it): `POST <dir>/relays` with the
    /// proof-of-work handshake of spec §4.4. Returns the final 2xx status (plain OK or an
    /// upgrade notice).
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn post_entry(
        &self,
        relays_url: &str,
        entry: &RelayEntry,
        with_dir_version: bool,
    ) -> Result<Status, Error> {
        if crate::daemon::fault::no_enroll() {
            return Err(Error::Challenge {
                url: relays_url.to_owned(),
                why: "the test fault no-enroll".to_owned(),
            });
        }
        let body = entry.to_json().into_bytes();
        let interfaces: &[Interface] = if with_dir_version {
            &[Interface::RelayDir, Interface::RelayContract]
        } else {
            &[Interface::RelayContract]
        };
        let first = self
            .call(Method::POST, relays_url, &body, interfaces, &[])
            .await?;
        let first_status = decode_status(relays_url, &first.body)?;
        if !first_status.is(status::CHALLENGE) {
            return Ok(first_status);
        }
        let challenge = first
            .headers
            .get(signed::HEADER_DIRECTORY_CHALLENGE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Challenge {
                url: relays_url.to_owned(),
                why: format!(
                    "the reply has no {} header",
                    signed::HEADER_DIRECTORY_CHALLENGE
                ),
            })?
            .to_owned();
        // bcrypt is CPU work of a few milliseconds to seconds: keep it off the async threads.
        let answer_for = challenge.clone();
        let response = tokio::task::spawn_blocking(move || signed::answer_challenge(&answer_for))
            .await
            .map_err(|e| Error::Challenge {
                url: relays_url.to_owned(),
                why: e.to_string(),
            })?
            .map_err(|e| Error::Challenge {
                url: relays_url.to_owned(),
                why: e.to_string(),
            })?;
        let extra = [
            (signed::HEADER_DIRECTORY_CHALLENGE, challenge),
            (signed::HEADER_DIRECTORY_RESPONSE, response),
        ];
        let second = self
            .call(Method::POST, relays_url, &body, interfaces, &extra)
            .await?;
        decode_status(relays_url, &second.body)
    }

    /// Disenroll: `DELETE <dir>/relays` with the entry, single attempt, body not decoded.
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn delete_entry(&self, relays_url: &str, entry: &RelayEntry) -> Result<(), Error> {
        let body = entry.to_json().into_bytes();
        self.call(
            Method::DELETE,
            relays_url,
            &body,
            &[Interface::RelayContract],
            &[],
        )
        .await
        .map(|_| ())
    }

    /// Submits a sharetoken: `POST <contract>/submit` with the token JSON exactly as stored,
    /// signed with both interface headers as the daemon's client does (spec §5.6). Any 2xx reply
    /// whose body is valid JSON means accepted.
    ///
    /// # Errors
    /// Any [`Error`]; a reply that is not JSON is [`Error::Decode`].
    pub async fn submit(
        &self,
        contract: &str,
        token_json: &[u8],
        retry: Retry,
    ) -> Result<(), Error> {
        let url = format!("{contract}/submit");
        let reply = self
            .call_retrying(
                Method::POST,
                &url,
                token_json,
                &[Interface::RelayDir, Interface::RelayContract],
                retry,
            )
            .await?;
        decode::<serde_json::Value>(&url, &reply.body).map(|_| ())
    }

    /// `GET <contract>/payout/balance`, `/payout/tokens` and `/payout/withdrawals`, signed with
    /// the relay-contract header only (spec §5.7). The replies are passed through unparsed
    /// beyond JSON.
    ///
    /// # Errors
    /// The first failing call's [`Error`].
    pub async fn balance(&self, contract: &str, retry: Retry) -> Result<Balance, Error> {
        let mut parts = Vec::with_capacity(3);
        for path in ["balance", "tokens", "withdrawals"] {
            let url = format!("{contract}/payout/{path}");
            let reply = self
                .call_retrying(
                    Method::GET,
                    &url,
                    signed::GET_BODY,
                    &[Interface::RelayContract],
                    retry,
                )
                .await?;
            parts.push(decode::<serde_json::Value>(&url, &reply.body)?);
        }
        let mut parts = parts.into_iter();
        let mut next = || parts.next().unwrap_or(serde_json::Value::Null);
        Ok(Balance {
            contract: contract.to_owned(),
            balance: next(),
            tokens: next(),
            withdrawal: next(),
        })
    }

    /// `POST <contract>/payout/withdrawals` with `{"amount","type","destination"}` (spec §5.7;
    /// `type` is [`signed::WITHDRAWAL_TYPE`] as in the reference), relay-contract header only. Returns the reply,
    /// parsed and as sent.
    ///
    /// # Errors
    /// Any [`Error`].
    pub async fn withdraw(
        &self,
        contract: &str,
        amount: u64,
        destination: &str,
        retry: Retry,
    ) -> Result<(serde_json::Value, String), Error> {
        let url = format!("{contract}/payout/withdrawals");
        let body = serde_json::json!({"amount": amount, "type": signed::WITHDRAWAL_TYPE, "destination": destination});
        let body = serde_json::to_vec(&body).map_err(|e| Error::Decode {
            url: url.clone(),
            why: e.to_string(),
        })?;
        // Money moves: the POST is sent again only when it provably never left (a refused
        // connection). After a timeout, a 5xx or a reply that does not decode it may have been
        // carried out; the contract's withdrawals list tells.
        let mut attempt = 1;
        let reply = loop {
            match self
                .call(Method::POST, &url, &body, &[Interface::RelayContract], &[])
                .await
            {
                Err(e) if e.is_unsent() && attempt < retry.attempts => {
                    tracing::debug!(error = %e, attempt, "withdrawal not sent; retrying");
                    attempt += 1;
                    tokio::time::sleep(retry.delay).await;
                }
                other => break other?,
            }
        };
        // The reply as the contract sent it (the reference prints it so), once it is JSON.
        decode::<serde_json::Value>(&url, &reply.body)
            .map(|value| (value, String::from_utf8_lossy(&reply.body).into_owned()))
    }

    async fn call_retrying(
        &self,
        method: Method,
        url: &str,
        body: &[u8],
        interfaces: &[Interface],
        retry: Retry,
    ) -> Result<Reply, Error> {
        // Every attempt is the same request: a POST keeps its Idempotency-Key (spec §4.2), so
        // a server that carried out an attempt whose reply was lost answers the next from its
        // cache instead of doing it twice.
        let key = (method == Method::POST).then(signed::idempotency_key);
        let mut attempt = 1;
        loop {
            match self
                .send(method.clone(), url, body, interfaces, &[], key.clone())
                .await
            {
                Err(e) if e.is_retryable() && attempt < retry.attempts => {
                    tracing::debug!(error = %e, attempt, "retrying");
                    attempt += 1;
                    tokio::time::sleep(retry.delay).await;
                }
                other => return other,
            }
        }
    }

    /// One request; a POST gets a new Idempotency-Key.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: &[u8],
        interfaces: &[Interface],
        extra: &[(&str, String)],
    ) -> Result<Reply, Error> {
        let key = (method == Method::POST).then(signed::idempotency_key);
        self.send(method, url, body, interfaces, extra, key).await
    }

    /// One request with `idempotency_key`.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: &[u8],
        interfaces: &[Interface],
        extra: &[(&str, String)],
        idempotency_key: Option<String>,
    ) -> Result<Reply, Error> {
        let opts = RequestOptions {
            software_version: Some(self.software.clone()),
            interfaces: interfaces.to_vec(),
            idempotency_key,
        };
        let mut req = self.http.request(method, url).body(body.to_vec());
        for (name, value) in signed::request_headers(&self.key, body, &opts)
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(extra.iter().map(|(n, v)| (*n, v.as_str())))
        {
            req = req.header(name, value);
        }
        let network = |source| Error::Network {
            url: url.to_owned(),
            source,
        };
        let mut resp = req.send().await.map_err(network)?;
        for i in interfaces {
            let header = resp.headers().get(i.header()).and_then(|v| v.to_str().ok());
            signed::check_reply_version(*i, header).map_err(|source| Error::Version {
                url: url.to_owned(),
                source,
            })?;
        }
        let code = resp.status();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(network)? {
            if body.len() + chunk.len() > MAX_REPLY {
                return Err(Error::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if code.is_success() {
            return Ok(Reply {
                headers,
                body: body.into(),
            });
        }
        let (status, sent) = match serde_json::from_slice::<Status>(&body) {
            Ok(status) => (status, true),
            Err(_) => (
                Status::new(code.as_u16(), code.canonical_reason().unwrap_or("error")),
                false,
            ),
        };
        Err(Error::Status {
            url: url.to_owned(),
            status,
            sent,
        })
    }
}

/// One contract's payout state as `balance` prints it (spec §5.7: the reference's keys).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Balance {
    /// The contract URL.
    pub contract: String,
    /// `GET /payout/balance`, as sent.
    pub balance: serde_json::Value,
    /// `GET /payout/tokens`, as sent.
    pub tokens: serde_json::Value,
    /// `GET /payout/withdrawals`, as sent.
    pub withdrawal: serde_json::Value,
}

/// The status of a directory's 2xx reply ([`Status::from_reply`]).
fn decode_status(url: &str, body: &[u8]) -> Result<Status, Error> {
    Status::from_reply(body).map_err(|e| Error::Decode {
        url: url.to_owned(),
        why: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode {
        url: url.to_owned(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retried_as_perform_retries() {
        let err = |code, description: &str, sent| Error::Status {
            url: "u".into(),
            status: Status::new(code, description),
            sent,
        };
        // A status object: only 500 and 502 as the catalogue spells them (and 503).
        assert!(err(500, "internal server error", true).is_retryable());
        assert!(err(502, "gateway is unreachable or down", true).is_retryable());
        assert!(err(503, "unavailable", true).is_retryable());
        assert!(!err(500, "something else", true).is_retryable());
        assert!(!err(404, "resource not found", true).is_retryable());
        // Not a status object (a proxy's page): retried whatever the code.
        assert!(err(500, "Internal Server Error", false).is_retryable());
        assert!(err(404, "Not Found", false).is_retryable());
        assert!(
            err(404, "Not Found", false)
                .to_string()
                .contains("not a status object")
        );
        // Refused for good: a status object with a client error; a proxy's 403 page is not.
        assert!(err(403, "action not allowed", true).is_refusal());
        assert!(err(404, "resource not found", true).is_refusal());
        assert!(!err(403, "Forbidden", false).is_refusal());
        assert!(!err(409, "action conflicts with existing resource", true).is_refusal());
        assert!(!err(500, "internal server error", true).is_refusal());
    }
}
