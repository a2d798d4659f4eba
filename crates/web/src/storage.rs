//! IndexedDB (the outbox and the query cache, shared by the browser's tabs) and `localStorage` (preferences):
//! the engine's `Persist` and `Load` outputs, carried out one at a time in the order asked — a delete never
//! overtakes the put it follows, a load sees every earlier write — with each answer given back as an input.

use std::collections::VecDeque;

use syncline_engine::{Input, Load, Model, PendingWrite, PersistOp, Preferences};
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::spawn_local;

use crate::{Runtime, js, window};

const PREFERENCES_KEY: &str = "syncline.preferences";

/// One request to IndexedDB.
pub(crate) enum Request<M: Model> {
    Persist(PersistOp<M>),
    Load(Load<M>),
}

/// The queue of IndexedDB requests of this tab.
pub(crate) struct Storage<M: Model> {
    queue: VecDeque<Request<M>>,
    busy: bool,
}

impl<M: Model> Default for Storage<M> {
    fn default() -> Self {
        Storage { queue: VecDeque::new(), busy: false }
    }
}

/// Names the IndexedDB database this tab uses (one per namespace: separate apps, later separate users).
pub(crate) fn use_database(name: &str) {
    js::idb_use(name);
}

impl<M: Model> Runtime<M> {
    /// Queues a request; one task carries them out in order.
    pub(crate) fn storage(&self, request: Request<M>) {
        let mut storage = self.inner.storage.borrow_mut();
        storage.queue.push_back(request);
        if std::mem::replace(&mut storage.busy, true) {
            return;
        }
        drop(storage);
        let rt = self.clone();
        spawn_local(async move {
            loop {
                let next = rt.inner.storage.borrow_mut().queue.pop_front();
                let Some(request) = next else { break };
                match request {
                    Request::Persist(op) => {
                        let stored = match &op {
                            PersistOp::OutboxPut { write } => Some(write.write_id),
                            _ => None,
                        };
                        persist(op).await;
                        if let Some(write_id) = stored {
                            rt.input(Input::Persisted { write_id });
                        }
                    }
                    Request::Load(Load::Outbox) => {
                        let outbox = stored_outbox::<M>().await;
                        rt.input(Input::OutboxLoaded { outbox });
                    }
                    Request::Load(Load::Cache { key }) => {
                        let data = cached::<M>(&key).await;
                        rt.input(Input::CacheLoaded { key, data });
                    }
                }
            }
            rt.inner.storage.borrow_mut().busy = false;
        });
    }
}

async fn strings(store: &str) -> Vec<String> {
    match js::idb_all(store).await {
        Ok(v) => js_sys::Array::from(&v).iter().filter_map(|x| x.as_string()).collect(),
        Err(_) => Vec::new(),
    }
}

async fn stored_outbox<M: Model>() -> Vec<PendingWrite<M>> {
    strings("outbox").await.iter().filter_map(|s| serde_json::from_str(s).ok()).collect()
}

fn cache_key<M: Model>(key: &M::Key) -> String {
    serde_json::to_string(key).expect("query keys serialize")
}

async fn cached<M: Model>(key: &M::Key) -> Option<M::Data> {
    let value = js::idb_get("cache", &cache_key::<M>(key)).await.ok()?;
    serde_json::from_str(&value.as_string()?).ok()
}

async fn persist<M: Model>(op: PersistOp<M>) {
    let result = match &op {
        PersistOp::OutboxPut { write } => {
            js::idb_put("outbox", &write.write_id.to_string(), &serde_json::to_string(write).expect("json")).await
        }
        PersistOp::OutboxDelete { write_id } => js::idb_delete("outbox", &write_id.to_string()).await,
        PersistOp::CachePut { key, data } => {
            js::idb_put("cache", &cache_key::<M>(key), &serde_json::to_string(data).expect("json")).await
        }
        PersistOp::CacheDelete { key } => js::idb_delete("cache", &cache_key::<M>(key)).await,
    };
    if let Err(e) = result {
        web_sys::console::warn_1(&JsValue::from_str(&format!("syncline: could not persist: {e:?}")));
    }
}

/// Preferences saved in `localStorage` (shared by every tab of the origin).
pub fn stored_preferences() -> Preferences {
    window()
        .local_storage()
        .ok()
        .flatten()
        .and_then(|s| s.get_item(PREFERENCES_KEY).ok().flatten())
        .and_then(|json| serde_json::from_str::<Preferences>(&json).ok())
        .filter(|p| p.validate().is_ok())
        .unwrap_or_default()
}

pub(crate) fn save_preferences(prefs: &Preferences) {
    if let Some(storage) = window().local_storage().ok().flatten() {
        let _ = storage.set_item(PREFERENCES_KEY, &serde_json::to_string(prefs).expect("prefs serialize"));
    }
}

/// Whether a `storage` event is about the preferences.
pub(crate) fn is_preferences_key(key: Option<&str>) -> bool {
    key == Some(PREFERENCES_KEY)
}
