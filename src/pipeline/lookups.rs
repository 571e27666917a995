//! The look-up step: statuses that messages announce without giving are read (from the FHIR
//! server, [`super::fhir_lookup`]) before the batch's transaction. No status is ever invented.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt as _;

use super::batch::Batch;
use super::dead_letter::DeadLetter;
use super::fhir_lookup::StatusSource;
use super::internal_events::{
    Instruments, LookupDeadLettered, LookupFinished, LookupsNotConfigured,
};
use super::process::finish;
use super::rules::RuleSet;

/// Where missing statuses are read, and how many at once.
pub(super) struct Lookups {
    /// `None` when no FHIR server is configured.
    pub(super) source: Option<Arc<dyn StatusSource>>,
    /// Most look-ups in flight at once.
    pub(super) concurrency: usize,
}

impl Lookups {
    /// Looks up the batch's pending statuses (concurrently, bounded). A found status becomes the
    /// observation the message would have given; a failed look-up turns its message into a dead
    /// letter. Without a configured FHIR server the messages stay as they are.
    pub(super) async fn resolve(
        &self,
        rules: &RuleSet,
        instruments: &Instruments,
        batch: &mut Batch,
    ) {
        let pending = std::mem::take(&mut batch.pending);
        if pending.is_empty() {
            return;
        }
        let Some(source) = &self.source else {
            instruments.emit(LookupsNotConfigured {
                messages: pending.len(),
            });
            return;
        };
        let results: Vec<_> =
            futures::stream::iter(pending.iter().map(|p| source.status(&p.lookup)))
                .buffered(self.concurrency.max(1))
                .collect()
                .await;
        let mut failed = HashSet::new();
        for (p, result) in pending.into_iter().zip(results) {
            let Some(item) = batch.selected.get_mut(p.selected) else {
                continue;
            };
            let Some(rule) = rules.get(item.rule) else {
                continue;
            };
            let outcome = result
                .map_err(|e| {
                    instruments.emit(LookupFinished { result: e.as_str() });
                    e.into_decode_error()
                })
                .and_then(|status| {
                    instruments.emit(LookupFinished { result: "found" });
                    finish(rule, p.lookup.into_observation(status))
                });
            match outcome {
                Ok(observation) => {
                    if let Some(o) = observation {
                        item.observations.push(o);
                    }
                }
                Err(error) => {
                    instruments.emit(LookupDeadLettered {
                        topic: &p.message.topic,
                        partition: p.message.partition,
                        offset: p.message.offset,
                        error: &error,
                    });
                    failed.insert(p.selected);
                    batch.letters.push(DeadLetter {
                        topic: rule.rule.dead_letter_topic.clone(),
                        format: rule.rule.format.as_str(),
                        message: p.message,
                        error,
                    });
                }
            }
        }
        if !failed.is_empty() {
            let mut index = 0;
            batch.selected.retain(|_| {
                let keep = !failed.contains(&index);
                index += 1;
                keep
            });
        }
    }
}
