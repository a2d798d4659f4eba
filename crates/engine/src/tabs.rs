//! The other tabs of this browser: presence (who is there, visible, leading), what followers need from the
//! leader (interest, refetch, data, changes, writes), and who should lead — the lock is the arbiter, but a
//! visible tab takes over from a hidden leader (after a short delay) and at once from one that does not answer.
//!
//! State: [`Tabs`]. Policy: the `impl Engine` block below.

use std::collections::{BTreeMap, BTreeSet};

use syncline_protocol::{Change, StreamName};

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
    pub interests: BTreeSet<M::Key>,
    /// Those of its interests it marked critical.
    pub critical: BTreeSet<M::Key>,
    /// It said it fell asleep (`TabMessage::Asleep`): it hears nothing and speaks once a minute.
    pub asleep: bool,
}

impl<M: Model> Peer<M> {
    fn new(visible: bool, leader: bool, last_seen: Millis) -> Peer<M> {
        Peer { visible, leader, last_seen, interests: BTreeSet::new(), critical: BTreeSet::new(), asleep: false }
    }

    /// Silent this long, it is gone (crashed, or frozen by the browser).
    fn timeout(&self, awake: Millis) -> Millis {
        if self.asleep { ASLEEP_PEER_TIMEOUT_MS } else { awake }
    }
}

/// The tabs' state.
#[derive(Debug)]
pub(crate) struct Tabs<M: Model> {
    pub peers: BTreeMap<TabId, Peer<M>>,
    pub next_presence: Millis,
    /// Since when no tab (this one included) is visible.
    pub no_visible_since: Option<Millis>,
    /// Since when this visible follower has seen the leader hidden.
    pub leader_hidden_since: Option<Millis>,
    /// This follower was shown at this time and waits for a leader to answer its presence.
    pub leader_check_since: Option<Millis>,
    /// Since when this follower is hidden (it falls asleep `hidden_sleep_ms` later).
    pub hidden_since: Option<Millis>,
    /// This hidden follower stopped listening to the other tabs (`Engine::fall_asleep_if_due`).
    pub asleep: bool,
}

impl<M: Model> Tabs<M> {
    pub fn new(now: Millis) -> Tabs<M> {
        Tabs {
            peers: BTreeMap::new(),
            next_presence: now,
            no_visible_since: None,
            leader_hidden_since: None,
            leader_check_since: None,
            hidden_since: None,
            asleep: false,
        }
    }

    pub fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    pub fn leader_known(&self) -> bool {
        self.peers.values().any(|p| p.leader)
    }

    /// What the other tabs want kept fresh.
    pub fn interests(&self) -> BTreeSet<M::Key> {
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
        soonest.at(self.next_presence, Timer::Presence);
        if self.asleep {
            return; // its heartbeat, nothing else: it hears no one
        }
        let (cfg_peer_timeout, hidden_grace) = (cfg.peer_timeout_ms, cfg.hidden_grace_ms);
        for p in self.peers.values() {
            soonest.at(p.last_seen + p.timeout(cfg_peer_timeout), Timer::PeerTimeout);
        }
        soonest.maybe(self.hidden_since.map(|t| t + cfg.hidden_sleep_ms), Timer::Sleep);
        soonest.maybe(self.no_visible_since.map(|t| t + hidden_grace), Timer::HiddenGrace);
        soonest.maybe(self.leader_hidden_since.map(|t| t + LEADER_HANDOVER_DELAY_MS), Timer::LeaderHandover);
        soonest.maybe(self.leader_check_since.map(|t| t + LEADER_ANSWER_MS), Timer::LeaderAnswer);
    }
}

/// Changes a hidden follower holds at most (`hold_changes`); about an hour of one change a second.
pub(crate) const MAX_HELD_CHANGES: usize = 4_000;

/// An asleep follower's heartbeat. Browsers run a hidden page's timers at most once a minute after a while
/// (Chromium's intensive throttling), so more often would not be kept anyway.
pub(crate) const ASLEEP_PRESENCE_MS: Millis = 60_000;
/// An asleep tab silent this long is gone (a heartbeat may come up to a minute late under throttling).
const ASLEEP_PEER_TIMEOUT_MS: Millis = 3 * ASLEEP_PRESENCE_MS;

/// How long a visible follower waits before taking leadership from a hidden leader.
const LEADER_HANDOVER_DELAY_MS: Millis = 500;
/// A hidden leader answers a tab that was just shown within this (with its presence); one that does not is
/// frozen, and the shown tab takes over at once.
const LEADER_ANSWER_MS: Millis = 50;

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
            self.tabs.next_presence = self.now + ASLEEP_PRESENCE_MS;
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
        self.out.push_back(Output::Broadcast(TabMessage::Interest { tab: self.tab, keys, critical }));
    }

    /// The leader shares the changes the server sent with the other tabs — when there is one to hear them: a tab
    /// that appears later asks (`Interest`) and gets the data as it is then. (Alone, a tab would encode and post
    /// every change to nobody.)
    pub(crate) fn share_changes(&mut self, stream: StreamName, changes: Vec<Change<M::Change>>) {
        if self.tabs.has_peers() {
            self.out.push_back(Output::Broadcast(TabMessage::Changes { stream, changes }));
        }
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
                self.tabs.leader_check_since = Some(self.now);
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
        // Held while nobody looked: no change → screen latency to count for them.
        let unrendered = self.unrendered_since;
        for (stream, changes) in std::mem::take(&mut self.held_changes) {
            self.apply_changes(&stream, &changes);
            streams.insert(stream);
        }
        self.unrendered_since = unrendered;
        if !self.is_leader() {
            for stream in streams {
                self.ask_leader_for_stale(&stream);
            }
        }
    }

    /// A follower hidden for `hidden_sleep_ms` stops listening to the other tabs: nobody looks at it, and every
    /// message it would hear — changes, heartbeats, statuses — costs the page main-thread time and garbage for
    /// nothing. It tells the leader, which keeps its interests fresh (so waking is one `Data` away), drops what
    /// it held (the leader's data replaces it), hears nothing and says only its once-a-minute `Asleep`. It wakes
    /// when shown or when it takes the lead (`wake`).
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
        self.tabs.leader_check_since = None;
        self.tabs.leader_hidden_since = None;
        self.held_changes.clear();
        self.held_dropped.clear();
        self.held_count = 0;
        // What it has is no longer kept current: if it wakes to lead, it must not share it as such.
        for q in self.queries.map.values_mut() {
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
        let stored_ids: BTreeSet<uuid::Uuid> = stored.iter().map(|w| w.write_id).collect();
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
            self.out.push_back(Output::Broadcast(TabMessage::Refetch { key }));
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
            TabMessage::Interest { tab, keys, critical } => {
                let peer = self.tabs.peers.entry(tab).or_insert(Peer::new(false, false, self.now));
                peer.interests = keys.iter().cloned().collect();
                peer.critical = critical.into_iter().collect();
                if self.is_leader() {
                    for key in keys {
                        let q = self.queries.map.entry(key.clone()).or_default();
                        q.unused_since = None;
                        if let Some(data) = q.data.clone().filter(|_| !q.invalidated) {
                            let fetched_at = q.current_at.unwrap_or(self.now);
                            self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at }));
                        } else if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        }
                    }
                }
            }
            TabMessage::Refetch { key } => {
                if self.is_leader() {
                    let kept = self.kept_fresh(&key);
                    if let Some(q) = self.queries.map.get_mut(&key) {
                        if q.fetching.is_some() {
                            self.metrics.dedupe_hits += 1;
                        } else if !kept || q.invalidated {
                            q.invalidated = true;
                        } else if let Some(data) = q.data.clone() {
                            // Our copy is current (the feed keeps it so): the follower missed something (it was
                            // frozen, or joined late). Share it rather than fetch it again.
                            let fetched_at = q.current_at.unwrap_or(self.now);
                            self.out.push_back(Output::Broadcast(TabMessage::Data { key, data, fetched_at }));
                        }
                    }
                }
            }
            TabMessage::Data { key, data, fetched_at: _ } => {
                if self.is_leader() {
                    return; // another leader during a handover; our own data is authoritative here
                }
                let q = self.queries.map.entry(key.clone()).or_default();
                let newer = q.not_older(&data) || q.data.as_ref().is_some_and(M::is_gone);
                if newer {
                    q.ahead_to = 0;
                    if q.data.as_ref() != Some(&data) {
                        q.data = Some(data);
                        self.to_notify.insert(key.clone());
                    }
                }
                q.invalidated = false;
                q.current_at = Some(self.now);
                q.error = None;
                q.retry_at = None;
                self.prefetch_done(&key);
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
            let alive = now < p.last_seen + p.timeout(timeout);
            if !alive && p.visible {
                visible_until = visible_until.max(Some(p.last_seen + timeout));
            }
            alive
        });
        if self.visible_somewhere() {
            if self.tabs.no_visible_since.take().is_some() {
                // Active again: follow the streams now rather than at the background schedule.
                for s in self.transport.streams.values_mut() {
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
            tabs.leader_check_since = None;
            tabs.leader_hidden_since = None;
            return;
        }
        if let Some(since) = tabs.leader_check_since {
            let answered = tabs.peers.values().any(|p| p.leader && p.last_seen >= since);
            if answered {
                tabs.leader_check_since = None;
            } else if self.now >= since + LEADER_ANSWER_MS {
                tabs.leader_check_since = None;
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
        self.tabs.leader_check_since = None;
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
                self.drop_socket("no longer the leader");
                self.cancel_long_polls();
                self.send_interest();
            }
        }
    }

    /// The tab is closing: its last word to the others (a crashed tab is noticed by its missing heartbeat).
    pub(crate) fn on_closing(&mut self) {
        self.out.push_back(Output::Broadcast(TabMessage::Goodbye { tab: self.tab }));
    }
}
