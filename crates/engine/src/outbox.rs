//! The outbox: writes the user made that the server has not answered for good. Accepted with ids and base
//! versions; stored before they are shared or sent; sent by priority then Lamport order, each entity's writes in
//! order; retried with backoff (and at once when the server answers again); conflicts by the write's policy
//! (rebase, server wins, ask the user); settled in every tab by one path, whichever tab learns it first.
//!
//! State: [`Outbox`]. Policy: the `impl Engine` block below.

use crate::collections::{Map, Set};
use std::collections::VecDeque;

use serde_json::Value;
use syncline_protocol::{Change, StreamPosition, Write, WriteBatch, WriteBatchResult};
use uuid::Uuid;

use crate::config::InjectedBug;
use crate::engine::{Engine, Purpose, error_message};
use crate::model::{Model, fields_changed};
use crate::policy;
use crate::timers::{Soonest, Timer};
use crate::types::*;

/// The outbox's state.
#[derive(Debug)]
pub(crate) struct Outbox<M: Model> {
    pub writes: Map<Uuid, PendingWrite<M>>,
    /// Writes accepted here whose `OutboxPut` the driver has not yet confirmed (`Input::Persisted`). They are
    /// neither shared with other tabs nor sent until stored: otherwise the leader could settle a write and delete
    /// its stored entry before this tab's put lands, and the put would bring it back for good.
    pub unstored: Set<Uuid>,
    /// Writes this tab stored itself: it deletes their entries when it learns they settled (as the leader does),
    /// so an entry never outlives its write, whoever settles it.
    pub stored_here: Set<Uuid>,
    /// Rebased writes (new id → old id) whose old one settles once the new one is stored.
    pub replacing: Map<Uuid, Uuid>,
    /// Recently settled write ids: a `WriteQueued` for one of them is a late echo (sent before the settle crossed
    /// it) or comes from a tab that missed the settle.
    pub settled: VecDeque<Uuid>,
    /// The batch request in flight.
    pub batch: Option<RequestId>,
    pub failures: u32,
    pub retry_at: Millis,
    /// The Lamport clock ordering writes across this browser's tabs (`PendingWrite::lamport`).
    pub lamport: u64,
    /// The server was answering at the last reconcile (live feed, or long-polls getting through).
    pub reachable: bool,
}

impl<M: Model> Default for Outbox<M> {
    fn default() -> Self {
        Outbox {
            writes: Map::new(),
            unstored: Set::new(),
            stored_here: Set::new(),
            replacing: Map::new(),
            settled: VecDeque::new(),
            batch: None,
            failures: 0,
            retry_at: 0,
            lamport: 0,
            reachable: false,
        }
    }
}

/// Settled write ids remembered to recognise late echoes of them.
const SETTLED_REMEMBERED: usize = 1024;

impl<M: Model> Outbox<M> {
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Pending writes, in the order they will be sent.
    pub fn sorted(&self) -> Vec<&PendingWrite<M>> {
        let mut v: Vec<&PendingWrite<M>> = self.writes.values().collect();
        crate::collections::sort_by(&mut v, |a, b| {
            (a.priority, a.lamport, a.write_id).cmp(&(b.priority, b.lamport, b.write_id))
        });
        v
    }

    /// The pending write that creates this entity, if it has not reached the server yet.
    pub fn pending_create(&self, entity: Uuid) -> Option<&PendingWrite<M>> {
        self.writes.values().find(|w| M::creates(&w.op) && M::entity(&w.op) == entity)
    }

    fn remember_settled(&mut self, write_id: Uuid) {
        if self.settled.len() == SETTLED_REMEMBERED {
            self.settled.pop_front();
        }
        self.settled.push_back(write_id);
    }

    /// When the outbox next needs the engine (`leader`: the leader sends).
    pub fn poll_timeout(&self, leader: bool, soonest: &mut Soonest) {
        if leader && !self.writes.is_empty() && self.batch.is_none() {
            soonest.at(self.retry_at, Timer::OutboxRetry);
        }
    }
}

impl<M: Model> Engine<M> {
    /// What the user sees of `entity` now: what a write made now is based on, and what one made later from this
    /// (`Seen`) is based on — the server's data, and its version plus this browser's writes on it still ahead.
    /// (Versions count writes: a create makes version 1, each write adds one — see `Model`.) An entity this browser
    /// is still creating is at version 0 on the server, its create one of the writes ahead: a write on it is based
    /// on the version the create makes, not on none (which the server would take as "overwrite whatever is there",
    /// losing a change someone made once the create landed — what the simulation found).
    pub fn seen(&self, entity: Uuid) -> Seen {
        let data = self.queries.find_entity(entity);
        let on_server = match &data {
            Some(data) => data.get("version").and_then(Value::as_u64),
            None => self.outbox.pending_create(entity).map(|_| 0),
        };
        let version = on_server.map(|version| {
            let ahead =
                self.outbox.writes.values().filter(|w| M::entity(&w.op) == entity && w.conflict.is_none()).count();
            version + ahead as u64
        });
        Seen { entity, data, version }
    }

    /// A write based on what the user saw: `seen` (taken when they began changing the entity: an editor opened),
    /// or what the tab has now.
    pub(crate) fn write(
        &mut self,
        mut op: M::Op,
        priority: Priority,
        policy: ConflictPolicy,
        seen: Option<Seen>,
    ) -> Uuid {
        // Creates get their ids here, so later writes (and the optimistic view) can refer to the new entity.
        M::assign_ids(&mut op, &mut || uuid::Builder::from_random_bytes(rand::Rng::random(&mut self.rng)).into_uuid());
        let entity = M::entity(&op);
        let seen = seen.filter(|s| s.entity == entity && !self.bug(InjectedBug::EditBasedOnSaveTime));
        let seen = seen.unwrap_or_else(|| self.seen(entity));
        if let (Some(version), Some(slot @ None)) = (seen.version, M::base_version(&mut op)) {
            *slot = Some(version);
        }
        self.outbox.lamport += 1;
        let write = PendingWrite {
            write_id: self.new_write_id(),
            op,
            priority,
            policy,
            lamport: self.outbox.lamport,
            base: seen.data,
            conflict: None,
        };
        let id = write.write_id;
        if self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write: write.clone() }));
        }
        self.queue_write(write);
        id
    }

    /// A write accepted here: stored first; shared with the other tabs and sent once the driver confirms it is
    /// stored ([`Engine::on_persisted`]).
    fn queue_write(&mut self, write: PendingWrite<M>) {
        self.notify_affected(&write.op);
        self.out.push_back(Output::Persist(PersistOp::OutboxPut { write: write.clone() }));
        self.outbox.unstored.insert(write.write_id);
        if !self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            self.outbox.stored_here.insert(write.write_id);
        }
        self.outbox.writes.insert(write.write_id, write);
        self.notify_outbox();
    }

    fn notify_outbox(&mut self) {
        self.out.push_back(Output::Notify(Notification::Outbox { pending: self.outbox.len() }));
    }

    /// The driver stored a write (or tried: a failed put is reported too, and the write lives on in memory).
    pub(crate) fn on_persisted(&mut self, write_id: Uuid) {
        if !self.outbox.unstored.remove(&write_id) {
            return;
        }
        if let Some(old) = self.outbox.replacing.remove(&write_id) {
            self.settle(old, Settled::Rebased { new_write_id: write_id });
        }
        if self.bug(InjectedBug::FollowerPersistsAfterBroadcasting) {
            return; // it was shared when it was accepted
        }
        if let Some(write) = self.outbox.writes.get(&write_id).cloned() {
            self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write }));
        }
    }

    /// The stored outbox, read back (at start, and by a new leader before it leads): every tab's queued writes.
    pub(crate) fn on_outbox_loaded(&mut self, outbox: Vec<PendingWrite<M>>) {
        for w in outbox {
            self.outbox.lamport = self.outbox.lamport.max(w.lamport);
            if self.outbox.settled.contains(&w.write_id) {
                // Stored, yet known to have settled (its delete was lost, e.g. with the tab that issued it).
                self.out.push_back(Output::Persist(PersistOp::OutboxDelete { write_id: w.write_id }));
            } else if !self.outbox.writes.contains_key(&w.write_id) {
                self.notify_affected(&w.op);
                if !self.is_leader() && self.tabs.leader_known() {
                    // The leader may not know it (stored by a tab that closed) or may know it settled (this tab
                    // opened while the settle was on its way): hand it over, the leader sends it or says so.
                    self.out.push_back(Output::Broadcast(TabMessage::HandOver { write: w.clone() }));
                }
                self.outbox.writes.insert(w.write_id, w);
            }
        }
        self.notify_outbox();
    }

    /// Another tab queued a write (its stored entry is in the shared outbox).
    pub(crate) fn on_write_queued(&mut self, write: PendingWrite<M>) {
        self.outbox.lamport = self.outbox.lamport.max(write.lamport);
        if self.outbox.settled.contains(&write.write_id) {
            // A late echo, or a tab that read the stored outbox before the settle's delete landed and opened after
            // the settle was announced: tell it again, or it keeps the write forever.
            if self.is_leader() {
                let settled = Settled::Earlier;
                self.out.push_back(Output::Broadcast(TabMessage::WriteSettled { write_id: write.write_id, settled }));
            }
            return;
        }
        if let Some(conflict) = &write.conflict
            && self.outbox.writes.get(&write.write_id).is_none_or(|w| w.conflict.is_none())
        {
            self.out.push_back(Output::Notify(Notification::Conflict {
                write_id: write.write_id,
                current: conflict.current.clone(),
                needs_decision: true,
            }));
        }
        self.notify_affected(&write.op);
        self.outbox.writes.insert(write.write_id, write);
        self.notify_outbox();
    }

    /// The leader is handed a write a follower holds: settled already → say so again; new → take it and tell
    /// every tab it is queued; known → nothing to do.
    pub(crate) fn on_handed_over(&mut self, write: PendingWrite<M>) {
        if let Some(known) = self.outbox.writes.get(&write.write_id) {
            if known.conflict.is_some() && write.conflict.is_none() {
                // The tab did not hear of the conflict (it was asleep): tell it again (tabs that know ignore it).
                let write = known.clone();
                self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write }));
            }
            return;
        }
        let settled = self.outbox.settled.contains(&write.write_id);
        self.on_write_queued(write.clone());
        if !settled {
            self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write }));
        }
    }

    pub(crate) fn resolve_conflict(&mut self, write_id: Uuid, keep_mine: bool) {
        if !self.is_leader() {
            self.out.push_back(Output::Broadcast(TabMessage::ConflictResolved { write_id, keep_mine }));
            return;
        }
        let Some(w) = self.outbox.writes.get(&write_id).cloned() else { return };
        let Some(conflict) = w.conflict.clone() else { return };
        if keep_mine {
            self.rebase(w, &conflict);
        } else {
            self.settle(write_id, Settled::Overridden { conflict, chosen: true });
        }
    }

    pub(crate) fn on_write_result(&mut self, id: RequestId, ids: Vec<Uuid>, result: HttpResult) {
        if self.outbox.batch == Some(id) {
            self.outbox.batch = None;
        }
        let parsed = match result {
            HttpResult::Response { status: 200, body, .. } => serde_json::from_str::<WriteBatchResult>(&body).ok(),
            _ => None,
        };
        let Some(batch) = parsed else {
            self.outbox.failures += 1;
            let delay = policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, self.outbox.failures);
            self.outbox.retry_at = self.now + delay;
            return;
        };
        self.outbox.failures = 0;
        self.outbox.retry_at = self.now;
        for outcome in batch.results {
            if !ids.contains(&outcome.write_id) {
                continue;
            }
            let Some(w) = self.outbox.writes.get(&outcome.write_id).cloned() else { continue };
            match outcome.status {
                200..=299 => {
                    let settled = Settled::Applied { status: outcome.status, body: outcome.body, at: outcome.at };
                    self.settle(w.write_id, settled);
                }
                409 => {
                    self.metrics.conflicts += 1;
                    let current = outcome.body.get("current").cloned().unwrap_or(Value::Null);
                    self.on_conflict(w, Conflict { current, at: outcome.at });
                }
                500..=599 => {
                    self.outbox.retry_at = self.now + policy::retry_delay(&mut self.rng, &self.cfg, &self.prefs, 1);
                }
                status => self.settle(w.write_id, Settled::Rejected { status, body: outcome.body }),
            }
        }
    }

    fn on_conflict(&mut self, w: PendingWrite<M>, conflict: Conflict) {
        let theirs =
            w.base.as_ref().map(|b| fields_changed(b, &conflict.current)).unwrap_or_else(|| ["*".to_owned()].into());
        let mine = M::fields_written(&w.op);
        let overlap = mine.contains("*") || theirs.contains("*") || mine.iter().any(|f| theirs.contains(f));
        enum Decision {
            Rebase,
            Ask,
            ServerWins,
        }
        let decision = match (w.policy, overlap) {
            (ConflictPolicy::RebaseOrAsk | ConflictPolicy::RebaseOrServerWins, false) => Decision::Rebase,
            (ConflictPolicy::RebaseOrAsk | ConflictPolicy::AskUser, _) => Decision::Ask,
            (ConflictPolicy::RebaseOrServerWins | ConflictPolicy::ServerWins, _) => Decision::ServerWins,
        };
        match decision {
            Decision::Rebase => self.rebase(w, &conflict),
            Decision::ServerWins => self.settle(w.write_id, Settled::Overridden { conflict, chosen: false }),
            Decision::Ask => {
                self.apply_entity(&conflict.current, &conflict.at);
                self.out.push_back(Output::Notify(Notification::Conflict {
                    write_id: w.write_id,
                    current: conflict.current.clone(),
                    needs_decision: true,
                }));
                let mut held = w;
                held.conflict = Some(conflict);
                self.out.push_back(Output::Persist(PersistOp::OutboxPut { write: held.clone() }));
                self.out.push_back(Output::Broadcast(TabMessage::WriteQueued { write: held.clone() }));
                self.notify_affected(&held.op);
                self.outbox.writes.insert(held.write_id, held);
            }
        }
    }

    /// Re-sends a conflicting write on the current version, as a new write (the old id's outcome is the 409).
    fn rebase(&mut self, old: PendingWrite<M>, conflict: &Conflict) {
        let mut op = old.op.clone();
        if let Some(v) = conflict.current.get("version").and_then(Value::as_u64)
            && let Some(slot) = M::base_version(&mut op)
        {
            *slot = Some(v);
        }
        let new = PendingWrite {
            write_id: self.new_write_id(),
            op,
            base: Some(conflict.current.clone()),
            conflict: None,
            ..old.clone()
        };
        self.apply_entity(&conflict.current, &conflict.at);
        // The old write settles once the new one is stored: a tab that dies in between leaves the old one stored,
        // to be sent (and rebased) again, rather than neither.
        if let Some(w) = self.outbox.writes.remove(&old.write_id) {
            self.notify_affected(&w.op);
        }
        self.outbox.replacing.insert(new.write_id, old.write_id);
        self.queue_write(new);
    }

    /// A write ended — here, as the leader, or as the leader said: one path for both. Forget it, lay over what
    /// the server returned, tell the user what became of it, and delete its stored entry if this tab is one to
    /// (the leader, and the tab that stored it). The leader tells every tab.
    pub(crate) fn settle(&mut self, write_id: Uuid, settled: Settled) {
        self.outbox.remember_settled(write_id);
        self.outbox.unstored.remove(&write_id);
        let stored_here = self.outbox.stored_here.remove(&write_id);
        let leader = self.is_leader();
        if let Some(w) = self.outbox.writes.remove(&write_id) {
            self.notify_affected(&w.op);
            match &settled {
                Settled::Applied { body, at, .. } if !body.is_null() => {
                    if M::creates(&w.op) {
                        self.seed_created(body);
                    }
                    self.apply_entity(body, at);
                }
                Settled::Overridden { conflict, chosen } => {
                    self.apply_entity(&conflict.current, &conflict.at);
                    if !chosen {
                        self.out.push_back(Output::Notify(Notification::Conflict {
                            write_id,
                            current: conflict.current.clone(),
                            needs_decision: false,
                        }));
                    }
                }
                Settled::Rejected { body, .. } => {
                    let message = error_message(&body.to_string());
                    self.out.push_back(Output::Notify(Notification::WriteRejected { write_id, message }));
                }
                _ => {}
            }
            self.notify_outbox();
        }
        if leader || stored_here {
            // The follower's delete comes after its own put (its requests are carried out in order); the leader's
            // may land first.
            self.out.push_back(Output::Persist(PersistOp::OutboxDelete { write_id }));
        }
        if leader {
            self.out.push_back(Output::Broadcast(TabMessage::WriteSettled { write_id, settled }));
        }
    }

    /// A change on the feed that carries the id of a write still in the outbox: that write is applied (its answer
    /// was lost, or is still on its way). Settle it now, so its optimistic overlay does not outlive it — an item this
    /// browser created and another user deleted since must not come back as "not yet saved".
    pub(crate) fn confirm_from_feed(&mut self, changes: &[Change<M::Change>]) {
        let confirmed: Set<Uuid> = changes
            .iter()
            .filter_map(|c| c.write_id.filter(|w| self.outbox.writes.get(w).is_some_and(|w| w.conflict.is_none())))
            .collect();
        for write_id in confirmed {
            let own: Vec<Change<M::Change>> =
                changes.iter().filter(|c| c.write_id == Some(write_id)).cloned().collect();
            self.settle(write_id, Settled::Confirmed { at: StreamPosition::of(&own) });
        }
    }

    /// The server answers again (the feed is live, or a long-poll came back): what waits in the outbox goes now, not
    /// at the end of a backoff that was computed while nothing got through.
    pub(crate) fn retry_outbox_when_reachable(&mut self) {
        let reachable = self.live() || (self.transport.in_fallback() && self.transport.polled_ok());
        if reachable && !self.outbox.reachable {
            self.outbox.retry_at = self.outbox.retry_at.min(self.now);
            self.outbox.failures = 0;
        }
        self.outbox.reachable = reachable;
    }

    /// Sends the next batch: user-visible writes before background ones, each entity's in order, nothing behind a
    /// write that waits (to be stored, or for the user's decision on a conflict).
    pub(crate) fn flush_outbox(&mut self) {
        let ob = &self.outbox;
        if !self.env.online || ob.batch.is_some() || ob.writes.is_empty() || self.now < ob.retry_at {
            return;
        }
        // Ramp-up: catch up first, then send the outbox, then go live.
        if self.transport.opening() || (self.transport.socket_ready() && !self.live()) {
            return;
        }
        let mut batch: Vec<&PendingWrite<M>> = Vec::new();
        let mut blocked: Set<Uuid> = Set::new();
        let has_user_visible = ob.writes.values().any(|w| w.priority == Priority::UserVisible && w.conflict.is_none());
        for w in ob.sorted() {
            let entity = M::entity(&w.op);
            if ob.unstored.contains(&w.write_id) || w.conflict.is_some() {
                blocked.insert(entity); // later writes on it wait behind it
                continue;
            }
            let background_after_visible = w.priority == Priority::Background
                && has_user_visible
                && !batch.is_empty()
                && batch.iter().all(|b| b.priority == Priority::UserVisible);
            if blocked.contains(&entity) || background_after_visible {
                continue;
            }
            batch.push(w);
            if batch.len() == self.cfg.max_batch_writes {
                break;
            }
        }
        if batch.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = batch.iter().map(|w| w.write_id).collect();
        let body =
            WriteBatch { writes: batch.iter().map(|w| Write { write_id: w.write_id, op: w.op.clone() }).collect() };
        let body = serde_json::to_string(&body).expect("writes serialize");
        self.metrics.writes_sent += ids.len() as u64;
        let request = HttpRequest {
            method: "POST",
            path: self.cfg.endpoints.writes.clone(),
            body: Some(body),
            if_none_match: None,
        };
        let id = self.request(Purpose::Writes(ids), request);
        self.outbox.batch = Some(id);
    }

    // ---- what the UI reads --------------------------------------------------------------------------------------

    /// Pending writes, in the order they will be sent.
    pub fn pending(&self) -> Vec<&PendingWrite<M>> {
        self.outbox.sorted()
    }

    /// Pending writes on one entity.
    pub fn pending_for(&self, entity: Uuid) -> usize {
        self.outbox.writes.values().filter(|w| M::entity(&w.op) == entity).count()
    }

    /// Writes waiting for the user's decision.
    pub fn conflicts(&self) -> Vec<&PendingWrite<M>> {
        self.outbox.sorted().into_iter().filter(|w| w.conflict.is_some()).collect()
    }
}
