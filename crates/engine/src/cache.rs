//! The persistent cache (IndexedDB in a browser) as the query cache sees it: a query with no data reads its saved
//! copy back once (only what a view needs, never every query ever saved); changed queries are saved a second after
//! their first unsaved change and at most once every ten seconds; queries nobody reads for `gc_time` are dropped from memory and from disk, so the
//! store stays as bounded as the cache in memory. Only the leader writes to it.

use crate::engine::Engine;
use crate::model::Model;
use crate::types::*;

/// Queries changed by a fetch or by deltas are saved to the persistent cache this long after their first unsaved
/// change ...
pub(crate) const CACHE_SAVE_DELAY_MS: Millis = 1_000;
/// ... and no sooner than this after their previous save (`Queries::mark_unsaved`).
pub(crate) const CACHE_SAVE_INTERVAL_MS: Millis = 10_000;

impl<M: Model> Engine<M> {
    /// Asks for the persisted copy of a query that has no data yet (once): it renders at once, stale until
    /// confirmed. Only what a view needs is read back, not every query ever cached.
    pub(crate) fn load_cached(&mut self, key: &M::Key) {
        let Some(q) = self.queries.map.get_mut(key) else { return };
        if q.data.is_none() && !q.cache_asked && M::options(key).persisted {
            q.cache_asked = true;
            self.out.push_back(Output::Load(Load::Cache { key: key.clone() }));
        }
    }

    pub(crate) fn on_cache_loaded(&mut self, key: M::Key, data: Option<M::Data>) {
        let Some(data) = data else { return };
        let Some(q) = self.queries.map.get_mut(&key) else { return };
        if q.data.is_none() {
            q.data = Some(data);
            // Cached data is of unknown age: stale until confirmed.
            q.invalidated = true;
            self.to_notify.insert(key);
        }
    }

    /// Queries not read for `gc_time` are dropped, and so is their persisted copy: the cache on disk stays as
    /// bounded as the one in memory.
    pub(crate) fn gc(&mut self) {
        let now = self.now;
        let gc = self.cfg.gc_time_ms;
        let interests = self.tabs.interests();
        let leader = self.is_leader();
        for (key, q) in self.queries.map.iter_mut() {
            let wanted = q.held() || (leader && interests.contains(key));
            if wanted {
                q.unused_since = None;
            } else if q.unused_since.is_none() {
                q.unused_since = Some(now);
            }
        }
        let dropped: Vec<M::Key> = self
            .queries
            .map
            .iter()
            .filter(|(_, q)| q.unused_since.is_some_and(|t| now >= t + gc) && q.fetching.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in dropped {
            self.queries.map.remove(&key);
            let stream = M::stream(&key);
            if !self.queries.map.keys().any(|k| M::stream(k) == stream) {
                self.tabs.recent.remove(&stream); // nobody's copy will need its changes
            }
            self.queries.unsaved.remove(&key);
            self.queries.saved_at.remove(&key);
            if leader && M::options(&key).persisted {
                self.out.push_back(Output::Persist(PersistOp::CacheDelete { key }));
            }
        }
    }

    /// Persists the queries changed by deltas once they have been dirty for `CACHE_SAVE_DELAY_MS` (a burst of
    /// changes to a big query is one IndexedDB write, not hundreds of serialisations of all its data).
    pub(crate) fn save_cache(&mut self) {
        let now = self.now;
        let due: Vec<M::Key> =
            self.queries.unsaved.iter().filter(|(_, due)| now >= **due).map(|(k, _)| k.clone()).collect();
        for key in due {
            self.queries.unsaved.remove(&key);
            self.queries.saved_at.insert(key.clone(), now);
            if let Some(data) = self.queries.map.get(&key).and_then(|q| q.data.clone()) {
                let op =
                    if M::is_gone(&data) { PersistOp::CacheDelete { key } } else { PersistOp::CachePut { key, data } };
                self.out.push_back(Output::Persist(op));
            }
        }
    }
}
