//! Executing writes: one path for the REST routes and the batch endpoint, with idempotency keys.
//!
//! With a `write_id`, the write and the record of its outcome commit in one transaction, so a replay (after a
//! crash, a lost answer, or from several tabs at once) finds the outcome and applies nothing twice. Refusals
//! (404, 409, 422) are outcomes too: the write runs in a savepoint that is rolled back, and the refusal is
//! recorded, so replaying it answers the same. Only internal failures are not recorded: those may be retried.

use crate::args;
use crate::db::Conn;
use axum::http::StatusCode;
use syncline_kanban::{ErrorCode, StreamId, StreamPosition, UserId, WriteOp};
use uuid::Uuid;

use crate::access;
use crate::error::AppError;
use crate::feed::{Recorder, now_ms, stream_head};
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
    /// Where the body's entity stands in its streams (see `WriteOutcome::at`); recorded with the outcome, so
    /// a replay answers the same.
    pub at: Vec<StreamPosition>,
}

/// The clock and write-id retention a write is judged by.
#[derive(Debug, Clone, Copy)]
pub struct WriteContext {
    pub now_ms: u64,
    /// How long write ids are remembered (`--write-id-ttl-secs`).
    pub write_id_ttl_ms: u64,
    pub quotas: Quotas,
}

/// How much one user may create (`--max-boards-per-user`, `--max-columns-per-board`, `--max-cards-per-board`):
/// generous for a team, bounded for a hostile client. Checked in the write's transaction; over a quota the write
/// is refused with 422 `quota_exceeded` naming the limit (a recorded outcome, like any refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub boards_per_user: u64,
    pub columns_per_board: u64,
    pub cards_per_board: u64,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas { boards_per_user: 1_000, columns_per_board: 200, cards_per_board: 50_000 }
    }
}

/// Refuses a creation that would exceed a quota.
fn check_quota(tx: &dyn Conn, actor: UserId, op: &WriteOp, quotas: &Quotas) -> StoreResult<()> {
    let over = |limit: &'static str, max: u64, what: &str| StoreError::QuotaExceeded {
        limit,
        message: format!("at most {max} {what}"),
    };
    match op {
        WriteOp::CreateBoard { .. } => {
            let owned = tx
                .query_one("SELECT COUNT(*) FROM members WHERE user_id = ?1 AND role = 'owner'", args![actor])?
                .i64(0)?;
            if owned as u64 >= quotas.boards_per_user {
                return Err(over("boards_per_user", quotas.boards_per_user, "boards owned by one user"));
            }
        }
        WriteOp::CreateColumn { board_id, .. } => {
            let n = tx.query_one("SELECT COUNT(*) FROM columns WHERE board_id = ?1", args![*board_id])?.i64(0)?;
            if n as u64 >= quotas.columns_per_board {
                return Err(over("columns_per_board", quotas.columns_per_board, "columns on a board"));
            }
        }
        WriteOp::CreateCard { column_id, .. } => {
            let n = tx
                .query_one(
                    "SELECT COUNT(*) FROM cards WHERE board_id = (SELECT board_id FROM columns WHERE id = ?1)",
                    args![*column_id],
                )?
                .i64(0)?;
            if n as u64 >= quotas.cards_per_board {
                return Err(over("cards_per_board", quotas.cards_per_board, "cards on a board"));
            }
        }
        _ => {}
    }
    Ok(())
}

impl WriteContext {
    pub fn now(write_id_ttl_ms: u64, quotas: Quotas) -> WriteContext {
        WriteContext { now_ms: now_ms(), write_id_ttl_ms, quotas }
    }

    /// Refuses a UUIDv7 write id whose timestamp lies outside the window in which this server remembers write
    /// ids: for an older one it can no longer tell whether it was applied (the record may have been pruned),
    /// and applying it again could, for instance, re-create a card deleted since. Ids of other versions (a
    /// script's random `Idempotency-Key`) carry no time and are remembered for the TTL from their first use.
    fn check_age(&self, id: Uuid) -> Result<u64, AppError> {
        let Some(made_ms) = made_at_ms(id) else { return Ok(self.now_ms) };
        let ttl = self.write_id_ttl_ms;
        if made_ms.saturating_add(ttl) < self.now_ms {
            let hours = ttl as f64 / 3_600_000.0;
            return Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::WriteExpired,
                format!(
                    "write {id} was made more than {hours:.1} h ago, longer than this server remembers writes; it was not applied"
                ),
            ));
        }
        if made_ms > self.now_ms.saturating_add(ttl) {
            return Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::WriteExpired,
                format!(
                    "write {id} carries a time far in the future (is the client's clock wrong?); it was not applied"
                ),
            ));
        }
        // Remembered for the TTL from whichever is later: now, or the time the id claims.
        Ok(made_ms.max(self.now_ms))
    }
}

/// The creation time (Unix ms) a UUIDv7 carries.
pub fn made_at_ms(id: Uuid) -> Option<u64> {
    if id.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs * 1000 + u64::from(nanos) / 1_000_000)
}

/// Runs `op` as `actor` once per `write_id` and publishes its changes after commit.
pub async fn execute(
    store: &Store,
    metrics: &Metrics,
    actor: UserId,
    write_id: Option<Uuid>,
    op: WriteOp,
) -> Result<Outcome, AppError> {
    let (ttl, quotas) = (store.write_id_ttl_ms(), store.quotas());
    let outcome = store
        .write(move |tx| {
            let (outcome, rec) = execute_in(tx, actor, write_id, op, WriteContext::now(ttl, quotas))?;
            Ok((outcome, rec.changes().to_vec()))
        })
        .await?;
    metrics.record_write(&outcome);
    Ok(outcome)
}

/// [`execute`] inside the caller's transaction (the caller commits, then publishes the returned changes).
///
/// With a write id, the id is claimed first (a row in `writes`): a second request with the same id — on another
/// instance, at the same moment — waits on that row until this transaction ends, then finds the recorded outcome
/// and replays it. So a write is applied at most once whichever instances its retries reach.
pub fn execute_in(
    tx: &dyn Conn,
    actor: UserId,
    write_id: Option<Uuid>,
    op: WriteOp,
    ctx: WriteContext,
) -> StoreResult<(Outcome, Recorder)> {
    let request = serde_json::to_string(&op).map_err(|e| StoreError::Internal(e.into()))?;
    let mut rec = Recorder::new(write_id, ctx.now_ms);
    let refused = |err: AppError, rec| {
        Ok((Outcome { status: err.status, body: err.json(), replayed: false, at: Vec::new() }, rec))
    };
    if let Some(id) = write_id {
        // Not remembered: only a write id young enough that it would be remembered if it had been applied.
        let remember_from = match ctx.check_age(id) {
            Ok(from) => from,
            Err(err) => {
                if let Some(replay) = replay(tx, id, actor, &request)? {
                    return Ok((replay, rec));
                }
                return refused(err, rec);
            }
        };
        let claimed = tx.execute(
            "INSERT INTO writes (write_id, at_ms, request, status, body, positions, user_id)
             VALUES (?1, ?2, ?3, 0, '', '[]', ?4) ON CONFLICT (write_id) DO NOTHING",
            args![id, remember_from, request, actor],
        )?;
        if claimed == 0 {
            return match replay(tx, id, actor, &request)? {
                Some(replay) => Ok((replay, rec)),
                None => Err(StoreError::Internal(anyhow::anyhow!("write {id} is claimed but has no outcome"))),
            };
        }
    }
    let (status, body, at) = {
        tx.execute("SAVEPOINT write_op", &[])?;
        let allowed = access::authorize_write(tx, actor, &op).and_then(|()| check_quota(tx, actor, &op, &ctx.quotas));
        match allowed.and_then(|()| apply(tx, &mut rec, actor, op)) {
            Ok((status, body)) => {
                tx.execute("RELEASE SAVEPOINT write_op", &[])?;
                (status, body, StreamPosition::of(rec.changes()))
            }
            Err(StoreError::Internal(e)) => return Err(StoreError::Internal(e)),
            Err(refusal) => {
                tx.execute("ROLLBACK TO SAVEPOINT write_op", &[])?; // the write changes nothing
                tx.execute("RELEASE SAVEPOINT write_op", &[])?;
                rec.clear();
                let at = match &refusal {
                    StoreError::Conflict { current, .. } => positions_of(tx, actor, current)?,
                    _ => Vec::new(),
                };
                let err = AppError::from(refusal);
                (err.status, err.json(), at)
            }
        }
    };
    if let Some(id) = write_id {
        let positions = serde_json::to_string(&at).map_err(|e| StoreError::Internal(e.into()))?;
        tx.execute(
            "UPDATE writes SET status = ?2, body = ?3, positions = ?4 WHERE write_id = ?1",
            args![id, status.as_u16(), body.to_string(), positions],
        )?;
    }
    Ok((Outcome { status, body, replayed: false, at }, rec))
}

/// [`execute_in`] in a transaction of its own on a SQLite connection the caller holds (the simulation's way).
pub fn execute_locked(
    conn: &mut rusqlite::Connection,
    actor: UserId,
    write_id: Option<Uuid>,
    op: WriteOp,
    ctx: WriteContext,
) -> StoreResult<(Outcome, Recorder)> {
    let tx = conn.transaction()?;
    let done = execute_in(&tx, actor, write_id, op, ctx)?;
    tx.commit()?;
    Ok(done)
}

/// The recorded outcome of `id`, for the same author and the same write; a refusal when the id was used by
/// another account or for another write (its outcome is not theirs to see); `None` when it is not recorded.
fn replay(tx: &dyn Conn, id: Uuid, actor: UserId, request: &str) -> StoreResult<Option<Outcome>> {
    let Some(row) =
        tx.query_opt("SELECT request, status, body, positions, user_id FROM writes WHERE write_id = ?1", args![id])?
    else {
        return Ok(None);
    };
    let (earlier_request, status, body, positions, author) =
        (row.text(0)?, row.i64(1)?, row.text(2)?, row.text(3)?, row.opt_text(4)?);
    if earlier_request != request || author.is_some_and(|a| a != actor.to_string()) {
        let err = AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::IdempotencyKeyReused,
            format!("write id {id} was already used for a different write"),
        );
        return Ok(Some(Outcome { status: err.status, body: err.json(), replayed: false, at: Vec::new() }));
    }
    let internal = |e: serde_json::Error| StoreError::Internal(e.into());
    let status = StatusCode::from_u16(status as u16).map_err(|e| StoreError::Internal(e.into()))?;
    let body = serde_json::from_str(&body).map_err(internal)?;
    let at = serde_json::from_str(&positions).map_err(internal)?;
    Ok(Some(Outcome { status, body, replayed: true, at }))
}

/// Where an entity's current state stands: the head of each stream it lives in (a board in the actor's `boards`
/// and its own stream; a column, card or member in its board's), read in the transaction that read the entity.
/// Streams are named as the client knows them (`boards`, not `user:<id>`).
fn positions_of(tx: &dyn Conn, actor: UserId, entity: &serde_json::Value) -> StoreResult<Vec<StreamPosition>> {
    let uuid = |key: &str| entity.get(key).and_then(|v| v.as_str()).and_then(|s| Uuid::parse_str(s).ok());
    Ok(match (uuid("board_id"), uuid("id")) {
        (Some(board), _) => {
            vec![StreamPosition {
                stream: StreamId::Board(board).name(),
                cursor: stream_head(tx, StreamId::Board(board))?,
            }]
        }
        (None, Some(board)) => vec![
            StreamPosition { stream: StreamId::Boards.name(), cursor: stream_head(tx, access::user_stream(actor))? },
            StreamPosition { stream: StreamId::Board(board).name(), cursor: stream_head(tx, StreamId::Board(board))? },
        ],
        (None, None) => Vec::new(),
    })
}

fn json<T: serde::Serialize>(value: T) -> StoreResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| StoreError::Internal(e.into()))
}

/// Applies one write by `actor` (already authorized) on `tx`; returns its success status and body.
pub fn apply(
    tx: &dyn Conn,
    rec: &mut Recorder,
    actor: UserId,
    op: WriteOp,
) -> StoreResult<(StatusCode, serde_json::Value)> {
    let created = |v| Ok((StatusCode::CREATED, json(v)?));
    let ok = |v| Ok((StatusCode::OK, json(v)?));
    let deleted = || Ok((StatusCode::NO_CONTENT, serde_json::Value::Null));
    match op {
        WriteOp::CreateBoard { body } => created(json(store::create_board(tx, rec, actor, body)?)?),
        WriteOp::RenameBoard { id, body } => ok(json(store::rename_board(tx, rec, id, body)?)?),
        WriteOp::DeleteBoard { id, base_version } => {
            store::delete_board(tx, rec, id, base_version).and_then(|_| deleted())
        }
        WriteOp::CreateColumn { board_id, body } => created(json(store::create_column(tx, rec, board_id, body)?)?),
        WriteOp::RenameColumn { id, body } => ok(json(store::rename_column(tx, rec, id, body)?)?),
        WriteOp::MoveColumn { id, body } => ok(json(store::move_column(tx, rec, id, body)?)?),
        WriteOp::DeleteColumn { id, base_version } => {
            store::delete_column(tx, rec, id, base_version).and_then(|_| deleted())
        }
        WriteOp::CreateCard { column_id, body } => created(json(store::create_card(tx, rec, column_id, body)?)?),
        WriteOp::UpdateCard { id, body } => ok(json(store::update_card(tx, rec, id, body)?)?),
        WriteOp::MoveCard { id, body } => ok(json(store::move_card(tx, rec, id, body)?)?),
        WriteOp::DeleteCard { id, base_version } => {
            store::delete_card(tx, rec, id, base_version).and_then(|_| deleted())
        }
        WriteOp::AddMember { board_id, body } => created(json(access::add_member(tx, rec, board_id, body)?)?),
        WriteOp::SetMemberRole { board_id, user_id, body } => {
            ok(json(access::set_member_role(tx, rec, board_id, user_id, body)?)?)
        }
        WriteOp::RemoveMember { board_id, user_id } => {
            access::remove_member(tx, rec, board_id, user_id).and_then(|_| deleted())
        }
    }
}
