//! A replicated counter: the smallest useful custom state machine on dengine.
//!
//! What a user implements is [`Counter`]: how a committed command changes the state, how a
//! read is answered, and how the state is saved to and restored from a snapshot. dengine
//! does the rest. `main` starts three nodes on loopback (redb logs in a temporary
//! directory, gRPC between them), adds from several tasks at once, and reads the total back
//! from every node.
//!
//! Run it: `cargo run -p dengine-example-counter`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use dengine::{Command, Consistency, LogIndex};

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // Pick three free loopback ports.
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()))
        .map(|a| a.map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let members: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();

    let mut nodes = Vec::new();
    for (&id, addr) in &members {
        let mut settings = dengine::Settings::default();
        settings.node.id = id;
        settings.node.listen_addr = addr.clone();
        settings.node.data_dir = dir.path().join(format!("node-{id}"));
        settings.node.initial_members = members.clone();
        nodes.push(dengine::start(settings, Counter::default()).await?);
    }
    println!(
        "started 3 nodes on {:?}",
        members.values().collect::<Vec<_>>()
    );

    // Three clients add 1, 2 and 3 fifty times each, through whichever node leads.
    let mut clients = Vec::new();
    for amount in 1..=3i64 {
        let handles: Vec<_> = nodes.iter().map(|r| r.node().clone()).collect();
        clients.push(tokio::spawn(async move {
            let cmd = Bytes::copy_from_slice(&amount.to_le_bytes());
            let mut done = 0;
            let mut at = 0;
            while done < 50 {
                match handles[at].propose(cmd.clone()).await {
                    Ok(_) => done += 1,
                    Err(e) => match e.leader() {
                        // Not the leader: try the one it names.
                        Some((leader, _)) => at = leader as usize - 1,
                        // No leader yet (or the outcome is unknown, which a counter cannot
                        // retry safely: a real client would deduplicate; here elections are
                        // over).
                        None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                    },
                }
            }
        }));
    }
    for c in clients {
        c.await?;
    }

    for r in &nodes {
        let total = as_i64(
            &r.node()
                .read(Bytes::new(), Consistency::Linearizable)
                .await?,
        );
        println!("node {} reads total = {total}", r.node().id());
        if total != 300 {
            return Err(format!("expected 300, node {} read {total}", r.node().id()).into());
        }
    }
    for r in nodes {
        r.shutdown().await;
    }
    println!("ok: every node agrees on 300");
    Ok(())
}
