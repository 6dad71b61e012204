//! etcd's stateless request checks (empty keys, enum values, leases, no key written twice in
//! a transaction, request size, transaction size), shared by the gRPC services (to refuse
//! early, without a round through the log), the leader's Forward handler (which must not
//! propose what the client API would refuse) and the state machine (which must refuse the
//! same commands on every replica).

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message;

use crate::config::KvConfig;
use crate::error::KvError;
use crate::key_range::KeyRange;
use crate::proto::dengine::kv::v1::{Command, command};
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
};

/// Every check a write command must pass before it is proposed, whichever way it came: from
/// a client of this member, or forwarded by another member (whose checks the leader does not
/// take on trust). `config` holds the limits (request size, transaction size).
pub(crate) fn check_command(command: &Command, config: &KvConfig) -> Result<(), KvError> {
    if command.encoded_len() > config.max_request_bytes {
        // etcd's exact text: clients recognise the error by it.
        return Err(KvError::InvalidArgument("request is too large".into()));
    }
    match &command.op {
        Some(command::Op::Put(p)) => check_put(p),
        Some(command::Op::DeleteRange(d)) => check_delete(d),
        Some(command::Op::Txn(t)) => {
            if txn_ops(t) > config.max_txn_ops {
                return Err(KvError::InvalidArgument(
                    "too many operations in txn request".into(),
                ));
            }
            check_txn(t)
        }
        // Lease expiries and checkpoints are the leader's own decisions (`lease.rs`), proposed
        // where they are decided: one that arrives from elsewhere is refused.
        Some(command::Op::LeaseExpire(_) | command::Op::LeaseCheckpoint(_)) => Err(
            KvError::InvalidArgument("lease expiries and checkpoints are the leader's own".into()),
        ),
        // Compactions, leases and auth commands have no shape to check beyond their size; the
        // state machine applies their rules.
        Some(_) => Ok(()),
        None => Err(KvError::InvalidArgument("empty command".into())),
    }
}

fn empty_key() -> KvError {
    KvError::InvalidArgument("key is not provided".into())
}

/// Checks a Range request's shape.
pub(crate) fn check_range(req: &RangeRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(empty_key());
    }
    if SortOrder::try_from(req.sort_order).is_err() {
        return Err(KvError::InvalidArgument(format!(
            "invalid sort order {}",
            req.sort_order
        )));
    }
    if SortTarget::try_from(req.sort_target).is_err() {
        return Err(KvError::InvalidArgument(format!(
            "invalid sort target {}",
            req.sort_target
        )));
    }
    if req.limit < 0 {
        return Err(KvError::InvalidArgument(format!(
            "negative limit {}",
            req.limit
        )));
    }
    Ok(())
}

/// Checks a Put request's shape.
pub(crate) fn check_put(req: &PutRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(empty_key());
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(KvError::InvalidArgument("value is provided".into()));
    }
    if req.lease != 0 && req.ignore_lease {
        return Err(KvError::InvalidArgument("lease is provided".into()));
    }
    Ok(())
}

/// Checks a DeleteRange request's shape.
pub(crate) fn check_delete(req: &DeleteRangeRequest) -> Result<(), KvError> {
    if req.key.is_empty() {
        return Err(empty_key());
    }
    Ok(())
}

/// Checks a Txn request's shape, recursively: every operation, every compare's enums, and
/// etcd's rule that no key is written twice in one transaction.
pub(crate) fn check_txn(req: &TxnRequest) -> Result<(), KvError> {
    for c in &req.compare {
        if CompareResult::try_from(c.result).is_err() {
            return Err(KvError::InvalidArgument(format!(
                "invalid compare result {}",
                c.result
            )));
        }
        if CompareTarget::try_from(c.target).is_err() {
            return Err(KvError::InvalidArgument(format!(
                "invalid compare target {}",
                c.target
            )));
        }
    }
    for ops in [&req.success, &req.failure] {
        for op in ops {
            match &op.request {
                Some(Request::RequestRange(r)) => check_range(r)?,
                Some(Request::RequestPut(p)) => check_put(p)?,
                Some(Request::RequestDeleteRange(d)) => check_delete(d)?,
                Some(Request::RequestTxn(t)) => check_txn(t)?,
                None => {
                    return Err(KvError::InvalidArgument(
                        "transaction operation without a request".into(),
                    ));
                }
            }
        }
        check_no_duplicate_writes(ops)?;
    }
    Ok(())
}

fn duplicate_key() -> KvError {
    KvError::InvalidArgument("duplicate key given in txn request".into())
}

/// The keys put and the ranges deleted by one branch, nested transactions included (keys of a
/// nested transaction's two branches count once, since only one of them runs).
fn branch_writes(ops: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Vec<KeyRange>), KvError> {
    let mut puts = BTreeSet::new();
    let mut deletes = Vec::new();
    for op in ops {
        match &op.request {
            Some(Request::RequestPut(p)) => {
                if !puts.insert(p.key.clone()) {
                    return Err(duplicate_key());
                }
            }
            Some(Request::RequestDeleteRange(d)) => {
                deletes.push(KeyRange::new(&d.key, &d.range_end))
            }
            Some(Request::RequestTxn(t)) => {
                let (mut nested_puts, mut nested_deletes) = branch_writes(&t.success)?;
                let (failure_puts, failure_deletes) = branch_writes(&t.failure)?;
                nested_puts.extend(failure_puts);
                nested_deletes.extend(failure_deletes);
                for key in nested_puts {
                    if !puts.insert(key) {
                        return Err(duplicate_key());
                    }
                }
                deletes.extend(nested_deletes);
            }
            Some(Request::RequestRange(_)) | None => {}
        }
    }
    Ok((puts, deletes))
}

fn check_no_duplicate_writes(ops: &[RequestOp]) -> Result<(), KvError> {
    let (puts, deletes) = branch_writes(ops)?;
    if puts.iter().any(|k| deletes.iter().any(|d| d.contains(k))) {
        return Err(duplicate_key());
    }
    Ok(())
}

/// Number of operations of the larger branch, for the server's `max_txn_ops` limit
/// (top level only, as etcd counts).
fn txn_ops(req: &TxnRequest) -> usize {
    req.compare
        .len()
        .max(req.success.len())
        .max(req.failure.len())
}
