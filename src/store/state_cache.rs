//! What a consumer remembers of its entities' state between batches (docs/architecture.md,
//! "The state cache"): per partition, every `entity_state` row of each entity a committed batch
//! of that partition read or wrote, as the batch left it. A batch detects against it instead of
//! reading those entities; every state it writes is a compare-and-set against what
//! it detected against ([`super::EventStore::apply_batch_in_turn`]), so a stale entry costs a
//! retry, never a wrong state.
//!
//! Entries are dropped when their partition is revoked, rewound or sought, when a batch's
//! compare-and-set fails (its entities), and all at once when the terminator has pruned state
//! since they were read (the `entity_state_prunes` sequence, sql/V17). The capacity is kept by
//! two generations: every entry is tagged young or old, entries a batch used become young, and
//! once the young ones fill half the capacity the old ones are dropped and the young ones
//! become old.

use std::sync::{Mutex, MutexGuard};

use chrono::SubsecRound;
use foldhash::{HashMap, HashMapExt, HashSet};

use crate::detect::{AttributeState, StateKey, StateMap};

/// A topic partition.
pub type Partition = (String, i32);

/// Every state row of one entity: `(attribute, state)`.
type Rows = Vec<(String, AttributeState)>;

/// An entity's type and id as one key (`type NUL id`: the pipeline refuses NUL in both).
pub(crate) fn entity_key(entity_type: &str, entity_id: &str) -> String {
    let mut key = String::with_capacity(entity_type.len() + entity_id.len() + 1);
    fill_key(&mut key, entity_type, entity_id);
    key
}

/// [`entity_key`] into a buffer used again.
pub(crate) fn fill_key(key: &mut String, entity_type: &str, entity_id: &str) {
    key.clear();
    key.push_str(entity_type);
    key.push('\0');
    key.push_str(entity_id);
}

/// A partition's entries, each tagged with the generation it was last used in: the young
/// one ([`Inner::generation`]) or the one before (old).
type Generations = HashMap<String, (Rows, u64)>;

/// Adds a row to an entity's rows as the cache keeps them: its time as PostgreSQL stores it
/// (microseconds), so that detection against the cache and against the table agree, and the
/// rows at their exact size (most entities have one, the cache holds tens of thousands, and a
/// first push would make room for four).
fn push_row(rows: &mut Rows, attribute: String, mut state: AttributeState) {
    state.event_time = state.event_time.trunc_subsecs(6);
    rows.reserve_exact(1);
    rows.push((attribute, state));
}

#[derive(Debug, Default)]
struct Inner {
    /// The value of `entity_state_prunes` every entry was read under.
    epoch: Option<i64>,
    partitions: HashMap<Partition, Generations>,
    /// The young generation's number.
    generation: u64,
    /// How many times partitions were forgotten: a batch that recalled before cannot
    /// remember after (its partition may have been revoked meanwhile).
    forgets: u64,
    young: usize,
    old: usize,
}

impl Inner {
    fn clear(&mut self) {
        self.partitions.clear();
        self.young = 0;
        self.old = 0;
    }

    /// Once the young generations hold half the capacity, the old ones are dropped and the
    /// young ones become old: at most `capacity` entries, the recently used ones kept.
    fn age(&mut self, capacity: usize) {
        if self.young < capacity.div_ceil(2) {
            return;
        }
        let young = self.generation;
        for generations in self.partitions.values_mut() {
            generations.retain(|_, (_, generation)| *generation == young);
        }
        self.partitions.retain(|_, g| !g.is_empty());
        self.generation += 1;
        self.old = self.young;
        self.young = 0;
    }
}

/// The entities' state a consumer remembers, per partition.
#[derive(Debug)]
pub struct StateCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// What one batch found in the cache.
#[derive(Debug, Default)]
pub(crate) struct Recalled<'e> {
    /// The entities found.
    entities: HashSet<(&'e str, &'e str)>,
    /// The forget count when they were.
    forgets: u64,
}

impl Recalled<'_> {
    /// How many entities were found.
    pub(crate) fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether an entity was found.
    pub(crate) fn contains(&self, entity_type: &str, entity_id: &str) -> bool {
        self.entities.contains(&(entity_type, entity_id))
    }
}

impl StateCache {
    /// A cache of at most `capacity` entities over all partitions; `0` remembers nothing.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether it remembers anything at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent; a panic elsewhere cannot break them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many entities it remembers.
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.young + inner.old
    }

    /// Whether it remembers no entity.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a partition's entities: it was revoked, rewound or sought.
    pub fn forget(&self, topic: &str, partition: i32) {
        let mut inner = self.lock();
        inner.forgets += 1;
        if let Some(gone) = inner.partitions.remove(&(topic.to_owned(), partition)) {
            let young = inner.generation;
            let (y, o) = gone.values().fold((0, 0), |(y, o), (_, generation)| {
                match *generation == young {
                    true => (y + 1, o),
                    false => (y, o + 1),
                }
            });
            inner.young -= y;
            inner.old -= o;
        }
    }

    /// Forgets everything.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.forgets += 1;
        inner.clear();
    }

    /// Adds the remembered rows of `entities` (each with the one partition the batch read it
    /// from) to `states`, under the prune count `epoch` read in the batch's transaction: when
    /// the terminator pruned state since the entries were read, everything is forgotten first.
    pub(crate) fn recall<'e>(
        &self,
        epoch: i64,
        entities: impl IntoIterator<Item = (&'e str, &'e str, &'e Partition)>,
        states: &mut StateMap,
    ) -> Recalled<'e> {
        let mut recalled = Recalled::default();
        if !self.enabled() {
            return recalled;
        }
        let mut inner = self.lock();
        if inner.epoch != Some(epoch) {
            inner.clear();
            inner.epoch = Some(epoch);
        }
        recalled.forgets = inner.forgets;
        let mut key = String::new();
        // The entities come in key order, not by partition: the last partition's entries are
        // kept at hand.
        let mut last: Option<(&Partition, Option<&Generations>)> = None;
        for (entity_type, entity_id, partition) in entities {
            let generations = match last {
                Some((p, generations)) if p == partition => generations,
                _ => {
                    let generations = inner.partitions.get(partition);
                    last = Some((partition, generations));
                    generations
                }
            };
            fill_key(&mut key, entity_type, entity_id);
            let Some((rows, _)) = generations.and_then(|g| g.get(key.as_str())) else {
                continue;
            };
            for (attribute, state) in rows {
                states.insert(
                    StateKey {
                        entity_type: entity_type.to_owned(),
                        entity_id: entity_id.to_owned(),
                        attribute: attribute.clone(),
                    },
                    state.clone(),
                );
            }
            recalled.entities.insert((entity_type, entity_id));
        }
        recalled
    }

    /// Remembers the state a committed batch left `entities` in (in key order, each with the one
    /// partition the batch read it from; every row of theirs is in `states`), read under `epoch`
    /// after `recalled`. `written`: the rows the batch wrote, moved in rather than copied; an entity
    /// with none that was recalled is remembered as it was (it is only kept young). Nothing is
    /// remembered when a later batch saw the terminator prune since, or a partition was
    /// forgotten since.
    pub(crate) fn remember<'e>(
        &self,
        epoch: i64,
        recalled: &Recalled<'_>,
        entities: impl IntoIterator<Item = (&'e str, &'e str, &'e Partition)>,
        states: &StateMap,
        written: Vec<(StateKey, AttributeState)>,
    ) {
        if !self.enabled() {
            return;
        }
        // The written rows in key order, like the entities: each entity's are the next ones.
        let mut written = written;
        written.sort_by(|a, b| a.0.cmp(&b.0));
        let mut written = written.into_iter().peekable();
        let mut kept = Vec::new();
        let mut copied: Vec<(String, &Partition, Rows)> = Vec::new();
        // Where each entity is in `copied`: the rows it did not write are added from `states`.
        let mut copied_at: HashMap<(&str, &str), usize> = HashMap::new();
        for (entity_type, entity_id, partition) in entities {
            let entity = (entity_type, entity_id);
            while written
                .next_if(|(k, _)| (k.entity_type.as_str(), k.entity_id.as_str()) < entity)
                .is_some()
            {}
            let mut rows = Vec::new();
            while let Some((k, s)) =
                written.next_if(|(k, _)| (k.entity_type.as_str(), k.entity_id.as_str()) == entity)
            {
                push_row(&mut rows, k.attribute, s);
            }
            if rows.is_empty() && recalled.contains(entity_type, entity_id) {
                kept.push((entity_type, entity_id, partition));
                continue;
            }
            copied_at.insert(entity, copied.len());
            copied.push((entity_key(entity_type, entity_id), partition, rows));
        }
        if !copied_at.is_empty() {
            for (k, s) in states {
                let entity = (k.entity_type.as_str(), k.entity_id.as_str());
                let Some(&i) = copied_at.get(&entity) else {
                    continue;
                };
                let rows = &mut copied[i].2;
                if rows.iter().all(|(attribute, _)| *attribute != k.attribute) {
                    push_row(rows, k.attribute.clone(), s.clone());
                }
            }
        }
        let mut inner = self.lock();
        if inner.epoch != Some(epoch) || inner.forgets != recalled.forgets {
            return;
        }
        let young = inner.generation;
        let (mut made_young, mut left_old) = (0, 0);
        let mut key = String::new();
        for (entity_type, entity_id, partition) in kept {
            let Some(generations) = inner.partitions.get_mut(partition) else {
                continue;
            };
            fill_key(&mut key, entity_type, entity_id);
            if let Some((_, generation)) = generations.get_mut(key.as_str()) {
                if *generation != young {
                    *generation = young;
                    made_young += 1;
                    left_old += 1;
                }
            }
        }
        for (key, partition, rows) in copied {
            let generations = match inner.partitions.get_mut(partition) {
                Some(generations) => generations,
                None => inner.partitions.entry(partition.clone()).or_default(),
            };
            match generations.insert(key, (rows, young)) {
                None => made_young += 1,
                Some((_, generation)) if generation != young => {
                    made_young += 1;
                    left_old += 1;
                }
                Some(_) => {}
            }
        }
        inner.young += made_young;
        inner.old -= left_old;
        inner.age(self.capacity);
    }

    /// Forgets `entities` (each with the partition it was remembered under): a write against
    /// their remembered state failed.
    pub(crate) fn evict<'e>(
        &self,
        entities: impl IntoIterator<Item = (&'e str, &'e str, &'e Partition)>,
    ) {
        let mut inner = self.lock();
        for (entity_type, entity_id, partition) in entities {
            let key = entity_key(entity_type, entity_id);
            let young = inner.generation;
            let Some(generations) = inner.partitions.get_mut(partition) else {
                continue;
            };
            match generations.remove(&key) {
                Some((_, generation)) if generation == young => inner.young -= 1,
                Some(_) => inner.old -= 1,
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn state(value: &str) -> AttributeState {
        AttributeState {
            value: Some(value.to_owned()),
            version: None,
            event_time: Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            deleted: false,
            source: None,
            set_by: None,
        }
    }

    fn key(id: &str, attribute: &str) -> StateKey {
        StateKey {
            entity_type: "T".into(),
            entity_id: id.into(),
            attribute: attribute.into(),
        }
    }

    fn p(n: i32) -> Partition {
        ("t".to_owned(), n)
    }

    fn states(ids: &[&str]) -> StateMap {
        ids.iter()
            .flat_map(|id| [(key(id, "a"), state("x")), (key(id, "b"), state("y"))])
            .collect()
    }

    /// Every row of `states`, as a batch that wrote them all passes them.
    fn rows(states: &StateMap) -> Vec<(StateKey, AttributeState)> {
        states.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
    }

    fn recall(cache: &StateCache, epoch: i64, ids: &[&str], partition: &Partition) -> usize {
        recalled(cache, epoch, ids, partition).entities.len()
    }

    fn recalled<'e>(
        cache: &StateCache,
        epoch: i64,
        ids: &[&'e str],
        partition: &'e Partition,
    ) -> Recalled<'e> {
        let mut found = StateMap::default();
        cache.recall(
            epoch,
            ids.iter().map(|id| ("T", *id, partition)),
            &mut found,
        )
    }

    /// Remembers `ids` after a batch that recalled nothing.
    fn remember(cache: &StateCache, epoch: i64, ids: &[&str], partition: &Partition) {
        let before = recalled(cache, epoch, &[], partition);
        cache.remember(
            epoch,
            &before,
            ids.iter().map(|id| ("T", *id, partition)),
            &states(ids),
            rows(&states(ids)),
        );
    }

    #[test]
    fn an_entity_is_recalled_whole_and_only_under_its_partition() {
        let cache = StateCache::new(10);
        let p0 = p(0);
        assert_eq!(recall(&cache, 1, &["e"], &p0), 0);
        // An entity without rows is remembered too: it has no state.
        let before = recalled(&cache, 1, &[], &p0);
        cache.remember(
            1,
            &before,
            [("T", "e", &p0), ("T", "none", &p0)],
            &states(&["e"]),
            rows(&states(&["e"])),
        );
        let mut found = StateMap::default();
        let recalled = cache.recall(1, [("T", "e", &p0), ("T", "none", &p0)], &mut found);
        assert_eq!(recalled.entities.len(), 2);
        assert_eq!(found.len(), 2);
        // Stored as PostgreSQL stores it: microseconds.
        assert_eq!(
            found[&key("e", "a")].event_time.timestamp_subsec_nanos(),
            123_456_000
        );
        assert_eq!(recall(&cache, 1, &["e"], &p(1)), 0);
    }

    #[test]
    fn a_prune_forgets_everything_and_a_batch_read_before_it_is_not_remembered() {
        let cache = StateCache::new(10);
        let p0 = p(0);
        remember(&cache, 1, &["e"], &p0);
        assert_eq!(recall(&cache, 1, &["e"], &p0), 1);
        // A batch that read the count before the prune...
        let early = recalled(&cache, 1, &[], &p0);
        // ... and one that saw it.
        assert_eq!(recall(&cache, 2, &["e"], &p0), 0);
        assert!(cache.is_empty());
        cache.remember(
            1,
            &early,
            [("T", "e", &p0)],
            &states(&["e"]),
            rows(&states(&["e"])),
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn forgetting_and_evicting_drop_entries() {
        let cache = StateCache::new(10);
        let (p0, p1) = (p(0), p(1));
        remember(&cache, 1, &["a", "b"], &p0);
        remember(&cache, 1, &["c"], &p1);
        assert_eq!(cache.len(), 3);
        cache.evict([("T", "a", &p0)]);
        assert_eq!(recall(&cache, 1, &["a", "b"], &p0), 1);
        // A batch in flight while a partition is forgotten (revoked) remembers nothing.
        let in_flight = recalled(&cache, 1, &[], &p1);
        cache.forget("t", 0);
        assert_eq!(cache.len(), 1);
        cache.remember(
            1,
            &in_flight,
            [("T", "d", &p1)],
            &states(&["d"]),
            rows(&states(&["d"])),
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(recall(&cache, 1, &["c"], &p1), 1);
        cache.forget_all();
        assert!(cache.is_empty());
    }

    #[test]
    fn the_capacity_drops_the_least_recently_used_generation() {
        let cache = StateCache::new(4);
        let p0 = p(0);
        // Half the capacity young: it becomes the old generation, nothing is lost yet.
        remember(&cache, 1, &["a", "b"], &p0);
        assert_eq!(cache.len(), 2);
        remember(&cache, 1, &["c"], &p0);
        assert_eq!(cache.len(), 3);
        // "a" is used again: it moves to the young generation, which is half full again, so
        // the old one ("b") is dropped.
        remember(&cache, 1, &["a"], &p0);
        assert_eq!(cache.len(), 2);
        assert_eq!(recall(&cache, 1, &["a", "c"], &p0), 2);
        assert_eq!(recall(&cache, 1, &["b"], &p0), 0);
    }

    #[test]
    fn an_entity_recalled_and_not_written_is_kept_as_it_was() {
        let cache = StateCache::new(10);
        let p0 = p(0);
        remember(&cache, 1, &["e"], &p0);
        let value = |cache: &StateCache| {
            let mut found = StateMap::default();
            cache.recall(1, [("T", "e", &p0)], &mut found);
            found[&key("e", "a")].value.clone()
        };
        let mut changed = states(&["e"]);
        changed.get_mut(&key("e", "a")).unwrap().value = Some("z".into());
        let batch = recalled(&cache, 1, &["e"], &p0);
        cache.remember(1, &batch, [("T", "e", &p0)], &changed, Vec::new());
        assert_eq!(value(&cache).as_deref(), Some("x"));
        let batch = recalled(&cache, 1, &["e"], &p0);
        cache.remember(1, &batch, [("T", "e", &p0)], &changed, rows(&changed));
        assert_eq!(value(&cache).as_deref(), Some("z"));
    }

    #[test]
    fn a_disabled_cache_remembers_nothing() {
        let cache = StateCache::new(0);
        let p0 = p(0);
        remember(&cache, 1, &["e"], &p0);
        assert!(cache.is_empty());
        assert_eq!(recall(&cache, 1, &["e"], &p0), 0);
    }
}
