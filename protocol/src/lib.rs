//! Wire types and crypto of the Wireleap protocol, as the reference Go relay 0.6.x speaks it.
//!
//! Pure data and functions: no I/O, no async runtime, no clock (callers pass `now` as unix
//! seconds). The relay (transport, enrollment, ledger) and the stand-in network (`devnet`)
//! both build on it. Facts come from `shared/spec/wireleap-protocol.md`; section numbers are
//! cited per module.
//!
//! # Layout
//! - [`keys`]: ed25519 public keys, signatures and seeds as base64url-no-pad newtypes.
//! - [`servicekey`]: the contract's signed settlement window (§5.2) and client servicekeys.
//! - [`sharetoken`]: sharetokens, their signing string, verification and the relay-side
//!   acceptance rules (§5.3, §5.4).
//! - [`payload`]: the `wl-payload` init payload of a stream and its validation (§6.2, §6.3,
//!   §10 #3, #13), remote parsing and the loopback guard.
//! - [`status`]: the status object and its catalogue (§4.2, §6.7).
//! - [`entry`]: the relay entry (enrollment body, §4.4) and the relay list (§4.8).
//! - [`info`]: contract `/info` (§5.1) and directory `/info` (§4.7).
//! - [`signed`]: signed API headers, verification, reply version check and the bcrypt
//!   proof-of-work challenge (§4.2, §4.4).
//! - [`version`]: interface versions and the minor-number rule (§7).

pub mod entry;
pub mod info;
pub mod keys;
pub mod payload;
pub mod servicekey;
pub mod sharetoken;
pub mod signed;
pub mod status;
#[cfg(feature = "tls-client")]
pub mod tls_client;
pub mod version;

pub use entry::{RelayEntry, RelayList, Role, Versions};
pub use info::{ContractInfo, DirectoryInfo};
pub use keys::{PublicKey, Seed, Signature, SigningKey};
pub use payload::{InitPayload, Network, Remote, Request};
pub use servicekey::{Contract, Servicekey};
pub use sharetoken::Sharetoken;
pub use status::Status;

/// The current time as unix seconds (the `now` every check takes).
///
/// A clock before 1970 yields 0.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
