//! The status object `{"code","description","origin","cause"}` (spec §4.2, §6.3, §6.7).
//!
//! Used for API error bodies, the directory's 200/202 replies, the `wl-status` stream
//! trailer and the PING answer. Serialization is compact JSON with no trailing newline, so the
//! text is always a valid HTTP header value (spec §10 #1).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Name of the stream trailer (and header) that carries a status.
pub const WL_STATUS: &str = "wl-status";

/// The `origin` of statuses about the final target (spec §6.3 step 8).
pub const ORIGIN_TARGET: &str = "target";

/// A status object. Two statuses are "the same" when code and description match
/// ([`Status::is`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// HTTP-like status code.
    pub code: u16,
    /// The catalogue text.
    pub description: String,
    /// Who produced it: a relay public key, or `"target"`. Omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// Extra detail (e.g. the version of an upgrade notice). Omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
}

/// A catalogue entry: code and description, usable in `const` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Catalogued {
    /// Status code.
    pub code: u16,
    /// Description text, exactly as the reference has it.
    pub description: &'static str,
}

/// 200 "OK".
pub const OK: Catalogued = Catalogued {
    code: 200,
    description: "OK",
};
/// 204 "no content".
pub const NO_CONTENT: Catalogued = Catalogued {
    code: 204,
    description: "no content",
};
/// 400 "bad request".
pub const BAD_REQUEST: Catalogued = Catalogued {
    code: 400,
    description: "bad request",
};
/// 402 "action requires payment".
pub const UNPAID: Catalogued = Catalogued {
    code: 402,
    description: "action requires payment",
};
/// 403 "action not allowed".
pub const FORBIDDEN: Catalogued = Catalogued {
    code: 403,
    description: "action not allowed",
};
/// 404 "resource not found".
pub const NOT_FOUND: Catalogued = Catalogued {
    code: 404,
    description: "resource not found",
};
/// 405 "HTTP method not allowed".
pub const METHOD_NOT_ALLOWED: Catalogued = Catalogued {
    code: 405,
    description: "HTTP method not allowed",
};
/// 409 "action conflicts with existing resource".
pub const CONFLICT: Catalogued = Catalogued {
    code: 409,
    description: "action conflicts with existing resource",
};
/// 500 "internal server error".
pub const INTERNAL: Catalogued = Catalogued {
    code: 500,
    description: "internal server error",
};
/// 501 "feature not implemented yet".
pub const NOT_IMPLEMENTED: Catalogued = Catalogued {
    code: 501,
    description: "feature not implemented yet",
};
/// 502 "gateway is unreachable or down".
pub const GATEWAY: Catalogued = Catalogued {
    code: 502,
    description: "gateway is unreachable or down",
};
/// 202 challenge: "repeat request with response to challenge in headers" (spec §4.4).
pub const CHALLENGE: Catalogued = Catalogued {
    code: 202,
    description: "repeat request with response to challenge in headers",
};
/// 202 upgrade notice; the version is in `cause` (spec §3.3).
pub const UPGRADE: Catalogued = Catalogued {
    code: 202,
    description: "please upgrade your relay to the given version as soon as possible",
};
/// Description of the PING answer (code 200, spec §6.3 step 4).
pub const PONG_DESCRIPTION: &str = "PONG";

/// Known `cause` texts of the reference catalogue.
pub mod cause {
    /// Signature gate failure.
    pub const INVALID_SIGNATURE: &str = "invalid signature";
    /// Version gate (legacy text).
    pub const VERSION_MISMATCH: &str = "major version mismatch";
    /// Request too old.
    pub const REQUEST_EXPIRED: &str = "request expired";
    /// Sharetoken refused by the contract.
    pub const ST_REJECTED: &str = "sharetoken submission rejected";
    /// A withdrawal is pending.
    pub const WITHDRAWAL_PENDING: &str = "a withdrawal is already pending";
    /// Withdrawal amount ≤ 0.
    pub const WITHDRAWAL_INVALID: &str = "withdrawal amount is invalid (<= 0)";
    /// Submission before `settlement_open`.
    pub const SETTLEMENT_NOT_OPEN: &str = "settlement window not yet open";
    /// Submission at or after `settlement_close` (final: never retry).
    pub const SETTLEMENT_CLOSED: &str = "settlement window already closed";
    /// Token for another contract.
    pub const CONTRACT_PUBKEY_MISMATCH: &str = "contract public key mismatch";
    /// Payment backend down.
    pub const PAYMENT_SYSTEM_UNREACHABLE: &str =
        "payment system is unreachable or down, please try again later";
    /// Wrong enrollment key.
    pub const BAD_ENROLLMENT_KEY: &str = "enrollment key is incorrect";
    /// Not enough balance.
    pub const INSUFFICIENT_BALANCE: &str = "insufficient balance to complete request";
}

impl Catalogued {
    /// This entry as a [`Status`] without origin or cause.
    pub fn status(self) -> Status {
        Status::new(self.code, self.description)
    }

    /// This entry with a `cause`.
    pub fn with_cause(self, cause: impl Into<String>) -> Status {
        self.status().with_cause(cause)
    }

    /// This entry with an `origin`.
    pub fn with_origin(self, origin: impl Into<String>) -> Status {
        self.status().with_origin(origin)
    }
}

impl Status {
    /// Reads the status a directory sends with a 2xx reply (spec §4.4 steps 2 and 4) as the
    /// reference's client does: the body must be JSON, and what it lacks is the zero value
    /// (`{}`, `null` or `{"code":200}` are a plain success, code 0 or no description).
    ///
    /// # Errors
    /// The body is not JSON, or a field has the wrong type.
    pub fn from_reply(body: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Partial {
            code: u16,
            description: String,
            origin: String,
            cause: String,
        }
        let p = match serde_json::from_slice::<serde_json::Value>(body)? {
            serde_json::Value::Null => Partial::default(),
            v @ serde_json::Value::Object(_) => serde_json::from_value(v)?,
            other => {
                return Err(serde::de::Error::custom(format!(
                    "expected a status object, found {other}"
                )));
            }
        };
        Ok(Self {
            code: p.code,
            description: p.description,
            origin: p.origin,
            cause: p.cause,
        })
    }

    /// A status with code and description.
    pub fn new(code: u16, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            origin: String::new(),
            cause: String::new(),
        }
    }

    /// Sets `origin`.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// Sets `cause`.
    pub fn with_cause(mut self, cause: impl Into<String>) -> Self {
        self.cause = cause.into();
        self
    }

    /// The PING answer of a relay: `{"code":200,"description":"PONG","origin":"<relay>"}`.
    pub fn pong(relay: impl Into<String>) -> Self {
        Self::new(200, PONG_DESCRIPTION).with_origin(relay)
    }

    /// Same code and description as a catalogue entry.
    pub fn is(&self, c: Catalogued) -> bool {
        self.code == c.code && self.description == c.description
    }

    /// Whether this is 200 "OK".
    pub fn is_ok(&self) -> bool {
        self.is(OK)
    }

    /// The reference's retry rule: 500 "internal server error" and 502 "gateway is
    /// unreachable or down" are retryable (non-status errors are too, at the caller).
    pub fn is_retryable(&self) -> bool {
        self.is(INTERNAL) || self.is(GATEWAY)
    }

    /// The client's rule: a circuit must be rebuilt when the origin is a relay (not the
    /// target) and the code is not 400.
    pub fn is_circuit_error(&self) -> bool {
        self.origin != ORIGIN_TARGET && self.code != 400
    }

    /// Compact JSON without newline (the `wl-status` value and API error bodies).
    pub fn to_json(&self) -> String {
        // Serializing a struct of integers and strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(
                r#"{{"code":{},"description":"internal server error"}}"#,
                self.code
            )
        })
    }

    /// Parses a status from JSON bytes (a trailer value or an error body).
    ///
    /// # Errors
    /// The JSON error when the bytes are not a status object.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl From<Catalogued> for Status {
    fn from(c: Catalogued) -> Self {
        c.status()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_reply_reads_as_gos_zero_values_fill_it() {
        use super::Status;
        for body in ["{}", "null", " {\"extra\": [1]} "] {
            assert_eq!(
                Status::from_reply(body.as_bytes()).unwrap(),
                Status::new(0, ""),
                "{body}"
            );
        }
        assert_eq!(
            Status::from_reply(br#"{"code":200}"#).unwrap(),
            Status::new(200, "")
        );
        let notice = br#"{"code":202,"description":"d","cause":"1.2.3"}"#;
        assert_eq!(Status::from_reply(notice).unwrap().cause, "1.2.3");
        for bad in ["", "not json", r#"{"code":"200"}"#, "[1]"] {
            assert!(Status::from_reply(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn compact_json_without_newline() {
        assert_eq!(OK.status().to_json(), r#"{"code":200,"description":"OK"}"#);
        let up = UPGRADE.with_cause("0.7.1").to_json();
        assert_eq!(
            up,
            r#"{"code":202,"description":"please upgrade your relay to the given version as soon as possible","cause":"0.7.1"}"#
        );
        let s = Status::new(400, "bad <thing>\nx").with_origin("abc");
        let j = s.to_json();
        assert!(!j.contains('\n'));
        assert_eq!(Status::from_json(j.as_bytes()).unwrap(), s);
    }

    #[test]
    fn classification() {
        assert!(INTERNAL.status().is_retryable());
        assert!(GATEWAY.with_cause("x").is_retryable());
        assert!(!BAD_REQUEST.status().is_retryable());
        assert!(
            Status::new(502, "x")
                .with_origin("relay")
                .is_circuit_error()
        );
        assert!(
            !Status::new(502, "x")
                .with_origin("target")
                .is_circuit_error()
        );
        assert!(
            !Status::new(400, "x")
                .with_origin("relay")
                .is_circuit_error()
        );
        assert!(CHALLENGE.status().is(CHALLENGE));
        assert!(!UPGRADE.status().is(CHALLENGE));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn status_round_trip_is_a_header_value(
                code in 100u16..600, description in ".*", origin in ".*", cause in ".*",
            ) {
                let s = Status { code, description, origin, cause };
                let j = s.to_json();
                // Control characters are escaped: always a valid single-line header value.
                prop_assert!(!j.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
                prop_assert_eq!(Status::from_json(j.as_bytes()).unwrap(), s);
            }
        }
    }
}
