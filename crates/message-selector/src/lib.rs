//! JMS message selectors.
