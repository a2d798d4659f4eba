//! The few browser APIs used through small JavaScript helpers instead of web-sys: IndexedDB (web-sys exposes
//! only its callback-and-event form, which takes hundreds of lines of Rust for four operations) and Web Locks
//! (whose web-sys bindings are unstable and typed differently across versions). Each helper does one call and
//! reports back; every decision stays in the engine.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
let name = 'syncline';
let opened = null;
export function idb_use(db_name) {
  name = db_name;
  opened = null;
}
function db() {
  if (!opened) {
    opened = new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => {
        req.result.createObjectStore('outbox');
        req.result.createObjectStore('cache');
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return opened;
}
export async function idb_put(store, key, value) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, 'readwrite');
    tx.objectStore(store).put(value, key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}
export async function idb_delete(store, key) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, 'readwrite');
    tx.objectStore(store).delete(key);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}
export async function idb_clear(store) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction(store, 'readwrite');
    tx.objectStore(store).clear();
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}
export async function idb_get(store, key) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const req = d.transaction(store, 'readonly').objectStore(store).get(key);
    req.onsuccess = () => resolve(req.result === undefined ? null : req.result);
    req.onerror = () => reject(req.error);
  });
}
export async function idb_all(store) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const req = d.transaction(store, 'readonly').objectStore(store).getAll();
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
// Held until the tab goes away (the browser releases it then, crash included) or another tab steals it.
export function hold_lock(name, steal, granted, lost) {
  navigator.locks.request(name, steal ? { steal: true } : {}, () => {
    if (granted) granted();
    return new Promise(() => {});
  }).catch(() => { if (lost) lost(); });
}
// Granted when the tab holding `name` goes away (`hold_lock`), and released at once.
export function watch_lock(name, gone) {
  navigator.locks.request(name, () => { gone(); }).catch(() => {}); // released as soon as granted
}
export function connection_info() {
  const c = navigator.connection;
  return c ? { effectiveType: c.effectiveType || '4g', saveData: !!c.saveData, rtt: c.rtt ?? null } : null;
}
// Long tasks (the main thread busy for more than 50 ms), counted from page load: what the user felt as jank.
const longTasks = { count: 0, maxMs: 0, totalMs: 0 };
export function observe_long_tasks() {
  try {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        longTasks.count += 1;
        longTasks.totalMs += e.duration;
        longTasks.maxMs = Math.max(longTasks.maxMs, e.duration);
      }
    }).observe({ type: 'longtask', buffered: true });
    return true;
  } catch (_) {
    return false; // a browser without the Long Tasks API
  }
}
export function long_tasks() {
  return [longTasks.count, longTasks.maxMs, longTasks.totalMs];
}
export function on_connection_change(f) {
  if (navigator.connection) navigator.connection.addEventListener('change', f);
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    pub async fn idb_put(store: &str, key: &str, value: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch)]
    pub async fn idb_delete(store: &str, key: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch)]
    pub async fn idb_all(store: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch)]
    pub async fn idb_get(store: &str, key: &str) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(catch)]
    pub async fn idb_clear(store: &str) -> Result<JsValue, JsValue>;
    pub fn idb_use(db_name: &str);
    pub fn hold_lock(name: &str, steal: bool, granted: Option<&js_sys::Function>, lost: Option<&js_sys::Function>);
    pub fn watch_lock(name: &str, gone: &js_sys::Function);
    pub fn connection_info() -> JsValue;
    pub fn on_connection_change(f: &js_sys::Function);
    pub fn observe_long_tasks() -> bool;
    pub fn long_tasks() -> Vec<f64>;
}
