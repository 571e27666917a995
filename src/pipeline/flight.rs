//! Two batches in flight: a batch is stored while the one before it on the same partitions
//! is still committing (docs/architecture.md, "Exactly once"). Each batch publishes the
//! progress of its parts; the batch after it starts once every part holds its entity locks,
//! and checks its fences only once every part has committed.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::watch;

use super::group::Tp;

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
struct Progress {
    parts: usize,
    /// Parts holding their entity locks in their current attempt.
    locked: usize,
    /// Attempts that failed so far: a waiting successor rolls back at each.
    failures: u64,
    /// The parts that ended: their partitions and how.
    ended: Vec<(Vec<Tp>, PartEnd)>,
}

/// What the batch after this one learns of it.
#[derive(Debug, Clone)]
pub(super) struct Flight(Arc<watch::Sender<Progress>>);

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

impl Flight {
    /// The progress of a batch of `parts` parts.
    pub(super) fn new(parts: usize) -> Self {
        Self(Arc::new(watch::Sender::new(Progress {
            parts,
            ..Progress::default()
        })))
    }

    /// One part of the batch, which reports its progress; dropped unreported, it counts as
    /// abandoned, so that no successor waits for a thread that died.
    pub(super) fn part(&self, partitions: Vec<Tp>) -> Part {
        Part {
            flight: self.clone(),
            partitions,
            locked: false,
            ended: false,
        }
    }

    /// Waits until every part holds its entity locks or has ended; returns the failures so far.
    pub(super) async fn started(&self) -> u64 {
        let mut rx = self.0.subscribe();
        let progress = rx
            .wait_for(|p| p.locked + p.ended.len() >= p.parts)
            .await
            .map(|p| p.failures);
        // The sender lives in `self`: the wait cannot see it dropped.
        progress.unwrap_or(u64::MAX)
    }

    /// Whether every part has ended, and if so what they did for `partitions`.
    pub(super) fn verdict(&self, partitions: &[Tp]) -> Option<Verdict> {
        verdict(&self.0.borrow(), partitions)
    }

    /// Waits until every part has ended (then what they did for `partitions`), or until an
    /// attempt fails after `seen` failures (`None`: roll back, the predecessor needs its locks).
    pub(super) async fn finished(&self, seen: u64, partitions: &[Tp]) -> Option<Verdict> {
        let mut rx = self.0.subscribe();
        let progress = rx
            .wait_for(|p| p.failures != seen || p.ended.len() >= p.parts)
            .await
            .ok()?;
        match progress.failures != seen {
            true => None,
            false => verdict(&progress, partitions),
        }
    }
}

fn verdict(p: &Progress, partitions: &[Tp]) -> Option<Verdict> {
    if p.ended.len() < p.parts {
        return None;
    }
    let mine: HashSet<&Tp> = partitions.iter().collect();
    let mut verdict = Verdict::Committed;
    for (tps, end) in &p.ended {
        if !tps.iter().any(|tp| mine.contains(tp)) {
            continue;
        }
        match end {
            PartEnd::Committed => {}
            PartEnd::Rewound => verdict = Verdict::Rewound,
            PartEnd::Abandoned => return Some(Verdict::Abandoned),
        }
    }
    Some(verdict)
}

/// One part's reporter.
#[derive(Debug)]
pub(super) struct Part {
    flight: Flight,
    partitions: Vec<Tp>,
    locked: bool,
    ended: bool,
}

impl Part {
    /// Its transaction holds its entity locks.
    pub(super) fn locked(&mut self) {
        if !self.locked {
            self.locked = true;
            self.flight.0.send_modify(|p| p.locked += 1);
        }
    }

    /// An attempt failed and rolled back (its locks are gone).
    pub(super) fn failed(&mut self) {
        let was_locked = std::mem::take(&mut self.locked);
        self.flight.0.send_modify(|p| {
            p.locked -= usize::from(was_locked);
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
        let was_locked = std::mem::take(&mut self.locked);
        let partitions = std::mem::take(&mut self.partitions);
        self.flight.0.send_modify(|p| {
            p.locked -= usize::from(was_locked);
            p.ended.push((partitions, end));
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
    async fn a_successor_starts_when_every_part_is_locked_or_ended() {
        let flight = Flight::new(2);
        let mut a = flight.part(vec![tp(0)]);
        let b = flight.part(vec![tp(1)]);
        a.locked();
        let started = tokio::spawn({
            let flight = flight.clone();
            async move { flight.started().await }
        });
        tokio::task::yield_now().await;
        assert!(!started.is_finished());
        b.ended(PartEnd::Committed);
        assert_eq!(started.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_attempt_tells_the_waiting_successor_to_roll_back() {
        let flight = Flight::new(1);
        let mut a = flight.part(vec![tp(0)]);
        a.locked();
        let seen = flight.started().await;
        let waiting = tokio::spawn({
            let flight = flight.clone();
            async move { flight.finished(seen, &[tp(0)]).await }
        });
        a.failed();
        assert_eq!(waiting.await.unwrap(), None);
        // The next attempt commits.
        a.locked();
        let seen = flight.started().await;
        a.ended(PartEnd::Committed);
        assert_eq!(
            flight.finished(seen, &[tp(0)]).await,
            Some(Verdict::Committed)
        );
    }

    #[test]
    fn the_verdict_covers_only_the_partitions_asked_about() {
        let flight = Flight::new(3);
        flight.part(vec![tp(0)]).ended(PartEnd::Committed);
        flight.part(vec![tp(1)]).ended(PartEnd::Rewound);
        assert_eq!(flight.verdict(&[tp(0)]), None, "a part has not ended yet");
        // Dropped without a report: its thread died.
        drop(flight.part(vec![tp(2)]));
        assert_eq!(flight.verdict(&[tp(0)]), Some(Verdict::Committed));
        assert_eq!(flight.verdict(&[tp(0), tp(1)]), Some(Verdict::Rewound));
        assert_eq!(flight.verdict(&[tp(2)]), Some(Verdict::Abandoned));
        assert_eq!(flight.verdict(&[tp(9)]), Some(Verdict::Committed));
    }
}
