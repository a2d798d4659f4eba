//! HTTP handlers under `/api`, plus `/metrics`.
//!
//! Every write goes through [`writes::execute`] as a [`WriteOp`], whichever route it came by, so a REST call,
//! a batch entry and a replay of either are the same thing to the server.

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
use syncline_protocol::writes::MAX_BATCH_WRITES;
use syncline_protocol::{
    BoardId, CardId, ColumnId, CreateBoard, CreateCard, CreateColumn, Cursor, ErrorCode, MoveCard, MoveColumn,
    Rename, ServerMessage, StreamId, UpdateCard, Version, WriteBatch, WriteBatchResult, WriteOp, WriteOutcome,
};
use uuid::Uuid;

use crate::AppState;
use crate::error::{AppError, Json, Path};
use crate::feed::{LogRead, read_log, stream_head};
use crate::writes::{self, Outcome};
use crate::{store, ws};

type ApiResult<T> = Result<T, AppError>;

/// Header carrying a write's idempotency key on the REST routes.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/boards", get(list_boards).post(create_board))
        .route("/boards/{id}", get(get_board).patch(rename_board).delete(delete_board))
        .route("/boards/{id}/columns", post(create_column))
        .route("/columns/{id}", patch(rename_column).delete(delete_column))
        .route("/columns/{id}/move", post(move_column))
        .route("/columns/{id}/cards", post(create_card))
        .route("/cards/{id}", get(get_card).patch(update_card).delete(delete_card))
        .route("/cards/{id}/move", post(move_card))
        .route("/writes", post(write_batch))
        .route("/changes", get(long_poll))
        .route("/feed", get(ws::feed))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::not_found(format!("no API route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn bad_parameter(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, message)
}

// ---- reads ---------------------------------------------------------------------------------------------------

fn etag(log_id: Uuid, cursor: Cursor) -> String {
    format!("\"{log_id}-{cursor}\"")
}

fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
}

/// A snapshot answer with its ETag, or 304 when the client's copy is current.
fn snapshot_response<T: serde::Serialize>(tag: String, body: Option<T>) -> Response {
    let etag = HeaderValue::from_str(&tag).expect("ETag is ASCII");
    match body {
        None => (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response(),
        Some(body) => ([(header::ETAG, etag)], axum::Json(body)).into_response(),
    }
}

async fn list_boards(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let log_id = s.store.log_id();
    let known = headers;
    let (tag, list) = s
        .store
        .transaction(move |tx| {
            let tag = etag(log_id, stream_head(tx, StreamId::Boards)?);
            let list = if not_modified(&known, &tag) { None } else { Some(store::list_boards(tx, log_id)?) };
            Ok((tag, list))
        })
        .await?;
    Ok(snapshot_response(tag, list))
}

async fn get_board(State(s): State<AppState>, Path(id): Path<BoardId>, headers: HeaderMap) -> ApiResult<Response> {
    let log_id = s.store.log_id();
    let known = headers;
    let (tag, snapshot) = s
        .store
        .transaction(move |tx| {
            store::get_board(tx, id)?;
            let tag = etag(log_id, stream_head(tx, StreamId::Board(id))?);
            let snapshot = if not_modified(&known, &tag) { None } else { Some(store::board_snapshot(tx, id, log_id)?) };
            Ok((tag, snapshot))
        })
        .await?;
    Ok(snapshot_response(tag, snapshot))
}

async fn get_card(State(s): State<AppState>, Path(id): Path<CardId>) -> ApiResult<axum::Json<syncline_protocol::Card>> {
    Ok(axum::Json(s.store.transaction(move |tx| store::get_card(tx, id)).await?))
}

// ---- writes --------------------------------------------------------------------------------------------------

/// The `Idempotency-Key` header, if any; it must be a UUID.
fn write_id(headers: &HeaderMap) -> ApiResult<Option<Uuid>> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
            .map(Some)
            .ok_or_else(|| bad_parameter("the Idempotency-Key header must be a UUID")),
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NO_CONTENT {
            self.status.into_response()
        } else {
            (self.status, axum::Json(self.body)).into_response()
        }
    }
}

async fn write(s: &AppState, headers: &HeaderMap, op: WriteOp) -> ApiResult<Outcome> {
    writes::execute(&s.store, &s.metrics, write_id(headers)?, op).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseVersion {
    base_version: Option<Version>,
}

async fn create_board(State(s): State<AppState>, headers: HeaderMap, Json(body): Json<CreateBoard>) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::CreateBoard { body }).await
}

async fn rename_board(
    State(s): State<AppState>,
    Path(id): Path<BoardId>,
    headers: HeaderMap,
    Json(body): Json<Rename>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::RenameBoard { id, body }).await
}

async fn delete_board(
    State(s): State<AppState>,
    Path(id): Path<BoardId>,
    headers: HeaderMap,
    Query(q): Query<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::DeleteBoard { id, base_version: q.base_version }).await
}

async fn create_column(
    State(s): State<AppState>,
    Path(board_id): Path<BoardId>,
    headers: HeaderMap,
    Json(body): Json<CreateColumn>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::CreateColumn { board_id, body }).await
}

async fn rename_column(
    State(s): State<AppState>,
    Path(id): Path<ColumnId>,
    headers: HeaderMap,
    Json(body): Json<Rename>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::RenameColumn { id, body }).await
}

async fn move_column(
    State(s): State<AppState>,
    Path(id): Path<ColumnId>,
    headers: HeaderMap,
    Json(body): Json<MoveColumn>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::MoveColumn { id, body }).await
}

async fn delete_column(
    State(s): State<AppState>,
    Path(id): Path<ColumnId>,
    headers: HeaderMap,
    Query(q): Query<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::DeleteColumn { id, base_version: q.base_version }).await
}

async fn create_card(
    State(s): State<AppState>,
    Path(column_id): Path<ColumnId>,
    headers: HeaderMap,
    Json(body): Json<CreateCard>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::CreateCard { column_id, body }).await
}

async fn update_card(
    State(s): State<AppState>,
    Path(id): Path<CardId>,
    headers: HeaderMap,
    Json(body): Json<UpdateCard>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::UpdateCard { id, body }).await
}

async fn move_card(
    State(s): State<AppState>,
    Path(id): Path<CardId>,
    headers: HeaderMap,
    Json(body): Json<MoveCard>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::MoveCard { id, body }).await
}

async fn delete_card(
    State(s): State<AppState>,
    Path(id): Path<CardId>,
    headers: HeaderMap,
    Query(q): Query<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &headers, WriteOp::DeleteCard { id, base_version: q.base_version }).await
}

/// `POST /api/writes`: queued writes in order; each has its own outcome.
async fn write_batch(State(s): State<AppState>, Json(batch): Json<WriteBatch>) -> ApiResult<axum::Json<WriteBatchResult>> {
    if batch.writes.len() > MAX_BATCH_WRITES {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            format!("{} writes in one batch; the limit is {MAX_BATCH_WRITES}", batch.writes.len()),
        ));
    }
    let mut results = Vec::with_capacity(batch.writes.len());
    for w in batch.writes {
        let outcome = writes::execute(&s.store, &s.metrics, Some(w.write_id), w.op).await?;
        results.push(WriteOutcome { write_id: w.write_id, status: outcome.status.as_u16(), body: outcome.body });
    }
    Ok(axum::Json(WriteBatchResult { results }))
}

// ---- long-poll -----------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPollQuery {
    stream: String,
    since: Cursor,
    /// Seconds to wait for a change when there is none yet (capped by the server).
    #[serde(default)]
    wait: f64,
    #[serde(default)]
    log_id: Option<Uuid>,
}

/// `GET /api/changes?stream=&since=&wait=`: the changes after `since` at once if there are any, otherwise as
/// soon as one lands (or an empty list after `wait`). Answers `changes` or `reset`, as on the WebSocket.
async fn long_poll(
    State(s): State<AppState>,
    query: Result<Query<LongPollQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<ServerMessage>> {
    let Query(q) = query.map_err(|e| bad_parameter(e.body_text()))?;
    let stream: StreamId = q.stream.parse().map_err(bad_parameter)?;
    if !q.wait.is_finite() || q.wait < 0.0 {
        return Err(bad_parameter("wait must be a non-negative number of seconds"));
    }
    let wait = Duration::from_secs_f64(q.wait).min(s.feed.longpoll_max_wait);
    // Listen before reading, so a change landing in between wakes us.
    let mut live = s.store.hub().subscribe(stream);
    let read = |s: &AppState| {
        let (store, page) = (s.store.clone(), s.feed.page_size);
        let log_id = store.log_id();
        async move { store.transaction(move |tx| read_log(tx, log_id, stream, q.since, q.log_id, page)).await }
    };
    let mut result = read(&s).await?;
    if matches!(&result, LogRead::Changes(c) if c.is_empty()) && !wait.is_zero() {
        s.metrics.longpolls_waiting.inc();
        let mut shutdown = s.shutdown.clone();
        let woke = tokio::select! {
            r = live.recv() => r.is_ok() || matches!(r, Err(tokio::sync::broadcast::error::RecvError::Lagged(_))),
            _ = tokio::time::sleep(wait) => false,
            _ = crate::stopped(&mut shutdown) => false,
        };
        s.metrics.longpolls_waiting.dec();
        if woke {
            result = read(&s).await?;
        }
    }
    Ok(axum::Json(match result {
        LogRead::Changes(changes) => ServerMessage::Changes { stream, changes },
        LogRead::Reset(reason) => ServerMessage::Reset { stream, reason },
    }))
}
