//! What the browser says about where this tab stands — visibility, network, link quality, preferences set in
//! another tab, the tab closing — as inputs.

use syncline_engine::{EffectiveType, Input, LinkQuality, Model};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::storage::{is_preferences_key, stored_preferences};
use crate::{Runtime, js, window};

pub(crate) fn visible() -> bool {
    window().document().map(|d| d.visibility_state() == web_sys::VisibilityState::Visible).unwrap_or(true)
}

pub(crate) fn online() -> bool {
    window().navigator().on_line()
}

/// `navigator.connection`, where the browser has it.
pub(crate) fn link_quality() -> Option<LinkQuality> {
    let info = js::connection_info();
    if info.is_null() || info.is_undefined() {
        return None;
    }
    let get = |k: &str| js_sys::Reflect::get(&info, &JsValue::from_str(k)).ok();
    let effective_type = match get("effectiveType").and_then(|v| v.as_string()).as_deref() {
        Some("slow-2g") => EffectiveType::Slow2g,
        Some("2g") => EffectiveType::TwoG,
        Some("3g") => EffectiveType::ThreeG,
        _ => EffectiveType::FourG,
    };
    Some(LinkQuality {
        effective_type,
        rtt_ms: get("rtt").and_then(|v| v.as_f64()).map(|r| r as u32),
        save_data: get("saveData").and_then(|v| v.as_bool()).unwrap_or(false),
    })
}

impl<M: Model> Runtime<M> {
    pub(crate) fn listen_to_environment(&self) {
        let document = window().document().expect("document");
        let rt = self.clone();
        self.add_listener(document.as_ref(), "visibilitychange", move |_| {
            rt.input(Input::Visibility { visible: visible() })
        });
        let rt = self.clone();
        self.add_listener(window().as_ref(), "online", move |_| rt.input(Input::Network { online: true }));
        let rt = self.clone();
        self.add_listener(window().as_ref(), "offline", move |_| rt.input(Input::Network { online: false }));
        let rt = self.clone();
        self.add_listener(window().as_ref(), "storage", move |e| {
            let Some(e) = e.dyn_ref::<web_sys::StorageEvent>() else { return };
            if is_preferences_key(e.key().as_deref()) {
                rt.input(Input::Preferences(stored_preferences()));
            }
        });
        let rt = self.clone();
        self.add_listener(window().as_ref(), "pagehide", move |_| rt.input(Input::Closing));
        let rt = self.clone();
        let on_link = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if let Some(link) = link_quality() {
                rt.input(Input::Link(link));
            }
        });
        js::on_connection_change(on_link.as_ref().unchecked_ref());
        self.inner.keep.borrow_mut().push(on_link);
    }

    pub(crate) fn add_listener(&self, target: &web_sys::EventTarget, event: &str, f: impl FnMut(JsValue) + 'static) {
        let closure = Closure::<dyn FnMut(JsValue)>::new(f);
        let _ = target.add_event_listener_with_callback(event, closure.as_ref().unchecked_ref());
        self.inner.keep.borrow_mut().push(closure);
    }
}
