//! The other tabs of this browser: the Web Lock that elects the leader, and the BroadcastChannel the tabs talk
//! over. Queueing, stealing, granted and lost are the engine's inputs and outputs; this only carries them.

use syncline_engine::{Input, Model, TabMessage};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::MessageEvent;

use crate::{Runtime, js};

impl<M: Model> Runtime<M> {
    /// Queues for the leader lock (once: a request already queued stays queued), or steals it.
    pub(crate) fn request_lock(&self, steal: bool) {
        if !steal && self.inner.lock_queued.replace(true) {
            return;
        }
        let rt = self.clone();
        let granted = Closure::once_into_js(move || {
            if !steal {
                rt.inner.lock_queued.set(false);
            }
            rt.input(Input::LockGranted);
        });
        let rt = self.clone();
        let lost = Closure::once_into_js(move || rt.input(Input::LockLost));
        js::hold_lock(
            &format!("{}-leader", self.inner.namespace),
            steal,
            granted.unchecked_ref(),
            lost.unchecked_ref(),
        );
    }

    pub(crate) fn broadcast(&self, msg: &TabMessage<M>) {
        let text = serde_json::to_string(msg).expect("tab messages serialize");
        let _ = self.inner.channel.post_message(&JsValue::from_str(&text));
    }

    /// Messages from the other tabs become inputs.
    pub(crate) fn listen_to_tabs(&self) {
        let rt = self.clone();
        self.add_listener(self.inner.channel.as_ref(), "message", move |e| {
            let Some(text) = e.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) else { return };
            if let Ok(msg) = serde_json::from_str::<TabMessage<M>>(&text) {
                rt.input(Input::Tab(msg));
            }
        });
    }
}
