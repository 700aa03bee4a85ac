//! The stand-in directory (spec §4.3–§4.9): `/info`, signed `GET /relays`, enroll/heartbeat
//! (`POST /relays`) with the optional bcrypt challenge and upgrade notices per channel, and
//! disenroll (`DELETE /relays`).
//!
//! Upgrade policy (the real one is not public): a forced version for the relay's channel is
//! always announced; otherwise the channel's version from `channels.json` (or set at run time)
//! is announced when it is above the relay's `versions.software`.

use std::collections::BTreeMap;
use std::path::Path;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use wireleap_protocol::info::{DirectoryInfo, Enrollment, RoleInfo, UpgradeChannels};
use wireleap_protocol::signed::{self, HEADER_DIRECTORY_CHALLENGE, HEADER_DIRECTORY_RESPONSE};
use wireleap_protocol::status;
use wireleap_protocol::{PublicKey, RelayEntry, RelayList, Role};

use crate::state::Shared;
use crate::web::{Ctx, fail, header_str, json_reply, status_reply};

/// Name of the channel file in a release root.
pub const CHANNELS_FILE: &str = "channels.json";

pub(crate) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/info", get(info))
        .route("/relays", get(list).post(enroll).delete(disenroll))
}

/// Relay channels: `channels.json` of the release root overlaid with run-time channels.
pub(crate) fn relay_channels(shared: &Shared) -> BTreeMap<String, String> {
    let mut out = shared
        .releases_root
        .as_deref()
        .map(read_channels_file)
        .unwrap_or_default();
    out.extend(shared.lock().switches.channels.clone());
    out
}

fn read_channels_file(root: &Path) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        relay: BTreeMap<String, String>,
    }
    match std::fs::read(root.join(CHANNELS_FILE)) {
        Ok(b) => match serde_json::from_slice::<File>(&b) {
            Ok(f) => f.relay,
            Err(e) => {
                tracing::warn!(error = %e, "devnet: unreadable channels.json, ignoring");
                BTreeMap::new()
            }
        },
        Err(_) => BTreeMap::new(),
    }
}

async fn info(State(ctx): State<Ctx>) -> Response {
    let channels = relay_channels(&ctx.shared);
    let st = ctx.shared.lock();
    let count = |r: Role| st.relays.values().filter(|e| e.role == r).count() as u64;
    let restricted = |r: Role| {
        st.switches
            .enrollment_keys
            .get(&r)
            .is_some_and(|k| !k.is_empty())
    };
    let role = |r: Role| RoleInfo {
        count: count(r),
        restricted: restricted(r),
    };
    let di = DirectoryInfo {
        public_key: PublicKey::from(&ctx.shared.directory_key),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        endpoint: ctx.shared.urls().directory,
        info: None,
        enrollment: Enrollment {
            fronting: role(Role::Fronting),
            entropic: role(Role::Entropic),
            backing: role(Role::Backing),
        },
        update_channels: BTreeMap::new(),
        upgrade_channels: UpgradeChannels {
            relay: channels,
            client: BTreeMap::new(),
        },
    };
    drop(st);
    json_reply(serde_json::to_string(&di).unwrap_or_default())
}

async fn list(State(ctx): State<Ctx>) -> Response {
    let relays: RelayList = ctx
        .shared
        .lock()
        .relays
        .values()
        .map(|e| (e.address.clone(), e.clone()))
        .collect();
    let body = serde_json::to_string(&relays).unwrap_or_else(|_| "{}".into());
    let mut r = json_reply(body.clone());
    for (k, v) in signed::directory_signature_headers(&ctx.shared.directory_key, body.as_bytes()) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// Checks signature, body shape and key binding; returns the entry.
fn authenticate(headers: &HeaderMap, body: &[u8]) -> Result<RelayEntry, Box<Response>> {
    let signer = signed::verify_relay_request(
        header_str(headers, signed::HEADER_RELAY_PUBKEY),
        header_str(headers, signed::HEADER_RELAY_SIGNATURE),
        body,
    )
    .map_err(|e| Box::new(fail(status::BAD_REQUEST, e.to_string())))?;
    let entry: RelayEntry = serde_json::from_slice(body).map_err(|e| {
        Box::new(fail(
            status::BAD_REQUEST,
            format!("invalid relay entry: {e}"),
        ))
    })?;
    if entry.pubkey != signer {
        return Err(Box::new(fail(
            status::BAD_REQUEST,
            format!(
                "relay entry pubkey {} does not match signing key {signer}",
                entry.pubkey
            ),
        )));
    }
    let scheme = entry
        .address
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or("");
    if scheme != "wireleap" && scheme != "https" {
        return Err(Box::new(fail(
            status::BAD_REQUEST,
            format!("invalid relay URL scheme: {scheme}"),
        )));
    }
    Ok(entry)
}

async fn enroll(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let entry = match authenticate(&headers, &body) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    // Enrollment keys (restricted roles).
    let (first, need_challenge, cost) = {
        let st = ctx.shared.lock();
        if let Some(keys) = st.switches.enrollment_keys.get(&entry.role)
            && !keys.is_empty()
            && !keys.contains(&entry.key)
        {
            return fail(status::BAD_REQUEST, status::cause::BAD_ENROLLMENT_KEY);
        }
        let first = !st.relays.contains_key(&entry.pubkey);
        (
            first,
            first && st.switches.require_challenge,
            st.switches.challenge_cost,
        )
    };
    if need_challenge {
        let challenge = header_str(&headers, HEADER_DIRECTORY_CHALLENGE).map(str::to_owned);
        let response = header_str(&headers, HEADER_DIRECTORY_RESPONSE).map(str::to_owned);
        match (challenge, response) {
            (Some(c), Some(r)) => {
                if !ctx.shared.lock().challenges.contains(&c) {
                    return fail(status::BAD_REQUEST, "unknown challenge");
                }
                let (c2, r2) = (c.clone(), r);
                let ok = tokio::task::spawn_blocking(move || {
                    signed::verify_challenge_response(&c2, &r2)
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return fail(status::BAD_REQUEST, "invalid challenge response");
                }
                ctx.shared.lock().challenges.remove(&c);
            }
            _ => {
                let c = match signed::new_challenge(cost) {
                    Ok(c) => c,
                    Err(e) => return fail(status::INTERNAL, e.to_string()),
                };
                ctx.shared.lock().challenges.insert(c.clone());
                let mut r = status_reply(&status::CHALLENGE.status());
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().insert(HEADER_DIRECTORY_CHALLENGE, v);
                }
                return r;
            }
        }
    }
    let channel = entry.channel().to_owned();
    let software = entry.versions.software.clone();
    let forced = {
        let mut st = ctx.shared.lock();
        st.relays.insert(entry.pubkey, entry);
        st.switches.forced_upgrade.get(&channel).cloned()
    };
    if first {
        tracing::info!(channel = %channel, "devnet: relay enrolled");
    }
    if let Some(v) = forced {
        return status_reply(&status::UPGRADE.with_cause(v));
    }
    if let Some(v) = relay_channels(&ctx.shared).get(&channel) {
        let newer = match (
            semver::Version::parse(v),
            software.as_deref().map(semver::Version::parse),
        ) {
            (Ok(offered), Some(Ok(running))) => offered > running,
            (Ok(_), None) => true,
            _ => false,
        };
        if newer {
            return status_reply(&status::UPGRADE.with_cause(v.clone()));
        }
    }
    status_reply(&status::OK.status())
}

async fn disenroll(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let entry = match authenticate(&headers, &body) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    ctx.shared.lock().relays.remove(&entry.pubkey);
    status_reply(&status::OK.status())
}
