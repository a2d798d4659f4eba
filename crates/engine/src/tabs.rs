//! The other tabs of this browser: presence (who is there, visible, leading), what followers need from the
//! leader (interest, refetch, data, changes, writes), and who should lead — the lock is the arbiter, but a
//! visible tab takes over from a hidden leader (after a short delay) and at once from one that does not answer.
//!
//! State: [`Tabs`]. Policy: the `impl Engine` block below.

use crate::collections::{Map, Set};
use std::collections::VecDeque;

use syncline_protocol::{Change, Cursor, StreamName};
use uuid::Uuid;

use crate::engine::Engine;
use crate::model::Model;
use crate::timers::{Soonest, Timer};
use crate::types::*;

/// Another tab, as far as its messages tell.
#[derive(Debug, Clone)]
pub(crate) struct Peer<M: Model> {
    pub visible: bool,
    pub leader: bool,
    /// When it last spoke (its presence's send time, on this tab's clock).
    pub last_seen: Millis,
    pub interests: Set<M::Key>,
    /// Those of its interests it marked critical.
    pub critical: Set<M::Key>,
    /// It said it fell asleep (`TabMessage::Asleep`): it hears nothing and says nothing until it wakes; its tab
    /// lock tells when it is gone (`Engine::on_tab_gone`).
    pub asleep: bool,
}

impl<M: Model> Peer<M> {
    fn new(visible: bool, leader: bool, last_seen: Millis) -> Peer<M> {
        Peer { visible, leader, last_seen, interests: Set::new(), critical: Set::new(), asleep: false }
    }

    /// Silent this long, it is gone (crashed, or frozen by the browser). Never for an asleep tab: it is silent
    /// by design, and its tab lock says when it is gone.
    fn timeout(&self, awake: Millis) -> Option<Millis> {
        (!self.asleep).then_some(awake)
    }
}

/// The tabs' state.
#[derive(Debug)]
pub(crate) struct Tabs<M: Model> {
    pub peers: Map<TabId, Peer<M>>,
    pub next_presence: Millis,
    /// Since when no tab (this one included) is visible.
    pub no_visible_since: Option<Millis>,
    /// Since when this visible follower has seen the leader hidden.
    pub leader_hidden_since: Option<Millis>,
    /// This follower was shown and waits for a leader to answer its presence.
    pub leader_check: Option<LeaderCheck>,
    /// Since when this follower is hidden (it falls asleep `hidden_sleep_ms` later).
    pub hidden_since: Option<Millis>,
    /// This hidden follower stopped listening to the other tabs (`Engine::fall_asleep_if_due`).
    pub asleep: bool,
    /// The leader's latest changes of each stream (`Engine::share_changes`): what a follower's copy at an older
    /// cursor lacks (`Engine::bring_up_to_date`).
    pub recent: Map<StreamName, Recent<M>>,
    /// The tabs whose tab lock this one waits for (`Output::WatchTab`), until `Input::TabGone`.
    pub watching: Set<TabId>,
    /// This follower was frozen by the browser (`Engine::advance`): the leader may have stopped sharing with it
    /// meanwhile (it timed it out), so it tells the leader again where its copies stand.
    pub resync_after_freeze: bool,
}

/// A stream's latest changes, contiguous, of one change log; at most `RECENT_CHANGES_KEPT`.
#[derive(Debug)]
pub(crate) struct Recent<M: Model> {
    log_id: Option<Uuid>,
    changes: VecDeque<Change<M::Change>>,
}

impl<M: Model> Recent<M> {
    fn new(log_id: Option<Uuid>) -> Recent<M> {
        Recent { log_id, changes: VecDeque::new() }
    }

    /// Keeps `changes`; one that does not continue the run (a gap) starts it again.
    fn push(&mut self, changes: &[Change<M::Change>]) {
        for change in changes {
            match self.changes.back().map(|c| c.cursor) {
                Some(last) if change.cursor <= last => continue, // a replay
                Some(last) if change.cursor != last + 1 => self.changes.clear(),
                _ => {}
            }
            self.changes.push_back(change.clone());
            if self.changes.len() > RECENT_CHANGES_KEPT {
                self.changes.pop_front();
            }
        }
    }

    /// The changes after `from` up to `to`, if all of them are here.
    fn between(&self, log_id: Option<Uuid>, from: Cursor, to: Cursor) -> Option<Vec<Change<M::Change>>> {
        let first = self.changes.front()?.cursor;
        let last = self.changes.back()?.cursor;
        if log_id != self.log_id || first > from + 1 || last < to {
            return None;
        }
        Some(self.changes.iter().filter(|c| c.cursor > from && c.cursor <= to).cloned().collect())
    }
}

impl<M: Model> Tabs<M> {
    pub fn new(now: Millis) -> Tabs<M> {
        Tabs {
            peers: Map::new(),
            next_presence: now,
            no_visible_since: None,
            leader_hidden_since: None,
            leader_check: None,
            hidden_since: None,
            asleep: false,
            recent: Map::new(),
            watching: Set::new(),
            resync_after_freeze: false,
        }
    }

    /// Some other tab hears what is broadcast (an asleep one has closed its channel).
    pub fn has_listeners(&self) -> bool {
        self.peers.values().any(|p| !p.asleep)
    }

    pub fn leader_known(&self) -> bool {
        self.peers.values().any(|p| p.leader)
    }

    /// What the other tabs want kept fresh.
    pub fn interests(&self) -> Set<M::Key> {
        self.peers.values().flat_map(|p| p.interests.iter().cloned()).collect()
    }

    pub fn critical_for_peers(&self, key: &M::Key) -> bool {
        self.peers.values().any(|p| p.critical.contains(key))
    }

    pub fn peer_visible(&self) -> bool {
        self.peers.values().any(|p| p.visible)
    }

    pub fn is_leader_tab(&self, tab: TabId) -> Option<bool> {
        self.peers.get(&tab).map(|p| p.leader)
    }

    /// When the tabs part next needs the engine.
    pub fn poll_timeout(&self, cfg: &crate::config::EngineConfig, soonest: &mut Soonest) {
        if self.asleep {
            return; // it hears no one and says nothing
        }
        soonest.at(self.next_presence, Timer::Presence);
        let (cfg_peer_timeout, hidden_grace) = (cfg.peer_timeout_ms, cfg.hidden_grace_ms);
        for p in self.peers.values() {
            soonest.maybe(p.timeout(cfg_peer_timeout).map(|t| p.last_seen + t), Timer::PeerTimeout);
        }
        soonest.maybe(self.hidden_since.map(|t| t + cfg.hidden_sleep_ms), Timer::Sleep);
        soonest.maybe(self.no_visible_since.map(|t| t + hidden_grace), Timer::HiddenGrace);
        soonest.maybe(self.leader_hidden_since.map(|t| t + LEADER_HANDOVER_DELAY_MS), Timer::LeaderHandover);
        soonest.maybe(self.leader_check.map(|c| c.due), Timer::LeaderAnswer);
    }
}

/// Changes a hidden follower holds at most (`hold_changes`); about an hour of one change a second.
pub(crate) const MAX_HELD_CHANGES: usize = 4_000;

/// Changes of each stream the leader keeps to bring a follower's copy up to date (`Recent`): a quarter of an
/// hour at one change a second, a few hundred KB at most. A copy further behind gets the data instead.
pub(crate) const RECENT_CHANGES_KEPT: usize = 1_000;

/// How long a visible follower waits before taking leadership from a hidden leader.
const LEADER_HANDOVER_DELAY_MS: Millis = 500;
/// A hidden leader answers a tab that was just shown within this (with its presence); one that does not is
/// frozen, and the shown tab takes over at once.
const LEADER_ANSWER_MS: Millis = 50;
/// When that wait ends, the shown tab listens this much longer before it takes over: a long task may have held
/// it (a page just shown renders what it held back), and then the leader's answer waits in its queue with the
/// timer that ends the wait — the browser runs the two in either order. What waited is read within this.
const LISTEN_AGAIN_MS: Millis = 20;
/// Two tabs' wall clocks may differ by this much (each reads the system clock with its own rounding and drift):
/// a presence said up to this long before a tab was shown still answers it.
const TAB_CLOCK_SKEW_MS: Millis = 25;

/// A shown follower's wait for the leader to answer (`Engine::seek_leadership`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaderCheck {
    /// When it was shown (and announced itself).
    since: Millis,
    /// It takes over if no leader has answered by then (and `listened_again`).
    due: Millis,
    /// The first wait ended without an answer, and `due` is the end of the second.
    listened_again: bool,
}

impl<M: Model> Engine<M> {
    /// Some tab of this browser is visible.
    pub(crate) fn visible_somewhere(&self) -> bool {
        self.env.visible || self.tabs.peer_visible()
    }

    /// Some tab is visible, or was within the grace period.
    pub(crate) fn active(&self) -> bool {
        if self.bug(crate::config::InjectedBug::HiddenTabsCountAsActive) {
            return true;
        }
        match self.tabs.no_visible_since {
            None => true,
            Some(since) => self.now < since + self.cfg.hidden_grace_ms,
        }
    }

    pub(crate) fn announce(&mut self) {
        if self.tabs.asleep {
            // Said once: asleep, it runs nothing at all (no heartbeat — its tab lock says it is alive).
            self.tabs.next_presence = Millis::MAX;
            self.out.push_back(Output::Broadcast(TabMessage::Asleep { tab: self.tab, sent_at: self.epoch_now() }));
            return;
        }
        self.tabs.next_presence = self.now + self.cfg.presence_interval_ms;
        self.out.push_back(Output::Broadcast(TabMessage::Presence {
            tab: self.tab,
            visible: self.env.visible,
            leader: self.is_leader(),
            sent_at: self.epoch_now(),
        }));
    }

    pub(crate) fn send_interest(&mut self) {
        let keys: Vec<M::Key> = self.queries.map.iter().filter(|(_, q)| q.held()).map(|(k, _)| k.clone()).collect();
        let critical = keys.iter().filter(|k| self.queries.map[*k].critical).cloned().collect();
        // Where this tab's copies stand (with no changes held back: those would move them). The leader sends
        // what they lack rather than all the data — a tab waking on a 5,000-card board needs a few changes.
        let copies = keys.iter().filter_map(|key| self.copy_at(key)).collect();
        self.out.push_back(Output::Broadcast(TabMessage::Interest { tab: self.tab, keys, critical, copies }));
    }

    /// Where this tab's copy of `key` stands, for the leader to bring it up to date rather than send all of it:
    /// none for data gone or without a position, one that could not take a change (`untrusted`), or one whose
    /// stream has changes held back here (they would move it).
    fn copy_at(&self, key: &M::Key) -> Option<CopyAt<M::Key>> {
        let q = self.queries.map.get(key)?;
        let data = q.data.as_ref().filter(|_| !q.untrusted)?;
        let cursor = M::cursor(data).filter(|_| !M::is_gone(data))?;
        (!self.holds_changes_of(&M::stream(key))).then(|| CopyAt { key: key.clone(), cursor, log_id: M::log_id(data) })
    }

    /// Asks the leader for `key` again, saying where this tab's copy stands (a copy that only missed changes is
    /// brought up to date with them).
    pub(crate) fn ask_leader_to_refetch(&mut self, key: M::Key) {
        let copy = self.copy_at(&key);
        self.out.push_back(Output::Broadcast(TabMessage::Refetch { key, copy }));
    }

    /// The leader shares the changes the server sent with the other tabs — when one listens: a tab that appears
    /// later, or wakes, asks (`Interest`) and gets what its copy lacks then. (Alone, or with only asleep tabs, a
    /// leader would encode and post every change to nobody.) The latest are kept either way, for a copy that is
    /// behind (`bring_up_to_date`).
    pub(crate) fn share_changes(&mut self, stream: StreamName, changes: Vec<Change<M::Change>>) {
        let log_id = self.transport.log_id;
        let recent = self.tabs.recent.entry(stream.clone()).or_insert_with(|| Recent::new(log_id));
        if recent.log_id != log_id {
            *recent = Recent::new(log_id);
        }
        recent.push(&changes);
        if self.tabs.has_listeners() {
            self.out.push_back(Output::Broadcast(TabMessage::Changes { stream, changes }));
        }
    }

    /// The leader answers a follower's interest in `key` (whose data here is current): a copy at the same
    /// cursor is current; one behind by changes the leader still has gets those changes (if the query takes
    /// deltas); any other gets the data. Not when the data here holds entities ahead of its cursor (a write's
    /// answer whose change has not come through the feed yet): only the data has those.
    fn bring_up_to_date(&mut self, key: M::Key, copy: Option<&CopyAt<M::Key>>) {
        let q = &self.queries.map[&key];
        let data = q.data.as_ref().expect("current data");
        let log_id = M::log_id(data);
        let at = M::cursor(data).filter(|&at| q.ahead_to <= at && !M::is_gone(data));
        let lacks = match (copy, at) {
            (Some(copy), Some(at)) if copy.log_id == log_id && copy.cursor == at => Some(Vec::new()),
            (Some(copy), Some(at)) if copy.log_id == log_id && copy.cursor < at && M::options(&key).takes_deltas => {
                self.tabs.recent.get(&M::stream(&key)).and_then(|r| r.between(log_id, copy.cursor, at))
            }
            _ => None,
        };
        let msg = match (lacks, at) {
            (Some(changes), Some(cursor)) => TabMessage::Current { key, cursor, log_id, changes },
            _ => TabMessage::Data { key, data: data.clone(), fetched_at: q.current_at.unwrap_or(self.now) },
        };
        self.out.push_back(Output::Broadcast(msg));
    }

    fn send_status(&mut self) {
        let status = self.status.current.clone();
        self.out.push_back(Output::Broadcast(TabMessage::Status { status, sent_at: self.now, tab: self.tab }));
    }

    pub(crate) fn on_visibility(&mut self, visible: bool) {
        if self.env.visible == visible {
            return;
        }
        self.env.visible = visible;
        self.tabs.hidden_since = if visible { None } else { Some(self.now) };
        if visible && self.tabs.asleep {
            self.wake();
        }
        self.announce();
        if visible {
            self.apply_held_changes();
            if !self.is_leader() {
                self.tabs.leader_check =
                    Some(LeaderCheck { since: self.now, due: self.now + LEADER_ANSWER_MS, listened_again: false });
            }
            self.catch_up_stale();
        }
    }

    /// A hidden follower keeps the changes the leader shares as they came, without applying them: nobody looks at
    /// it, and applying them one by one is what a hidden tab would spend its time on. They are applied in one go
    /// when it is shown or becomes the leader (`apply_held_changes`, before anything reads the data). Bounded:
    /// past `MAX_HELD_CHANGES` the held ones are dropped and the queries of their streams asked of the leader
    /// again when the tab is shown — one snapshot instead of a day of changes.
    fn hold_changes(&mut self, stream: StreamName, changes: Vec<Change<M::Change>>) {
        self.held_count += changes.len();
        self.held_changes.push((stream, changes));
        if self.held_count > MAX_HELD_CHANGES {
            for (stream, _) in self.held_changes.drain(..) {
                self.held_dropped.insert(stream);
            }
            self.held_count = 0;
        }
    }

    /// Applies changes that came while nobody looked (held back, or missed asleep): there is no change → screen
    /// latency to count for them.
    fn apply_unwatched_changes(&mut self, stream: &StreamName, changes: &[Change<M::Change>]) {
        let unrendered = self.unrendered_since;
        self.apply_changes(stream, changes);
        self.unrendered_since = unrendered;
    }

    /// This hidden follower holds changes of `stream` back (or dropped them and will ask again when shown).
    fn holds_changes_of(&self, stream: &StreamName) -> bool {
        self.held_dropped.contains(stream) || self.held_changes.iter().any(|(s, _)| s == stream)
    }

    pub(crate) fn apply_held_changes(&mut self) {
        if self.held_changes.is_empty() && self.held_dropped.is_empty() {
            return;
        }
        self.held_count = 0;
        let mut streams = std::mem::take(&mut self.held_dropped);
        for stream in &streams {
            for key in self.queries.keys_of(stream) {
                if let Some(q) = self.queries.map.get_mut(&key) {
                    q.invalidated = true;
                }
            }
        }
        for (stream, changes) in std::mem::take(&mut self.held_changes) {
            self.apply_unwatched_changes(&stream, &changes);
            streams.insert(stream);
        }
        if !self.is_leader() {
            for stream in streams {
                self.ask_leader_for_stale(&stream);
            }
        }
    }

    /// A follower hidden for `hidden_sleep_ms` stops listening to the other tabs: nobody looks at it, and every
    /// message it would hear — changes, heartbeats, statuses — costs the page main-thread time and garbage for
    /// nothing. It tells the leader, which keeps its interests fresh (so waking is one `Data` away), drops what
    /// it held (the leader's data replaces it), then hears nothing, says nothing and has no timer: the page runs
    /// no task of ours until it wakes — when shown or when it takes the lead (`wake`). The others know it is
    /// alive by its tab lock (`on_tab_gone`).
    pub(crate) fn fall_asleep_if_due(&mut self) {
        let due = self.tabs.hidden_since.is_some_and(|since| self.now >= since + self.cfg.hidden_sleep_ms);
        if !due || self.tabs.asleep || self.env.visible || self.is_leader() || self.lead_after_load.is_some() {
            return;
        }
        self.tabs.hidden_since = None;
        self.tabs.asleep = true;
        self.tabs.peers.clear();
        // Kept, for a tab that wakes to lead while hidden: no tab was visible since then, as far as it knows (if
        // one was, since now); the others' presence corrects it once it listens again.
        self.tabs.no_visible_since.get_or_insert(self.now);
        self.tabs.leader_check = None;
        self.tabs.leader_hidden_since = None;
        self.held_changes.clear();
        self.held_dropped.clear();
        self.held_count = 0;
        // What it has is no longer kept current: if it wakes to lead, it must not share it as such.
        for q in self.queries.map.iter_mut().map(|(_, v)| v) {
            q.invalidated = true;
        }
        self.announce();
        self.out.push_back(Output::ListenToTabs(false));
    }

    /// Listens again (the caller announces it); the leader answers its presence, and this tab, seeing a leader
    /// it does not know, tells it what it needs (`send_interest`: the leader shares the data). The writes it
    /// holds may have settled while it slept: it reads the stored outbox first (`settled_while_asleep`) and
    /// hands the leader only those still stored (the leader re-sends the conflicts awaiting a choice).
    fn wake(&mut self) {
        self.tabs.asleep = false;
        self.out.push_back(Output::ListenToTabs(true));
        self.outbox_loads_issued += 1;
        self.woke_load = Some(self.outbox_loads_issued);
        self.out.push_back(Output::Load(Load::Outbox));
    }

    /// The stored outbox as read on waking: a write this tab holds (and knows stored) that is no longer stored
    /// settled while it slept — its entry is deleted when it settles. Forget it; hand the others to the leader.
    pub(crate) fn settled_while_asleep(&mut self, stored: &[PendingWrite<M>]) {
        let stored_ids: Set<uuid::Uuid> = stored.iter().map(|w| w.write_id).collect();
        let gone: Vec<uuid::Uuid> = self
            .outbox
            .writes
            .keys()
            .filter(|id| !stored_ids.contains(id) && !self.outbox.unstored.contains(id))
            .copied()
            .collect();
        for write_id in gone {
            self.settle(write_id, Settled::Earlier);
        }
        if !self.is_leader() && self.tabs.leader_known() {
            self.hand_over_writes();
        }
    }

    /// Hands the leader the writes this tab holds and has stored.
    fn hand_over_writes(&mut self) {
        let queued: Vec<PendingWrite<M>> =
            self.outbox.writes.values().filter(|w| !self.outbox.unstored.contains(&w.write_id)).cloned().collect();
        for write in queued {
            self.out.push_back(Output::Broadcast(TabMessage::HandOver { write }));
        }
    }

    /// Changes the leader shared, applied to this follower's copies.
    fn apply_shared_changes(&mut self, stream: &StreamName, changes: &[Change<M::Change>]) {
        self.apply_changes(stream, changes);
        self.ask_leader_for_stale(stream);
    }

    /// What could not be applied here: ask the leader for it.
    fn ask_leader_for_stale(&mut self, stream: &StreamName) {
        let stale: Vec<M::Key> = self
            .queries
            .map
            .iter()
            .filter(|(k, q)| M::stream(k) == *stream && q.invalidated && q.subscribers > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.ask_leader_to_refetch(key);
        }
    }

    pub(crate) fn on_tab(&mut self, msg: TabMessage<M>) {
        if self.tabs.asleep {
            return; // not listening (a driver closes the channel; a message already on its way is not heard)
        }
        self.metrics.tab_messages_in += 1;
        match msg {
            TabMessage::Presence { tab, visible, leader, sent_at } => {
                self.on_presence(tab, visible, leader, false, sent_at)
            }
            TabMessage::Asleep { tab, sent_at } => self.on_presence(tab, false, false, true, sent_at),
            TabMessage::Revoked { stream } => {
                if !self.is_leader() {
                    self.revoke_stream(&stream);
                }
            }
            TabMessage::SignedOut => self.sign_out(false),
            TabMessage::Goodbye { tab } => {
                self.tabs.peers.remove(&tab);
            }
            TabMessage::Interest { tab, keys, critical, copies } => {
                let peer = self.tabs.peers.entry(tab).or_insert(Peer::new(false, false, self.now));
                peer.interests = keys.iter().cloned().collect();
                peer.critical = critical.into_iter().collect();
                if self.is_leader() {
                    for key in keys {
                        let q = self.queries.map.entry(key.clone()).or_default();
                        q.unused_since = None;
                        if q.data.is_some() && !q.invalidated {
                            let copy = copies.iter().find(|c| c.key == key);
                            self.bring_up_to_date(key, copy);
                        } else if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        }
                    }
                }
            }
            TabMessage::Refetch { key, copy } => {
                if self.is_leader() {
                    let kept = self.kept_fresh(&key);
                    if let Some(q) = self.queries.map.get_mut(&key) {
                        if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        } else if !kept || q.invalidated {
                            q.invalidated = true;
                        } else if q.data.is_some() {
                            // Our copy is current (the feed keeps it so): the follower missed something (it was
                            // frozen, joined late, or heard a new leader's changes before its answer). Bring its
                            // copy up to date — the changes it lacks, or the data — rather than fetch again.
                            self.bring_up_to_date(key, copy.as_ref());
                        }
                    }
                }
            }
            TabMessage::Data { key, data, fetched_at: _ } => {
                if self.is_leader() {
                    return; // another leader during a handover; our own data is authoritative here
                }
                self.metrics.tab_data_in += 1;
                let q = self.queries.map.entry(key.clone()).or_default();
                let newer = q.not_older(&data) || q.data.as_ref().is_some_and(M::is_gone);
                if newer {
                    q.ahead_to = 0;
                    q.untrusted = false;
                    if q.data.as_ref() != Some(&data) {
                        q.data = Some(data);
                        self.to_notify.insert(key.clone());
                    }
                }
                self.shared_is_current(key);
            }
            TabMessage::Current { key, cursor, log_id, changes } => {
                if !self.is_leader() {
                    self.on_current(key, cursor, log_id, changes);
                }
            }
            TabMessage::Changes { stream, changes } => {
                if self.is_leader() {
                    // Another leader's, during a handover: this one has the changes from the server itself.
                } else if !self.env.visible {
                    self.hold_changes(stream, changes);
                } else {
                    self.apply_shared_changes(&stream, &changes);
                }
            }
            TabMessage::WriteQueued { write } => self.on_write_queued(write),
            TabMessage::HandOver { write } => {
                if self.is_leader() {
                    self.on_handed_over(write);
                }
            }
            TabMessage::WriteSettled { write_id, settled } => {
                if !self.is_leader() {
                    self.settle(write_id, settled);
                }
            }
            TabMessage::ConflictResolved { write_id, keep_mine } => {
                if self.is_leader() {
                    self.resolve_conflict(write_id, keep_mine);
                }
            }
            TabMessage::RetryNow => {
                if self.is_leader() {
                    self.retry_now();
                }
            }
            TabMessage::Status { status, sent_at, tab } => {
                if self.tabs.is_leader_tab(tab) == Some(false) {
                    return; // from a tab that is no longer the leader (its message was on the way)
                }
                let status = status.rebased(sent_at, self.now);
                if !self.is_leader() && self.status.leader.as_ref() != Some(&status) {
                    self.status.leader = Some(status);
                    self.notify_all_queries();
                }
            }
        }
    }

    /// The leader says the data at `cursor` is current, once `changes` are applied (those a copy lacked). A
    /// copy there is current (it is what a `Data` would bring); a visible follower's copy still behind it missed
    /// something — it asks for the data. A hidden follower holding changes of that stream is not concerned
    /// (what it holds brings it there when shown); other copies are ahead, or of another log.
    fn on_current(&mut self, key: M::Key, cursor: Cursor, log_id: Option<Uuid>, changes: Vec<Change<M::Change>>) {
        let stream = M::stream(&key);
        if !self.env.visible && self.holds_changes_of(&stream) {
            // Held with the rest, applied in order when shown (what it holds may not reach `cursor`: changes the
            // leader did not share while this tab was frozen and timed out).
            if !changes.is_empty() {
                self.hold_changes(stream, changes);
            }
            return;
        }
        let Some(data) = self.queries.map.get(&key).and_then(|q| q.data.as_ref()) else { return };
        if M::log_id(data) != log_id {
            return;
        }
        if !changes.is_empty() {
            self.apply_unwatched_changes(&stream, &changes);
        }
        let visible = self.env.visible;
        let Some(q) = self.queries.map.get_mut(&key) else { return };
        match q.data.as_ref().and_then(M::cursor) {
            Some(at) if at == cursor => {
                self.to_notify.insert(key.clone());
                self.shared_is_current(key);
            }
            Some(at) if at < cursor && visible && q.held() => {
                q.invalidated = true;
                self.to_notify.insert(key);
            }
            _ => {}
        }
    }

    /// The leader's `Data` or `Current` made this copy current: nothing to ask or retry for it.
    fn shared_is_current(&mut self, key: M::Key) {
        if let Some(q) = self.queries.map.get_mut(&key) {
            q.invalidated = false;
            q.current_at = Some(self.now);
            q.error = None;
            q.retry_at = None;
        }
        self.prefetch_done(&key);
    }

    fn on_presence(&mut self, tab: TabId, visible: bool, leader: bool, asleep: bool, sent_at: u64) {
        // When it was said, on this tab's clock (the tabs share the wall clock): a message held while this tab was
        // frozen is old news.
        let said_at =
            if sent_at > 0 { self.now.saturating_sub(self.epoch_now().saturating_sub(sent_at)) } else { self.now };
        if said_at + self.cfg.peer_timeout_ms < self.now {
            return;
        }
        let was = self.tabs.peers.get(&tab).map(|p| (p.visible, p.leader));
        if self.is_leader() && was != Some((visible, leader)) {
            // A tab that just appeared, was just shown or hidden, or gave up leading, hears at once where the
            // connection stands (it would show nothing, or another leader's state, until the status next changes)
            // and that this leader is awake (a shown tab whose leader does not answer takes over at once).
            self.announce();
            self.send_status();
            if self.signed_out {
                // A tab that was asleep when the session ended did not hear it.
                self.out.push_back(Output::Broadcast(TabMessage::SignedOut));
            }
        }
        if asleep && self.tabs.watching.insert(tab) {
            // Silent from now on: its tab lock will say when it is gone.
            self.out.push_back(Output::WatchTab { tab });
        }
        let peer = self.tabs.peers.entry(tab).or_insert(Peer::new(visible, leader, said_at));
        peer.visible = visible;
        peer.leader = leader;
        peer.asleep = asleep;
        peer.last_seen = peer.last_seen.max(said_at);
        let new_leader = leader && was.is_none_or(|(_, l)| !l);
        if new_leader && !self.is_leader() {
            // A (new) leader: tell it what this tab needs, and hand it the writes this tab holds (stored) — once it
            // knows which are still stored, if it just woke.
            self.send_interest();
            if self.woke_load.is_none() {
                self.hand_over_writes();
            }
        }
    }

    /// The heartbeat, silent peers, and whether any tab is visible (the hidden grace period starts when none is).
    pub(crate) fn presence_and_peers(&mut self) {
        if self.now >= self.tabs.next_presence {
            self.announce();
        }
        if self.tabs.asleep {
            return; // it hears no one: nobody to time out, no visibility to track
        }
        let timeout = self.cfg.peer_timeout_ms;
        let now = self.now;
        // A visible tab that fell silent was last visible when it timed out — which may be a while ago if this
        // tab was frozen and only noticed now: the grace period runs from then.
        let mut visible_until: Option<Millis> = None;
        self.tabs.peers.retain(|_, p| {
            let alive = p.timeout(timeout).is_none_or(|t| now < p.last_seen + t);
            if !alive && p.visible {
                visible_until = visible_until.max(Some(p.last_seen + timeout));
            }
            alive
        });
        if self.visible_somewhere() {
            if self.tabs.no_visible_since.take().is_some() {
                // Active again: follow the streams now rather than at the background schedule.
                for s in self.transport.streams.iter_mut().map(|(_, v)| v) {
                    s.next_longpoll = s.next_longpoll.min(now);
                }
            }
        } else if self.tabs.no_visible_since.is_none() {
            self.tabs.no_visible_since = Some(visible_until.map_or(now, |t| t.min(now)));
        }
    }

    /// A visible follower takes over from a hidden leader (after a short delay, so quick tab switches do not bounce
    /// the connection): the connection should live in a tab the user looks at. A tab that was just shown announced
    /// itself; if no leader answers within `LEADER_ANSWER_MS` (the browser froze the leader: it keeps the lock but
    /// does nothing), it takes over at once.
    pub(crate) fn seek_leadership(&mut self) {
        let tabs = &mut self.tabs;
        if !self.env.visible {
            tabs.leader_check = None;
            tabs.leader_hidden_since = None;
            return;
        }
        if let Some(check) = tabs.leader_check {
            let answered = tabs.peers.values().any(|p| p.leader && p.last_seen + TAB_CLOCK_SKEW_MS >= check.since);
            if answered {
                tabs.leader_check = None;
            } else if self.now >= check.due && !check.listened_again {
                // What this tab has not read yet may be the answer.
                tabs.leader_check =
                    Some(LeaderCheck { due: self.now + LISTEN_AGAIN_MS, listened_again: true, ..check });
            } else if self.now >= check.due {
                tabs.leader_check = None;
                tabs.leader_hidden_since = None;
                self.out.push_back(Output::ClaimLeadership);
                return;
            }
        }
        let leader_hidden = tabs.peers.values().any(|p| p.leader && !p.visible);
        if leader_hidden {
            let since = *tabs.leader_hidden_since.get_or_insert(self.now);
            if self.now >= since + LEADER_HANDOVER_DELAY_MS {
                tabs.leader_hidden_since = None;
                self.out.push_back(Output::ClaimLeadership);
            }
        } else {
            tabs.leader_hidden_since = None;
        }
    }

    /// The lock was granted: read the stored outbox (every tab's queued writes), then lead.
    pub(crate) fn on_lock_granted(&mut self) {
        if self.is_leader() {
            return;
        }
        if self.tabs.asleep {
            // Waking reads the stored outbox; that read is the one to lead after.
            self.wake();
            self.announce();
        } else {
            self.outbox_loads_issued += 1;
            self.out.push_back(Output::Load(Load::Outbox));
        }
        self.lead_after_load = Some(self.outbox_loads_issued);
    }

    pub(crate) fn on_lock_lost(&mut self) {
        self.lead_after_load = None;
        self.on_role(Role::Follower);
        self.out.push_back(Output::QueueForLock);
    }

    pub(crate) fn on_role(&mut self, role: Role) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.status.announced = false;
        self.announce();
        self.tabs.leader_check = None;
        self.tabs.leader_hidden_since = None;
        match role {
            Role::Leader => {
                if self.bug(crate::config::InjectedBug::NewLeaderDropsOutbox) {
                    self.outbox.writes.clear();
                }
                self.status.leader = None;
                self.transport_take_over();
                self.outbox.retry_at = self.now;
                // Followers re-announce what they need when they see the new leader's presence.
                for key in self.wanted_keys() {
                    if let Some(q) = self.queries.map.get_mut(&key)
                        && q.data.is_none()
                    {
                        q.invalidated = true;
                    }
                }
            }
            Role::Follower => {
                self.tabs.recent.clear();
                self.drop_socket("no longer the leader");
                self.cancel_long_polls();
                self.send_interest();
            }
        }
    }

    /// A tab this one watched is gone (its tab lock was released): an asleep one is forgotten, and with it its
    /// interests (the leader stops following what only it wanted). One that woke since is left to its presence
    /// timeout, as any speaking tab.
    pub(crate) fn on_tab_gone(&mut self, tab: TabId) {
        if self.bug(crate::config::InjectedBug::IgnoresTabGone) {
            return;
        }
        self.tabs.watching.remove(&tab);
        if self.tabs.peers.get(&tab).is_some_and(|p| p.asleep) {
            self.tabs.peers.remove(&tab);
        }
    }

    /// The tab is closing: its last word to the others (a crashed tab is noticed by its missing heartbeat).
    pub(crate) fn on_closing(&mut self) {
        self.out.push_back(Output::Broadcast(TabMessage::Goodbye { tab: self.tab }));
    }
}
