//! Every error of the crate as an HTTP response, so that a handler can use `?`.
//!
//! | error | status |
//! | --- | --- |
//! | `Error` | the status of the error it holds; 503 with `Retry-After: 1` for `Unavailable` and `Contended`; 500 for `OutOfScope`, `MissingLayer` (set-up mistakes) and `Store` |
//! | `Refused`, `SessionEnded` | 401 Unauthorized: the session is not usable, start a new one |
//! | `Rejection` | 400 for an unreadable or ambiguous cookie, 401 for a refused session, 500 without a client address |
//! | `CreateError` | 503 (with `Retry-After: 1`) when the store is full or shut down, 429 when the address is at its limit, 500 for a set-up mistake |
//! | `PolicyError`, `KeyTooShort`, `SnapshotError`, `RecvError` | 500: a server-side problem |
//!
//! The body is the error's message, which says what went wrong.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::RETRY_AFTER;

use crate::error::Error;
use crate::events::RecvError;
use crate::http::{KeyTooShort, PolicyError, Rejection};
use crate::outcome::{CreateError, Refused, SessionEnded};
use crate::persist::SnapshotError;

fn respond(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Refused(e) => e.into_response(),
            Error::Create(e) => {
                let mut response = e.into_response();
                // The message says what was being done.
                *response.body_mut() = axum::body::Body::from(self.to_string());
                response
            }
            Error::Ended => SessionEnded(()).into_response(),
            Error::Rejected(e) => e.into_response(),
            Error::Unavailable | Error::Contended => {
                let mut response = respond(StatusCode::SERVICE_UNAVAILABLE, self.to_string());
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
                response
            }
            _ => {
                #[cfg(feature = "tracing")]
                tracing::error!(error = %self, "answered 500");
                respond(StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
            }
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        respond(StatusCode::UNAUTHORIZED, self.to_string())
    }
}

impl<T> IntoResponse for SessionEnded<T> {
    fn into_response(self) -> Response {
        respond(StatusCode::UNAUTHORIZED, self.to_string())
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = match self {
            Rejection::Refused(_) => StatusCode::UNAUTHORIZED,
            Rejection::NoClientAddress => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        respond(status, self.to_string())
    }
}

impl IntoResponse for CreateError {
    fn into_response(self) -> Response {
        let status = match self {
            CreateError::Full { .. } | CreateError::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
            CreateError::PerIpFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = respond(status, self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
        }
        response
    }
}

macro_rules! server_error {
    ($($error:ty),*) => {$(
        impl IntoResponse for $error {
            fn into_response(self) -> Response {
                respond(StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
            }
        }
    )*};
}

server_error!(PolicyError, KeyTooShort, SnapshotError, RecvError);
