//! `wireleap-devnet`: run the stand-in network, or talk through relays with the circuit client.
//!
//! See `devnet/README.md` for the commands, the ready line and the admin API.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wireleap_devnet::client::{self, CircuitClient, ClientConfig, Hop, StreamEnd};
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
    #[arg(long = "relay-pubkey")]
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
    /// After stdin ends, keep reading the answer until it is idle this long (ms).
    #[arg(long, default_value_t = 1000)]
    idle_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let mut stream = c.open(&target, net).await?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin_open = true;
    let idle = Duration::from_millis(a.idle_ms);
    loop {
        tokio::select! {
            r = stdin.read(&mut buf), if stdin_open => {
                let n = r?;
                if n == 0 {
                    stdin_open = false;
                } else {
                    stream.send_chunk(bytes::Bytes::copy_from_slice(&buf[..n])).await?;
                }
            }
            c = stream.recv_chunk() => match c {
                Ok(Some(d)) => { stdout.write_all(&d).await?; stdout.flush().await?; }
                Ok(None) | Err(_) => break,
            },
            _ = tokio::time::sleep(idle), if !stdin_open => {
                stream.finish();
                break;
            }
        }
    }
    stream.finish();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.wait_end())
        .await
        .unwrap_or(StreamEnd::Clean);
    match end {
        StreamEnd::Status(s) => {
            eprintln!("{}", s.to_json());
            Ok(ExitCode::from(2))
        }
        StreamEnd::Http(code, _) => {
            eprintln!("relay answered HTTP {code}");
            Ok(ExitCode::from(2))
        }
        StreamEnd::Reset(e) => {
            eprintln!("stream reset: {e}");
            Ok(ExitCode::from(2))
        }
        StreamEnd::Clean | StreamEnd::Open => Ok(ExitCode::SUCCESS),
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
}
