//! event-manager library.
