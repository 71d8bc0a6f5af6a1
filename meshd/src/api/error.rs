//! The API's error type: every failure becomes a status code and a one-line plain-text body
//! naming the cause (Consul answers errors the same way).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::{ReadError, WriteError};

use crate::checks::CheckUpdateError;

/// Why a request failed. Nothing was changed by a request that ends in an error, except where
/// a write error says the outcome is unknown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The object named by the request does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// A KV value (or request body) over the limit: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The registry refused the command (it changed nothing): 400.
    #[error("{0}")]
    Rejected(String),
    /// A consistent read could not be served: 500.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A write was not acknowledged: 500 (no leader, raft) or 503 (shutting down).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The request names a datacenter this agent cannot reach: 500, as Consul.
    #[error("No path to datacenter {0:?}")]
    NoPathToDatacenter(String),
    /// Anything else that is our fault: 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::BadRequest(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::NotFound(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Rejected(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Write(WriteError::Shutdown) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Read(_)
            | ApiError::Write(_)
            | ApiError::NoPathToDatacenter(_)
            | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<CheckUpdateError> for ApiError {
    fn from(e: CheckUpdateError) -> ApiError {
        match e {
            CheckUpdateError::NotFound(id) => {
                ApiError::NotFound(format!("Unknown check ID {id:?}"))
            }
            CheckUpdateError::NotTtl(id) => {
                ApiError::BadRequest(format!("check {id:?} is not a TTL check"))
            }
            CheckUpdateError::Write(w) => ApiError::Write(w),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // One line: a multi-line cause would break clients that print the body as is.
        let mut msg = self.to_string().replace(['\n', '\r'], " ");
        if msg.is_empty() {
            msg = status.canonical_reason().unwrap_or("error").to_string();
        }
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %msg, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %msg, "request refused");
        }
        let mut resp = (status, msg).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ApiError::bad("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::not_found("x").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ApiError::TooLarge("x".into()).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::Write(WriteError::NotLeader { leader: None }).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            ApiError::Write(WriteError::Shutdown).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let resp = ApiError::bad("line one\nline two").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
