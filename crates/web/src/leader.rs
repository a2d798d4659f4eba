//! The other tabs of this browser: the Web Lock that elects the leader, and the BroadcastChannel the tabs talk
//! over, and the lock each tab holds for its life (another tab watching it learns when it is gone). Queueing,
//! stealing, granted, lost and gone are the engine's inputs and outputs; this only carries them.

use syncline_engine::{Input, Model, TabId, TabMessage};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BroadcastChannel, MessageEvent};

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
            Some(granted.unchecked_ref()),
            Some(lost.unchecked_ref()),
        );
    }

    /// The lock named for tab `tab` (`Output::HoldTabLock`, `Output::WatchTab`).
    fn tab_lock_name(&self, tab: TabId) -> String {
        format!("{}-tab-{tab}", self.inner.namespace)
    }

    /// Holds this tab's lock for its life: the other tabs know it lives while it is asleep and silent.
    pub(crate) fn hold_tab_lock(&self, tab: TabId) {
        js::hold_lock(&self.tab_lock_name(tab), false, None, None);
    }

    /// Queues for another tab's lock: granted (and released at once) when that tab is gone.
    pub(crate) fn watch_tab(&self, tab: TabId) {
        let rt = self.clone();
        let gone = Closure::once_into_js(move || rt.input(Input::TabGone { tab }));
        js::watch_lock(&self.tab_lock_name(tab), gone.unchecked_ref());
    }

    pub(crate) fn broadcast(&self, msg: &TabMessage<M>) {
        let text = JsValue::from_str(&serde_json::to_string(msg).expect("tab messages serialize"));
        if let Some(channel) = self.inner.channel.borrow().as_ref() {
            let _ = channel.post_message(&text);
            return;
        }
        // Asleep (not listening): a channel just for this message. What is posted before `close` is delivered.
        if let Ok(channel) = BroadcastChannel::new(&self.inner.namespace) {
            let _ = channel.post_message(&text);
            channel.close();
        }
    }

    /// Messages from the other tabs become inputs (`true`), or the channel is closed (`false`: the browser then
    /// delivers nothing to this tab, not even what was already on its way).
    pub(crate) fn listen_to_tabs(&self, listen: bool) {
        if !listen {
            if let Some(channel) = self.inner.channel.borrow_mut().take() {
                channel.set_onmessage(None);
                channel.close();
            }
            return;
        }
        if self.inner.channel.borrow().is_some() {
            return;
        }
        if self.inner.on_tab_message.borrow().is_none() {
            let rt = self.clone();
            let handler = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
                let Some(text) = e.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) else { return };
                if let Ok(msg) = serde_json::from_str::<TabMessage<M>>(&text) {
                    rt.input(Input::Tab(msg));
                }
            });
            *self.inner.on_tab_message.borrow_mut() = Some(handler);
        }
        let channel = BroadcastChannel::new(&self.inner.namespace).expect("BroadcastChannel");
        channel.set_onmessage(self.inner.on_tab_message.borrow().as_ref().map(|h| h.as_ref().unchecked_ref()));
        *self.inner.channel.borrow_mut() = Some(channel);
    }
}
