//! HTTP handlers of the Kanban API under `/api`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use syncline_protocol::{
    Board, BoardId, BoardSnapshot, Card, CardId, Column, ColumnId, CreateBoard, CreateCard, CreateColumn,
    ErrorCode, MoveCard, MoveColumn, Rename, UpdateCard,
};

use crate::AppState;
use crate::error::{AppError, Json, Path};
use crate::store;

type ApiResult<T> = Result<T, AppError>;

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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn list_boards(State(s): State<AppState>) -> ApiResult<Json<Vec<Board>>> {
    Ok(Json(s.store.transaction(store::list_boards).await?))
}

async fn create_board(State(s): State<AppState>, Json(req): Json<CreateBoard>) -> ApiResult<(StatusCode, Json<Board>)> {
    let board = s.store.transaction(move |tx| store::create_board(tx, req)).await?;
    Ok((StatusCode::CREATED, Json(board)))
}

async fn get_board(State(s): State<AppState>, Path(id): Path<BoardId>) -> ApiResult<Json<BoardSnapshot>> {
    Ok(Json(s.store.transaction(move |tx| store::board_snapshot(tx, id)).await?))
}

async fn rename_board(
    State(s): State<AppState>,
    Path(id): Path<BoardId>,
    Json(req): Json<Rename>,
) -> ApiResult<Json<Board>> {
    Ok(Json(s.store.transaction(move |tx| store::rename_board(tx, id, req)).await?))
}

async fn delete_board(State(s): State<AppState>, Path(id): Path<BoardId>) -> ApiResult<StatusCode> {
    s.store.transaction(move |tx| store::delete_board(tx, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_column(
    State(s): State<AppState>,
    Path(board): Path<BoardId>,
    Json(req): Json<CreateColumn>,
) -> ApiResult<(StatusCode, Json<Column>)> {
    let column = s.store.transaction(move |tx| store::create_column(tx, board, req)).await?;
    Ok((StatusCode::CREATED, Json(column)))
}

async fn rename_column(
    State(s): State<AppState>,
    Path(id): Path<ColumnId>,
    Json(req): Json<Rename>,
) -> ApiResult<Json<Column>> {
    Ok(Json(s.store.transaction(move |tx| store::rename_column(tx, id, req)).await?))
}

async fn move_column(
    State(s): State<AppState>,
    Path(id): Path<ColumnId>,
    Json(req): Json<MoveColumn>,
) -> ApiResult<Json<Column>> {
    Ok(Json(s.store.transaction(move |tx| store::move_column(tx, id, req)).await?))
}

async fn delete_column(State(s): State<AppState>, Path(id): Path<ColumnId>) -> ApiResult<StatusCode> {
    s.store.transaction(move |tx| store::delete_column(tx, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_card(
    State(s): State<AppState>,
    Path(column): Path<ColumnId>,
    Json(req): Json<CreateCard>,
) -> ApiResult<(StatusCode, Json<Card>)> {
    let card = s.store.transaction(move |tx| store::create_card(tx, column, req)).await?;
    Ok((StatusCode::CREATED, Json(card)))
}

async fn get_card(State(s): State<AppState>, Path(id): Path<CardId>) -> ApiResult<Json<Card>> {
    Ok(Json(s.store.transaction(move |tx| store::get_card(tx, id)).await?))
}

async fn update_card(
    State(s): State<AppState>,
    Path(id): Path<CardId>,
    Json(req): Json<UpdateCard>,
) -> ApiResult<Json<Card>> {
    Ok(Json(s.store.transaction(move |tx| store::update_card(tx, id, req)).await?))
}

async fn move_card(State(s): State<AppState>, Path(id): Path<CardId>, Json(req): Json<MoveCard>) -> ApiResult<Json<Card>> {
    Ok(Json(s.store.transaction(move |tx| store::move_card(tx, id, req)).await?))
}

async fn delete_card(State(s): State<AppState>, Path(id): Path<CardId>) -> ApiResult<StatusCode> {
    s.store.transaction(move |tx| store::delete_card(tx, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
