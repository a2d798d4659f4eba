//! The list of boards, with a form to create one.

use leptos::prelude::*;
use leptos::task::spawn_local;
use syncline_protocol::{Board, BoardList, CreateBoard};

use crate::http::{self, CallError};

#[component]
pub fn BoardList() -> impl IntoView {
    let boards = RwSignal::new(None::<Result<Vec<Board>, CallError>>);
    let reload = move || {
        spawn_local(async move {
            let list = http::get::<BoardList>("/api/boards".into()).await;
            boards.set(Some(list.map(|l| l.boards)));
        })
    };
    reload();

    let new_title = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let title = new_title.get_untracked();
        spawn_local(async move {
            match http::post::<_, Board>("/api/boards".into(), CreateBoard { id: None, title }).await {
                Ok(board) => {
                    new_title.set(String::new());
                    error.set(None);
                    crate::navigate(&format!("/boards/{}", board.id));
                }
                Err(e) => error.set(Some(e.0)),
            }
        });
    };

    view! {
        <section class="boards">
            <h1>"Boards"</h1>
            {move || match boards.get() {
                None => view! { <p class="notice">"Loading…"</p> }.into_any(),
                Some(Err(e)) => view! { <p class="error" role="alert">{e.0}</p> }.into_any(),
                Some(Ok(list)) if list.is_empty() => {
                    view! { <p class="notice">"No boards yet. Create the first one below."</p> }.into_any()
                }
                Some(Ok(list)) => view! {
                    <ul class="board-list">
                        {list.into_iter().map(|b| view! {
                            <li><a class="board-link" href=format!("#/boards/{}", b.id)>{b.title}</a></li>
                        }).collect_view()}
                    </ul>
                }.into_any(),
            }}
            <form class="inline-form" on:submit=create>
                <label for="new-board-title" class="visually-hidden">"New board title"</label>
                <input id="new-board-title" placeholder="New board title" maxlength="200"
                    prop:value=move || new_title.get()
                    on:input=move |ev| new_title.set(event_target_value(&ev)) />
                <button type="submit">"Create board"</button>
            </form>
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
        </section>
    }
}
