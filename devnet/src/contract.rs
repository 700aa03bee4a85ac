//! The stand-in service contract (spec §5): `/info`, `/servicekey/activate`, `/submit` with
//! the settlement window rules, and the `/payout/*` endpoints.
//!
//! Accounting is deliberately simple: every accepted sharetoken credits
//! `credit_per_token` units to the submitting relay; withdrawals complete at once. Successful
//! POST replies are cached per `Idempotency-Key`, so a retried submission that already
//! succeeded gets the same answer instead of a duplicate error.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use wireleap_protocol::info::{ContractInfo, DirectoryRef};
use wireleap_protocol::signed::{self, HEADER_IDEMPOTENCY_KEY};
use wireleap_protocol::status;
use wireleap_protocol::{Contract, PublicKey, Sharetoken, Status, unix_now};

use crate::state::Withdrawal;
use crate::web::{Ctx, fail, header_str, json_reply, status_reply};

pub(crate) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/info", get(info))
        .route("/servicekey/activate", post(activate))
        .route("/submit", post(submit))
        .route("/payout/balance", get(balance))
        .route("/payout/tokens", get(tokens))
        .route("/payout/withdrawals", get(withdrawals).post(withdraw))
}

/// The contract's `/info` document.
pub(crate) fn contract_info(ctx: &Ctx) -> ContractInfo {
    let urls = ctx.shared.urls();
    let sw = ctx.shared.lock().switches.clone();
    ContractInfo {
        pubkey: PublicKey::from(&ctx.shared.contract_key),
        version: "0.5.0".into(),
        endpoint: Some(urls.contract.clone()),
        proof_of_funding: serde_json::json!([{"type": "dummy", "pubkey": PublicKey::from(&ctx.shared.contract_key)}]),
        servicekey: serde_json::json!({
            "currency": "usd", "value": "1000", "duration": format!("{}s", sw.servicekey_duration_secs)
        }),
        settlement: serde_json::json!({
            "fee_percent": "0", "submission_window": format!("{}s", sw.submission_window_secs)
        }),
        payout: serde_json::json!({
            "endpoint": urls.contract, "type": "dummy", "check_period": "1h",
            "min_withdrawal": 1, "max_withdrawal": 1_000_000
        }),
        directory: DirectoryRef {
            endpoint: urls.directory,
            public_key: Some(PublicKey::from(&ctx.shared.directory_key)),
        },
        metadata: serde_json::json!({"operator": "wireleap-devnet", "name": "devnet contract"}),
    }
}

async fn info(State(ctx): State<Ctx>) -> Response {
    json_reply(serde_json::to_string(&contract_info(&ctx)).unwrap_or_default())
}

#[derive(Deserialize)]
struct Activate {
    pubkey: PublicKey,
}

/// Signs a settlement window starting `servicekey_duration_secs` from now.
pub(crate) fn sign_window(ctx: &Ctx) -> Contract {
    let (dur, win) = {
        let st = ctx.shared.lock();
        (
            st.switches.servicekey_duration_secs,
            st.switches.submission_window_secs,
        )
    };
    let open = unix_now().saturating_add(i64::try_from(dur).unwrap_or(i64::MAX / 4));
    let close = open.saturating_add(i64::try_from(win).unwrap_or(i64::MAX / 4));
    Contract::sign(&ctx.shared.contract_key, open, close)
}

async fn activate(State(ctx): State<Ctx>, body: Bytes) -> Response {
    // Proof of funding is not checked: the devnet funds everyone.
    match serde_json::from_slice::<Activate>(&body) {
        Ok(a) => tracing::debug!(servicekey = %a.pubkey, "devnet: servicekey activated"),
        Err(e) => {
            return fail(
                status::BAD_REQUEST,
                format!("invalid activation request: {e}"),
            );
        }
    }
    json_reply(serde_json::to_string(&sign_window(&ctx)).unwrap_or_default())
}

fn signer(headers: &HeaderMap, body: &[u8]) -> Result<PublicKey, Box<Response>> {
    signed::verify_relay_request(
        header_str(headers, signed::HEADER_RELAY_PUBKEY),
        header_str(headers, signed::HEADER_RELAY_SIGNATURE),
        body,
    )
    .map_err(|e| Box::new(fail(status::BAD_REQUEST, e.to_string())))
}

fn cached(ctx: &Ctx, path: &str, headers: &HeaderMap) -> Option<Response> {
    let key = header_str(headers, HEADER_IDEMPOTENCY_KEY)?;
    let st = ctx.shared.lock();
    let (code, body) = st.idempotency.get(&(path.to_owned(), key.to_owned()))?;
    let s: Status = serde_json::from_str(body).unwrap_or_else(|_| Status::new(*code, "OK"));
    Some(status_reply(&s))
}

fn remember(ctx: &Ctx, path: &str, headers: &HeaderMap, s: &Status) {
    if let Some(key) = header_str(headers, HEADER_IDEMPOTENCY_KEY) {
        ctx.shared
            .lock()
            .idempotency
            .insert((path.to_owned(), key.to_owned()), (s.code, s.to_json()));
    }
}

async fn submit(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = cached(&ctx, "/submit", &headers) {
        return r;
    }
    let relay = match signer(&headers, &body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let st: Sharetoken = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return fail(status::BAD_REQUEST, format!("invalid sharetoken: {e}")),
    };
    let ours = PublicKey::from(&ctx.shared.contract_key);
    if st.contract.public_key != Some(ours) {
        return fail(status::BAD_REQUEST, status::cause::CONTRACT_PUBKEY_MISMATCH);
    }
    if st.relay_pubkey != relay {
        return fail(
            status::BAD_REQUEST,
            format!(
                "{}: sharetoken is for relay {}, submitted by {relay}",
                status::cause::ST_REJECTED,
                st.relay_pubkey
            ),
        );
    }
    if let Err(e) = st.verify() {
        return fail(
            status::BAD_REQUEST,
            format!("{}: {e}", status::cause::ST_REJECTED),
        );
    }
    if ctx.shared.lock().switches.settlement_closed {
        // As the reference contract answers a token whose window has closed (spec §4.2).
        return fail(status::BAD_REQUEST, status::cause::SETTLEMENT_CLOSED);
    }
    let now = unix_now();
    if now < st.contract.settlement_open {
        return fail(status::BAD_REQUEST, status::cause::SETTLEMENT_NOT_OPEN);
    }
    if now >= st.contract.settlement_close {
        return fail(status::BAD_REQUEST, status::cause::SETTLEMENT_CLOSED);
    }
    {
        let mut s = ctx.shared.lock();
        if !s.seen_tokens.insert(st.id()) {
            drop(s);
            return fail(status::CONFLICT, "sharetoken already submitted");
        }
        let credit = s.switches.credit_per_token;
        let acct = s.accounts.entry(relay).or_default();
        acct.available = acct.available.saturating_add(credit);
        acct.tokens.push(st);
    }
    let ok = status::OK.status();
    remember(&ctx, "/submit", &headers, &ok);
    status_reply(&ok)
}

async fn balance(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let relay = match signer(&headers, &body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let available = ctx
        .shared
        .lock()
        .accounts
        .get(&relay)
        .map(|a| a.available)
        .unwrap_or(0);
    json_reply(serde_json::json!({"currency": "usd", "available": available}).to_string())
}

async fn tokens(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let relay = match signer(&headers, &body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let toks = ctx
        .shared
        .lock()
        .accounts
        .get(&relay)
        .map(|a| a.tokens.clone())
        .unwrap_or_default();
    json_reply(serde_json::to_string(&toks).unwrap_or_else(|_| "[]".into()))
}

async fn withdrawals(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let relay = match signer(&headers, &body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let w = ctx
        .shared
        .lock()
        .accounts
        .get(&relay)
        .map(|a| a.withdrawals.clone())
        .unwrap_or_default();
    json_reply(serde_json::to_string(&w).unwrap_or_else(|_| "[]".into()))
}

#[derive(Deserialize)]
struct WithdrawalRequest {
    amount: i64,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    destination: String,
}

async fn withdraw(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = cached(&ctx, "/payout/withdrawals", &headers) {
        return r;
    }
    let relay = match signer(&headers, &body) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    let req: WithdrawalRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return fail(status::BAD_REQUEST, format!("invalid withdrawal: {e}")),
    };
    if req.amount <= 0 {
        return fail(status::BAD_REQUEST, status::cause::WITHDRAWAL_INVALID);
    }
    let w = {
        let mut s = ctx.shared.lock();
        let acct = s.accounts.entry(relay).or_default();
        if acct.available < req.amount {
            return fail(status::FORBIDDEN, status::cause::INSUFFICIENT_BALANCE);
        }
        acct.available -= req.amount;
        let w = Withdrawal {
            id: hex::encode(rand::random::<[u8; 8]>()),
            state: "complete".into(),
            state_changed: unix_now(),
            amount: req.amount,
            kind: req.kind,
            destination: req.destination,
            receipt: serde_json::Value::Null,
        };
        acct.withdrawals.push(w.clone());
        w
    };
    json_reply(serde_json::to_string(&w).unwrap_or_default())
}
