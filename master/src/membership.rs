//! The masters themselves: who leads, who votes, and changing that (replacing a master).

use std::collections::{BTreeMap, BTreeSet};

use openraft::{BasicNode, ChangeMembers};
use sluice_protocol::pb;

use crate::core::Core;
use crate::error::{MasterError, MasterResult};
use crate::raft::NodeId;

fn node(id: NodeId, n: &BasicNode) -> pb::MasterNode {
    pb::MasterNode {
        id,
        addr: n.addr.clone(),
    }
}

/// This master's view: itself, the leader, the term, what it applied, voters and learners.
pub(crate) fn status(core: &Core) -> pb::MasterStatusResponse {
    let metrics = core.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut status = pb::MasterStatusResponse {
        self_: Some(pb::MasterNode {
            id: core.id,
            addr: core.addr.clone(),
        }),
        leader: None,
        term: m.current_term,
        last_applied: m.last_applied.map_or(0, |l| l.index),
        voters: Vec::new(),
        learners: Vec::new(),
    };
    for (id, n) in membership.nodes() {
        match voters.contains(id) {
            true => status.voters.push(node(*id, n)),
            false => status.learners.push(node(*id, n)),
        }
    }
    // This master names itself leader only once it serves (past its read barrier).
    status.leader = m
        .current_leader
        .filter(|l| *l != core.id || core.ready_in(m.current_term))
        .and_then(|l| membership.get_node(&l).map(|n| node(l, n)));
    status
}

/// Adds masters (as learners until they caught up with the log, then as voters) and removes
/// others, on the leader.
pub(crate) async fn change(core: &Core, request: pb::ChangeMastersRequest) -> MasterResult<()> {
    let raft_error = |e: &dyn std::fmt::Display| MasterError::Raft(e.to_string());
    for added in &request.add {
        if added.addr.is_empty() {
            return Err(MasterError::InvalidRequest(format!(
                "master {} needs an address",
                added.id
            )));
        }
        tracing::info!(id = added.id, addr = %added.addr, "adding a master: catching it up");
        core.raft
            .add_learner(added.id, BasicNode::new(&added.addr), true)
            .await
            .map_err(|e| raft_error(&e))?;
    }
    if !request.add.is_empty() {
        let voters: BTreeMap<NodeId, BasicNode> = request
            .add
            .iter()
            .map(|n| (n.id, BasicNode::new(&n.addr)))
            .collect();
        core.raft
            .change_membership(ChangeMembers::AddVoters(voters), false)
            .await
            .map_err(|e| raft_error(&e))?;
    }
    if !request.remove.is_empty() {
        tracing::info!(ids = ?request.remove, "removing masters");
        let removed: BTreeSet<NodeId> = request.remove.iter().copied().collect();
        core.raft
            .change_membership(ChangeMembers::RemoveVoters(removed.clone()), false)
            .await
            .map_err(|e| raft_error(&e))?;
        core.raft
            .change_membership(ChangeMembers::RemoveNodes(removed), false)
            .await
            .map_err(|e| raft_error(&e))?;
    }
    Ok(())
}
