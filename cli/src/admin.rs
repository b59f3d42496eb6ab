//! `sluice admin masters`: the masters' Raft view, and adding or removing a master.

use anyhow::{anyhow, bail, Context};
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use tonic::transport::Channel;

async fn connect(addr: &str) -> anyhow::Result<MasterClient<Channel>> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .with_context(|| format!("master address {addr:?}"))?
        .connect_timeout(std::time::Duration::from_secs(3));
    Ok(MasterClient::new(
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to master {addr}"))?,
    ))
}

fn endpoints(masters: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = masters
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        bail!("--master names no master");
    }
    Ok(list)
}

/// Every reachable master's own view, as `(endpoint, view or error)`.
pub async fn statuses(
    masters: &str,
) -> anyhow::Result<Vec<(String, Result<pb::MasterStatusResponse, String>)>> {
    let mut out = Vec::new();
    for addr in endpoints(masters)? {
        let status = match connect(&addr).await {
            Ok(mut client) => client
                .master_status(pb::MasterStatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        out.push((addr, status));
    }
    Ok(out)
}

/// The leader's address, as the first master that knows it says.
async fn leader(masters: &str) -> anyhow::Result<String> {
    for (_, status) in statuses(masters).await? {
        if let Some(leader) = status.ok().and_then(|s| s.leader) {
            return Ok(leader.addr);
        }
    }
    Err(anyhow!("no master of {masters} knows a leader"))
}

fn name(node: Option<&pb::MasterNode>) -> String {
    node.map_or_else(|| "-".into(), |n| format!("{} {}", n.id, n.addr))
}

/// Prints each master's view, one row per endpoint, or JSON.
pub async fn print_status(masters: &str, json: bool) -> anyhow::Result<()> {
    let statuses = statuses(masters).await?;
    if json {
        let rows: Vec<serde_json::Value> = statuses
            .iter()
            .map(|(addr, status)| match status {
                Ok(s) => serde_json::json!({
                    "endpoint": addr,
                    "id": s.self_.as_ref().map(|n| n.id),
                    "leader": s.leader.as_ref().map(|n| &n.addr),
                    "term": s.term,
                    "last_applied": s.last_applied,
                    "voters": s.voters.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
                    "learners": s.learners.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({ "endpoint": addr, "error": e }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<24} {:<4} {:<8} {:<28} {:>6} {:>12}  VOTERS",
        "ENDPOINT", "ID", "ROLE", "LEADER", "TERM", "APPLIED"
    );
    for (addr, status) in statuses {
        match status {
            Ok(s) => {
                let id = s.self_.as_ref().map_or(u64::MAX, |n| n.id);
                let role = match s.leader.as_ref().map(|l| l.id) {
                    Some(l) if l == id => "leader",
                    Some(_) => "follower",
                    None => "candidate",
                };
                let voters: Vec<String> = s.voters.iter().map(|n| n.id.to_string()).collect();
                println!(
                    "{addr:<24} {id:<4} {role:<8} {:<28} {:>6} {:>12}  {}",
                    name(s.leader.as_ref()),
                    s.term,
                    s.last_applied,
                    voters.join(",")
                );
            }
            Err(e) => println!("{addr:<24} unreachable: {e}"),
        }
    }
    Ok(())
}

/// Adds master `id` at `addr` (it must be running, started with the same peers plus itself),
/// or removes master `id`, through the leader.
pub async fn change(
    masters: &str,
    add: Option<(u64, String)>,
    remove: Option<u64>,
) -> anyhow::Result<()> {
    let leader = leader(masters).await?;
    let mut client = connect(&leader).await?;
    let request = pb::ChangeMastersRequest {
        add: add
            .into_iter()
            .map(|(id, addr)| pb::MasterNode { id, addr })
            .collect(),
        remove: remove.into_iter().collect(),
    };
    let status = client
        .change_masters(request)
        .await
        .map_err(|s| anyhow!("leader {leader} refused: {}", s.message()))?
        .into_inner();
    let voters: Vec<String> = status
        .voters
        .iter()
        .map(|n| format!("{} {}", n.id, n.addr))
        .collect();
    println!("voters now: {}", voters.join(", "));
    Ok(())
}
