//! The error body every 4xx/5xx answer of the HTTP API carries.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Clients match on these; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not syntactically valid JSON.
    MalformedJson,
    /// The body is JSON but not of the expected shape (missing field, wrong type, unknown field).
    InvalidBody,
    /// The request needs `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The body is larger than the server accepts.
    PayloadTooLarge,
    /// A field's value is not of the accepted form (an empty or too long title, a malformed username); `field`
    /// names it.
    InvalidField,
    /// The request is well-formed, but what it names or the current state does not allow it: an id already in
    /// use, no such user or already a member, the last owner stepping down, a card placed in a column of another
    /// board or after a card of another column. `field` names the field.
    Refused,
    /// A path or query parameter is not of the expected form (e.g. an id that is not a UUID).
    InvalidParameter,
    /// No such route, or no entity with that id.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The write was based on a version that is no longer current.
    Conflict,
    /// A write id (idempotency key) was sent again with a different write.
    IdempotencyKeyReused,
    /// The write id (a UUIDv7) was made longer ago than the server remembers write ids (or too far in the
    /// future): the server can no longer tell whether it was applied, so it refuses it rather than risk
    /// applying it twice.
    WriteExpired,
    /// The request's `Origin` is not allowed to use this server.
    ForbiddenOrigin,
    /// A state-changing request came from another site (`Origin` or `Sec-Fetch-Site`).
    CrossSiteRequest,
    /// The `Host` header names none of the server's public origins (e.g. a rebound DNS name).
    MisdirectedRequest,
    /// The request needs a signed-in session (there is none, or it ended).
    Unauthorized,
    /// Wrong username or password.
    InvalidCredentials,
    /// The username is taken.
    UsernameTaken,
    /// Signed in, but the role on this board does not allow it (a viewer's write, an editor managing members).
    Forbidden,
    /// Too many attempts; `Retry-After` says when to try again.
    RateLimited,
    /// The WebSocket feed is turned off; long-poll instead.
    WebsocketUnavailable,
    /// A quota (boards per user, columns or cards per board) would be exceeded; `field` names the limit.
    QuotaExceeded,
    /// `/api/feed` is a WebSocket: the request must ask for the upgrade.
    UpgradeRequired,
    /// The request (its body) took longer than the server waits.
    RequestTimeout,
    /// Something failed on the server; the request may be retried.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Refused => "refused",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::WriteExpired => "write_expired",
            ErrorCode::ForbiddenOrigin => "forbidden_origin",
            ErrorCode::CrossSiteRequest => "cross_site_request",
            ErrorCode::MisdirectedRequest => "misdirected_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UpgradeRequired => "upgrade_required",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::WebsocketUnavailable => "websocket_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `{ "error": <stable code>, "message": <what is wrong>, "field"?: <which field> }`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: ErrorCode,
    pub message: String,
    /// The offending field, for [`ErrorCode::InvalidField`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_names() {
        for code in [ErrorCode::MalformedJson, ErrorCode::PayloadTooLarge, ErrorCode::NotFound] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
