//! The one error type of the HTTP API: `{"error": CODE, "message": TEXT, …detail}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the body.
    pub detail: Option<Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), detail: None }
    }

    pub fn with(mut self, key: &str, value: Value) -> ApiError {
        self.detail.get_or_insert_with(Map::new).insert(key.to_owned(), value);
        self
    }

    /// 400: the request cannot be read (malformed JSON, missing header).
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 422: the request is readable but its values are not acceptable.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503 with no internal detail; the cause is logged.
    pub fn unavailable(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(%cause, "request failed: service unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the service is temporarily unavailable")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        if let Some(detail) = self.detail {
            body.extend(detail);
        }
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        response
    }
}

// Domain errors become API errors here, and only here.

impl From<crate::state::PlaceError> for ApiError {
    fn from(e: crate::state::PlaceError) -> ApiError {
        use crate::state::PlaceError as E;
        match e {
            E::InvalidPoint => ApiError::invalid("invalid coordinates"),
            E::UnknownSku(sku) => {
                ApiError::invalid(format!("sku {sku:?} is not in the catalog")).with("sku", json!(sku))
            }
            E::NotServiceable => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_serviceable",
                "no dark store reaches this location within the promise",
            ),
            E::Insufficient(short) => {
                let lines: Vec<Value> = short
                    .iter()
                    .map(|s| json!({"sku": s.sku, "requested": s.requested, "available": s.available}))
                    .collect();
                ApiError::new(
                    StatusCode::CONFLICT,
                    "insufficient_stock",
                    "some lines cannot be filled; nothing was reserved",
                )
                .with("lines", Value::Array(lines))
            }
            E::Busy => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_serviceable",
                "the store that serves this location is too busy to keep its promise right now",
            )
            .with("reason", json!("busy")),
            E::Closed { opens_at } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_serviceable",
                "the store that serves this location is closed now",
            )
            .with("reason", json!("closed"))
            .with("opens_at", json!(opens_at.map(crate::views::rfc3339))),
            E::Paused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_serviceable",
                "the store that serves this location has paused orders",
            )
            .with("reason", json!("paused")),
            E::KeyReused => ApiError::conflict("this Idempotency-Key was already used with a different body"),
            E::KeyExpired => ApiError::conflict(
                "this Idempotency-Key was used for an order placed longer ago than keys are kept; use a new key",
            ),
            E::Unavailable(e) => ApiError::unavailable(e),
        }
    }
}

impl From<crate::state::TransitionError> for ApiError {
    fn from(e: crate::state::TransitionError) -> ApiError {
        use crate::state::TransitionError as E;
        match e {
            E::NotFound => ApiError::not_found("no such order"),
            E::Forbidden => ApiError::forbidden("this order is not yours to change"),
            E::NotAllowed { from, to } => {
                ApiError::conflict(format!("an order that is {} cannot become {}", from.as_str(), to.as_str()))
                    .with("status", json!(from.as_str()))
            }
            E::Unavailable(e) => ApiError::unavailable(e),
        }
    }
}

impl From<crate::state::StockError> for ApiError {
    fn from(e: crate::state::StockError) -> ApiError {
        use crate::state::StockError as E;
        use darkstore_geoinv::stock::AdjustError;
        match e {
            E::UnknownStore => ApiError::not_found("no such store"),
            E::UnknownSku => ApiError::invalid("sku is not in the catalog"),
            E::Refused(AdjustError::BelowReserved { on_hand, reserved }) => {
                ApiError::conflict("the delta would take on_hand below what is reserved")
                    .with("on_hand", json!(on_hand))
                    .with("reserved", json!(reserved))
            }
            E::Refused(AdjustError::ZeroDelta) => ApiError::invalid("delta must not be zero"),
            E::Unavailable(e) => ApiError::unavailable(e),
        }
    }
}

impl From<crate::riders::Dropped> for ApiError {
    fn from(d: crate::riders::Dropped) -> ApiError {
        use crate::riders::Dropped as D;
        match d {
            D::UnknownRider => ApiError::not_found("no such rider"),
            D::Stale => ApiError::conflict("the position is older than the last one"),
            D::Malformed => ApiError::invalid("malformed rider message"),
            D::Unproven => ApiError::invalid(
                "a delivered event needs the order's delivery code, or the rider's position at the drop point",
            ),
            D::Implausible => {
                ApiError::invalid("implausible position: out of range, from the future, or an impossible speed or jump")
            }
        }
    }
}
