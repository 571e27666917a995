//! The OpenAPI 3.1 document, generated from the handlers and response types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::config::ApiConfig;
use super::console::dead_letters::{DeadLetterReport, DeadLetterView, ReasonCount};
use super::console::facets::FacetList;
use super::console::status::{PartitionView, StatusTotalView, StatusView};
use super::console::terminator::{LastRunView, TerminatorStatus};
use super::error::{ErrorBody, ErrorDetail, InvalidParameter};
use super::events::{EventEnvelope, EventList, EventView, Paging};
use super::{Health, ReadinessReport};

/// The document served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "event-manager",
        description = "Status-change events of the EventDB (modelled on the ESOZ Event Manager)."
    ),
    paths(
        super::events::list_events,
        super::events::get_event,
        super::healthz,
        super::readyz,
        super::metrics,
        super::console::status::status,
        super::console::dead_letters::dead_letters,
        super::console::terminator::terminator,
        super::console::facets::facets,
    ),
    components(schemas(
        EventView,
        EventList,
        EventEnvelope,
        Paging,
        ErrorBody,
        ErrorDetail,
        InvalidParameter,
        Health,
        ReadinessReport,
        StatusView,
        PartitionView,
        StatusTotalView,
        DeadLetterReport,
        ReasonCount,
        DeadLetterView,
        TerminatorStatus,
        LastRunView,
        FacetList
    )),
    modifiers(&BearerJwt),
    tags(
        (name = "events", description = "The EventDB (bearer token with scope `event:read`)."),
        (name = "operations", description = "Probes and metrics (no authentication)."),
        (name = "console", description = "What the operator console at `/console` shows besides the events: lag, dead letters, the terminator, filter suggestions (bearer token with scope `event:read`).")
    )
)]
pub(crate) struct ApiDoc;

struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document as JSON, with the rules of the events API as configured by `api`.
pub fn document(api: &ApiConfig) -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialise the OpenAPI document");
        serde_json::Value::Null
    });
    super::events::document_events(&mut document, api);
    document
}
