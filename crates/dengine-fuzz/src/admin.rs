//! Target `admin`: dengine's admin API (`dengine.admin.v1.Admin`) with arbitrary requests —
//! status, add-learner, promote, remove, change-membership, transfer-leader, snapshot — against
//! a real single-member node (the runtime, an in-memory log and state machine), through the
//! tower service `dengine::start` serves on the admin port. Time is tokio's paused clock, so
//! elections and timeouts pass instantly and one input always runs the same way.
//!
//! Oracle: every call ends with a gRPC status (a change that can never commit ends with the
//! node's timeout, not a hang); nothing panics; the node still answers `Status` afterwards,
//! and its membership still holds member 1 unless a call removed it.

use std::time::Duration;

use dengine::AdminService;
use dengine_core::store::MemoryStateMachine;
use dengine_net_grpc::admin_pb;
use dengine_sim::fuzz::Input;
use prost::Message as _;

use crate::grpc::{body_from, call, frame};
use crate::support::{leading_single_member, paused_runtime};

const PATHS: [&str; 7] = [
    "/dengine.admin.v1.Admin/Status",
    "/dengine.admin.v1.Admin/AddLearner",
    "/dengine.admin.v1.Admin/Promote",
    "/dengine.admin.v1.Admin/Remove",
    "/dengine.admin.v1.Admin/ChangeMembership",
    "/dengine.admin.v1.Admin/TransferLeader",
    "/dengine.admin.v1.Admin/TriggerSnapshot",
];
/// Virtual time: far beyond the node's own timeouts, so a call still open is a hang.
const HANG: Duration = Duration::from_secs(600);

/// Runs one input.
pub fn admin(data: &[u8]) {
    run(data);
}

/// Runs one input; returns the gRPC status code of each call.
fn run(data: &[u8]) -> Vec<String> {
    let mut codes = Vec::new();
    let mut input = Input::new(data);
    paused_runtime().block_on(async {
        let (node, _net) = leading_single_member(MemoryStateMachine::new(), |b| b).await;
        let mut service = AdminService::new(node.clone()).server();
        let mut removed_itself = false;
        for _ in 0..6 {
            if input.is_empty() {
                break;
            }
            let which = input.below(PATHS.len() as u64) as usize;
            let body = body_from(&mut input);
            if which == 3 || which == 4 {
                // Remove, or a change that may remove: afterwards member 1 may be gone.
                removed_itself = true;
            }
            let reply = call(&mut service, PATHS[which], body, HANG).await;
            assert_eq!(reply.http_status, 200, "{}: {reply:?}", PATHS[which]);
            match reply.grpc_status {
                Some(code) => codes.push(code),
                None => panic!(
                    "{} gave no gRPC status within {HANG:?}: {reply:?}",
                    PATHS[which]
                ),
            }
        }
        let status = admin_pb::StatusRequest {};
        let reply = call(
            &mut service,
            PATHS[0],
            frame(&status.encode_to_vec()).into(),
            HANG,
        )
        .await;
        assert_eq!(
            reply.grpc_status.as_deref(),
            Some("0"),
            "the node no longer answers Status: {reply:?}"
        );
        if !removed_itself {
            let s = match node.status().await {
                Ok(s) => s,
                Err(e) => panic!("status: {e}"),
            };
            assert!(
                s.membership.contains(1),
                "member 1 vanished: {:?}",
                s.membership
            );
        }
        node.shutdown().await;
    });
    codes
}

/// One call of each kind on a node that can carry it out.
pub fn seeds() -> Vec<Vec<u8>> {
    let one = |path: u8, message: Vec<u8>| {
        let mut out = vec![path, 0];
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(&message);
        out
    };
    let learner = admin_pb::AddLearnerRequest {
        id: 2,
        address: "node-2:7000".into(),
    };
    let change = admin_pb::ChangeMembershipRequest {
        changes: vec![admin_pb::MembershipChange {
            id: 3,
            kind: admin_pb::membership_change::Kind::AddLearner as i32,
            address: "node-3:7000".into(),
        }],
    };
    let node2 = admin_pb::NodeRequest { id: 2 };
    let status = one(0, admin_pb::StatusRequest {}.encode_to_vec());
    let add = one(1, learner.encode_to_vec());
    let remove = one(3, node2.encode_to_vec());
    let snapshot = one(6, admin_pb::TriggerSnapshotRequest {}.encode_to_vec());
    let mut all = Vec::new();
    for s in [&status, &add, &remove, &snapshot] {
        all.extend_from_slice(s);
    }
    vec![
        status,
        add.clone(),
        [add.clone(), one(2, node2.encode_to_vec())].concat(),
        one(4, change.encode_to_vec()),
        one(5, node2.encode_to_vec()),
        snapshot,
        all,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_carried_out() {
        let seeds = seeds();
        // Status; add a learner; add it and promote it (a voter that never answers: the
        // joint configuration cannot commit, the call ends with the node's timeout);
        // a learner by change-membership; transfer to a non-member; snapshot; then a
        // status, add, remove and snapshot in a row.
        let codes: Vec<Vec<String>> = seeds.iter().map(|s| run(s)).collect();
        let expected: [&[&str]; 7] = [
            &["0"],
            &["0"],
            &["0", "4"],
            &["0"],
            &["3"],
            &["0"],
            &["0", "0", "0", "0"],
        ];
        for (got, want) in codes.iter().zip(expected) {
            assert_eq!(got, want, "all: {codes:?}");
        }
    }
}
