//! Two batches in flight: a batch is stored while the one before it on the same partitions
//! is still committing (docs/architecture.md, "Exactly once"). Each batch publishes the
//! progress of its parts; the batch after it starts once every part has run detection,
//! and checks its fences only once the parts with its partitions have committed.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;

use super::group::Tp;
use crate::store::Handover;

/// How a part of a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartEnd {
    /// Its transaction committed.
    Committed,
    /// It was fenced, or followed a predecessor that did not commit: its partitions were sought
    /// back to their stored positions.
    Rewound,
    /// Left uncommitted (shutdown, or its thread panicked).
    Abandoned,
}

#[derive(Debug, Default)]
struct PartProgress {
    partitions: Vec<Tp>,
    /// Has read its state and run detection in its current attempt.
    detected: bool,
    /// What its current attempt leaves the batch after it.
    handover: Option<Arc<Handover>>,
    /// Attempts that failed so far: a waiting successor rolls back at each.
    failures: u64,
    end: Option<PartEnd>,
}

/// What the batch after this one learns of it.
#[derive(Debug, Clone)]
pub(super) struct Flight(Arc<watch::Sender<Vec<PartProgress>>>);

/// What the predecessor's parts did for some partitions, once all of them ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Every part with one of these partitions committed (or none had any).
    Committed,
    /// One of them was rewound.
    Rewound,
    /// One of them was left uncommitted.
    Abandoned,
}

/// The parts that have some of `partitions`.
fn sharing<'p>(
    parts: &'p [PartProgress],
    partitions: &[Tp],
) -> impl Iterator<Item = &'p PartProgress> + use<'p> {
    let mine: HashSet<Tp> = partitions.iter().cloned().collect();
    parts
        .iter()
        .filter(move |p| p.partitions.iter().any(|tp| mine.contains(tp)))
}

fn failures(parts: &[PartProgress], partitions: &[Tp]) -> u64 {
    sharing(parts, partitions).map(|p| p.failures).sum()
}

fn verdict(parts: &[PartProgress], partitions: &[Tp]) -> Option<Verdict> {
    let mut verdict = Verdict::Committed;
    for part in sharing(parts, partitions) {
        match part.end? {
            PartEnd::Committed => {}
            PartEnd::Rewound => verdict = Verdict::Rewound,
            PartEnd::Abandoned => return Some(Verdict::Abandoned),
        }
    }
    Some(verdict)
}

impl Flight {
    /// The progress of a batch, its parts not known yet.
    pub(super) fn new() -> Self {
        Self(Arc::new(watch::Sender::new(Vec::new())))
    }

    /// A part of the batch, with its partitions, which reports its progress; dropped
    /// unreported, it counts as abandoned, so that no successor waits for a thread that died.
    /// Every part is made before any successor starts.
    pub(super) fn part(&self, partitions: Vec<Tp>) -> Part {
        let mut index = 0;
        self.0.send_modify(|parts| {
            index = parts.len();
            parts.push(PartProgress {
                partitions,
                ..PartProgress::default()
            });
        });
        Part {
            flight: self.clone(),
            index,
            ended: false,
        }
    }

    /// Waits until every part has run detection or has ended; returns the failures so far
    /// of the parts with some of `partitions`, and the handovers of those still in flight.
    pub(super) async fn started(&self, partitions: &[Tp]) -> (u64, Vec<Arc<Handover>>) {
        let mut rx = self.0.subscribe();
        let seen = rx
            .wait_for(|parts| parts.iter().all(|p| p.detected || p.end.is_some()))
            .await
            .map(|parts| {
                let handovers = sharing(&parts, partitions)
                    .filter(|part| part.end.is_none())
                    .filter_map(|part| part.handover.clone())
                    .collect();
                (failures(&parts, partitions), handovers)
            });
        // The sender lives in `self`: the wait cannot see it dropped.
        seen.unwrap_or((u64::MAX, Vec::new()))
    }

    /// What the parts with some of `partitions` did, once all of them ended.
    pub(super) fn verdict(&self, partitions: &[Tp]) -> Option<Verdict> {
        verdict(&self.0.borrow(), partitions)
    }

    /// Waits until the parts with some of `partitions` have ended (then what they did), or
    /// until one of their attempts fails after `seen` failures (`None`: roll back, its
    /// handover is gone).
    pub(super) async fn finished(&self, seen: u64, partitions: &[Tp]) -> Option<Verdict> {
        let mut rx = self.0.subscribe();
        let parts = rx
            .wait_for(|parts| {
                failures(parts, partitions) != seen || verdict(parts, partitions).is_some()
            })
            .await
            .ok()?;
        match failures(&parts, partitions) != seen {
            true => None,
            false => verdict(&parts, partitions),
        }
    }
}

/// One part's reporter.
#[derive(Debug)]
pub(super) struct Part {
    flight: Flight,
    index: usize,
    ended: bool,
}

impl Part {
    fn update(&self, f: impl FnOnce(&mut PartProgress)) {
        self.flight.0.send_modify(|parts| {
            if let Some(part) = parts.get_mut(self.index) {
                f(part);
            }
        });
    }

    /// Its transaction has read its state and run detection; `handover` is what it
    /// leaves the batch after it.
    pub(super) fn detected(&mut self, handover: Arc<Handover>) {
        self.update(|p| {
            p.detected = true;
            p.handover = Some(handover);
        });
    }

    /// An attempt failed and rolled back (its handover is gone).
    pub(super) fn failed(&mut self) {
        self.update(|p| {
            p.detected = false;
            p.handover = None;
            p.failures += 1;
        });
    }

    /// The part ended.
    pub(super) fn ended(mut self, end: PartEnd) {
        self.end(end);
    }

    fn end(&mut self, end: PartEnd) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.update(|p| {
            p.detected = false;
            p.handover = None;
            p.end = Some(end);
        });
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.end(PartEnd::Abandoned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("t".to_owned(), p)
    }

    #[tokio::test]
    async fn a_successor_starts_when_every_part_has_detected_or_ended() {
        let flight = Flight::new();
        let mut a = flight.part(vec![tp(0)]);
        let b = flight.part(vec![tp(1)]);
        a.detected(Arc::default());
        let started = tokio::spawn({
            let flight = flight.clone();
            async move { flight.started(&[tp(0)]).await.0 }
        });
        tokio::task::yield_now().await;
        assert!(!started.is_finished());
        b.ended(PartEnd::Committed);
        assert_eq!(started.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_successor_gets_the_handover_of_every_part_in_flight_with_its_partitions() {
        let flight = Flight::new();
        let mut a = flight.part(vec![tp(0)]);
        let mut b = flight.part(vec![tp(1), tp(2)]);
        let mut c = flight.part(vec![tp(3)]);
        let (from_a, from_b) = (Arc::new(Handover::default()), Arc::new(Handover::default()));
        a.detected(Arc::clone(&from_a));
        b.detected(Arc::clone(&from_b));
        c.detected(Arc::default());
        let (_, handovers) = flight.started(&[tp(0), tp(2)]).await;
        assert_eq!(handovers.len(), 2);
        assert!(Arc::ptr_eq(&handovers[0], &from_a) && Arc::ptr_eq(&handovers[1], &from_b));
        // A part that has committed hands nothing over: its state is in the table.
        a.ended(PartEnd::Committed);
        let (_, handovers) = flight.started(&[tp(0), tp(2)]).await;
        assert_eq!(handovers.len(), 1);
        assert!(Arc::ptr_eq(&handovers[0], &from_b));
    }

    #[tokio::test]
    async fn a_failed_attempt_tells_the_waiting_successor_to_roll_back() {
        let flight = Flight::new();
        let mut a = flight.part(vec![tp(0)]);
        // Another part's failures are not this successor's concern.
        let mut other = flight.part(vec![tp(1)]);
        other.detected(Arc::default());
        a.detected(Arc::default());
        let (seen, _) = flight.started(&[tp(0)]).await;
        let waiting = tokio::spawn({
            let flight = flight.clone();
            async move { flight.finished(seen, &[tp(0)]).await }
        });
        other.failed();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        a.failed();
        assert_eq!(waiting.await.unwrap(), None);
        // The next attempt commits.
        a.detected(Arc::default());
        other.ended(PartEnd::Committed);
        let (seen, _) = flight.started(&[tp(0)]).await;
        a.ended(PartEnd::Committed);
        assert_eq!(
            flight.finished(seen, &[tp(0)]).await,
            Some(Verdict::Committed)
        );
    }

    #[test]
    fn the_verdict_covers_only_the_partitions_asked_about() {
        let flight = Flight::new();
        flight.part(vec![tp(0)]).ended(PartEnd::Committed);
        flight.part(vec![tp(1)]).ended(PartEnd::Rewound);
        let last = flight.part(vec![tp(2)]);
        assert_eq!(
            flight.verdict(&[tp(2)]),
            None,
            "that part has not ended yet"
        );
        assert_eq!(flight.verdict(&[tp(0)]), Some(Verdict::Committed));
        // Dropped without a report: its thread died.
        drop(last);
        assert_eq!(flight.verdict(&[tp(0)]), Some(Verdict::Committed));
        assert_eq!(flight.verdict(&[tp(0), tp(1)]), Some(Verdict::Rewound));
        assert_eq!(flight.verdict(&[tp(2)]), Some(Verdict::Abandoned));
        assert_eq!(flight.verdict(&[tp(9)]), Some(Verdict::Committed));
    }
}
