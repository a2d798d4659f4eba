//! What the engine needs to know about an app's data — and all it knows. The engine follows streams of
//! changes, caches query data, lays pending writes over it and sends writes; what a query, a write or a change
//! *means* is the app's, told through this trait. The Kanban app's model is `syncline_kanban::Kanban`; the
//! engine's tests also drive a shared to-do list.

use crate::collections::Set;
use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use syncline_protocol::{Change, Cursor, StreamName};
use uuid::Uuid;

/// What applying a change or an entity did to a query's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// It cannot be applied from its own data (e.g. an item in a list this copy does not have): the query must be
    /// refetched.
    CannotApply,
}

/// How the engine treats a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryOptions {
    /// Changes on its stream can be applied to its data (otherwise it is refetched when its stream changes).
    pub takes_deltas: bool,
    /// Its data is saved for the next page load (`PersistOp::CachePut`).
    pub persisted: bool,
}

/// An app's data, as the sync engine sees it. Implemented by a marker type (e.g. `struct Kanban;`), which the
/// engine's types are generic over.
pub trait Model: Debug + Clone + PartialEq + 'static {
    /// A query: what a view reads.
    type Key: Clone + Ord + Debug + Serialize + DeserializeOwned;
    /// A query's data as the server gave it.
    type Data: Clone + PartialEq + Debug + Serialize + DeserializeOwned;
    /// A write.
    type Op: Clone + PartialEq + Debug + Serialize + DeserializeOwned;
    /// What a change on the feed says (`Change::op`).
    type Change: Clone + PartialEq + Debug + Serialize + DeserializeOwned;

    // ---- queries ----------------------------------------------------------------------------------------------

    /// The stream whose changes concern this query.
    fn stream(key: &Self::Key) -> StreamName;
    fn options(key: &Self::Key) -> QueryOptions;
    /// A query whose change makes this one stale (this one cannot follow it by deltas).
    fn depends_on(key: &Self::Key) -> Option<Self::Key>;
    /// The path (and query string) that fetches it with a GET.
    fn fetch_path(key: &Self::Key) -> String;
    /// The data in a 200 answer's body.
    fn parse(key: &Self::Key, body: &str) -> Result<Self::Data, String>;
    /// The data of a query the server answered 404 for: it is gone.
    fn gone(key: &Self::Key) -> Self::Data;
    fn is_gone(data: &Self::Data) -> bool;
    /// Where the data stands in its stream (`None` if it follows none, e.g. gone).
    fn cursor(data: &Self::Data) -> Option<Cursor>;
    /// The change log its cursor belongs to, when the data says.
    fn log_id(data: &Self::Data) -> Option<Uuid>;
    /// Applies one change, which the engine has checked continues the data's cursor, and moves the cursor.
    fn apply_change(data: &mut Self::Data, change: &Change<Self::Change>) -> Applied;
    /// Lays an entity the server returned for a write (as written, or the current one of a conflict) over the
    /// data, if the data holds that entity and the version is newer.
    fn apply_entity(data: &mut Self::Data, entity: &Value) -> Applied;
    /// The entity with this id as the data holds it, as JSON: a write's base, to tell what changed since. Its
    /// `version` field (a number, when the entity has one) is the base version of writes on it. Versions count
    /// the entity's writes: its create makes version 1, and each write adds one (the engine bases a write on the
    /// version plus this browser's writes on the entity still ahead).
    fn find_entity(data: &Self::Data, id: Uuid) -> Option<Value>;
    /// The entity whose creation brings this query into being: while that create is pending here, the query is
    /// not fetched (the server does not have it yet).
    fn created_by(key: &Self::Key) -> Option<Uuid>;
    /// The data of a query about something this browser just created, once the server confirmed it (`entity`),
    /// when nothing was fetched yet: e.g. an empty document at cursor 0 of its own stream, followed from there.
    fn seed(key: &Self::Key, entity: &Value, log_id: Uuid) -> Option<Self::Data>;

    // ---- writes -----------------------------------------------------------------------------------------------

    /// Gives the entities a write creates their ids, so later writes (and the optimistic view) can refer to them.
    fn assign_ids(op: &mut Self::Op, new_id: &mut dyn FnMut() -> Uuid);
    /// The entity a write is about: writes on one entity go out in order, pending marks are per entity.
    fn entity(op: &Self::Op) -> Uuid;
    /// Whether the write creates its entity.
    fn creates(op: &Self::Op) -> bool;
    /// The write's `base_version`, for the kinds of write that have one.
    fn base_version(op: &mut Self::Op) -> Option<&mut Option<u64>>;
    /// The fields it changes, for telling a conflict apart from a concurrent edit of other fields (`"*"`: all).
    fn fields_written(op: &Self::Op) -> Set<String>;
    /// Whether it changes what this query shows (its views are notified when it is queued or settles).
    fn affects(key: &Self::Key, data: Option<&Self::Data>, op: &Self::Op) -> bool;
    /// The data as the user should see it: `data` (what the server gave, if anything) with the pending writes
    /// laid over in order. `None`: nothing to show (gone, or never fetched and not created here).
    fn overlay(key: &Self::Key, data: Option<&Self::Data>, pending: &[&Self::Op]) -> Option<Self::Data>;
}

/// The fields that differ between two versions of an entity, `version` aside (`"*"` when they are not objects).
pub fn fields_changed(base: &Value, current: &Value) -> Set<String> {
    let (Some(a), Some(b)) = (base.as_object(), current.as_object()) else { return ["*".to_owned()].into() };
    a.keys().chain(b.keys()).filter(|k| k.as_str() != "version" && a.get(*k) != b.get(*k)).cloned().collect()
}
