//! HTTP handlers under `/api`, plus `/metrics`.
//!
//! Every write goes through [`writes::execute`] as a [`WriteOp`], whichever route it came by, so a REST call,
//! a batch entry and a replay of either are the same thing to the server.

use std::str::FromStr;
use std::time::Duration;

use crate::error::Query as JsonQuery;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Deserialize;
#[allow(unused_imports)] // some are named only by the OpenAPI attributes
use syncline_kanban::{
    AddMember, ApiError, Board, BoardId, BoardList, BoardSnapshot, BoardSummary, Card, CardId, Change, ChangeOp,
    ChangePassword, ClientMessage, Column, ColumnId, CreateBoard, CreateCard, CreateColumn, Credentials, Cursor,
    ErrorCode, MAX_BATCH_WRITES, Member, MoveCard, MoveColumn, Rename, Role, ServerMessage, SetRole, StreamCursor,
    StreamId, StreamName, UpdateCard, User, UserId, Version, Write, WriteBatch, WriteBatchResult, WriteOp,
    WriteOutcome,
};
use uuid::Uuid;

use crate::AppState;
use crate::access::{self, Action};
use crate::auth::{self, CurrentUser, PeerAddr};
use crate::error::{AppError, Json, Path};
use crate::feed::stream_head;
use crate::session::{self, Session, Settings};
use crate::usage::Held;
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
        .route("/boards/{id}/summary", get(get_summary))
        .route("/boards/{id}/members", get(list_members).post(add_member))
        .route("/boards/{id}/members/{user_id}", patch(set_member_role).delete(remove_member))
        .route("/auth/signup", post(auth::signup))
        .route("/auth/signin", post(auth::signin))
        .route("/auth/signout", post(auth::signout))
        .route("/auth/me", get(auth::me))
        .route("/auth/password", post(auth::change_password))
        .route("/columns/{id}", patch(rename_column).delete(delete_column))
        .route("/columns/{id}/move", post(move_column))
        .route("/columns/{id}/cards", post(create_card))
        .route("/cards/{id}", get(get_card).patch(update_card).delete(delete_card))
        .route("/cards/{id}/move", post(move_card))
        .route("/writes", post(write_batch))
        .route("/changes", get(long_poll))
        .route("/feed", get(ws::feed))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `GET /metrics` on `--metrics-bind` only (never the public address, so not in the API document).
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

#[utoipa::path(get, path = "/api/boards", tag = "boards", responses((status = 200, description = "All boards, with the `boards` stream cursor; ETag", body = BoardList), (status = 304, description = "Unchanged since If-None-Match")))]
async fn list_boards(State(s): State<AppState>, user: CurrentUser, headers: HeaderMap) -> ApiResult<Response> {
    let log_id = s.store.log_id();
    let known = headers;
    let me = user.id;
    let (tag, list) = s
        .store
        .read(move |tx| {
            let tag = etag(log_id, stream_head(tx, access::user_stream(me))?);
            let list = if not_modified(&known, &tag) { None } else { Some(store::list_boards(tx, me, log_id)?) };
            Ok((tag, list))
        })
        .await?;
    Ok(snapshot_response(tag, list))
}

#[utoipa::path(get, path = "/api/boards/{id}", tag = "boards", params(("id" = Uuid, Path)), responses((status = 200, description = "Board snapshot with its stream cursor; ETag", body = BoardSnapshot), (status = 304, description = "Unchanged since If-None-Match"), (status = 404, body = ApiError)))]
async fn get_board(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<BoardId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let log_id = s.store.log_id();
    let known = headers;
    let (tag, snapshot) = s
        .store
        .read(move |tx| {
            access::can(tx, user.id, id, Action::Read)?;
            let tag = etag(log_id, stream_head(tx, StreamId::Board(id))?);
            let snapshot = if not_modified(&known, &tag) { None } else { Some(store::board_snapshot(tx, id, log_id)?) };
            Ok((tag, snapshot))
        })
        .await?;
    Ok(snapshot_response(tag, snapshot))
}

#[utoipa::path(get, path = "/api/boards/{id}/summary", tag = "boards", params(("id" = Uuid, Path)), responses((status = 200, description = "Server-computed figures; ETag", body = BoardSummary), (status = 304, description = "Unchanged since If-None-Match"), (status = 404, body = ApiError)))]
async fn get_summary(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<BoardId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let log_id = s.store.log_id();
    let (tag, summary) = s
        .store
        .read(move |tx| {
            access::can(tx, user.id, id, Action::Read)?;
            let tag = format!("\"{log_id}-{}-summary\"", stream_head(tx, StreamId::Board(id))?);
            let summary = if not_modified(&headers, &tag) { None } else { Some(store::board_summary(tx, id)?) };
            Ok((tag, summary))
        })
        .await?;
    Ok(snapshot_response(tag, summary))
}

#[utoipa::path(get, path = "/api/cards/{id}", tag = "cards", params(("id" = Uuid, Path)), responses((status = 200, body = Card), (status = 404, body = ApiError)))]
async fn get_card(State(s): State<AppState>, user: CurrentUser, Path(id): Path<CardId>) -> ApiResult<axum::Json<Card>> {
    let card = s
        .store
        .read(move |tx| {
            let card = store::get_card(tx, id)?;
            access::can(tx, user.id, card.board_id, Action::Read)
                .map_err(|_| store::StoreError::NotFound(format!("no card with id {id}")))?;
            Ok(card)
        })
        .await?;
    Ok(axum::Json(card))
}

// ---- members -------------------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/boards/{id}/members", tag = "members", params(("id" = Uuid, Path)), responses((status = 200, description = "The board's members (any member may see them)", body = Vec<Member>), (status = 401, body = ApiError), (status = 404, description = "No such board, or not a member", body = ApiError)))]
async fn list_members(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<BoardId>,
) -> ApiResult<axum::Json<Vec<Member>>> {
    let members = s
        .store
        .read(move |tx| {
            access::can(tx, user.id, id, Action::Read)?;
            access::members_of(tx, id)
        })
        .await?;
    Ok(axum::Json(members))
}

#[utoipa::path(post, path = "/api/boards/{id}/members", tag = "members", params(("id" = Uuid, Path)), request_body = AddMember, responses((status = 201, body = Member), (status = 401, body = ApiError), (status = 403, description = "Only owners manage members", body = ApiError), (status = 404, description = "No such board, or not a member", body = ApiError), (status = 422, description = "No such user, or already a member", body = ApiError)))]
async fn add_member(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<BoardId>,
    meta: WriteMeta,
    Json(body): Json<AddMember>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::AddMember { board_id, body }).await
}

#[utoipa::path(patch, path = "/api/boards/{id}/members/{user_id}", tag = "members", params(("id" = Uuid, Path), ("user_id" = Uuid, Path)), request_body = SetRole, responses((status = 200, body = Member), (status = 401, body = ApiError), (status = 403, description = "Only owners manage members", body = ApiError), (status = 404, body = ApiError), (status = 409, description = "Stale base_version", body = ApiError), (status = 422, description = "The last owner cannot step down", body = ApiError)))]
async fn set_member_role(
    State(s): State<AppState>,
    user: CurrentUser,
    Path((board_id, user_id)): Path<(BoardId, UserId)>,
    meta: WriteMeta,
    Json(body): Json<SetRole>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::SetMemberRole { board_id, user_id, body }).await
}

#[utoipa::path(delete, path = "/api/boards/{id}/members/{user_id}", tag = "members", params(("id" = Uuid, Path), ("user_id" = Uuid, Path)), responses((status = 204, description = "Removed (or left); their feeds stop receiving the board at once"), (status = 401, body = ApiError), (status = 403, description = "Only owners remove others", body = ApiError), (status = 404, body = ApiError), (status = 422, description = "The last owner cannot leave", body = ApiError)))]
async fn remove_member(
    State(s): State<AppState>,
    user: CurrentUser,
    Path((board_id, user_id)): Path<(BoardId, UserId)>,
    meta: WriteMeta,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::RemoveMember { board_id, user_id }).await
}

// ---- writes --------------------------------------------------------------------------------------------------

/// What a REST write brings besides its body: its `Idempotency-Key` (a UUID, if any) and the client's address
/// (for the per-address write rate).
struct WriteMeta {
    write_id: Option<Uuid>,
    address: Option<std::net::IpAddr>,
}

impl axum::extract::FromRequestParts<AppState> for WriteMeta {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, AppError> {
        let write_id = match parts.headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| Uuid::parse_str(v.trim()).ok())
                    .ok_or_else(|| bad_parameter("the Idempotency-Key header must be a UUID"))?,
            ),
        };
        let Ok(PeerAddr(address)) = PeerAddr::from_request_parts(parts, state).await;
        Ok(WriteMeta { write_id, address })
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

async fn write(s: &AppState, user: &CurrentUser, meta: WriteMeta, op: WriteOp) -> ApiResult<Outcome> {
    s.usage.writes(user.id, meta.address, 1)?;
    writes::execute(&s.store, &s.metrics, user.id, meta.write_id, op).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseVersion {
    base_version: Option<Version>,
}

#[utoipa::path(post, path = "/api/boards", tag = "boards", request_body = CreateBoard, responses((status = 201, body = Board)))]
async fn create_board(
    State(s): State<AppState>,
    user: CurrentUser,
    meta: WriteMeta,
    Json(body): Json<CreateBoard>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::CreateBoard { body }).await
}

#[utoipa::path(patch, path = "/api/boards/{id}", tag = "boards", params(("id" = Uuid, Path)), request_body = Rename, responses((status = 200, body = Board), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn rename_board(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<BoardId>,
    meta: WriteMeta,
    Json(body): Json<Rename>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::RenameBoard { id, body }).await
}

#[utoipa::path(delete, path = "/api/boards/{id}", tag = "boards", params(("id" = Uuid, Path), ("base_version" = Option<u64>, Query)), responses((status = 204, description = "Deleted"), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn delete_board(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<BoardId>,
    meta: WriteMeta,
    JsonQuery(q): JsonQuery<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::DeleteBoard { id, base_version: q.base_version }).await
}

#[utoipa::path(post, path = "/api/boards/{id}/columns", tag = "columns", params(("id" = Uuid, Path)), request_body = CreateColumn, responses((status = 201, body = Column)))]
async fn create_column(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(board_id): Path<BoardId>,
    meta: WriteMeta,
    Json(body): Json<CreateColumn>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::CreateColumn { board_id, body }).await
}

#[utoipa::path(patch, path = "/api/columns/{id}", tag = "columns", params(("id" = Uuid, Path)), request_body = Rename, responses((status = 200, body = Column), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn rename_column(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<ColumnId>,
    meta: WriteMeta,
    Json(body): Json<Rename>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::RenameColumn { id, body }).await
}

#[utoipa::path(post, path = "/api/columns/{id}/move", tag = "columns", params(("id" = Uuid, Path)), request_body = MoveColumn, responses((status = 200, body = Column), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn move_column(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<ColumnId>,
    meta: WriteMeta,
    Json(body): Json<MoveColumn>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::MoveColumn { id, body }).await
}

#[utoipa::path(delete, path = "/api/columns/{id}", tag = "columns", params(("id" = Uuid, Path), ("base_version" = Option<u64>, Query)), responses((status = 204, description = "Deleted with its cards"), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn delete_column(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<ColumnId>,
    meta: WriteMeta,
    JsonQuery(q): JsonQuery<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::DeleteColumn { id, base_version: q.base_version }).await
}

#[utoipa::path(post, path = "/api/columns/{id}/cards", tag = "cards", params(("id" = Uuid, Path)), request_body = CreateCard, responses((status = 201, body = Card)))]
async fn create_card(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(column_id): Path<ColumnId>,
    meta: WriteMeta,
    Json(body): Json<CreateCard>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::CreateCard { column_id, body }).await
}

#[utoipa::path(patch, path = "/api/cards/{id}", tag = "cards", params(("id" = Uuid, Path)), request_body = UpdateCard, responses((status = 200, body = Card), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn update_card(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<CardId>,
    meta: WriteMeta,
    Json(body): Json<UpdateCard>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::UpdateCard { id, body }).await
}

#[utoipa::path(post, path = "/api/cards/{id}/move", tag = "cards", params(("id" = Uuid, Path)), request_body = MoveCard, responses((status = 200, body = Card), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn move_card(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<CardId>,
    meta: WriteMeta,
    Json(body): Json<MoveCard>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::MoveCard { id, body }).await
}

#[utoipa::path(delete, path = "/api/cards/{id}", tag = "cards", params(("id" = Uuid, Path), ("base_version" = Option<u64>, Query)), responses((status = 204, description = "Deleted"), (status = 409, description = "Stale base_version; body has `current`", body = ApiError)))]
async fn delete_card(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<CardId>,
    meta: WriteMeta,
    JsonQuery(q): JsonQuery<BaseVersion>,
) -> ApiResult<Outcome> {
    write(&s, &user, meta, WriteOp::DeleteCard { id, base_version: q.base_version }).await
}

/// `POST /api/writes`: queued writes in order; each has its own outcome.
#[utoipa::path(post, path = "/api/writes", tag = "writes", request_body = WriteBatch, responses((status = 200, description = "Each write's outcome, in order", body = WriteBatchResult), (status = 422, description = "Too many writes or a malformed batch", body = ApiError)))]
async fn write_batch(
    State(s): State<AppState>,
    user: CurrentUser,
    PeerAddr(address): PeerAddr,
    Json(batch): Json<WriteBatch>,
) -> ApiResult<axum::Json<WriteBatchResult>> {
    if batch.writes.len() > MAX_BATCH_WRITES {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidField,
            format!("{} writes in one batch; the limit is {MAX_BATCH_WRITES}", batch.writes.len()),
        ));
    }
    // The whole batch or none of it: a refused batch is retried later by the client, nothing half-applied.
    s.usage.writes(user.id, address, batch.writes.len())?;
    let mut results = Vec::with_capacity(batch.writes.len());
    for w in batch.writes {
        let outcome = writes::execute(&s.store, &s.metrics, user.id, Some(w.write_id), w.op).await?;
        results.push(WriteOutcome {
            write_id: w.write_id,
            status: outcome.status.as_u16(),
            body: outcome.body,
            at: outcome.at,
        });
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
#[utoipa::path(get, path = "/api/changes", tag = "feed", params(("stream" = String, Query, description = "`boards` or `board:<uuid>`", pattern = r"^(boards|board:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"), ("since" = u64, Query, description = "Last cursor applied"), ("wait" = Option<f64>, Query, minimum = 0, description = "Seconds to wait for a change (capped by the server)"), ("log_id" = Option<Uuid>, Query, description = "Log the cursor belongs to")), responses((status = 200, description = "`changes` (possibly empty) or `reset`", body = ServerMessage), (status = 400, body = ApiError), (status = 429, description = "Too many long-polls of this user waiting (`rate_limited`)", body = ApiError)))]
async fn long_poll(
    State(s): State<AppState>,
    user: CurrentUser,
    query: Result<Query<LongPollQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<ServerMessage>> {
    let Query(q) = query.map_err(|e| bad_parameter(e.body_text()))?;
    let stream_id = StreamId::from_str(&q.stream).map_err(bad_parameter)?;
    let stream: StreamName = stream_id.name();
    // A board the user may not see does not exist (as on every other route).
    if let StreamId::Board(board) = stream_id {
        s.store.read(move |tx| access::can(tx, user.id, board, Action::Read)).await?;
    }
    let mut ended = s.store.hub().ended_sessions();
    if q.since > i64::MAX as Cursor {
        return Err(bad_parameter("since is a cursor, from 0 to 2^63-1"));
    }
    if !q.wait.is_finite() || q.wait < 0.0 {
        return Err(bad_parameter("wait must be a non-negative number of seconds"));
    }
    let wait = Duration::from_secs_f64(q.wait.min(s.feed.longpoll_max_wait.as_secs_f64()));
    let deadline = tokio::time::Instant::now() + wait;
    // The feed session of one stream, answered with its first page of changes (or its reset); when it is caught up,
    // it waits for a live batch until the deadline.
    let settings = Settings { max_subscriptions: 1, page_size: s.feed.page_size, message_target_bytes: usize::MAX };
    let mut session = Session::new(settings, user.id);
    let mut live = None;
    let subscribe = ClientMessage::Subscribe {
        streams: vec![StreamCursor { stream: stream.clone(), since: q.since }],
        log_id: q.log_id,
    };
    let mut input = Some(session::Input::Client(subscribe));
    let mut shutdown = s.shutdown.clone();
    loop {
        if let Some(input) = input.take() {
            session.handle(input);
        }
        while let Some(out) = session.poll_output() {
            match out {
                session::Output::Send(
                    msg @ (ServerMessage::Changes { .. } | ServerMessage::Reset { .. } | ServerMessage::Revoked { .. }),
                ) => {
                    s.stats.delivered(user.id, &msg);
                    return Ok(axum::Json(msg));
                }
                session::Output::Forward(batch) => {
                    s.stats.delivered_batch(user.id, &batch.stream, &batch.changes);
                    return Ok(axum::Json(batch.message()));
                }
                session::Output::Send(_) => {} // synced: nothing new yet
                // Listen before reading, so a change landing in between wakes us.
                session::Output::Listen(stream) => live = Some(s.store.hub().subscribe(stream)),
                session::Output::Unlisten(_) => live = None,
                session::Output::ReadLog { stream, since, client_log_id } => {
                    let (store, page, me) = (s.store.clone(), s.feed.page_size, user.id);
                    let own_log = store.log_id();
                    let st = stream.clone();
                    let read = store
                        .read(move |tx| access::read_log_as(tx, me, own_log, &st, since, client_log_id, page))
                        .await?;
                    session.handle(session::Input::LogRead { stream, since, read });
                }
                session::Output::Close { reason, .. } => return Err(bad_parameter(reason)),
            }
        }
        let Some(rx) = live.as_mut().filter(|_| tokio::time::Instant::now() < deadline) else {
            return Ok(axum::Json(ServerMessage::Changes { stream, changes: Vec::new() }));
        };
        let _waiting = s.metrics.longpoll_waiting();
        let _held = s.usage.hold(Held::LongPoll, user.id)?;
        let log_stream = session.log_name(&stream);
        input = tokio::select! {
            r = rx.recv() => Some(match r {
                Ok(published) => session::Input::Published(published),
                Err(_) => session::Input::Lagged { stream: log_stream },
            }),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = crate::stopped(&mut shutdown) => None,
            // Signed out while waiting: this request's session is no more.
            Ok(id) = ended.recv() => {
                if *id == *user.session { return Err(AppError::unauthorized()) }
                continue;
            }
        };
        if input.is_none() {
            return Ok(axum::Json(ServerMessage::Changes { stream, changes: Vec::new() }));
        }
    }
}

// ---- OpenAPI -------------------------------------------------------------------------------------------------

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "syncline",
        description = "Kanban API with a gap-free change feed. The WebSocket feed (`GET /api/feed`) is described in docs/protocol.md. Prometheus `/metrics` is served only on `--metrics-bind`."
    ),
    paths(
        list_boards,
        create_board,
        get_board,
        get_summary,
        rename_board,
        delete_board,
        create_column,
        rename_column,
        move_column,
        delete_column,
        create_card,
        get_card,
        update_card,
        move_card,
        delete_card,
        list_members,
        add_member,
        set_member_role,
        remove_member,
        write_batch,
        long_poll,
        auth::signup,
        auth::signin,
        auth::signout,
        auth::me,
        auth::change_password,
        feed_doc
    ),
    components(schemas(
        ClientMessage,
        ServerMessage,
        Change,
        ChangeOp,
        StreamCursor,
        WriteOp,
        Write,
        Role,
        Member,
        User,
        Credentials,
        ChangePassword
    )),
    modifiers(&AccessResponses)
)]
pub struct ApiDoc;

/// Documents what access control answers on every route: 401 without a session (all but sign-up, sign-in and
/// the document itself), 403 for a role too low on writes, 421 for a foreign `Host` and 403 for a cross-site
/// write everywhere; and the session cookie as the security scheme.
struct AccessResponses;

impl utoipa::Modify for AccessResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let error = |text: &str| -> RefOr<utoipa::openapi::Response> {
            ResponseBuilder::new()
                .description(text)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
                .into()
        };
        let idempotency_key = utoipa::openapi::path::ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(utoipa::openapi::path::ParameterIn::Header)
            .required(utoipa::openapi::Required::False)
            .description(Some("A UUID naming the write: a replay returns the first outcome and applies nothing twice"))
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid))),
            ))
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = matches!(path.as_str(), "/api/auth/signup" | "/api/auth/signin" | "/api/openapi.json");
            // The Kanban REST writes take an idempotency key (the batch route carries one per write instead).
            let keyed = ["/api/boards", "/api/columns", "/api/cards"].iter().any(|p| path.starts_with(p));
            let ops = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.patch, true),
                (&mut item.delete, true),
                (&mut item.put, true),
            ];
            for (op, writes) in ops {
                let Some(op) = op.as_mut() else { continue };
                if writes && keyed {
                    op.parameters.get_or_insert_with(Vec::new).push(idempotency_key.clone());
                }
                let r = &mut op.responses.responses;
                if !open {
                    r.entry("401".into()).or_insert_with(|| error("No session: sign in first (`unauthorized`)"));
                    r.entry("404".into()).or_insert_with(|| {
                        error("No such entity, or on a board you are not a member of (`not_found`)")
                    });
                }
                if writes {
                    r.entry("403".into()).or_insert_with(|| {
                        error("A role too low on this board (`forbidden`), or a cross-site request (`cross_site_request`)")
                    });
                }
                r.entry("421".into())
                    .or_insert_with(|| error("A `Host` that is not one of the server's public origins"));
                // What any route may answer: a parameter that does not parse, a body that is not acceptable, the
                // connection cap, an internal failure.
                let has_params = path.contains('{') || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if has_params || writes {
                    r.entry("400".into()).or_insert_with(|| {
                        error("A path or query parameter (`invalid_parameter`) or a body (`malformed_json`) that does not parse")
                    });
                }
                if writes && (keyed || path == "/api/writes") {
                    r.entry("429".into()).or_insert_with(|| {
                        error("Over the write rate for this user or address (`rate_limited`, `Retry-After`); nothing was applied")
                    });
                }
                if writes {
                    r.entry("408".into()).or_insert_with(|| error("The body came too slowly (`request_timeout`)"));
                    r.entry("413".into()).or_insert_with(|| error("The body is too large (`payload_too_large`)"));
                    r.entry("415".into())
                        .or_insert_with(|| error("The body is not `application/json` (`unsupported_media_type`)"));
                    r.entry("422".into()).or_insert_with(|| {
                        error("The body is JSON of the wrong shape (`invalid_body`) or a refused value")
                    });
                }
                r.entry("500".into()).or_insert_with(|| error("An internal failure (`internal`); may be retried"));
                r.entry("503".into()).or_insert_with(|| {
                    error("Too many open connections (`too_many_connections`, `Retry-After`), or a feed turned off")
                });
            }
        }
        add_links(doc);
        let components = doc.components.get_or_insert_with(Default::default);
        close_write_ops(components);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(crate::auth::SESSION_COOKIE))),
        );
    }
}

/// Links from what a write creates to the operations on it (OpenAPI `links`): what lets a client — and
/// Schemathesis' stateful phase — follow a created board to its columns, cards and members.
fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::link::LinkBuilder;
    const BODY_ID: &str = "$response.body#/id";
    /// An operation reached from a created entity, with its parameters (name, runtime expression).
    type Linked = (&'static str, &'static [(&'static str, &'static str)]);
    let table: [(&str, &[Linked]); 4] = [
        (
            "/api/boards",
            &[
                ("get_board", &[("id", BODY_ID)]),
                ("get_summary", &[("id", BODY_ID)]),
                ("rename_board", &[("id", BODY_ID)]),
                ("delete_board", &[("id", BODY_ID)]),
                ("create_column", &[("id", BODY_ID)]),
                ("list_members", &[("id", BODY_ID)]),
                ("add_member", &[("id", BODY_ID)]),
            ],
        ),
        (
            "/api/boards/{id}/columns",
            &[
                ("rename_column", &[("id", BODY_ID)]),
                ("move_column", &[("id", BODY_ID)]),
                ("delete_column", &[("id", BODY_ID)]),
                ("create_card", &[("id", BODY_ID)]),
            ],
        ),
        (
            "/api/columns/{id}/cards",
            &[
                ("get_card", &[("id", BODY_ID)]),
                ("update_card", &[("id", BODY_ID)]),
                ("move_card", &[("id", BODY_ID)]),
                ("delete_card", &[("id", BODY_ID)]),
            ],
        ),
        (
            "/api/boards/{id}/members",
            &[
                ("set_member_role", &[("id", "$request.path.id"), ("user_id", "$response.body#/user_id")]),
                ("remove_member", &[("id", "$request.path.id"), ("user_id", "$response.body#/user_id")]),
            ],
        ),
    ];
    for (path, links) in table {
        let Some(RefOr::T(created)) = doc
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.post.as_mut())
            .and_then(|op| op.responses.responses.get_mut("201"))
        else {
            panic!("{path} documents no 201 to link from");
        };
        for (operation, parameters) in links {
            let link = parameters
                .iter()
                .fold(LinkBuilder::new().operation_id(*operation), |l, (name, value)| l.parameter(*name, *value));
            created.links.insert((*operation).to_string(), RefOr::T(link.build()));
        }
    }
}

/// `WriteOp` is an internally tagged enum whose variants flatten a request body: utoipa documents those as
/// `allOf` of the body (closed to other fields) and the tag, which no object satisfies, and leaves the inline
/// variants open to other fields, which the server refuses. Each variant becomes one closed object.
fn close_write_ops(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
    use utoipa::openapi::{RefOr, Type};
    let lookup = |r: &RefOr<Schema>| -> Option<Schema> {
        match r {
            RefOr::T(s) => Some(s.clone()),
            RefOr::Ref(r) => {
                let name = r.ref_location.rsplit('/').next()?;
                match components.schemas.get(name)? {
                    RefOr::T(s) => Some(s.clone()),
                    RefOr::Ref(_) => None,
                }
            }
        }
    };
    let Some(RefOr::T(Schema::OneOf(write_op))) = components.schemas.get("WriteOp") else {
        panic!("WriteOp is documented as oneOf");
    };
    let mut variants = Vec::new();
    for variant in &write_op.items {
        let parts = match lookup(variant) {
            Some(Schema::AllOf(all)) => all.items.iter().filter_map(&lookup).collect(),
            Some(other) => vec![other],
            None => panic!("a WriteOp variant refers to an undocumented schema"),
        };
        let mut merged = Object::with_type(Type::Object);
        for part in parts {
            let Schema::Object(part) = part else { panic!("a WriteOp variant has a part that is not an object") };
            // In a batch a value of the wrong form (an empty title, a malformed username) is refused per write —
            // its outcome is a 422 — not the batch: the batch's schema has no form constraints to break.
            let properties = part.properties.into_iter().map(|(name, property)| match property {
                RefOr::T(Schema::Object(mut p)) => {
                    (p.pattern, p.max_length, p.min_length) = (None, None, None);
                    (name, RefOr::T(Schema::Object(p)))
                }
                other => (name, other),
            });
            merged.properties.extend(properties);
            merged.required.extend(part.required);
            if merged.description.is_none() {
                merged.description = part.description;
            }
        }
        merged.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        variants.push(RefOr::T(Schema::Object(merged)));
    }
    let mut closed = write_op.clone();
    closed.items = variants;
    components.schemas.insert("WriteOp".into(), RefOr::T(Schema::OneOf(closed)));
    // The batch's `Write<WriteOp>` is documented with its own inlined copy of the enum: point it at this one.
    let Some(RefOr::T(Schema::Object(write))) = components.schemas.get_mut("Write_WriteOp") else {
        panic!("the batch's Write<WriteOp> is documented as an object");
    };
    write.properties.insert("op".into(), RefOr::Ref(utoipa::openapi::Ref::from_schema_name("WriteOp")));
}

/// Documentation stub for the WebSocket route, which axum serves in [`ws::feed`].
#[utoipa::path(get, path = "/api/feed", tag = "feed",
    description = "Upgrade to a WebSocket. The client sends `ClientMessage`s, the server `ServerMessage`s, as JSON text frames. A browser Origin other than the server's own (or an allowed one) is refused with 403.",
    responses((status = 101, description = "Switching to the feed"), (status = 401, description = "No session", body = ApiError), (status = 403, description = "Origin not allowed", body = ApiError), (status = 426, description = "Not a WebSocket upgrade request", body = ApiError), (status = 429, description = "Too many feed sockets of this user open (`rate_limited`)", body = ApiError), (status = 503, description = "WebSockets turned off here; long-poll instead", body = ApiError)))]
#[allow(dead_code)]
fn feed_doc() {}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(api_document())
}

/// The OpenAPI document as served. utoipa 5.5 writes a link's fields in snake case (`operation_id`), which no
/// OpenAPI reader knows; they are renamed here.
pub fn api_document() -> serde_json::Value {
    use utoipa::OpenApi;
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let responses = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|op| op.get_mut("responses").and_then(|r| r.as_object_mut()))
            .flat_map(|r| r.values_mut());
        for response in responses {
            let links = response.get_mut("links").and_then(|l| l.as_object_mut());
            for link in links.into_iter().flat_map(|l| l.values_mut()).filter_map(|l| l.as_object_mut()) {
                for (from, to) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(from) {
                        link.insert(to.into(), v);
                    }
                }
            }
        }
    }
    doc
}
