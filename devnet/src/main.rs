//! `wireleap-devnet`: run the stand-in network, or talk through relays with the circuit client.
//!
//! See `devnet/README.md` for the commands, the ready line and the admin API.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use wireleap_devnet::client::{
    self, CircuitClient, ClientConfig, ClientError, H2Stream, Hop, StreamEnd, exit,
};
use wireleap_devnet::{Config, Devnet, Switches};
use wireleap_protocol::{Network, PublicKey, Servicekey};

#[derive(Debug, Parser)]
#[command(
    name = "wireleap-devnet",
    version,
    about = "Stand-in Wireleap network for tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the contract, directory and release server until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Open one stream through relays to a target and pipe stdin/stdout through it.
    #[command(after_help = client::exit::HELP)]
    Client(ClientArgs),
    /// Activate a fresh servicekey at a contract and print it as JSON.
    Mint {
        /// Contract base URL.
        #[arg(long)]
        contract: String,
    },
    /// Run a TCP and UDP echo target (a demo destination) until SIGINT/SIGTERM; prints
    /// `{"tcp":"127.0.0.1:P","udp":"127.0.0.1:P"}`.
    Echo {
        /// Listen address for both (port 0 = any).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Release root to serve; its channels.json feeds the directory's upgrade channels.
    #[arg(long)]
    releases: Option<PathBuf>,
    /// Require the bcrypt challenge on a relay's first enrollment.
    #[arg(long)]
    challenge: bool,
    /// bcrypt cost of challenges (4..=20).
    #[arg(long, default_value_t = 4)]
    challenge_cost: u32,
    /// Keep the contract and directory keys here (created if missing).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Also write the ready line to this file (written atomically).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Contract listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    contract_addr: SocketAddr,
    /// Directory listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    directory_addr: SocketAddr,
    /// Release server listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    releases_addr: SocketAddr,
    /// Seconds from activation to settlement_open.
    #[arg(long, default_value_t = 600)]
    servicekey_duration: u64,
    /// Seconds from settlement_open to settlement_close.
    #[arg(long, default_value_t = 3600)]
    submission_window: u64,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Contract base URL (a servicekey is activated there).
    #[arg(long, required_unless_present = "servicekey")]
    contract: Option<String>,
    /// A servicekey JSON file (as printed by `mint`) instead of activating one.
    #[arg(long)]
    servicekey: Option<PathBuf>,
    /// Relay address, `wireleap://host:port`; repeat for each hop, first hop first. Without
    /// any, the circuit is chosen from the contract's directory (see --hops).
    #[arg(long = "relay")]
    relays: Vec<String>,
    /// Relay public key (base64url, quotes allowed, or `@FILE` such as a relay's key.pub);
    /// one per --relay, same order.
    #[arg(long = "relay-pubkey", allow_hyphen_values = true)]
    relay_pubkeys: Vec<String>,
    /// Circuit length when relays come from the directory.
    #[arg(long, default_value_t = 1)]
    hops: usize,
    /// Target `host:port`.
    #[arg(long, required_unless_present = "ping")]
    target: Option<String>,
    /// Use UDP to the target (each stdin read is one datagram).
    #[arg(long)]
    udp: bool,
    /// Only PING the first relay and print its answer.
    #[arg(long)]
    ping: bool,
    /// After stdin ends and all of it was sent, keep reading the answer until none came for
    /// this long (ms), then end our side (the relay then closes the target: no half-close).
    #[arg(long, default_value_t = 1000)]
    idle_ms: u64,
    /// After ending our side, wait at most this long (ms) for the stream's end, still copying
    /// the answer to stdout; without an end by then, exit 4.
    #[arg(long, default_value_t = 5000)]
    end_timeout_ms: u64,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are "errors" that go to stdout and exit 0.
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEVNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wireleap-devnet: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Client(a) => run_client(a).await,
            Command::Echo { listen } => echo(listen).await,
            Command::Mint { contract } => {
                let sk = client::activate_servicekey(&contract).await?;
                println!("{}", serde_json::to_string(&sk)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    // Not a graceful shutdown: a read of stdin blocks a runtime thread until the input ends,
    // and the client is done whatever stdin still holds.
    rt.shutdown_background();
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wireleap-devnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let switches = Switches {
        require_challenge: a.challenge,
        challenge_cost: a.challenge_cost,
        servicekey_duration_secs: a.servicekey_duration,
        submission_window_secs: a.submission_window,
        ..Switches::default()
    };
    let net = Devnet::start(Config {
        contract_addr: a.contract_addr,
        directory_addr: a.directory_addr,
        releases_addr: a.releases_addr,
        releases_root: a.releases,
        state_dir: a.state_dir,
        switches,
    })
    .await?;
    let line = serde_json::to_string(net.ready())?;
    if let Some(f) = &a.ready_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, format!("{line}\n")).with_context(|| format!("{}", tmp.display()))?;
        std::fs::rename(&tmp, f).with_context(|| format!("{}", f.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    net.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn echo(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let tcp = tokio::net::TcpListener::bind(listen).await?;
    let udp = tokio::net::UdpSocket::bind(listen).await?;
    println!(
        "{}",
        serde_json::json!({"tcp": tcp.local_addr()?.to_string(), "udp": udp.local_addr()?.to_string()})
    );
    std::io::stdout().flush()?;
    let tcp_task = async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    };
    let udp_task = async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tcp_task => {}
        _ = udp_task => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn explicit_hops(a: &ClientArgs) -> anyhow::Result<Vec<Hop>> {
    a.relays
        .iter()
        .zip(&a.relay_pubkeys)
        .map(|(addr, pk)| {
            let text = match pk.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file).with_context(|| file.to_owned())?,
                None => pk.clone(),
            };
            let pk = PublicKey::try_from_b64(text.trim().trim_matches('"'))
                .with_context(|| format!("relay pubkey {pk}"))?;
            Ok(Hop::new(addr.clone(), pk))
        })
        .collect::<anyhow::Result<Vec<_>>>()
}

async fn run_client(a: ClientArgs) -> anyhow::Result<ExitCode> {
    if a.relays.len() != a.relay_pubkeys.len() {
        bail!("give one --relay-pubkey per --relay");
    }
    let hops = if a.relays.is_empty() {
        let Some(c) = &a.contract else {
            bail!("give --relay/--relay-pubkey, or --contract to pick relays from its directory");
        };
        client::discover_circuit(c, a.hops).await?
    } else {
        explicit_hops(&a)?
    };
    let sk: Servicekey = match (&a.servicekey, &a.contract) {
        (Some(f), _) => serde_json::from_slice(&std::fs::read(f)?)?,
        (None, Some(c)) => client::activate_servicekey(c).await?,
        (None, None) => bail!("need --contract or --servicekey"),
    };
    let c = CircuitClient::new(sk, hops, ClientConfig::default())?;
    if a.ping {
        let s = c.ping().await?;
        println!("{}", s.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    let target = a.target.unwrap_or_default();
    let net = if a.udp { Network::Udp } else { Network::Tcp };
    let mut stream = match c.open(&target, net).await {
        Ok(s) => s,
        Err(ClientError::Status { hop, status }) => {
            eprintln!(
                "wireleap-devnet client: hop {hop} refused the circuit: {}",
                status.to_json()
            );
            return Ok(ExitCode::from(exit::STATUS));
        }
        Err(e) => return Err(e.into()),
    };
    let timing = Timing {
        idle: Duration::from_millis(a.idle_ms),
        end_timeout: Duration::from_millis(a.end_timeout_ms),
    };
    let ended = pipe(
        &mut stream,
        tokio::io::stdin(),
        tokio::io::stdout(),
        a.udp,
        timing,
    )
    .await?;
    let end = match ended {
        Ended::Ended(end) => end,
        Ended::NoEnd => {
            eprintln!(
                "wireleap-devnet client: no end of the stream within {:?} after our side ended",
                timing.end_timeout
            );
            return Ok(ExitCode::from(exit::END_TIMEOUT));
        }
    };
    match &end {
        StreamEnd::Clean => {}
        StreamEnd::Status(s) => eprintln!(
            "wireleap-devnet client: the stream ended with an error status: {}",
            s.to_json()
        ),
        StreamEnd::Http(code, _) => {
            eprintln!("wireleap-devnet client: the relay answered HTTP {code}, not 200");
        }
        StreamEnd::Reset(e) => {
            eprintln!("wireleap-devnet client: stream reset (or a connection under it lost): {e}");
        }
        StreamEnd::Open => eprintln!("wireleap-devnet client: the stream did not end"),
    }
    Ok(ExitCode::from(exit::of_end(&end)))
}

/// The two waits of [`pipe`].
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// After stdin ended and all of it was sent: how long without an answer ends our side.
    idle: Duration,
    /// After our side ended: how long the stream has to end.
    end_timeout: Duration,
}

/// How [`pipe`] came back.
#[derive(Debug)]
enum Ended {
    /// The stream ended (the response and its trailer were read, or it failed).
    Ended(StreamEnd),
    /// Our side ended, and the stream's end did not come within [`Timing::end_timeout`].
    NoEnd,
}

/// What one poll of the stream brought: both directions are polled every time, so a send
/// waiting for window never keeps the answer from being read, and the other way round.
#[derive(Debug, Default)]
struct Progress {
    /// The pending chunk went out (`Ok`, possibly in part), or sending failed.
    sent: Option<io::Result<usize>>,
    /// A chunk of the answer, its end (`Ok(None)`), or a failure (the end says which).
    received: Option<io::Result<Option<Bytes>>>,
}

/// Copies `input` into `stream` and the answer to `output`, both at once, until the stream ends
/// (see [`Ended`]).
///
/// Reads from `input` wait while a chunk is pending (waiting for send window); the answer is
/// read all the while. When `input` ends and all of it was sent, our side ends after the answer
/// has been idle for [`Timing::idle`] (the relay closes the target when we end: no half-close,
/// spec §6.5); from then the stream has [`Timing::end_timeout`] to end. If sending fails (the
/// relay ended or reset the stream) the answer is read to its end, as long. With `datagrams`
/// each read of `input` goes out whole as one DATA frame (one UDP datagram).
async fn pipe(
    stream: &mut H2Stream,
    mut input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
    datagrams: bool,
    timing: Timing,
) -> anyhow::Result<Ended> {
    let mut buf = vec![0u8; 64 * 1024];
    // Read from `input`, not yet sent.
    let mut pending = Bytes::new();
    let mut input_open = true;
    // When the answer was last active (or all input was sent), once input has ended.
    let mut quiet_since: Option<Instant> = None;
    // When our side ended (or sending failed).
    let mut ended_at: Option<Instant> = None;
    let ended = loop {
        let idle_at = match (quiet_since, ended_at) {
            (Some(t), None) => Some(t + timing.idle),
            _ => None,
        };
        let end_by = ended_at.map(|t| t + timing.end_timeout);
        let reading_input = input_open && pending.is_empty() && ended_at.is_none();
        let progress = std::future::poll_fn(|cx| {
            let mut p = Progress::default();
            if !pending.is_empty() {
                let min = if datagrams { pending.len() } else { 1 };
                if let Poll::Ready(r) = stream.poll_send(cx, &mut pending, min) {
                    p.sent = Some(r);
                }
            }
            if let Poll::Ready(r) = stream.poll_chunk(cx) {
                p.received = Some(r);
            }
            if p.sent.is_some() || p.received.is_some() {
                Poll::Ready(p)
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            r = input.read(&mut buf), if reading_input => {
                let n = r.context("reading stdin")?;
                if n == 0 {
                    input_open = false;
                    quiet_since = Some(Instant::now());
                } else {
                    pending = Bytes::copy_from_slice(&buf[..n]);
                }
            }
            p = progress => {
                // Input is read again once `pending` is empty, so its end comes after all of
                // it was sent.
                match p.sent {
                    Some(Ok(_)) | None => {}
                    Some(Err(e)) => {
                        // The relay ended or reset the stream: the answer says how.
                        tracing::debug!(error = %e, "sending failed");
                        pending.clear();
                        input_open = false;
                        ended_at.get_or_insert_with(Instant::now);
                    }
                }
                match p.received {
                    Some(Ok(Some(d))) => {
                        output.write_all(&d).await.context("writing stdout")?;
                        output.flush().await.context("writing stdout")?;
                        if quiet_since.is_some() {
                            quiet_since = Some(Instant::now());
                        }
                    }
                    Some(Ok(None) | Err(_)) => break Ended::Ended(stream.end()),
                    None => {}
                }
            }
            () = sleep_until(idle_at) => {
                stream.finish();
                ended_at = Some(Instant::now());
            }
            () = sleep_until(end_by) => break Ended::NoEnd,
        }
    };
    stream.finish();
    Ok(ended)
}

/// Sleeps until `at`; never returns without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_shape() {
        Cli::command().debug_assert();
    }

    /// Base64url keys may begin with `-`: such a key is the option's value, not an option.
    #[test]
    fn a_relay_key_may_begin_with_a_dash() {
        let cli = Cli::try_parse_from([
            "wireleap-devnet",
            "client",
            "--servicekey",
            "sk.json",
            "--relay",
            "wireleap://127.0.0.1:1",
            "--relay-pubkey",
            "-yAbc",
            "--target",
            "127.0.0.1:2",
        ])
        .unwrap();
        let Command::Client(args) = cli.command else {
            panic!("not the client command");
        };
        assert_eq!(args.relay_pubkeys, ["-yAbc"]);
    }
}
