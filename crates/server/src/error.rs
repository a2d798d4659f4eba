//! The one error type of the HTTP API, and the JSON extractor that reports bad bodies through it.
//!
//! Every refusal is a 4xx whose body is [`ApiError`]; an internal failure is a 500 with code `internal`, logged
//! with its cause, never with the cause in the body.

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use syncline_protocol::{ApiError, ErrorCode};

use crate::store::StoreError;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub body: ApiError,
    /// For a conflict: the current entity, returned beside the error.
    pub current: Option<serde_json::Value>,
    /// For a 429: seconds until another attempt may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl AppError {
    pub fn new(status: StatusCode, error: ErrorCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            body: ApiError { error, message: message.into(), field: None },
            current: None,
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "sign in first")
    }
}

impl AppError {
    /// The JSON body: the `ApiError`, plus `current` for a conflict.
    pub fn json(&self) -> serde_json::Value {
        let mut body = serde_json::to_value(&self.body).unwrap_or_default();
        if let (Some(current), Some(obj)) = (&self.current, body.as_object_mut()) {
            obj.insert("current".into(), current.clone());
        }
        body
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.json())).into_response();
        if let Some(v) = self.retry_after.and_then(|s| axum::http::HeaderValue::from_str(&s.to_string()).ok()) {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(message) => AppError::not_found(message),
            StoreError::Forbidden(message) => AppError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message),
            StoreError::InvalidField { field, message } => {
                let mut err = AppError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidField, message);
                err.body.field = Some(field.into());
                err
            }
            StoreError::Conflict { message, current } => {
                let mut err = AppError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message);
                err.current = Some(current);
                err
            }
            StoreError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                AppError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error; try again")
            }
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match &r {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, ErrorCode::MalformedJson),
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidBody),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::UnsupportedMediaType)
            }
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            _ => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody),
        };
        AppError::new(status, code, r.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, r.body_text())
    }
}

/// `axum::Json` whose rejections are [`AppError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejections are [`AppError`]s (e.g. an id that is not a UUID).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

use axum::extract::FromRequestParts;
