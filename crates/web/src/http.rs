//! `fetch`, for the engine's requests: each with an `AbortController` (so the engine can cancel it), its answer
//! given back as an input — always, even when the request could not be made. And [`request`], for what an app
//! asks outside the engine (signing in and out).

use syncline_engine::{HttpRequest, HttpResult, Input, Model, RequestId};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::AbortController;

use crate::{Runtime, window};

impl<M: Model> Runtime<M> {
    pub(crate) fn fetch(&self, id: RequestId, request: HttpRequest) {
        // Without a controller the request cannot be cancelled, but it is still made, and still answered.
        let controller = AbortController::new().ok();
        self.inner.fetches.borrow_mut().insert(id, controller.clone());
        let init = web_sys::RequestInit::new();
        init.set_method(request.method);
        if let Some(c) = &controller {
            init.set_signal(Some(&c.signal()));
        }
        let headers = web_sys::Headers::new().ok();
        if let Some(headers) = &headers {
            let _ = headers.set("x-syncline-client", &self.inner.tab.to_string());
            if let Some(tag) = &request.if_none_match {
                let _ = headers.set("if-none-match", tag);
            }
            if request.body.is_some() {
                let _ = headers.set("content-type", "application/json");
            }
            init.set_headers(headers);
        }
        if let Some(body) = &request.body {
            init.set_body(&JsValue::from_str(body));
        }
        let rt = self.clone();
        spawn_local(async move {
            let result = match web_sys::Request::new_with_str_and_init(&request.path, &init) {
                Err(e) => HttpResult::NetworkError(format!("the request could not be made: {e:?}")),
                Ok(req) => match JsFuture::from(window().fetch_with_request(&req)).await {
                    Err(e) => HttpResult::NetworkError(e.as_string().unwrap_or_else(|| "fetch failed".into())),
                    Ok(resp) => {
                        let resp: web_sys::Response = resp.unchecked_into();
                        let status = resp.status();
                        let etag = resp.headers().get("etag").ok().flatten();
                        let body = match resp.text() {
                            Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
                            Err(_) => String::new(),
                        };
                        HttpResult::Response { status, body, etag }
                    }
                },
            };
            // Cancelled meanwhile: the engine no longer wants to hear of it.
            if rt.inner.fetches.borrow_mut().remove(&id).is_some() {
                rt.input(Input::Http { id, result });
            }
        });
    }

    /// Clears this user's cached query data from IndexedDB (signing out): the stored outbox stays, for them.
    pub async fn forget_cached_data(&self) {
        let _ = crate::js::idb_clear("cache").await;
    }

    pub(crate) fn cancel_fetch(&self, id: RequestId) {
        if let Some(Some(c)) = self.inner.fetches.borrow_mut().remove(&id) {
            c.abort();
        }
    }
}

/// A JSON request outside the engine (e.g. signing in): `(status, body)`, or why it could not be made.
pub async fn request(method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    if let Some(body) = body {
        let headers = web_sys::Headers::new().map_err(|e| format!("{e:?}"))?;
        let _ = headers.set("content-type", "application/json");
        init.set_headers(&headers);
        init.set_body(&JsValue::from_str(body));
    }
    let req = web_sys::Request::new_with_str_and_init(path, &init).map_err(|e| format!("{e:?}"))?;
    let resp =
        JsFuture::from(window().fetch_with_request(&req)).await.map_err(|_| "the server is out of reach".to_owned())?;
    let resp: web_sys::Response = resp.unchecked_into();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    Ok((resp.status(), text))
}
