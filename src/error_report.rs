//! One line that says why something failed: an error and every cause under it. Start-up,
//! readiness, migrations and the command-line tools report errors through [`describe`], so that
//! "db error" comes with what the server said (`database "x" does not exist`).
//!
//! Nothing secret reaches the line: PostgreSQL's own messages are taken without their DETAIL
//! (which may quote row values), data exceptions (SQLSTATE class 22, whose messages quote the
//! offending value) by their code only, and no error in the chain carries a connection URL.

use std::error::Error;

use tokio_postgres::error::DbError;

/// The error and its causes, outermost first, joined by `: `; a cause already said by an outer
/// message is not repeated.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let (text, source) = match server_error(error) {
            // What the server said ends the chain: its source is the same DbError again.
            Some(db) => (db_message(db), None),
            None => (error.to_string(), error.source()),
        };
        let text = text.trim();
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        next = source;
    }
    line
}

/// The PostgreSQL error message carried by `error`, if it is one.
fn server_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a DbError> {
    error
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .or_else(|| error.downcast_ref::<DbError>())
}

/// The server's message with its SQLSTATE, without DETAIL or HINT.
fn db_message(db: &DbError) -> String {
    let code = db.code().code();
    if code.starts_with("22") {
        format!("data exception (SQLSTATE {code})")
    } else {
        format!("{} (SQLSTATE {code})", db.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("start-up failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn every_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(describe(&Outer(io())), "outer: refused");
        assert_eq!(describe(&Repeats(io())), "start-up failed: refused");
        let chained = anyhow::Error::new(Outer(io())).context("connecting to the EventDB");
        assert_eq!(
            describe(chained.as_ref()),
            "connecting to the EventDB: outer: refused"
        );
    }
}
