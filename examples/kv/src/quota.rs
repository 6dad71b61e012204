//! What the space quota refuses (etcd's `NOSPACE`): which writes add data, and the refusal.
//! Shared by the member's check before it proposes (`shared.rs`) and the state machine's
//! while the alarm is raised (`state_machine/alarm.rs`).

use crate::error::KvError;
use crate::proto::dengine::kv::v1::command;
use crate::proto::etcdserverpb::{TxnRequest, request_op};

/// etcd's refusal while the space quota's alarm is raised (`RESOURCE_EXHAUSTED`).
pub(crate) fn no_space() -> KvError {
    KvError::ResourceExhausted("mvcc: database space exceeded".into())
}

/// Whether `op` would add data: a put, or a transaction with a put in either branch (at any
/// depth).
pub(crate) fn adds_data(op: &command::Op) -> bool {
    match op {
        command::Op::Put(_) | command::Op::LeaseGrant(_) => true,
        command::Op::Txn(t) => txn_puts(t),
        _ => false,
    }
}

fn txn_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
}
