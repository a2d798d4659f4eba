//! Who is signed in: the sign-in / sign-up screen, signing out, and starting over when the session ends.
//!
//! The app asks the server who is signed in at start (`GET /api/auth/me`). Offline, it trusts the last user
//! this browser signed in as (kept in `localStorage`), so their boards still open from the cache and their writes
//! queue — under their own namespace, never another account's. Signing out ends the session on the server (which
//! closes every feed that used it), forgets this user's cached boards (their unsent writes stay stored for their
//! next sign-in) and reloads to the sign-in screen; so does a session that ends elsewhere.

use std::cell::RefCell;

use leptos::prelude::*;
use syncline_engine::Notification;
use syncline_kanban::{Credentials, User};
use syncline_web::http::request;

use crate::rt;

const LAST_USER_KEY: &str = "syncline.user";

thread_local! {
    static ME: RefCell<Option<User>> = const { RefCell::new(None) };
    /// This tab is signing out itself (it clears the cache first, then reloads).
    static SIGNING_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The signed-in user (the app mounts only once it is known).
pub(crate) fn me() -> User {
    ME.with(|m| m.borrow().clone()).expect("signed in before the app mounts")
}

pub(crate) fn set_me(user: User) {
    remember(Some(&user));
    ME.with(|m| *m.borrow_mut() = Some(user));
}

fn remember(user: Option<&User>) {
    let Some(storage) = window().local_storage().ok().flatten() else { return };
    match user {
        Some(u) => {
            let _ = storage.set_item(LAST_USER_KEY, &serde_json::to_string(u).expect("json"));
        }
        None => {
            let _ = storage.remove_item(LAST_USER_KEY);
        }
    }
}

fn remembered() -> Option<User> {
    let json = window().local_storage().ok().flatten()?.get_item(LAST_USER_KEY).ok().flatten()?;
    serde_json::from_str(&json).ok()
}

/// The signed-in user: the server's answer, or — when it cannot be reached — the last user of this browser.
pub(crate) async fn who_is_signed_in() -> Option<User> {
    match request("GET", "/api/auth/me", None).await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        Ok((401, _)) => {
            remember(None);
            None
        }
        _ => remembered(),
    }
}

/// Back to the sign-in screen when the session ends (signed out in another tab, a password change elsewhere,
/// expiry): the engine has stopped using the network.
pub(crate) fn sign_in_again_when_the_session_ends() {
    rt().on_notify(|n| {
        if matches!(n, Notification::SignedOut) && !SIGNING_OUT.with(|s| s.get()) {
            remember(None);
            let _ = window().location().reload();
        }
    });
}

/// Signs out: the server ends the session (and its feeds), this user's cached boards are forgotten here, and the
/// page starts over at the sign-in screen.
pub(crate) fn sign_out() {
    SIGNING_OUT.with(|s| s.set(true));
    // Nothing more goes out under this account from any of its tabs.
    rt().sign_out();
    wasm_bindgen_futures::spawn_local(async {
        let ended = matches!(request("POST", "/api/auth/signout", None).await, Ok((204 | 401, _)));
        rt().forget_cached_data().await;
        remember(None);
        let _ = window().location().set_hash("/");
        if ended {
            let _ = window().location().reload();
        } else {
            // Offline: a reload would not load; show the sign-in screen in place (signing in reloads).
            if let Some(body) = document().body() {
                body.set_inner_html("");
            }
            leptos::mount::mount_to_body(SignIn);
        }
    });
}

/// The sign-in screen, which also creates accounts.
#[component]
pub fn SignIn() -> impl IntoView {
    let username = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let submit = move |path: &'static str| {
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        error.set(None);
        let body = Credentials { username: username.get_untracked(), password: password.get_untracked() };
        let body = serde_json::to_string(&body).expect("json");
        wasm_bindgen_futures::spawn_local(async move {
            match request("POST", path, Some(&body)).await {
                Ok((200 | 201, body)) => {
                    if let Ok(user) = serde_json::from_str::<User>(&body) {
                        remember(Some(&user));
                    }
                    let _ = window().location().reload();
                }
                Ok((_, body)) => {
                    let message = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| "that did not work; try again".into());
                    error.set(Some(message));
                    busy.set(false);
                }
                Err(e) => {
                    error.set(Some(format!("{e}: check your connection")));
                    busy.set(false);
                }
            }
        });
    };
    view! {
        <header class="topbar">
            <span class="brand">"syncline"</span>
            <span class="tagline">"Kanban, kept fresh"</span>
        </header>
        <main>
            <section class="sign-in">
                <h1>"Sign in"</h1>
                <form id="sign-in-form" class="stacked-form"
                    on:submit=move |ev: leptos::ev::SubmitEvent| { ev.prevent_default(); submit("/api/auth/signin") }>
                    <label for="username">"Username"</label>
                    <input id="username" name="username" autocomplete="username" required minlength="3" maxlength="32"
                        prop:value=move || username.get() on:input=move |ev| username.set(event_target_value(&ev)) />
                    <label for="password">"Password"</label>
                    <input id="password" name="password" type="password" autocomplete="current-password" required
                        minlength="8" prop:value=move || password.get()
                        on:input=move |ev| password.set(event_target_value(&ev)) />
                    <div class="form-actions">
                        <button id="sign-in" type="submit" prop:disabled=move || busy.get()>"Sign in"</button>
                        <button id="sign-up" type="button" prop:disabled=move || busy.get()
                            on:click=move |_| submit("/api/auth/signup")>"Create account"</button>
                    </div>
                </form>
                <p class="hint">"New here? Choose a username and a password of at least 8 characters, then “Create account”."</p>
                {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            </section>
        </main>
    }
}
