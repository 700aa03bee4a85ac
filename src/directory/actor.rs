//! The [`Enrollment`] actor and its messages.
//!
//! Each configured contract gets one task that learns the contract's id and directory from
//! `<contract>/info`, enrolls (answering the proof-of-work challenge), then sends a heartbeat
//! every `heartbeat_interval`. A contract or directory that is down is retried with capped
//! backoff; the relay keeps running and serves nothing for that contract until it is enrolled
//! (the reference exits instead). One that refuses the relay for good in the first round (a
//! wrong enrollment key, another interface version) is reported to the daemon, which exits as
//! the reference does when no supervisor runs it. Tasks report back by message, so the actor's
//! state only changes inside its handlers.
//!
//! Network caps (spec §2.5) are enforced here too: a contract over 90 % of its cap is
//! disenrolled (its gate closes, running streams go on), over 93 % (or at 93 % of the global
//! cap) its running streams are cut as well; a contract already over its cap at start is not
//! enrolled, and one that is under its caps again (a new period, a raised cap) is enrolled again.
//! The check runs every [`usage::CHECK_INTERVAL`] and at once when a counter crosses a
//! threshold.
//!
//! Restart: not supervised; its state is rebuilt from the config. Shutdown: [`DisenrollAll`]
//! before the drain, so the directory stops sending clients while streams finish.
//!
//! A hot upgrade has two generations of the relay alive at once, and the directory must hear
//! only one of them at a time: [`PauseHeartbeats`] (before the supervisor starts a successor)
//! and [`StopHeartbeats`] (at the handover) answer only once no `POST` of this generation is in
//! flight any more; [`ResumeHeartbeats`] (a successor that failed to start) enrolls again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wireleap_protocol::status;
use wireleap_protocol::{PublicKey, RelayEntry, Versions};

use super::Admission;
use super::client::{self, Client, Retry};
use super::schedule::{BACKOFF_BASE, BACKOFF_CAP, backoff};
use crate::config::{Config, Contract, ContractUrl, Role, format_datasize};
use crate::upgrader::UpgradeNotice;
use crate::usage::{self, Level};

/// Per-contract enrollment state.
pub struct Enrollment {
    /// One slot per configured contract.
    contracts: BTreeMap<ContractUrl, Slot>,
    /// The transport's view of which contracts it may admit; kept in step with `contracts`.
    admission: Admission,
    /// Signs every directory and contract call.
    client: Client,
    /// The relay's public key (the entry's `pubkey`).
    pubkey: PublicKey,
    /// The running software version (the entry's `versions.software`).
    software: String,
    /// Heartbeat period.
    heartbeat: Duration,
    /// Where upgrade notices go.
    upgrader: Recipient<UpgradeNotice>,
    /// Contracts whose first enrollment attempt has not finished yet (started with all of them).
    first_round: std::collections::BTreeSet<ContractUrl>,
    /// Becomes true when every contract had its first attempt, or one refused the relay for
    /// good: the daemon starts accepting then (or, refused, stops).
    first_round_done: tokio::sync::watch::Sender<bool>,
    /// What refused the relay for good in the first round (`<contract>: <error>`), for
    /// [`WaitFirstRound`].
    refusals: Vec<String>,
    /// Held shared by every `POST` in flight (in a task of its own, so cancelling a contract's
    /// task does not cut it off mid-request); taken exclusively to wait until none is.
    speaking: Arc<tokio::sync::RwLock<()>>,
    /// Whether the contract tasks are held back, and until when.
    quiet: Quiet,
}

/// Whether this generation talks to the directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// Enrolls and heartbeats.
    No,
    /// Paused for a successor that is starting; the number tells a lease that ended from a later
    /// pause.
    Paused(u64),
    /// Handed over for good.
    Stopped,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("contracts", &self.contracts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// One contract: its config, what we know, and its task.
struct Slot {
    config: Contract,
    state: ContractState,
    /// Cancels this contract's task (reload, shutdown).
    task: CancellationToken,
    /// `<directory>/relays`, once known.
    relays_url: Option<String>,
    /// Set while the contract's usage is over its soft or hard cap (spec §2.5).
    capped: Option<Level>,
    /// Wakes the task's heartbeat loop for a heartbeat now (a reload, spec §1.4).
    beat: Arc<tokio::sync::Notify>,
}

/// What the relay knows about one contract (shown by `status` and the REST API).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContractState {
    /// The contract URL from the config.
    pub url: String,
    /// The contract's public key, once learned from its `/info`.
    pub id: Option<String>,
    /// The advertised relay address.
    pub address: String,
    /// The role in this contract.
    pub role: &'static str,
    /// Whether the directory has the relay enrolled.
    pub enrolled: bool,
    /// Per-contract usage cap, bytes.
    pub network_cap: Option<u64>,
    /// Bytes relayed for this contract in the current period; `None` when accounting is off.
    pub network_usage: Option<u64>,
    /// Whether the hard cap was hit this period (streams cut, not enrolled).
    pub network_cap_reached: bool,
    /// The last error talking to this contract or its directory, if the last call failed.
    pub last_error: Option<String>,
    /// Unix time of the last successful heartbeat.
    pub last_heartbeat: Option<i64>,
}

impl Enrollment {
    /// Builds the state from the config (nothing is enrolled yet; tasks start with the actor).
    pub fn new(
        config: &Config,
        admission: Admission,
        client: Client,
        pubkey: PublicKey,
        software: &str,
        upgrader: Recipient<UpgradeNotice>,
    ) -> Self {
        let contracts = config
            .contracts
            .iter()
            .map(|(url, c)| (url.clone(), Slot::new(url, c)))
            .collect();
        let first_round = config.contracts.keys().cloned().collect();
        Self {
            contracts,
            admission,
            client,
            pubkey,
            software: software.to_owned(),
            heartbeat: config.heartbeat_interval,
            upgrader,
            first_round,
            first_round_done: tokio::sync::watch::Sender::new(false),
            refusals: Vec::new(),
            speaking: Arc::new(tokio::sync::RwLock::new(())),
            quiet: Quiet::No,
        }
    }

    /// Cancels every contract task and answers once no `POST` is in flight.
    fn hush(&mut self, limit: Duration) -> impl Future<Output = ()> + use<> {
        for slot in self.contracts.values_mut() {
            slot.task.cancel();
        }
        self.calls_settled(limit)
    }

    /// Resolves once no `POST` that started before this call is in flight (at most `limit`).
    fn calls_settled(&self, limit: Duration) -> impl Future<Output = ()> + use<> {
        let speaking = self.speaking.clone();
        async move {
            if tokio::time::timeout(limit, speaking.write()).await.is_err() {
                warn!(?limit, "a directory call is still in flight; going on");
            }
        }
    }

    /// Sends `DELETE` for a contract whose task was cancelled, once its `POST` in flight (if any)
    /// has landed: a heartbeat on its way must not list the relay again after the `DELETE`.
    /// Best effort, logged as "disenrolled (`why`)".
    fn disenroll_later(
        &self,
        url: &ContractUrl,
        relays: String,
        config: &Contract,
        why: &'static str,
    ) {
        let client = self.client.clone();
        let entry = self.entry(config);
        let contract = url.clone();
        let settled = self.calls_settled(HUSH_LIMIT);
        tokio::spawn(async move {
            settled.await;
            match client.delete_entry(&relays, &entry).await {
                Ok(()) => info!(contract = %contract, "disenrolled ({why})"),
                Err(e) => warn!(contract = %contract, error = %e, "could not disenroll"),
            }
        });
    }

    /// Marks `url`'s first attempt done; opens the gates when every contract had one.
    fn attempted(&mut self, url: &ContractUrl) {
        if self.first_round.remove(url) && self.first_round.is_empty() {
            self.admission.set_started();
            self.first_round_done.send_replace(true);
        }
    }

    fn entry(&self, c: &Contract) -> RelayEntry {
        RelayEntry {
            role: match c.role {
                Role::Fronting => wireleap_protocol::Role::Fronting,
                Role::Entropic => wireleap_protocol::Role::Entropic,
                Role::Backing => wireleap_protocol::Role::Backing,
            },
            address: c.address.to_string(),
            pubkey: self.pubkey,
            versions: Versions::relay(&self.software),
            key: c
                .key
                .as_ref()
                .map(|k| k.expose().to_owned())
                .unwrap_or_default(),
            update_channel: String::new(),
            upgrade_channel: c.upgrade_channel.clone().unwrap_or_default(),
            network_usage_limit: c
                .network_usage_limit
                .map(format_datasize)
                .unwrap_or_default(),
        }
    }

    fn spawn_task(&mut self, url: &ContractUrl, ctx: &mut Context<Self>) {
        if self.quiet != Quiet::No {
            // Paused or handed over: [`ResumeHeartbeats`] starts it, if anything does.
            return;
        }
        // A wake-up per task: a reload's wake-up never outlives the task it was meant for.
        if let Some(slot) = self.contracts.get_mut(url) {
            slot.beat = Arc::new(tokio::sync::Notify::new());
        }
        let Some(slot) = self.contracts.get(url) else {
            return;
        };
        let task = ContractTask {
            url: url.clone(),
            entry: self.entry(&slot.config),
            client: self.client.clone(),
            heartbeat: self.heartbeat,
            cancel: slot.task.clone(),
            me: ctx.address(),
            upgrader: self.upgrader.clone(),
            speaking: self.speaking.clone(),
            beat: slot.beat.clone(),
        };
        tokio::spawn(task.run());
    }
}

impl Slot {
    fn new(url: &ContractUrl, c: &Contract) -> Self {
        Self {
            config: c.clone(),
            state: ContractState {
                url: url.to_string(),
                id: None,
                address: c.address.to_string(),
                role: c.role.as_str(),
                enrolled: false,
                network_cap: c.network_usage_limit,
                network_usage: None,
                network_cap_reached: false,
                last_error: None,
                last_heartbeat: None,
            },
            task: CancellationToken::new(),
            relays_url: None,
            capped: None,
            beat: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl Actor for Enrollment {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let urls: Vec<ContractUrl> = self.contracts.keys().cloned().collect();
        for url in &urls {
            self.spawn_task(url, ctx);
        }
        if urls.is_empty() {
            self.admission.set_started();
            self.first_round_done.send_replace(true);
        }
        if self.admission.usage().is_enabled() {
            ctx.run_interval(usage::CHECK_INTERVAL, |_, ctx| ctx.notify(CheckCaps));
            let usage = self.admission.usage().clone();
            let me = ctx.address();
            ctx.spawn(actix::fut::wrap_future(async move {
                loop {
                    usage.crossed().await;
                    me.do_send(CheckCaps);
                }
            }));
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for slot in self.contracts.values() {
            slot.task.cancel();
        }
    }
}

// === the per-contract task ===

struct ContractTask {
    url: ContractUrl,
    entry: RelayEntry,
    client: Client,
    heartbeat: Duration,
    cancel: CancellationToken,
    me: Addr<Enrollment>,
    upgrader: Recipient<UpgradeNotice>,
    speaking: Arc<tokio::sync::RwLock<()>>,
    beat: Arc<tokio::sync::Notify>,
}

impl ContractTask {
    async fn run(self) {
        let cancel = self.cancel.clone();
        tokio::select! {
            // Once cancelled, the lifecycle is never polled again: it starts no new call.
            biased;
            () = cancel.cancelled() => {}
            () = self.lifecycle() => {}
        }
    }

    /// `POST`s the entry (enroll or heartbeat) in a task of its own that holds the speaking
    /// lock: a pause or handover cancels this task but still waits for the call to finish.
    async fn post(&self, relays_url: &str, enroll: bool) -> Result<status::Status, client::Error> {
        let speaking = self.speaking.clone().read_owned().await;
        let (api, entry, relays) = (
            self.client.clone(),
            self.entry.clone(),
            relays_url.to_owned(),
        );
        let call = tokio::spawn(async move {
            let _speaking = speaking;
            api.post_entry(&relays, &entry, enroll).await
        });
        call.await.unwrap_or_else(|_| {
            Err(client::Error::Interrupted {
                url: relays_url.to_owned(),
            })
        })
    }

    async fn lifecycle(&self) {
        let url = self.url.as_str();
        // 1. Discovery: the contract id and its directory (spec §4.1).
        let mut attempt = 0;
        let (id, relays_url) = loop {
            attempt += 1;
            match self.client.contract_info(url, Retry::ONCE).await {
                Ok(info) => break (info.pubkey.to_b64(), info.relays_url()),
                Err(e) => {
                    let refused = e.is_refusal();
                    self.failed(attempt, format!("contract info: {e}"), refused)
                        .await;
                }
            }
        };
        let proceed = self
            .me
            .send(Discovered {
                url: self.url.clone(),
                id,
                relays_url: relays_url.clone(),
            })
            .await;
        if !matches!(proceed, Ok(true)) {
            // Over a network cap (spec §2.5), or the actor is gone: the cap check enrolls later.
            return;
        }
        // 2. Enrollment with the proof-of-work handshake (spec §4.4). An upgrade notice in this
        //    reply is ignored, as in the reference.
        attempt = 0;
        loop {
            attempt += 1;
            match self.post(&relays_url, true).await {
                Ok(_) => break,
                Err(e) => {
                    let refused = e.is_refusal();
                    self.failed(attempt, format!("enrollment: {e}"), refused)
                        .await;
                }
            }
        }
        self.me.do_send(Enrolled {
            url: self.url.clone(),
        });
        // 3. Heartbeats (spec §4.5), the first one a full interval after enrolling.
        let start = tokio::time::Instant::now() + self.heartbeat;
        let mut ticker = tokio::time::interval_at(start, self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                // A reload: a heartbeat now, the next a full interval later.
                () = self.beat.notified() => ticker.reset(),
            }
            let heartbeat = self.post(&relays_url, false);
            let result = crate::metrics::timed_heartbeat(heartbeat).await;
            match &result {
                Ok(st) if st.is(status::UPGRADE) => self.upgrade_notice(&st.cause),
                Ok(_) => debug!(contract = url, "heartbeat ok"),
                Err(e) => {
                    warn!(contract = url, error = %e, "could not send heartbeat to directory")
                }
            }
            self.me.do_send(HeartbeatDone {
                url: self.url.clone(),
                error: result.err().map(|e| e.to_string()),
            });
        }
    }

    /// Reports a failure (`refused`: for good, see [`client::Error::is_refusal`]) and sleeps
    /// the backoff for `attempt`.
    async fn failed(&self, attempt: u32, error: String, refused: bool) {
        let jitter = f64::from(rand::random::<u8>()) / 255.0;
        let delay = backoff(attempt, BACKOFF_BASE, BACKOFF_CAP, jitter);
        warn!(contract = %self.url, error = %error, retry_in = ?delay, "not enrolled yet");
        self.me.do_send(Failed {
            url: self.url.clone(),
            error,
            refused,
        });
        tokio::time::sleep(delay).await;
    }

    fn upgrade_notice(&self, cause: &str) {
        match semver::Version::parse(cause.trim()) {
            Ok(version) => {
                let notice = UpgradeNotice {
                    version,
                    contract: self.url.to_string(),
                };
                if let Err(e) = self.upgrader.try_send(notice) {
                    warn!(error = %e, "upgrade notice dropped: the upgrader is busy");
                }
            }
            Err(e) => {
                warn!(cause, error = %e, "ignoring an upgrade notice with an unparsable version")
            }
        }
    }
}

// === messages from the tasks ===

/// The contract's id and directory are known. Answers whether to enroll (not when the contract
/// is over a cap).
#[derive(Message)]
#[rtype(result = "bool")]
struct Discovered {
    url: ContractUrl,
    id: String,
    relays_url: String,
}

impl Handler<Discovered> for Enrollment {
    type Result = bool;

    fn handle(&mut self, msg: Discovered, ctx: &mut Self::Context) -> bool {
        let Some(slot) = self.contracts.get_mut(&msg.url) else {
            return false;
        };
        self.admission.register(&msg.id, msg.url.as_str());
        let usage = self.admission.usage();
        usage.set_cap(&msg.id, slot.config.network_usage_limit);
        let level = usage.level(&msg.id);
        if level == Level::Under && slot.state.enrolled {
            // Re-enrolling after a reload: keep serving meanwhile.
            self.admission.set_enrolled(&msg.id, true);
        }
        slot.state.id = Some(msg.id);
        slot.relays_url = Some(msg.relays_url);
        if level == Level::Under {
            slot.capped = None;
            slot.state.network_cap_reached = false;
            return true;
        }
        // Spec §2.5: a contract already over its cap is not enrolled.
        warn!(contract = %msg.url, ?level, "network usage over the cap: not enrolling");
        self.enforce(&msg.url, level, ctx);
        self.attempted(&msg.url);
        false
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Enrolled {
    url: ContractUrl,
}

impl Handler<Enrolled> for Enrollment {
    type Result = ();

    fn handle(&mut self, msg: Enrolled, _ctx: &mut Self::Context) {
        if let Some(slot) = self.contracts.get(&msg.url)
            && slot.capped.is_some()
        {
            // The enrollment raced with a cap: undo it at the directory.
            self.disenroll_capped(&msg.url);
            self.attempted(&msg.url);
            return;
        }
        if let Some(slot) = self.contracts.get_mut(&msg.url) {
            if let Some(id) = &slot.state.id {
                self.admission.set_enrolled(id, true);
            }
            if !slot.state.enrolled {
                info!(contract = %msg.url, role = slot.state.role, "enrolled");
            }
            slot.state.enrolled = true;
            slot.state.last_error = None;
        }
        self.attempted(&msg.url);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Failed {
    url: ContractUrl,
    error: String,
    /// The contract or its directory refused for good (not an outage).
    refused: bool,
}

impl Handler<Failed> for Enrollment {
    type Result = ();

    fn handle(&mut self, msg: Failed, _ctx: &mut Self::Context) {
        if msg.refused && self.first_round.contains(&msg.url) {
            self.refusals.push(format!("{}: {}", msg.url, msg.error));
            // The daemon hears of it now, not once the slowest contract answered.
            self.first_round_done.send_replace(true);
        }
        if let Some(slot) = self.contracts.get_mut(&msg.url) {
            slot.state.last_error = Some(msg.error);
        }
        self.attempted(&msg.url);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct HeartbeatDone {
    url: ContractUrl,
    error: Option<String>,
}

impl Handler<HeartbeatDone> for Enrollment {
    type Result = ();

    fn handle(&mut self, msg: HeartbeatDone, _ctx: &mut Self::Context) {
        if let Some(slot) = self.contracts.get_mut(&msg.url) {
            if msg.error.is_none() {
                slot.state.last_heartbeat = Some(wireleap_protocol::unix_now());
            }
            slot.state.last_error = msg.error;
        }
    }
}

// === public messages ===

/// Apply a reloaded config (spec §1.4 with §10 #12): new contracts are enrolled, changed ones
/// re-enrolled with their new entry, removed ones disenrolled. A role change is refused.
#[derive(Debug, Message)]
#[rtype(result = "ReloadSummary")]
pub struct ApplyConfig(pub Config);

/// What a reload changed, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq, MessageResponse)]
pub struct ReloadSummary {
    /// Contracts that were not configured before.
    pub added: Vec<String>,
    /// Contracts whose entry changed.
    pub updated: Vec<String>,
    /// Contracts no longer configured.
    pub removed: Vec<String>,
    /// Changes refused, with the reason (a role change needs a restart, as in the reference).
    pub refused: Vec<String>,
    /// Unchanged enrolled contracts that get a heartbeat now.
    pub heartbeats: Vec<String>,
}

impl Handler<ApplyConfig> for Enrollment {
    type Result = ReloadSummary;

    fn handle(
        &mut self,
        ApplyConfig(config): ApplyConfig,
        ctx: &mut Self::Context,
    ) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        let removed: Vec<ContractUrl> = self
            .contracts
            .keys()
            .filter(|u| !config.contracts.contains_key(*u))
            .cloned()
            .collect();
        for url in removed {
            if let Some(slot) = self.contracts.remove(&url) {
                slot.task.cancel();
                if let Some(id) = &slot.state.id {
                    self.admission.remove(id);
                }
                if let Some(relays) = slot.relays_url {
                    self.disenroll_later(&url, relays, &slot.config, "removed from config");
                }
                summary.removed.push(url.to_string());
            }
        }
        for (url, c) in &config.contracts {
            let restart = match self.contracts.get_mut(url) {
                None => {
                    self.contracts.insert(url.clone(), Slot::new(url, c));
                    summary.added.push(url.to_string());
                    true
                }
                Some(slot) if slot.config.role != c.role => {
                    summary.refused.push(format!(
                        "{url}: role change from {} to {} needs a restart",
                        slot.config.role, c.role
                    ));
                    false
                }
                Some(slot) if slot.config != *c => {
                    slot.task.cancel();
                    slot.task = CancellationToken::new();
                    slot.config = c.clone();
                    slot.state.address = c.address.to_string();
                    slot.state.network_cap = c.network_usage_limit;
                    summary.updated.push(url.to_string());
                    true
                }
                Some(slot) => {
                    // Unchanged: the reference re-announces an enrolled relay at once (spec
                    // §1.4), which operators use after a directory outage.
                    if slot.state.enrolled && self.quiet == Quiet::No {
                        slot.beat.notify_one();
                        summary.heartbeats.push(url.to_string());
                    }
                    false
                }
            };
            if restart {
                self.spawn_task(url, ctx);
            }
        }
        self.heartbeat = config.heartbeat_interval;
        if let Some(n) = &config.network_usage {
            self.admission.usage().set_global_limit(n.global_limit);
        }
        ctx.notify(CheckCaps);
        summary
    }
}

/// Wait until every contract had its first enrollment attempt (enrolled or failed once), so a
/// new generation does not accept streams it would refuse as "not available". Answers what
/// refused the relay for good in that round (empty when nothing did): at start that is fatal,
/// as with the reference (spec §4.4), while an outage is ridden out.
#[derive(Debug, Message)]
#[rtype(result = "Vec<String>")]
pub struct WaitFirstRound;

impl Handler<WaitFirstRound> for Enrollment {
    type Result = ResponseActFuture<Self, Vec<String>>;

    fn handle(&mut self, _msg: WaitFirstRound, _ctx: &mut Self::Context) -> Self::Result {
        let mut done = self.first_round_done.subscribe();
        Box::pin(
            async move {
                let _ = done.wait_for(|d| *d).await;
            }
            .into_actor(self)
            .map(|(), act, _| act.refusals.clone()),
        )
    }
}

/// Ask for every contract's state.
#[derive(Debug, Message)]
#[rtype(result = "Vec<ContractState>")]
pub struct ContractStatuses;

impl Handler<ContractStatuses> for Enrollment {
    type Result = MessageResult<ContractStatuses>;

    fn handle(&mut self, _msg: ContractStatuses, _ctx: &mut Self::Context) -> Self::Result {
        let usage = self.admission.usage();
        MessageResult(
            self.contracts
                .values()
                .map(|s| {
                    let mut state = s.state.clone();
                    state.network_usage = match &s.state.id {
                        Some(id) => usage.bytes(id),
                        None => usage.is_enabled().then_some(0),
                    };
                    state
                })
                .collect(),
        )
    }
}

/// A handover: the next generation heartbeats from now on, so this one stops its enrollment and
/// heartbeat tasks without disenrolling and keeps its gates as they are (its streams drain).
/// Answers once no call of this generation is in flight. The directory so never sees two
/// versions of one relay in turn.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopHeartbeats;

impl Handler<StopHeartbeats> for Enrollment {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopHeartbeats, _ctx: &mut Self::Context) -> Self::Result {
        self.quiet = Quiet::Stopped;
        let hushed = self.hush(HUSH_LIMIT);
        Box::pin(async move {
            hushed.await;
            info!("heartbeats stopped: the next generation heartbeats");
        })
    }
}

/// The longest a pause or handover waits for a directory call in flight.
const HUSH_LIMIT: Duration = Duration::from_secs(4);
/// The same wait before the `DELETE`s of a shutdown: short, because the daemon gives the whole
/// deregistration 1 s.
const SHUTDOWN_HUSH_LIMIT: Duration = Duration::from_millis(300);

/// A successor generation is about to start and will enroll: stop enrolling and heartbeating
/// (the gates stay as they are; streams are served as before) until [`StopHeartbeats`],
/// [`ResumeHeartbeats`], or the end of `lease`, whichever comes first. Answers once no call is
/// in flight.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PauseHeartbeats {
    /// When to resume by itself (the supervisor that asked may have died).
    pub lease: Duration,
}

impl Handler<PauseHeartbeats> for Enrollment {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: PauseHeartbeats, ctx: &mut Self::Context) -> Self::Result {
        if self.quiet == Quiet::Stopped {
            // Handed over or shutting down: nothing to pause, but a call may be in flight.
            return Box::pin(self.hush(HUSH_LIMIT));
        }
        let lease = match self.quiet {
            Quiet::Paused(n) => n + 1,
            _ => 0,
        };
        self.quiet = Quiet::Paused(lease);
        ctx.run_later(msg.lease, move |act, ctx| {
            if act.quiet == Quiet::Paused(lease) {
                warn!(lease = ?msg.lease, "heartbeats were paused for a successor that never took over; resuming");
                act.resume(ctx);
            }
        });
        let hushed = self.hush(HUSH_LIMIT);
        Box::pin(async move {
            hushed.await;
            info!("heartbeats paused: a successor generation is starting");
        })
    }
}

/// The successor did not take over: enroll and heartbeat again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ResumeHeartbeats;

impl Handler<ResumeHeartbeats> for Enrollment {
    type Result = ();

    fn handle(&mut self, _msg: ResumeHeartbeats, ctx: &mut Self::Context) {
        if matches!(self.quiet, Quiet::Paused(_)) {
            info!("heartbeats resumed: the successor did not take over");
            self.resume(ctx);
        }
    }
}

impl Enrollment {
    /// Restarts the task of every contract that is not over a cap (it enrolls again first).
    fn resume(&mut self, ctx: &mut Context<Self>) {
        self.quiet = Quiet::No;
        let urls: Vec<ContractUrl> = self
            .contracts
            .iter()
            .filter(|(_, s)| s.capped.is_none())
            .map(|(u, _)| u.clone())
            .collect();
        for url in &urls {
            if let Some(slot) = self.contracts.get_mut(url) {
                slot.task = CancellationToken::new();
            }
            self.spawn_task(url, ctx);
        }
    }
}

/// Disenroll from every contract's directory (graceful shutdown): stop the tasks, close the
/// gates, and send `DELETE` to every directory we know (spec §4.6). Replies with how many
/// directories confirmed.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct DisenrollAll;

impl Handler<DisenrollAll> for Enrollment {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _msg: DisenrollAll, _ctx: &mut Self::Context) -> Self::Result {
        self.quiet = Quiet::Stopped;
        // A heartbeat still in flight must not land after the DELETE and list the relay again.
        let hushed = self.hush(SHUTDOWN_HUSH_LIMIT);
        let mut calls = Vec::new();
        for (url, slot) in &mut self.contracts {
            slot.state.enrolled = false;
            if let Some(id) = &slot.state.id {
                self.admission.set_enrolled(id, false);
            }
            if let Some(relays) = slot.relays_url.clone() {
                calls.push((url.clone(), relays, slot.config.clone()));
            }
        }
        let requests: Vec<_> = calls
            .into_iter()
            .map(|(url, relays, config)| {
                let client = self.client.clone();
                let entry = self.entry(&config);
                async move {
                    match client.delete_entry(&relays, &entry).await {
                        Ok(()) => {
                            info!(contract = %url, "disenrolled");
                            true
                        }
                        Err(e) => {
                            warn!(contract = %url, error = %e, "could not disenroll");
                            false
                        }
                    }
                }
            })
            .collect();
        Box::pin(async move {
            hushed.await;
            futures::future::join_all(requests)
                .await
                .into_iter()
                .filter(|ok| *ok)
                .count()
        })
    }
}

// === network caps (spec §2.5) ===

/// Compare every contract's usage with its caps and act on it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct CheckCaps;

impl Handler<CheckCaps> for Enrollment {
    type Result = ();

    fn handle(&mut self, _msg: CheckCaps, ctx: &mut Self::Context) {
        let usage = self.admission.usage().clone();
        if !usage.is_enabled() {
            return;
        }
        let known: Vec<(ContractUrl, String, Option<u64>)> = self
            .contracts
            .iter()
            .filter_map(|(url, s)| {
                let id = s.state.id.clone()?;
                Some((url.clone(), id, s.config.network_usage_limit))
            })
            .collect();
        for (url, id, limit) in known {
            usage.set_cap(&id, limit);
            self.enforce(&url, usage.level(&id), ctx);
        }
    }
}

impl Enrollment {
    /// Brings one contract in line with its usage `level`: over the soft cap it is disenrolled
    /// (gate closed, heartbeats stopped, `DELETE` at the directory); over the hard cap its
    /// running streams are cut too; back under its caps it is enrolled again.
    fn enforce(&mut self, url: &ContractUrl, level: Level, ctx: &mut Context<Self>) {
        let Some(slot) = self.contracts.get_mut(url) else {
            return;
        };
        let Some(id) = slot.state.id.clone() else {
            return;
        };
        if level == Level::Under {
            if slot.capped.take().is_some() {
                info!(contract = %url, "network usage under the cap again: enrolling");
                slot.state.network_cap_reached = false;
                slot.task = CancellationToken::new();
                self.spawn_task(url, ctx);
            }
            return;
        }
        let before = slot.capped.replace(level.max(slot.capped.unwrap_or(level)));
        if level == Level::Hard && before != Some(Level::Hard) {
            warn!(contract = %url, "network usage over the hard cap: cutting the contract's streams");
            slot.state.network_cap_reached = true;
            self.admission.cut(&id);
        } else {
            self.admission.set_enrolled(&id, false);
        }
        if before.is_none() {
            slot.task.cancel();
            let was_enrolled = std::mem::replace(&mut slot.state.enrolled, false);
            if was_enrolled {
                warn!(contract = %url, "network usage over the soft cap: disenrolling");
                self.disenroll_capped(url);
            }
        }
    }

    /// Sends `DELETE` for a capped contract (best effort, logged).
    fn disenroll_capped(&self, url: &ContractUrl) {
        let Some(slot) = self.contracts.get(url) else {
            return;
        };
        if let Some(relays) = slot.relays_url.clone() {
            self.disenroll_later(url, relays, &slot.config, "network cap");
        }
    }
}
