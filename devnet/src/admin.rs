//! The admin API under `/_devnet/`, mounted on every devnet server (all share one state).
//!
//! | method + path | body | effect |
//! | --- | --- | --- |
//! | `GET /_devnet/requests[?server=S]` | | recorded requests as a JSON array |
//! | `DELETE /_devnet/requests` | | clear the record |
//! | `GET /_devnet/state` | | switches, enrolled relays, balances |
//! | `POST /_devnet/upgrade` | `{"channel":"default","version":"1.2.3"\|null}` | force (or clear) an upgrade notice for a channel |
//! | `POST /_devnet/channels` | `{"channel":"default","version":"1.2.3"\|null}` | set (or clear) a relay channel version |
//! | `POST /_devnet/down` | `{"server":"directory","mode":"up"\|"unavailable"\|"close"}` | simulate a server being down |
//! | `POST /_devnet/version` | `{"server":"directory","version":"0.3.0"\|null}` | answer (and gate on) another interface version |
//! | `POST /_devnet/challenge` | `{"enabled":true,"cost":4}` | require the PoW challenge on first enrollment |
//! | `POST /_devnet/contract-500` | `{"count":N}` or `{"enabled":bool}` | contract answers 500 to the next N requests, or until disabled |
//! | `POST /_devnet/settlement-closed` | `{"enabled":bool}` | contract answers every `/submit` with 400 "settlement window already closed", or not |
//! | `POST /_devnet/settlement` | `{"servicekey_duration_secs":N,"submission_window_secs":M}` | window of new activations |
//! | `POST /_devnet/enrollment-keys` | `{"role":"backing","keys":["u:p"]}` | restrict a role |
//! | `POST /_devnet/releases` | `{"stall_after_bytes":N\|null,"endless":bool}` | release server test modes |
//! | `POST /_devnet/sign-contract` | `{"settlement_open":T,"settlement_close":T}` | a contract object signed by the contract key |
//!
//! Every POST answers the new state (as `GET /_devnet/state`).

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use wireleap_protocol::{Contract, PublicKey, RelayEntry, Role};

use crate::state::{Down, Server, Switches};
use crate::web::{Ctx, json_reply};

pub(crate) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/_devnet/requests", get(requests).delete(clear))
        .route("/_devnet/state", get(state))
        .route("/_devnet/upgrade", post(upgrade))
        .route("/_devnet/channels", post(channels))
        .route("/_devnet/down", post(down))
        .route("/_devnet/version", post(version))
        .route("/_devnet/challenge", post(challenge))
        .route("/_devnet/contract-500", post(contract_500))
        .route("/_devnet/settlement", post(settlement))
        .route("/_devnet/settlement-closed", post(settlement_closed))
        .route("/_devnet/enrollment-keys", post(enrollment_keys))
        .route("/_devnet/releases", post(releases))
        .route("/_devnet/sign-contract", post(sign_contract))
}

/// A snapshot of the devnet's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Current switches.
    pub switches: Switches,
    /// Enrolled relays.
    pub relays: Vec<RelayEntry>,
    /// Available balance per relay key.
    pub balances: std::collections::BTreeMap<String, i64>,
    /// Contract public key.
    pub contract_pubkey: PublicKey,
    /// Directory public key.
    pub directory_pubkey: PublicKey,
}

pub(crate) fn snapshot(ctx: &Ctx) -> Snapshot {
    let st = ctx.shared.lock();
    Snapshot {
        switches: st.switches.clone(),
        relays: st.relays.values().cloned().collect(),
        balances: st
            .accounts
            .iter()
            .map(|(k, a)| (k.to_b64(), a.available))
            .collect(),
        contract_pubkey: PublicKey::from(&ctx.shared.contract_key),
        directory_pubkey: PublicKey::from(&ctx.shared.directory_key),
    }
}

fn state_reply(ctx: &Ctx) -> Response {
    json_reply(serde_json::to_string(&snapshot(ctx)).unwrap_or_default())
}

fn edit(ctx: &Ctx, f: impl FnOnce(&mut Switches)) -> Response {
    ctx.shared.edit_switches(f);
    state_reply(ctx)
}

#[derive(Deserialize)]
struct ServerFilter {
    server: Option<Server>,
}

async fn requests(State(ctx): State<Ctx>, Query(q): Query<ServerFilter>) -> Response {
    let log: Vec<_> = ctx
        .shared
        .lock()
        .log
        .iter()
        .filter(|r| q.server.is_none_or(|s| s == r.server))
        .cloned()
        .collect();
    json_reply(serde_json::to_string(&log).unwrap_or_else(|_| "[]".into()))
}

async fn clear(State(ctx): State<Ctx>) -> Response {
    ctx.shared.lock().log.clear();
    state_reply(&ctx)
}

async fn state(State(ctx): State<Ctx>) -> Response {
    state_reply(&ctx)
}

#[derive(Deserialize)]
struct ChannelVersion {
    #[serde(default = "default_channel")]
    channel: String,
    version: Option<String>,
}

fn default_channel() -> String {
    "default".into()
}

async fn upgrade(State(ctx): State<Ctx>, axum::Json(b): axum::Json<ChannelVersion>) -> Response {
    edit(&ctx, |s| match b.version {
        Some(v) => {
            s.forced_upgrade.insert(b.channel, v);
        }
        None => {
            s.forced_upgrade.remove(&b.channel);
        }
    })
}

async fn channels(State(ctx): State<Ctx>, axum::Json(b): axum::Json<ChannelVersion>) -> Response {
    edit(&ctx, |s| match b.version {
        Some(v) => {
            s.channels.insert(b.channel, v);
        }
        None => {
            s.channels.remove(&b.channel);
        }
    })
}

#[derive(Deserialize)]
struct DownBody {
    server: Server,
    mode: Down,
}

async fn down(State(ctx): State<Ctx>, axum::Json(b): axum::Json<DownBody>) -> Response {
    edit(&ctx, |s| {
        s.down.insert(b.server, b.mode);
    })
}

#[derive(Deserialize)]
struct VersionBody {
    server: Server,
    version: Option<String>,
}

async fn version(State(ctx): State<Ctx>, axum::Json(b): axum::Json<VersionBody>) -> Response {
    edit(&ctx, |s| match b.version {
        Some(v) => {
            s.version_override.insert(b.server, v);
        }
        None => {
            s.version_override.remove(&b.server);
        }
    })
}

#[derive(Deserialize)]
struct ChallengeBody {
    enabled: bool,
    cost: Option<u32>,
}

async fn challenge(State(ctx): State<Ctx>, axum::Json(b): axum::Json<ChallengeBody>) -> Response {
    edit(&ctx, |s| {
        s.require_challenge = b.enabled;
        if let Some(c) = b.cost {
            s.challenge_cost = c.clamp(
                wireleap_protocol::signed::MIN_CHALLENGE_COST,
                wireleap_protocol::signed::MAX_CHALLENGE_COST,
            );
        }
    })
}

#[derive(Deserialize)]
struct Fail500Body {
    count: Option<u64>,
    enabled: Option<bool>,
}

async fn contract_500(State(ctx): State<Ctx>, axum::Json(b): axum::Json<Fail500Body>) -> Response {
    edit(&ctx, |s| {
        s.contract_fail_500 = match (b.count, b.enabled) {
            (Some(n), _) => n,
            (None, Some(true)) => u64::MAX,
            _ => 0,
        };
    })
}

#[derive(Deserialize)]
struct EnabledBody {
    enabled: bool,
}

async fn settlement_closed(
    State(ctx): State<Ctx>,
    axum::Json(b): axum::Json<EnabledBody>,
) -> Response {
    edit(&ctx, |s| s.settlement_closed = b.enabled)
}

#[derive(Deserialize)]
struct SettlementBody {
    servicekey_duration_secs: Option<u64>,
    submission_window_secs: Option<u64>,
    credit_per_token: Option<i64>,
}

async fn settlement(State(ctx): State<Ctx>, axum::Json(b): axum::Json<SettlementBody>) -> Response {
    edit(&ctx, |s| {
        if let Some(v) = b.servicekey_duration_secs {
            s.servicekey_duration_secs = v;
        }
        if let Some(v) = b.submission_window_secs {
            s.submission_window_secs = v;
        }
        if let Some(v) = b.credit_per_token {
            s.credit_per_token = v;
        }
    })
}

#[derive(Deserialize)]
struct KeysBody {
    role: Role,
    keys: Vec<String>,
}

async fn enrollment_keys(State(ctx): State<Ctx>, axum::Json(b): axum::Json<KeysBody>) -> Response {
    edit(&ctx, |s| {
        s.enrollment_keys.insert(b.role, b.keys);
    })
}

#[derive(Deserialize)]
struct ReleasesBody {
    #[serde(default)]
    stall_after_bytes: Option<u64>,
    #[serde(default)]
    endless: bool,
}

async fn releases(State(ctx): State<Ctx>, axum::Json(b): axum::Json<ReleasesBody>) -> Response {
    edit(&ctx, |s| {
        s.stall_after_bytes = b.stall_after_bytes;
        s.endless = b.endless;
    })
}

#[derive(Deserialize)]
struct SignBody {
    settlement_open: i64,
    settlement_close: i64,
}

async fn sign_contract(State(ctx): State<Ctx>, axum::Json(b): axum::Json<SignBody>) -> Response {
    let c = Contract::sign(
        &ctx.shared.contract_key,
        b.settlement_open,
        b.settlement_close,
    );
    json_reply(serde_json::to_string(&c).unwrap_or_default())
}
