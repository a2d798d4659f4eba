//! The query cache: what views read, how fresh it is, and keeping it so — subscribe and prefetch, deltas applied
//! in place and cascading invalidation, timed refetches and retries, garbage collection (with the persistent cache in `cache.rs`).
//!
//! State: [`Queries`]. Policy: the `impl Engine` block below (it needs the transport's and the tabs' view of
//! the world: whether the feed keeps a query fresh, whether any tab is visible).

use crate::collections::{Map, Set};

use serde_json::Value;
use syncline_protocol::{Change, Cursor, StreamName, StreamPosition};
use uuid::Uuid;

use crate::cache::{CACHE_SAVE_DELAY_MS, CACHE_SAVE_INTERVAL_MS};
use crate::engine::{Engine, Purpose, error_message};
use crate::model::{Applied, Model};
use crate::policy::{self, PollContext};
use crate::timers::{Soonest, Timer};
use crate::types::*;

/// One query's cached data and the bookkeeping that keeps it fresh.
#[derive(Debug, Clone)]
pub(crate) struct Query<M: Model> {
    pub subscribers: u32,
    pub data: Option<M::Data>,
    pub etag: Option<String>,
    /// When the data was last known to be current.
    pub current_at: Option<Millis>,
    pub fetching: Option<RequestId>,
    /// The data may be out of date and must be refetched.
    pub invalidated: bool,
    pub failures: u32,
    pub error: Option<String>,
    pub retry_at: Option<Millis>,
    /// Next timed refetch, when polling by timer.
    pub next_poll: Option<Millis>,
    pub unused_since: Option<Millis>,
    pub critical: bool,
    /// Prefetched: wanted until its data arrives, then kept (unused) for `gc_time`.
    pub prefetch: bool,
    /// The data holds entities the server returned for writes, at stream positions up to this one, ahead of the
    /// data's own cursor (their changes have not come through the feed yet).
    pub ahead_to: Cursor,
    /// Its persisted copy was asked for (`Load::Cache`).
    pub cache_asked: bool,
    /// A change could not be applied to this data (it lacks something the change needs): it is not offered to
    /// the leader as a copy to bring up to date (the same changes would fail again) — only new data, from the
    /// leader or the server, clears it.
    pub untrusted: bool,
}

impl<M: Model> Default for Query<M> {
    fn default() -> Self {
        Query {
            subscribers: 0,
            data: None,
            etag: None,
            current_at: None,
            fetching: None,
            invalidated: false,
            failures: 0,
            error: None,
            retry_at: None,
            next_poll: None,
            unused_since: None,
            critical: false,
            prefetch: false,
            ahead_to: 0,
            cache_asked: false,
            untrusted: false,
        }
    }
}

impl<M: Model> Query<M> {
    /// A view reads it, or a prefetch waits for it.
    pub fn held(&self) -> bool {
        self.subscribers > 0 || self.prefetch
    }

    /// Whether `data` is at least as recent as what this copy already reflects: a snapshot older than the copy
    /// (a slow fetch that the feed overtook, or one read before a write whose answer was already applied) must
    /// not take it back in time — an item would vanish, then come back.
    pub fn not_older(&self, data: &M::Data) -> bool {
        let Some(old) = &self.data else { return true };
        if M::log_id(data) != M::log_id(old) {
            return true; // another change log (the server's database was replaced): cursors do not compare
        }
        match (M::cursor(data), M::cursor(old)) {
            (Some(new), Some(have)) => new >= have.max(self.ahead_to),
            _ => true,
        }
    }
}

/// The query cache's state.
#[derive(Debug)]
pub(crate) struct Queries<M: Model> {
    pub map: Map<M::Key, Query<M>>,
    /// Queries changed and not yet saved to the persistent cache, with when their save is due.
    pub unsaved: Map<M::Key, Millis>,
    /// When each query was last saved (kept while the query is in memory).
    pub saved_at: Map<M::Key, Millis>,
}

impl<M: Model> Default for Queries<M> {
    fn default() -> Self {
        Queries { map: Map::new(), unsaved: Map::new(), saved_at: Map::new() }
    }
}

impl<M: Model> Queries<M> {
    /// The query changed and its saved copy is now behind: save it `CACHE_SAVE_DELAY_MS` after this first unsaved
    /// change, and no sooner than `CACHE_SAVE_INTERVAL_MS` after its last save (a steady stream of changes to a
    /// big board is one serialisation every ten seconds, not one per change). The copy on disk only warms the
    /// next page load, which catches up from its cursor: being seconds behind costs nothing.
    pub fn mark_unsaved(&mut self, key: &M::Key, now: Millis) {
        if !self.unsaved.contains_key(key) {
            let after_last = self.saved_at.get(key).map_or(0, |t| t + CACHE_SAVE_INTERVAL_MS);
            self.unsaved.insert(key.clone(), (now + CACHE_SAVE_DELAY_MS).max(after_last));
        }
    }

    pub fn keys_of(&self, stream: &StreamName) -> Vec<M::Key> {
        self.map.keys().filter(|k| M::stream(k) == *stream).cloned().collect()
    }

    /// The entity with this id as the server last gave it, from whatever query holds it.
    pub fn find_entity(&self, id: Uuid) -> Option<Value> {
        self.map.values().filter_map(|q| q.data.as_ref()).find_map(|d| M::find_entity(d, id))
    }

    /// When the query cache next needs the engine (`leader`: timed refetches and retries are the leader's).
    pub fn poll_timeout(&self, leader: bool, gc_time: Millis, soonest: &mut Soonest) {
        for due in self.unsaved.values() {
            soonest.at(*due, Timer::CacheSave);
        }
        for q in self.map.values() {
            soonest.maybe(q.unused_since.map(|t| t + gc_time), Timer::Gc);
            if leader {
                soonest.maybe(q.next_poll, Timer::Poll);
                soonest.maybe(q.retry_at, Timer::FetchRetry);
            }
        }
    }
}

impl<M: Model> Engine<M> {
    // ---- what views ask --------------------------------------------------------------------------------------

    pub(crate) fn subscribe(&mut self, key: M::Key) {
        let stale_time = self.cfg.stale_time_ms;
        let now = self.now;
        let kept = self.kept_fresh(&key);
        let q = self.queries.map.entry(key.clone()).or_default();
        q.subscribers += 1;
        q.unused_since = None;
        // Refetch on mount when stale (what TanStack Query users expect).
        if q.current_at.is_none_or(|t| now >= t + stale_time) && !kept {
            q.invalidated = true;
        }
        self.load_cached(&key);
        self.to_notify.insert(key);
        if !self.is_leader() {
            self.send_interest();
        }
    }

    pub(crate) fn unsubscribe(&mut self, key: M::Key) {
        if let Some(q) = self.queries.map.get_mut(&key) {
            q.subscribers = q.subscribers.saturating_sub(1);
            if q.subscribers == 0 {
                q.unused_since = Some(self.now);
                if !self.is_leader() {
                    self.send_interest();
                }
            }
        }
    }

    pub(crate) fn prefetch(&mut self, key: M::Key) {
        // Only for what a user is looking at, and never at the cost of their data plan.
        if !self.env.visible || !self.env.online || self.prefs.data_saver || self.env.link.save_data {
            return;
        }
        let stale_time = self.cfg.stale_time_ms;
        let now = self.now;
        let kept = self.kept_fresh(&key);
        let q = self.queries.map.entry(key.clone()).or_default();
        let fresh = q.data.is_some() && !q.invalidated && (kept || q.current_at.is_some_and(|t| now < t + stale_time));
        if fresh || q.prefetch || q.fetching.is_some() {
            return;
        }
        q.prefetch = true;
        q.unused_since = None;
        if q.data.is_some() {
            q.invalidated = true;
        }
        self.load_cached(&key);
        if !self.is_leader() {
            self.send_interest();
        }
    }

    /// A prefetched query got its data: it is no longer held (it stays cached for `gc_time`).
    pub(crate) fn prefetch_done(&mut self, key: &M::Key) {
        let leader = self.is_leader();
        if let Some(q) = self.queries.map.get_mut(key)
            && q.prefetch
        {
            q.prefetch = false;
            if !leader && q.subscribers == 0 {
                self.send_interest();
            }
        }
    }

    pub(crate) fn set_critical(&mut self, key: M::Key, critical: bool) {
        self.queries.map.entry(key).or_default().critical = critical;
        if !self.is_leader() {
            self.send_interest();
        }
    }

    // ---- freshness -------------------------------------------------------------------------------------------

    /// How fresh a query is.
    pub fn freshness(&self, key: &M::Key) -> Freshness {
        let Some(q) = self.queries.map.get(key) else { return Freshness::Fetching };
        let age = q.current_at.map(|t| self.now.saturating_sub(t));
        let online = self.env.online;
        if q.data.is_none() {
            return match (&q.error, q.retry_at) {
                (Some(message), Some(retry_at)) if online => Freshness::Error { message: message.clone(), retry_at },
                _ if !online => Freshness::Paused { age_ms: age },
                _ => Freshness::Fetching,
            };
        }
        if !online {
            return Freshness::Paused { age_ms: age };
        }
        if let (Some(message), Some(retry_at)) = (&q.error, q.retry_at) {
            return Freshness::Error { message: message.clone(), retry_at };
        }
        if q.fetching.is_some() || (q.invalidated && self.is_leader()) {
            return Freshness::Fetching;
        }
        // The connection dropped: what is shown was current when it did, and ages from there.
        if matches!(self.status.current, ConnectionStatus::Reconnecting { .. }) {
            return Freshness::Stale { age_ms: age };
        }
        if !q.invalidated && (self.kept_fresh(key) || age.is_some_and(|a| a < self.cfg.stale_time_ms)) {
            return Freshness::Fresh;
        }
        Freshness::Stale { age_ms: age }
    }

    /// Whether the feed keeps this query current without timed refetches.
    pub(crate) fn kept_fresh(&self, key: &M::Key) -> bool {
        if !self.is_leader() {
            return matches!(self.status.leader, Some(ConnectionStatus::Live) | Some(ConnectionStatus::Polling { .. }))
                && self.prefs.realtime;
        }
        self.transport.follows(&M::stream(key))
    }

    pub(crate) fn poll_context(&self, critical: bool) -> PollContext {
        PollContext { online: self.env.online, visible: self.visible_somewhere(), link: self.env.link, critical }
    }

    /// Queries this tab or, for the leader, another tab wants kept fresh.
    pub(crate) fn wanted_keys(&self) -> Vec<M::Key> {
        let interests = self.tabs.interests();
        let leader = self.is_leader();
        self.queries
            .map
            .iter()
            .filter(|(k, q)| q.held() || (leader && interests.contains(*k)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(crate) fn notify_all_queries(&mut self) {
        self.to_notify.extend(self.queries.map.keys().cloned());
    }

    /// The views of every query a write affects re-read (it was queued, or it settled).
    pub(crate) fn notify_affected(&mut self, op: &M::Op) {
        let keys: Vec<M::Key> = self
            .queries
            .map
            .iter()
            .filter(|(k, q)| M::affects(k, q.data.as_ref(), op))
            .map(|(k, _)| k.clone())
            .collect();
        self.to_notify.extend(keys);
    }

    // ---- deltas and cascade -----------------------------------------------------------------------------------

    /// Applies changes of one stream to every query that follows it; what cannot be applied, and what depends
    /// on what changed, is invalidated (each key once per batch).
    pub(crate) fn apply_changes(&mut self, stream: &StreamName, changes: &[Change<M::Change>]) {
        let mut touched = false;
        let mut invalidate = Set::new();
        let leader = self.is_leader();
        let keys = self.queries.keys_of(stream);
        for key in &keys {
            let q = self.queries.map.get_mut(key).expect("listed");
            let Some(data) = q.data.as_mut() else { continue };
            if !M::options(key).takes_deltas {
                continue;
            }
            let mut changed = false;
            for change in changes {
                let at = M::cursor(data).unwrap_or(0);
                if change.cursor <= at {
                    continue; // already applied (replay, or the snapshot was newer)
                }
                if change.cursor != at + 1 {
                    invalidate.insert(key.clone()); // a gap: this copy cannot be trusted
                    break;
                }
                match M::apply_change(data, change) {
                    Applied::Changed => {
                        changed = true;
                        self.metrics.deltas_applied += 1;
                        self.unrendered_since =
                            Some(self.unrendered_since.map_or(change.at_ms, |t| t.min(change.at_ms)));
                    }
                    Applied::Unchanged => {}
                    Applied::CannotApply => {
                        q.untrusted = true;
                        invalidate.insert(key.clone());
                        break;
                    }
                }
                if M::is_gone(data) {
                    break;
                }
            }
            q.current_at = Some(self.now);
            if changed {
                touched = true;
                self.to_notify.insert(key.clone());
                if leader && M::options(key).persisted {
                    // Saved for the next page load a while later, not once per change.
                    self.queries.mark_unsaved(key, self.now);
                }
            }
        }
        if touched || !changes.is_empty() {
            // Everything that depends on this stream's data and cannot follow it by deltas.
            invalidate.extend(keys.into_iter().filter(|k| !M::options(k).takes_deltas));
        }
        for key in invalidate {
            self.invalidate(&key);
        }
    }

    pub(crate) fn invalidate(&mut self, key: &M::Key) {
        if let Some(q) = self.queries.map.get_mut(key)
            && !q.invalidated
        {
            q.invalidated = true;
            self.metrics.invalidations += 1;
            self.to_notify.insert(key.clone());
        }
        // Transitively: whatever depends on this key.
        let dependents: Vec<M::Key> =
            self.queries.map.keys().filter(|k| M::depends_on(k).as_ref() == Some(key)).cloned().collect();
        for d in dependents {
            self.invalidate(&d);
        }
    }

    /// The server will not serve this stream to us any more: every query on it is gone — dropped from memory and
    /// from the persistent cache — and the user is told, for those that had something to show.
    pub(crate) fn revoke_stream(&mut self, stream: &StreamName) {
        for key in self.queries.keys_of(stream) {
            let Some(q) = self.queries.map.get_mut(&key) else { continue };
            let had = q.data.as_ref().is_some_and(|d| !M::is_gone(d));
            q.data = Some(M::gone(&key));
            q.invalidated = false;
            q.ahead_to = 0;
            q.error = None;
            q.retry_at = None;
            self.queries.unsaved.remove(&key);
            if self.is_leader() && M::options(&key).persisted {
                self.out.push_back(Output::Persist(PersistOp::CacheDelete { key: key.clone() }));
            }
            if had {
                self.out.push_back(Output::Notify(Notification::Revoked { key: key.clone() }));
            }
            self.to_notify.insert(key);
        }
        if self.is_leader() {
            self.out.push_back(Output::Broadcast(TabMessage::Revoked { stream: stream.clone() }));
        }
    }

    pub(crate) fn invalidate_stream(&mut self, stream: &StreamName) {
        self.tabs.recent.remove(stream); // the changes kept may not lead to what comes next
        for k in self.queries.keys_of(stream) {
            if let Some(q) = self.queries.map.get_mut(&k) {
                q.ahead_to = 0; // whatever comes next is a new start
            }
            self.invalidate(&k);
        }
    }

    /// An entity the server returned for a write (as written, or the current one of a conflict), laid over
    /// every copy that is behind it: a copy at or past the position the entity was at (`at`) has that state
    /// already, and maybe a newer one (a later delete) that a replayed or stale answer must not undo. Within a
    /// copy, versions decide.
    pub(crate) fn apply_entity(&mut self, entity: &Value, at: &[StreamPosition]) {
        for (key, q) in self.queries.map.iter_mut() {
            let Some(data) = q.data.as_mut() else { continue };
            let stream = M::stream(key);
            let position = at.iter().find(|p| p.stream == stream).map(|p| p.cursor);
            if position.is_some_and(|p| M::cursor(data).is_some_and(|c| c >= p)) {
                continue; // this copy has it already
            }
            if M::apply_entity(data, entity) == Applied::Changed {
                q.ahead_to = q.ahead_to.max(position.unwrap_or(0));
                self.to_notify.insert(key.clone());
            }
        }
    }

    /// What this browser created, once the server confirmed it, seeds the queries about it that have no data yet
    /// (e.g. an empty document at cursor 0 of its own stream): the feed brings the rest, nothing to fetch.
    pub(crate) fn seed_created(&mut self, entity: &Value) {
        let log_id = self.transport.log_id.unwrap_or_default();
        let now = self.now;
        for (key, q) in self.queries.map.iter_mut() {
            if q.data.is_none()
                && let Some(data) = M::seed(key, entity, log_id)
            {
                q.data = Some(data);
                q.invalidated = false;
                q.current_at = Some(now);
                self.to_notify.insert(key.clone());
            }
        }
    }

    // ---- fetching ---------------------------------------------------------------------------------------------

    pub(crate) fn on_query_result(&mut self, key: M::Key, id: RequestId, result: HttpResult) {
        let Some(q) = self.queries.map.get_mut(&key) else { return };
        if q.fetching == Some(id) {
            q.fetching = None;
        }
        self.to_notify.insert(key.clone());
        let parsed = match result {
            HttpResult::Response { status: 304, .. } => Ok(None),
            HttpResult::Response { status: 200, body, etag } => M::parse(&key, &body)
                .map(|d| Some((d, etag)))
                .map_err(|e| format!("unexpected answer for {key:?}: {e}")),
            HttpResult::Response { status: 404, .. } => Ok(Some((M::gone(&key), None))),
            HttpResult::Response { status, body, .. } => {
                Err(format!("the server answered {status}: {}", error_message(&body)))
            }
            HttpResult::NetworkError(e) => Err(format!("network error: {e}")),
        };
        let q = self.queries.map.get_mut(&key).expect("present");
        let (data, etag) = match parsed {
            Err(message) => {
                q.failures += 1;
                q.error = Some(message);
                let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, q.failures);
                q.retry_at = Some(self.now + delay);
                return;
            }
            Ok(None) => {
                self.fetch_succeeded(&key);
                return;
            }
            Ok(Some(fresh)) => fresh,
        };
        self.fetch_succeeded(&key);
        let snapshot_cursor = M::cursor(&data);
        let stream = M::stream(&key);
        let takes_deltas = M::options(&key).takes_deltas;
        // A query that cannot follow deltas, fetched while changes kept coming: if its answer is older than what
        // the feed already brought, it is stale on arrival and goes again.
        if !takes_deltas {
            let followed = self
                .queries
                .map
                .iter()
                .filter(|(k, _)| M::options(k).takes_deltas && M::stream(k) == stream)
                .filter_map(|(_, q)| q.data.as_ref().and_then(M::cursor))
                .max();
            if let (Some(have), Some(got)) = (followed, snapshot_cursor)
                && got < have
            {
                self.queries.map.get_mut(&key).expect("present").invalidated = true;
            }
        }
        let q = self.queries.map.get_mut(&key).expect("present");
        q.etag = etag;
        if !q.not_older(&data) {
            // Our copy is newer; the feed (or the next fetch) brings what comes after it.
            self.to_notify.remove(&key);
            return;
        }
        q.ahead_to = 0; // the snapshot has all of it
        q.untrusted = false;
        if q.data.as_ref() != Some(&data) {
            q.data = Some(data.clone());
            if M::options(&key).persisted {
                if M::is_gone(&data) {
                    self.out.push_back(Output::Persist(PersistOp::CacheDelete { key: key.clone() }));
                } else {
                    // Saved a moment later, off the path from answer to screen.
                    self.queries.mark_unsaved(&key, self.now);
                }
            }
        } else {
            self.to_notify.remove(&key); // an unchanged result does not notify
        }
        // Tabs that appear (or wake) later ask with `Interest` and get it then.
        if self.tabs.has_listeners() {
            self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at: self.now }));
        }
        // If the socket already delivered past this snapshot, ask it to replay from the snapshot.
        if takes_deltas && let Some(c) = snapshot_cursor {
            self.transport.replay_if_past(&stream, c);
        }
    }

    fn fetch_succeeded(&mut self, key: &M::Key) {
        let q = self.queries.map.get_mut(key).expect("present");
        q.failures = 0;
        q.error = None;
        q.retry_at = None;
        q.invalidated = false;
        q.current_at = Some(self.now);
        q.next_poll = None;
        self.prefetch_done(key);
    }

    /// Fetches what has no data or is invalidated, and what is due for a timed refetch, a few at a time.
    pub(crate) fn fetches(&mut self) {
        if !self.env.online {
            return;
        }
        let in_flight = self.requests.values().filter(|r| matches!(r.purpose, Purpose::Query(_))).count();
        let mut slots = self.cfg.max_concurrent_fetches.saturating_sub(in_flight);
        // While the socket catches up, only fetch what it cannot bring (no data, or reset).
        let catching_up = self.transport.socket_ready() && !self.live();
        let visible = self.visible_somewhere();
        let active = self.active();
        let mut due: Vec<(u8, M::Key)> = Vec::new();
        for key in self.wanted_keys() {
            let kept = self.kept_fresh(&key);
            let q = &self.queries.map[&key];
            if q.fetching.is_some() || q.retry_at.is_some_and(|t| self.now < t) {
                continue;
            }
            // Something created here is fetched once the server has it (its write settles first).
            if M::created_by(&key).is_some_and(|e| self.outbox.pending_create(e).is_some()) {
                continue;
            }
            let takes_deltas = M::options(&key).takes_deltas;
            let no_data = q.data.is_none();
            let critical = q.critical || self.tabs.critical_for_peers(&key);
            let ctx = self.poll_context(critical);
            let polls_hidden = policy::poll_interval(&self.prefs, &ctx).is_some();
            // Missing data is fetched while a tab is active (or the background preference polls it): after the
            // grace period with "pause", nothing at all until a tab is shown.
            let missing = no_data && (visible || active || polls_hidden);
            let timed = !kept && !no_data && !q.invalidated && {
                // On the long-poll, the long-poll follows it; on the socket, the socket will once up.
                let followed = self.prefs.realtime && takes_deltas && (self.transport.in_fallback() || active);
                let interval = if followed { None } else { policy::poll_interval(&self.prefs, &ctx) };
                match (interval, q.current_at) {
                    (Some(i), Some(t)) => self.now >= t + i,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            };
            // While no tab is visible, invalidations wait (batched) until one is, unless the query is missing, or
            // critical and the background preference polls it.
            let invalid = q.invalidated && (visible || missing || (ctx.critical && polls_hidden));
            // Catching up on its stream: the catch-up brings what changed (unless it cannot take deltas and is
            // invalidated, or has nothing yet).
            if catching_up
                && !no_data
                && (takes_deltas || !q.invalidated)
                && self.transport.subscribed(&M::stream(&key))
            {
                continue;
            }
            let next_poll = if missing || invalid || timed {
                due.push((
                    if missing {
                        0
                    } else if invalid {
                        1
                    } else {
                        2
                    },
                    key.clone(),
                ));
                None
            } else if let Some(i) = (!kept && !no_data).then(|| policy::poll_interval(&self.prefs, &ctx)).flatten() {
                Some(q.current_at.map_or(self.now, |t| t + i))
            } else {
                None
            };
            self.queries.map.get_mut(&key).expect("present").next_poll = next_poll;
        }
        crate::collections::sort_by(&mut due, Ord::cmp);
        for (_, key) in due {
            if slots == 0 {
                break;
            }
            slots -= 1;
            let etag = self.queries.map[&key].etag.clone();
            let request = HttpRequest { method: "GET", path: M::fetch_path(&key), body: None, if_none_match: etag };
            let id = self.request(Purpose::Query(key.clone()), request);
            let q = self.queries.map.get_mut(&key).expect("present");
            q.fetching = Some(id);
            q.retry_at = None;
            self.to_notify.insert(key);
        }
    }

    /// Followers make no requests: they ask the leader for what they miss.
    pub(crate) fn follower_requests(&mut self) {
        let visible = self.env.visible;
        let wants: Vec<M::Key> = self
            .queries
            .map
            .iter()
            .filter(|(_, q)| q.held() && q.invalidated && visible)
            .map(|(k, _)| k.clone())
            .collect();
        for key in wants {
            if self.bug(crate::config::InjectedBug::FollowersFetch) {
                let etag = self.queries.map[&key].etag.clone();
                let request = HttpRequest { method: "GET", path: M::fetch_path(&key), body: None, if_none_match: etag };
                let id = self.request(Purpose::Query(key.clone()), request);
                self.queries.map.get_mut(&key).expect("wanted").fetching = Some(id);
            }
            if let Some(q) = self.queries.map.get_mut(&key) {
                q.invalidated = false; // asked once; the leader's data clears it for good
            }
            if self.tabs.leader_known() {
                self.ask_leader_to_refetch(key);
            }
        }
    }

    /// Queries of streams the feed was following are current as of now (the feed is about to stop).
    pub(crate) fn mark_current_now(&mut self) {
        let now = self.now;
        for (key, q) in self.queries.map.iter_mut() {
            if self.transport.was_following(&M::stream(key)) && !q.invalidated {
                q.current_at = Some(now);
            }
        }
    }

    pub(crate) fn mark_stream_current(&mut self, stream: &StreamName) {
        let now = self.now;
        for (key, q) in self.queries.map.iter_mut() {
            if M::stream(key) == *stream && M::options(key).takes_deltas && !q.invalidated {
                q.current_at = Some(now);
                self.to_notify.insert(key.clone());
            }
        }
    }

    /// Stale queries are refetched at once (a tab was shown, the network came back).
    pub(crate) fn catch_up_stale(&mut self) {
        let now = self.now;
        let stale_time = self.cfg.stale_time_ms;
        for key in self.wanted_keys() {
            if self.kept_fresh(&key) {
                continue;
            }
            let q = self.queries.map.get_mut(&key).expect("wanted");
            if q.current_at.is_none_or(|t| now >= t + stale_time) {
                q.invalidated = true;
                self.to_notify.insert(key);
            }
        }
    }

    /// Streams to follow, with the cursor to follow each from (when there is data to follow).
    pub(crate) fn wanted_streams(&self) -> Map<StreamName, Option<Cursor>> {
        let mut out: Map<StreamName, Option<Cursor>> = Map::new();
        for key in self.wanted_keys() {
            let q = &self.queries.map[&key];
            let takes_deltas = M::options(&key).takes_deltas;
            let cursor = match &q.data {
                Some(d) if M::is_gone(d) => continue,
                Some(d) if !q.invalidated || takes_deltas => M::cursor(d),
                _ => None,
            };
            let entry = out.entry(M::stream(&key)).or_insert(None);
            // Prefer the cursor of the query that takes deltas (the entity itself rather than a figure derived from it).
            if (takes_deltas || entry.is_none())
                && let Some(c) = cursor
            {
                *entry = Some(c);
            }
        }
        out
    }
}
