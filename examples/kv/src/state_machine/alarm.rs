//! Alarms (etcd's `Maintenance.Alarm`): raised and cleared through the log, so every member
//! holds the same set, and kept in snapshots. dengine-kv raises one kind: `NOSPACE`, when a
//! write would take the key space past the member's quota (`KvConfig::quota_bytes`, etcd's
//! `--quota-backend-bytes`). While it is raised, every member refuses what adds data (puts,
//! and transactions with a put), as etcd's capped applier does; deletes and compactions still
//! apply, so that an operator can free space and then disarm the alarm.

use super::KvStateMachine;
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, alarm_request::AlarmAction,
};
use crate::store;

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
