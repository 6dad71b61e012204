//! Alarms (etcd's `Maintenance.Alarm`): raised and cleared through the log, so every member
//! holds the same set, and kept in snapshots. dengine-kv raises one kind: `NOSPACE`, when a
//! write would take the key space past the member's quota (`KvConfig::quota_bytes`, etcd's
//! `--quota-backend-bytes`). While it is raised, every member refuses what adds data (puts,
//! and transactions with a put), as etcd's capped applier does; deletes and compactions still
//! apply, so that an operator can free space and then disarm the alarm.

use super::KvStateMachine;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::command;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest, alarm_request::AlarmAction,
    request_op,
};
use crate::store;

/// etcd's refusal while the space quota's alarm is raised (`RESOURCE_EXHAUSTED`).
pub(crate) fn no_space() -> KvError {
    KvError::ResourceExhausted("mvcc: database space exceeded".into())
}

/// Whether `op` would add data: a put, or a transaction with a put in either branch (at any
/// depth).
pub(crate) fn adds_data(op: &command::Op) -> bool {
    match op {
        command::Op::Put(_) => true,
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

impl KvStateMachine {
    /// Whether a `NOSPACE` alarm is raised (for any member).
    pub(super) fn no_space(&self) -> bool {
        self.alarms
            .iter()
            .any(|&(_, alarm)| alarm == AlarmType::Nospace as i32)
    }

    /// The raised alarms of `member` (0: every member) and of type `alarm` (NONE: any).
    pub(super) fn alarm_members(&self, member: u64, alarm: i32) -> Vec<AlarmMember> {
        self.alarms
            .iter()
            .filter(|&&(m, a)| (member == 0 || m == member) && (alarm == 0 || a == alarm))
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Raises or clears one alarm; the answer lists it if that changed anything (etcd's).
    pub(super) fn apply_alarm(&mut self, req: &AlarmRequest) -> AlarmResponse {
        let key = (req.member_id, req.alarm);
        let changed = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) if req.alarm != AlarmType::None as i32 => {
                self.alarms.insert(key)
            }
            Ok(AlarmAction::Deactivate) => self.alarms.remove(&key),
            _ => false,
        };
        AlarmResponse {
            header: Some(store::header(self.store.revision())),
            alarms: if changed {
                vec![AlarmMember {
                    member_id: req.member_id,
                    alarm: req.alarm,
                }]
            } else {
                Vec::new()
            },
        }
    }
}
