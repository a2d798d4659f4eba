//! The WebSocket to the feed: opened, sent on and closed when the engine says, its events given back as inputs.
//! Only the events of the current socket count (a replaced socket's late close is not news).

use syncline_engine::{Input, Model};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::{Runtime, window};

/// The open (or opening) socket and the handlers the browser calls.
pub(crate) struct Socket {
    ws: WebSocket,
    handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Socket {
    /// Detaches the handlers from the WebSocket and lets go of them only after the current task: the browser may
    /// still deliver an event queued for this socket (a close after we closed it), and a handler dropped under it
    /// throws "closure invoked recursively or after being dropped" — into every error monitor.
    fn retire(self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let handlers = self.handlers;
        spawn_local(async move { drop(handlers) });
    }
}

impl<M: Model> Runtime<M> {
    pub(crate) fn open_socket(&self) {
        let generation = self.inner.socket_generation.get() + 1;
        self.inner.socket_generation.set(generation);
        let location = window().location();
        let scheme = if location.protocol().unwrap_or_default() == "https:" { "wss" } else { "ws" };
        let feed = &self.inner.engine.borrow().config().endpoints.feed.clone();
        let url = format!("{scheme}://{}{feed}?client={}", location.host().unwrap_or_default(), self.inner.tab);
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => {
                self.input(Input::SocketClosed { code: None, reason: "could not create the WebSocket".into() });
                return;
            }
        };
        let current = {
            let rt = self.clone();
            move || rt.inner.socket_generation.get() == generation
        };
        let rt = self.clone();
        let is_current = current.clone();
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if is_current() {
                rt.input(Input::SocketOpened);
            }
        });
        let rt = self.clone();
        let is_current = current.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if !is_current() {
                return;
            }
            if let Some(text) = e.dyn_ref::<MessageEvent>().and_then(|m| m.data().as_string()) {
                rt.input(Input::SocketMessage(text));
            }
        });
        let rt = self.clone();
        let on_close = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            if !current() {
                return;
            }
            let socket = rt.inner.socket.borrow_mut().take();
            if let Some(socket) = socket {
                socket.retire(); // this very handler is among them: dropped after it returns
            }
            let (code, reason) =
                e.dyn_ref::<CloseEvent>().map(|c| (Some(c.code()), c.reason())).unwrap_or((None, String::new()));
            rt.input(Input::SocketClosed { code, reason });
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let replaced =
            self.inner.socket.borrow_mut().replace(Socket { ws, handlers: vec![on_open, on_message, on_close] });
        if let Some(old) = replaced {
            old.retire();
        }
    }

    pub(crate) fn send_socket(&self, text: &str) {
        if let Some(socket) = self.inner.socket.borrow().as_ref() {
            let _ = socket.ws.send_with_str(text);
        }
    }

    pub(crate) fn close_socket(&self, code: u16, reason: &str) {
        let socket = self.inner.socket.borrow_mut().take();
        if let Some(socket) = socket {
            self.inner.socket_generation.set(self.inner.socket_generation.get() + 1);
            // Browsers accept only 1000 and 3000–4999 from a page.
            let code = if code == 1000 || (3000..5000).contains(&code) { code } else { 1000 };
            let _ = socket.ws.close_with_code_and_reason(code, reason);
            socket.retire();
        }
    }
}
