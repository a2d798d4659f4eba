//! Executing writes: one path for the REST routes and the batch endpoint, with idempotency keys.
//!
//! With a `write_id`, the write and the record of its outcome commit in one transaction, so a replay (after a
//! crash, a lost answer, or from several tabs at once) finds the outcome and applies nothing twice. Refusals
//! (404, 409, 422) are outcomes too: the write runs in a savepoint that is rolled back, and the refusal is
//! recorded, so replaying it answers the same. Only internal failures are not recorded: those may be retried.

use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, params};
use syncline_protocol::{ErrorCode, WriteOp};
use uuid::Uuid;

use crate::error::AppError;
use crate::feed::{Recorder, now_ms};
use crate::metrics::Metrics;
use crate::store::{self, Store, StoreError, StoreResult};

/// What a write answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: StatusCode,
    /// The JSON body (`null` for a 204).
    pub body: serde_json::Value,
    /// True when this answer is the recorded outcome of an earlier request with the same write id.
    pub replayed: bool,
}

/// Runs `op` once per `write_id` and publishes its changes after commit.
pub async fn execute(store: &Store, metrics: &Metrics, write_id: Option<Uuid>, op: WriteOp) -> Result<Outcome, AppError> {
    let hub = store.hub().clone();
    let outcome = store
        .with_conn(move |conn| {
            let (outcome, rec) = execute_locked(conn, write_id, op)?;
            // Still under the connection lock: notifications leave in commit order.
            hub.publish(rec.changes());
            Ok(outcome)
        })
        .await?;
    metrics.record_write(&outcome);
    Ok(outcome)
}

/// [`execute`] on a connection the caller holds; returns the outcome and the changes to publish.
pub fn execute_locked(conn: &mut Connection, write_id: Option<Uuid>, op: WriteOp) -> StoreResult<(Outcome, Recorder)> {
    let request = serde_json::to_string(&op).map_err(|e| StoreError::Internal(e.into()))?;
    let mut tx = conn.transaction()?;
    let mut rec = Recorder::new(write_id);
    if let Some(id) = write_id {
        let earlier: Option<(String, u16, String)> = tx
            .query_row("SELECT request, status, body FROM writes WHERE write_id = ?1", [id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((earlier_request, status, body)) = earlier {
            if earlier_request != request {
                let err = AppError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::IdempotencyKeyReused,
                    format!("write id {id} was already used for a different write"),
                );
                return Ok((Outcome { status: err.status, body: err.json(), replayed: false }, rec));
            }
            let body = serde_json::from_str(&body).map_err(|e| StoreError::Internal(e.into()))?;
            let status = StatusCode::from_u16(status).map_err(|e| StoreError::Internal(e.into()))?;
            return Ok((Outcome { status, body, replayed: true }, rec));
        }
    }
    let (status, body) = {
        let sp = tx.savepoint()?;
        match apply(&sp, &mut rec, op) {
            Ok(done) => {
                sp.commit()?;
                done
            }
            Err(StoreError::Internal(e)) => return Err(StoreError::Internal(e)),
            Err(refusal) => {
                drop(sp); // rolls the write back
                rec.clear();
                let err = AppError::from(refusal);
                (err.status, err.json())
            }
        }
    };
    if let Some(id) = write_id {
        tx.execute(
            "INSERT INTO writes (write_id, at_ms, request, status, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id.to_string(), now_ms() as i64, request, status.as_u16(), body.to_string()],
        )?;
    }
    tx.commit()?;
    Ok((Outcome { status, body, replayed: false }, rec))
}

fn json<T: serde::Serialize>(value: T) -> StoreResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| StoreError::Internal(e.into()))
}

/// Applies one write on `tx`; returns its success status and body.
pub fn apply(tx: &Connection, rec: &mut Recorder, op: WriteOp) -> StoreResult<(StatusCode, serde_json::Value)> {
    let created = |v| Ok((StatusCode::CREATED, json(v)?));
    let ok = |v| Ok((StatusCode::OK, json(v)?));
    let deleted = || Ok((StatusCode::NO_CONTENT, serde_json::Value::Null));
    match op {
        WriteOp::CreateBoard { body } => created(json(store::create_board(tx, rec, body)?)?),
        WriteOp::RenameBoard { id, body } => ok(json(store::rename_board(tx, rec, id, body)?)?),
        WriteOp::DeleteBoard { id, base_version } => store::delete_board(tx, rec, id, base_version).and_then(|_| deleted()),
        WriteOp::CreateColumn { board_id, body } => created(json(store::create_column(tx, rec, board_id, body)?)?),
        WriteOp::RenameColumn { id, body } => ok(json(store::rename_column(tx, rec, id, body)?)?),
        WriteOp::MoveColumn { id, body } => ok(json(store::move_column(tx, rec, id, body)?)?),
        WriteOp::DeleteColumn { id, base_version } => {
            store::delete_column(tx, rec, id, base_version).and_then(|_| deleted())
        }
        WriteOp::CreateCard { column_id, body } => created(json(store::create_card(tx, rec, column_id, body)?)?),
        WriteOp::UpdateCard { id, body } => ok(json(store::update_card(tx, rec, id, body)?)?),
        WriteOp::MoveCard { id, body } => ok(json(store::move_card(tx, rec, id, body)?)?),
        WriteOp::DeleteCard { id, base_version } => store::delete_card(tx, rec, id, base_version).and_then(|_| deleted()),
    }
}
