//! API errors and their JSON form:
//! `{"error": {"type": "...", "message": "...", "invalid": [{"parameter", "rule"}]}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The realm named in every `WWW-Authenticate` challenge.
pub(crate) const REALM: &str = "event-manager";

/// One query parameter that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InvalidParameter {
    /// The parameter's name as given in the query.
    pub parameter: String,
    /// The rule it broke, for people.
    pub rule: String,
}

impl InvalidParameter {
    /// Names a parameter and the rule it broke.
    pub fn new(parameter: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            parameter: parameter.into(),
            rule: rule.into(),
        }
    }
}

/// Why a request failed. Cloned for every request a shared query answers
/// (`QuerySlots::shared`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Query parameters are invalid (422).
    #[error("{message}")]
    Validation {
        /// Summary for people.
        message: String,
        /// Each offending parameter.
        invalid: Vec<InvalidParameter>,
    },
    /// No such resource, or one the caller may not see (404).
    #[error("not found")]
    NotFound,
    /// No usable bearer token (401). `invalid_token` is false when no credentials were sent.
    #[error("{message}")]
    Unauthorized {
        /// Whether to add `error="invalid_token"` to the challenge.
        invalid_token: bool,
        /// Why, without the token itself.
        message: String,
    },
    /// The token lacks a scope (403).
    #[error("the token lacks the scope `{scope}`")]
    InsufficientScope {
        /// The scope needed.
        scope: String,
    },
    /// The EventDB cannot be reached (503).
    #[error("the event database is unavailable")]
    Unavailable,
    /// Too many queries wait for a slot (`api.max_concurrent_queries`) (503 with
    /// `Retry-After`).
    #[error("the server is busy with other queries; retry after {}s", retry_after.as_secs())]
    Busy {
        /// Sent as `Retry-After` (whole seconds).
        retry_after: std::time::Duration,
    },
    /// Kafka cannot be reached or refused a request (503); the cause as its log line says it.
    #[error("{0}")]
    KafkaUnavailable(String),
    /// Anything else (500); details are logged, not returned.
    #[error("internal error")]
    Internal,
}

/// The JSON error body.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable kind: `validation_failed`, `not_found`, `unauthorized`, `forbidden`,
    /// `unavailable` or `internal`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// For people.
    pub message: String,
    /// The invalid parameters (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<Vec<InvalidParameter>>,
}

impl ApiError {
    /// A validation error about one parameter.
    pub fn invalid(parameter: &str, rule: impl Into<String>) -> Self {
        ApiError::Validation {
            message: format!("invalid query parameter: {parameter}"),
            invalid: vec![InvalidParameter::new(parameter, rule)],
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            ApiError::Unavailable | ApiError::Busy { .. } | ApiError::KafkaUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::NotFound => "not_found",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::InsufficientScope { .. } => "forbidden",
            ApiError::Unavailable | ApiError::Busy { .. } | ApiError::KafkaUnavailable(_) => {
                "unavailable"
            }
            ApiError::Internal => "internal",
        }
    }

    /// The RFC 6750 challenge, for 401 and 403.
    fn challenge(&self) -> Option<String> {
        match self {
            ApiError::Unauthorized {
                invalid_token: false,
                ..
            } => Some(format!("Bearer realm=\"{REALM}\"")),
            ApiError::Unauthorized {
                invalid_token: true,
                message,
            } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                message.replace(['"', '\\'], "'")
            )),
            ApiError::InsufficientScope { scope } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            tracing::warn!(error = %e, "event database unavailable for an API request");
            ApiError::Unavailable
        } else {
            tracing::error!(error = %e, "API query failed");
            ApiError::Internal
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = self.challenge();
        let kind = self.kind();
        let retry_after = match &self {
            ApiError::Busy { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let message = self.to_string();
        let invalid = match self {
            ApiError::Validation { invalid, .. } => Some(invalid),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                kind,
                message,
                invalid,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
