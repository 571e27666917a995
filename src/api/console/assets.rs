//! The console's page and its scripts and style sheet, compiled into the binary (no CDN: it
//! works offline and its files are exactly those of the version that serves them).

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// The page: scripts and styles only from this origin, requests only to it, no frames, and
/// forms that cannot be submitted natively (a token typed into the login form must never become
/// part of a URL, even if the script failed to load).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("assets/index.html");

/// The files under `/console/`, by name: media type and content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dom.js"),
    ),
    (
        "events.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/events.js"),
    ),
    (
        "ops.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/ops.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
];

/// `GET /console`: the page. It holds no data; everything shown is fetched with the token.
pub async fn page() -> Response {
    let mut response =
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /console/{file}`: one of the page's scripts or its style sheet.
pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, media_type, content) = FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or(ApiError::NotFound)?;
    let headers: [(HeaderName, &str); 2] = [
        (header::CONTENT_TYPE, media_type),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, *content).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let served: Vec<&str> = FILES.iter().map(|(name, _, _)| *name).collect();
        let sources = std::iter::once(INDEX).chain(FILES.iter().map(|(_, _, content)| *content));
        for source in sources {
            for reference in source
                .split(['\'', '"'])
                .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
            {
                let name = reference
                    .trim_start_matches("/console/")
                    .trim_start_matches("./");
                assert!(
                    served.contains(&name),
                    "{reference} is referenced but not served"
                );
            }
        }
    }

    #[test]
    fn the_token_is_never_logged_by_the_scripts() {
        for (name, _, content) in FILES {
            assert!(
                !content.contains("console.log") && !content.contains("console.debug"),
                "{name} writes to the browser console"
            );
        }
    }
}
