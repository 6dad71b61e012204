//! A replicated counter: the smallest useful custom state machine on dengine, served to
//! remote clients.
//!
//! What a user implements is [`Counter`]: how a committed command changes the state, how a
//! read is answered, and how the state is saved to and restored from a snapshot. dengine
//! does the rest, including the network service that remote clients use (`dengine::start`
//! serves it on `node.client_addr`) and the client library (`dengine-client`).
//!
//! `cargo run -p dengine-example-counter` runs the whole demo: three server processes on
//! loopback, three client processes that add 1, 2 and 3 a hundred times each through
//! exactly-once sessions, the leader killed (SIGKILL) while they run, and the total read
//! back: exactly 600, though some additions were in flight at the killed leader and were
//! sent again. The client adding 2 lets the followers forward its calls to the leader
//! (`ClientConfig::forward`); the others go to the leader themselves. The pieces run on their
//! own too:
//!
//! ```text
//! counter serve ID PEERS CLIENT_ADDR DATA_DIR     # PEERS: 1=127.0.0.1:7001,2=...,3=...
//! counter add AMOUNT TIMES ENDPOINTS [--forward]  # ENDPOINTS: the client addresses, comma-separated
//! counter total ENDPOINTS
//! ```

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use bytes::Bytes;
use dengine::{Command, LogIndex};
use dengine_client::{Client, ClientConfig, Consistency};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The replicated state: one number. Commands are "add this i64" (8 bytes, little endian);
/// the response to a command, and the answer to any read, is the new total.
#[derive(Default)]
struct Counter {
    total: i64,
}

impl dengine::StateMachine for Counter {
    /// Nothing can fail: the counter lives in memory (and is rebuilt from the log and
    /// snapshots on every start).
    type Error = Infallible;

    async fn apply(&mut self, commands: &[Command], _: LogIndex) -> Result<Vec<Bytes>, Infallible> {
        let mut responses = Vec::with_capacity(commands.len());
        for c in commands {
            // A malformed command adds nothing: every replica does the same.
            self.total = self.total.wrapping_add(as_i64(&c.data));
            responses.push(Bytes::copy_from_slice(&self.total.to_le_bytes()));
        }
        Ok(responses)
    }

    async fn snapshot(&mut self) -> Result<Bytes, Infallible> {
        Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
    }

    async fn install_snapshot(&mut self, data: Bytes, _: LogIndex) -> Result<(), Infallible> {
        self.total = as_i64(&data);
        Ok(())
    }

    async fn query(&self, _request: Bytes) -> Result<Bytes, Infallible> {
        Ok(Bytes::copy_from_slice(&self.total.to_le_bytes()))
    }
}

fn as_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(<[u8; 8]>::try_from(b).unwrap_or_default())
}

/// `counter serve`: one member, until its standard input closes.
async fn serve(id: u64, peers: &str, client_addr: &str, data_dir: &str) -> Result<(), Error> {
    let mut settings = dengine::Settings::default();
    settings.node.id = id;
    settings.node.initial_members = parse_peers(peers)?;
    settings.node.listen_addr = settings.node.initial_members[&id].clone();
    settings.node.client_addr = Some(client_addr.to_string());
    settings.node.data_dir = data_dir.into();
    // Retries of a session's command are answered, never applied twice.
    settings.client_sessions.enabled = true;
    let running = dengine::start(settings, Counter::default()).await?;
    // Stop when the parent closes our standard input (or goes away).
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    running.shutdown().await;
    Ok(())
}

/// `counter add`: adds `amount`, `times` times, in one exactly-once session; through any
/// member when `forward` (a follower forwards the calls to the leader).
async fn add(amount: i64, times: u32, endpoints: &str, forward: bool) -> Result<(), Error> {
    let mut config = ClientConfig::new(endpoints.split(','));
    config.forward = forward;
    let client = Client::connect(config)?;
    let session = client.open_session().await?;
    for _ in 0..times {
        session
            .propose(Bytes::copy_from_slice(&amount.to_le_bytes()))
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    session.close().await?;
    let how = if forward {
        " (followers forwarding)"
    } else {
        ""
    };
    println!("client +{amount}: {times} additions acknowledged{how}");
    Ok(())
}

/// The total, read linearizably.
async fn total(client: &Client) -> Result<i64, Error> {
    let answer = client.read(Bytes::new(), Consistency::Linearizable).await?;
    Ok(as_i64(&answer))
}

/// The whole demo: three servers, three clients, the leader killed mid-run.
async fn demo() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..6)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .map(|a| a.map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let peers: Vec<String> = (1..=3)
        .map(|id| format!("{id}=127.0.0.1:{}", ports[id - 1]))
        .collect();
    let clients: Vec<String> = (3..6).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
    let (peers, endpoints) = (peers.join(","), clients.join(","));
    let me = std::env::current_exe()?;

    let mut servers = BTreeMap::new();
    for id in 1..=3u64 {
        let data = dir.path().join(format!("node-{id}"));
        let child = Process::new(&me)
            .args(["serve", &id.to_string(), &peers, &clients[id as usize - 1]])
            .arg(&data)
            .stdin(Stdio::piped())
            .spawn()?;
        servers.insert(id, child);
    }
    println!("started 3 server processes; clients reach them at {endpoints}");
    let result = drive(&me, &endpoints, &mut servers).await;
    for (_, mut server) in servers {
        drop(server.stdin.take()); // asks it to stop
        server.wait()?;
    }
    result
}

async fn drive(
    me: &std::path::Path,
    endpoints: &str,
    servers: &mut BTreeMap<u64, Child>,
) -> Result<(), Error> {
    let client = Client::connect(ClientConfig::new(endpoints.split(',')))?;
    let mut adders = Vec::new();
    for amount in 1..=3 {
        let mut adder = Process::new(me);
        adder.args(["add", &amount.to_string(), "100", endpoints]);
        if amount == 2 {
            adder.arg("--forward");
        }
        adders.push(adder.spawn()?);
    }
    // Once the clients are adding, kill the leader.
    let mut leader = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if total(&client).await? > 0 {
            leader = client.leader().await?.leader;
            break;
        }
    }
    let leader = leader.ok_or("no leader: the clients added nothing in 10 s")?;
    if let Some(mut killed) = servers.remove(&leader) {
        killed.kill()?;
        killed.wait()?;
        println!("killed the leader, member {leader} (SIGKILL), while the clients were adding");
    }
    for mut adder in adders {
        if !adder.wait()?.success() {
            return Err("a client failed".into());
        }
    }
    let total = total(&client).await?;
    let new_leader = client.leader().await?.leader.unwrap_or(0);
    println!("member {new_leader} leads now; the total is {total}");
    if total != 600 {
        return Err(format!("expected 600 (100 x (1 + 2 + 3)), read {total}").into());
    }
    println!("ok: every addition applied exactly once (600)");
    Ok(())
}

fn parse_peers(peers: &str) -> Result<BTreeMap<u64, String>, Error> {
    peers
        .split(',')
        .map(|p| {
            let (id, addr) = p.split_once('=').ok_or("PEERS is ID=ADDR,ID=ADDR,...")?;
            Ok((id.parse()?, addr.to_string()))
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] => demo().await,
        ["serve", id, peers, client_addr, data_dir] => {
            serve(id.parse()?, peers, client_addr, data_dir).await
        }
        ["add", amount, times, endpoints] => {
            add(amount.parse()?, times.parse()?, endpoints, false).await
        }
        ["add", amount, times, endpoints, "--forward"] => {
            add(amount.parse()?, times.parse()?, endpoints, true).await
        }
        ["total", endpoints] => {
            let client = Client::connect(ClientConfig::new(endpoints.split(',')))?;
            println!("{}", total(&client).await?);
            Ok(())
        }
        _ => Err(
            "usage: counter [serve ID PEERS CLIENT_ADDR DATA_DIR | add AMOUNT TIMES \
                  ENDPOINTS [--forward] | total ENDPOINTS] (no arguments: the demo)"
                .into(),
        ),
    }
}
