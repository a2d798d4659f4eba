//! Limits of the protocol itself (the app's own validation lives with the app's types).

/// Default limit on an HTTP request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
