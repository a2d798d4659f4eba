//! The one error type of the HTTP API, and the JSON extractor that reports bad bodies through it.
//!
//! Every refusal is a 4xx whose body is [`ApiError`]; an internal failure is a 500 with code `internal`, logged
//! with its cause, never with the cause in the body.

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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
            StoreError::Refused { field, message } => {
                let mut err = AppError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Refused, message);
                err.body.field = Some(field.into());
                err
            }
            StoreError::Conflict { message, current } => {
                let mut err = AppError::new(StatusCode::CONFLICT, ErrorCode::Conflict, message);
                err.current = Some(current);
                err
            }
            StoreError::QuotaExceeded { limit, message } => {
                let mut err = AppError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::QuotaExceeded, message);
                err.body.field = Some(limit.into());
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
            JsonRejection::BytesRejection(b) if is_timeout(b) => {
                (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout)
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

/// `axum::extract::Query` whose rejections are [`AppError`]s (400 `invalid_parameter`).
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidParameter, r.body_text())
    }
}

/// Whether a body failed because the client sent it too slowly (`RequestBodyTimeoutLayer`).
fn is_timeout(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A handler that panics answers a JSON 500 with no detail; the panic is logged once (the process goes on).
pub fn catch_panic() -> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    tower_http::catch_panic::CatchPanicLayer::custom(panic_response as fn(Box<dyn std::any::Any + Send>) -> Response)
}

fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %what, "a request handler panicked");
    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error; try again").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("secret internals")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500_and_the_service_goes_on() {
        let app = axum::Router::new()
            .route("/boom", axum::routing::get(boom))
            .route("/fine", axum::routing::get(|| async { "ok" }))
            .layer(catch_panic());
        let request = |path: &str| axum::http::Request::builder().uri(path).body(axum::body::Body::empty()).unwrap();
        let resp = app.clone().oneshot(request("/boom")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal");
        assert!(!body.to_string().contains("secret"), "no internals in the body");
        assert_eq!(app.oneshot(request("/fine")).await.unwrap().status(), StatusCode::OK);
    }
}
