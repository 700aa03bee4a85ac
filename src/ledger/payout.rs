//! The `balance` and `withdraw` commands (spec §1.2, §5.7): the relay's account at its
//! contracts, read and spent from the command line.
//!
//! Requests are signed with the relay key and carry the relay-contract version header only, as
//! the reference's commands do; the contract's replies are passed through as JSON. `balance`
//! prints what the reference prints (indented JSON per contract); with `--human` the output is
//! made for people, plus the local ledger's counts. `withdraw` asks before it moves money
//! (`--yes` does not), and never sends its POST twice once it may have reached the contract.
//! Who calls it: `main` (the commands). It never runs inside the daemon.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::store::Store;
use crate::config::{self, Config};
use crate::directory::client::{self, Balance, Client, Retry};
use crate::home::files;
use crate::identity::{self, Identity};

/// Why a payout command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// config.json could not be loaded.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The key could not be loaded.
    #[error(transparent)]
    Identity(#[from] identity::Error),
    /// A contract call failed.
    #[error(transparent)]
    Api(#[from] client::Error),
    /// The HTTP client or runtime could not be built.
    #[error("could not start: {0}")]
    Setup(String),
    /// The arguments are not usable (spec §1.2: amount > 0, destination non-empty).
    #[error("{0}")]
    Usage(String),
}

/// `balance [--contract URL] [--json]`: one report per contract (the given one, or each in
/// config.json, each once).
///
/// # Errors
/// The first failure; nothing is printed for a contract that failed.
pub fn balance(
    home: &Path,
    contract: Option<&str>,
    json: bool,
    software: &str,
) -> Result<String, Error> {
    let contracts = match contract {
        Some(c) => vec![c.trim_end_matches('/').to_owned()],
        None => configured(&load_config(home)?),
    };
    let client = signed_client(home, software)?;
    let reports = block_on(async {
        let mut out = Vec::new();
        for c in &contracts {
            out.push(client.balance(c, Retry::PERFORM).await?);
        }
        Ok::<_, Error>(out)
    })??;
    if json {
        let mut text = String::new();
        for r in &reports {
            text.push_str(&pretty(&serde_json::to_value(r).unwrap_or(Value::Null)));
            text.push('\n');
        }
        return Ok(text);
    }
    let mut text = String::new();
    for r in &reports {
        text.push_str(&readable_balance(r));
    }
    if let Ok(store) = Store::open_existing(home)
        && let Ok(c) = store.counts()
    {
        let _ = writeln!(
            text,
            "local ledger: {} pending, {} submitted, {} archived, {} expired",
            c.pending, c.submitted, c.archived, c.expired
        );
    }
    Ok(text)
}

/// `withdraw [--contract URL] --destination D --amount N [--json] [--yes]`. Without
/// `--contract`, config.json must name exactly one contract. Without `--yes` it asks on the
/// terminal, and refuses when there is none.
///
/// # Errors
/// [`Error::Usage`] for bad arguments or no confirmation, or the contract's refusal.
pub fn withdraw(
    home: &Path,
    contract: Option<&str>,
    destination: &str,
    amount: i64,
    human: bool,
    yes: bool,
    software: &str,
) -> Result<String, Error> {
    let amount = u64::try_from(amount)
        .ok()
        .filter(|a| *a > 0)
        .ok_or_else(|| Error::Usage("--amount must be greater than 0".into()))?;
    if destination.trim().is_empty() {
        return Err(Error::Usage("--destination must not be empty".into()));
    }
    let contract = match contract {
        Some(c) => c.trim_end_matches('/').to_owned(),
        None => match configured(&load_config(home)?).as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(Error::Usage(
                    "config.json names several contracts: choose one with --contract".into(),
                ));
            }
        },
    };
    if !yes
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
        && !confirm(&format!(
            "withdraw {amount} to {destination:?} from {contract}?"
        ))?
    {
        return Err(Error::Usage("not confirmed: nothing was sent".into()));
    }
    let client = signed_client(home, software)?;
    let (reply, raw) = block_on(client.withdraw(&contract, amount, destination, Retry::PERFORM))??;
    if !human {
        // The reference's output: the contract's reply as it sent it.
        return Ok(format!("{}\n", raw.trim_end()));
    }
    let field = |k: &str| reply.get(k).map(plain).unwrap_or_else(|| "?".into());
    Ok(format!(
        "withdrawal {} of {} to {} at {contract}: {}\n",
        field("id"),
        field("amount"),
        field("destination"),
        field("state"),
    ))
}

/// Asks `question` on the terminal; only "y" or "yes" confirms. Only asked at a terminal: a
/// script (stdin not a terminal) has decided already, as with the reference, which never asks.
///
/// # Errors
/// The answer could not be read.
fn confirm(question: &str) -> Result<bool, Error> {
    use std::io::{BufRead as _, Write as _};
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question} [y/N] ");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::Setup(format!("could not read the answer: {e}")))?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn load_config(home: &Path) -> Result<Config, Error> {
    Ok(config::load(&home.join(files::CONFIG))?.config)
}

/// The configured contract URLs, each once.
fn configured(config: &Config) -> Vec<String> {
    let mut urls: Vec<String> = config
        .contracts
        .keys()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .collect();
    urls.dedup();
    urls
}

fn signed_client(home: &Path, software: &str) -> Result<Client, Error> {
    let identity = Identity::load(home)?;
    Client::try_new(identity.signing_key().clone(), software)
        .map_err(|e| Error::Setup(e.to_string()))
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(e.to_string()))?;
    Ok(rt.block_on(f))
}

/// Indented JSON, as the reference prints it (`json.MarshalIndent` with two spaces).
fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value without quotes around strings.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn readable_balance(r: &Balance) -> String {
    let mut t = format!("contract {}\n", r.contract);
    let b = &r.balance;
    let currency = b.get("currency").map(plain).unwrap_or_default();
    match b.get("available") {
        Some(a) => {
            let _ = write!(t, "  available:   {} {currency}", plain(a));
            if let Some(p) = b.get("pending").filter(|p| !p.is_null()) {
                let _ = write!(t, " ({} pending)", plain(p));
            }
            t.push('\n');
        }
        None => {
            let _ = writeln!(t, "  balance:     {b}");
        }
    }
    match &r.tokens {
        Value::Array(a) => {
            let _ = writeln!(t, "  tokens:      {} accepted by the contract", a.len());
        }
        other => {
            let _ = writeln!(t, "  tokens:      {other}");
        }
    }
    let withdrawals: Vec<&Value> = match &r.withdrawal {
        Value::Array(a) => a.iter().collect(),
        Value::Null => Vec::new(),
        one => vec![one],
    };
    if withdrawals.is_empty() {
        let _ = writeln!(t, "  withdrawals: none");
    } else {
        let _ = writeln!(t, "  withdrawals: {}", withdrawals.len());
        for w in withdrawals {
            let f = |k: &str| w.get(k).map(plain).unwrap_or_else(|| "?".into());
            let _ = writeln!(
                t,
                "    {} {} to {}: {}",
                f("id"),
                f("amount"),
                f("destination"),
                f("state")
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_payout_readable_balance_shows_the_parts() {
        let r = Balance {
            contract: "http://c".into(),
            balance: serde_json::json!({"currency": "usd", "available": 12, "pending": 3}),
            tokens: serde_json::json!([{}, {}]),
            withdrawal: serde_json::json!([{"id": "w1", "amount": 5, "destination": "acct", "state": "complete"}]),
        };
        let t = readable_balance(&r);
        assert!(t.contains("available:   12 usd (3 pending)"), "{t}");
        assert!(t.contains("tokens:      2 accepted"), "{t}");
        assert!(t.contains("w1 5 to acct: complete"), "{t}");
    }

    #[test]
    fn ledger_payout_withdraw_checks_arguments_before_any_call() {
        let home = tempfile::tempdir().unwrap();
        let e = withdraw(home.path(), Some("http://c"), "d", 0, false, true, "0.7.0").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        let e = withdraw(home.path(), Some("http://c"), " ", 5, false, true, "0.7.0").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
    }
}
