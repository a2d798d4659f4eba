//! Walking-skeleton browser tests: the Kanban app in a real Chromium against the real server and SQLite file,
//! and proof that the harness helpers do what they say.

use std::time::Duration;

use syncline_e2e::{Harness, Tab, TestBrowser, repo_root};
use syncline_kanban::{BoardSnapshot, CreateBoard, CreateCard, CreateColumn, WriteOp};
use syncline_server::store;

const WAIT: Duration = Duration::from_secs(10);
/// The page's sync runtime has no write left to send.
const SAVED: &str = "window.__syncline && JSON.parse(window.__syncline()).pending === 0";

struct Seeded {
    board: uuid::Uuid,
    columns: Vec<uuid::Uuid>,
}

/// A board with the given columns, each with the given card titles, written without HTTP.
async fn seed(h: &Harness, title: &str, columns: &[(&str, &[&str])]) -> Seeded {
    let id = |v: serde_json::Value| uuid::Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let board =
        id(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: title.into() } }).await.unwrap());
    let mut ids = Vec::new();
    for (col_title, cards) in columns {
        let body = CreateColumn { id: None, title: col_title.to_string() };
        let col = id(h.write(WriteOp::CreateColumn { board_id: board, body }).await.unwrap());
        for card in cards.iter() {
            let body = CreateCard { id: None, title: card.to_string(), description: String::new() };
            h.write(WriteOp::CreateCard { column_id: col, body }).await.unwrap();
        }
        ids.push(col);
    }
    Seeded { board, columns: ids }
}

async fn snapshot(h: &Harness, board: uuid::Uuid) -> BoardSnapshot {
    let log_id = h.store().log_id();
    h.store()
        .transaction(move |tx| store::board_snapshot(tx, board, log_id))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .unwrap()
}

fn card_in_column(column: uuid::Uuid, title: &str) -> String {
    format!(
        "[...document.querySelectorAll('[data-column-id=\"{column}\"] .card-title')].some(e => e.textContent === {})",
        serde_json::to_string(title).unwrap()
    )
}

async fn open_board(browser: &TestBrowser, h: &Harness, board: uuid::Uuid) -> Tab {
    let tab = browser.open(&h.url(&format!("/#/boards/{board}"))).await.unwrap();
    tab.wait_for_selector(".column", WAIT).await.unwrap();
    tab
}

#[tokio::test]
async fn a_card_created_in_the_ui_survives_a_reload_and_is_in_the_sqlite_file() {
    let h = Harness::start().await.unwrap();
    let seeded = seed(&h, "Launch", &[("Todo", &[]), ("Done", &[])]).await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = open_board(&browser, &h, seeded.board).await;

    let todo = seeded.columns[0];
    tab.type_into(&format!("#new-card-{todo}"), "Book the venue").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for(&card_in_column(todo, "Book the venue"), WAIT).await.unwrap();

    // Shown at once (optimistic); saved when the outbox has drained.
    tab.wait_for(SAVED, WAIT).await.unwrap();
    tab.reload().await.unwrap();
    tab.wait_for(&card_in_column(todo, "Book the venue"), WAIT).await.unwrap();

    // Read the SQLite file on its own connection: the card is on disk, in the right column.
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let column: String =
        conn.query_row("SELECT column_id FROM cards WHERE title = 'Book the venue'", [], |r| r.get(0)).unwrap();
    assert_eq!(column, todo.to_string());
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_card_moved_with_the_keyboard_lands_in_the_new_column() {
    let h = Harness::start().await.unwrap();
    let seeded = seed(&h, "Keys", &[("Todo", &["First", "Second"]), ("Doing", &["Other"]), ("Done", &[])]).await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = open_board(&browser, &h, seeded.board).await;
    let (todo, doing) = (seeded.columns[0], seeded.columns[1]);
    let second = snapshot(&h, seeded.board).await.cards.iter().find(|c| c.title == "Second").unwrap().id;

    // Focus the card, pick it up with Space, move it right, then up, then put it down.
    tab.exec(&format!("document.querySelector('[data-card-id=\"{second}\"]').focus()")).await.unwrap();
    tab.press(" ").await.unwrap();
    tab.wait_for(
        &format!("document.querySelector('[data-card-id=\"{second}\"]').getAttribute('aria-grabbed') === 'true'"),
        WAIT,
    )
    .await
    .unwrap();
    tab.press("ArrowRight").await.unwrap();
    tab.wait_for(&card_in_column(doing, "Second"), WAIT).await.unwrap();
    // Same index (1) in the new column: after "Other". Focus stays on the moved card, so keep moving.
    tab.wait_for(&format!("document.activeElement && document.activeElement.dataset.cardId === '{second}'"), WAIT)
        .await
        .unwrap();
    tab.press("ArrowUp").await.unwrap();
    tab.wait_for(
        &format!("[...document.querySelectorAll('[data-column-id=\"{doing}\"] .card-title')].map(e => e.textContent).join() === 'Second,Other'"),
        WAIT,
    )
    .await
    .unwrap();
    // Focus follows the card to its new place (restored on the next frame).
    tab.wait_for(&format!("document.activeElement && document.activeElement.dataset.cardId === '{second}'"), WAIT)
        .await
        .unwrap();
    tab.press(" ").await.unwrap();
    tab.wait_for(SAVED, WAIT).await.unwrap();

    let snap = snapshot(&h, seeded.board).await;
    let titles = |col| snap.cards_in(col).map(|c| c.title.as_str()).collect::<Vec<_>>();
    assert_eq!(titles(doing), vec!["Second", "Other"]);
    assert_eq!(titles(todo), vec!["First"]);
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_card_edited_and_another_deleted_with_their_buttons_are_saved_so() {
    let h = Harness::start().await.unwrap();
    let seeded = seed(&h, "Buttons", &[("Todo", &["Keep me", "Delete me"])]).await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = open_board(&browser, &h, seeded.board).await;
    let todo = seeded.columns[0];
    let snap = snapshot(&h, seeded.board).await;
    let card = |title: &str| snap.cards.iter().find(|c| c.title == title).unwrap().id;
    let (kept, deleted) = (card("Keep me"), card("Delete me"));

    // (The buttons have no listeners of their own: the column's list hears their clicks.)
    tab.click(&format!("[data-card-id=\"{kept}\"] [data-action=edit]")).await.unwrap();
    tab.wait_for_selector(&format!("[data-card-id=\"{kept}\"] .card-editor .edit-title"), WAIT).await.unwrap();
    tab.exec("document.querySelector('.card-editor .edit-title').select()").await.unwrap();
    tab.type_into(".card-editor .edit-title", "Kept").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for(&card_in_column(todo, "Kept"), WAIT).await.unwrap();
    // Saved first: until then the edited card carries a "not yet saved" line, whose going moves the card below it
    // — a click aimed while it shows could land beside the button.
    tab.wait_for(SAVED, WAIT).await.unwrap();
    tab.click(&format!("[data-card-id=\"{deleted}\"] [data-action=delete]")).await.unwrap();
    tab.wait_for(&format!("!document.querySelector('[data-card-id=\"{deleted}\"]')"), WAIT).await.unwrap();
    tab.wait_for(SAVED, WAIT).await.unwrap();

    let snap = snapshot(&h, seeded.board).await;
    assert_eq!(snap.cards_in(todo).map(|c| c.title.as_str()).collect::<Vec<_>>(), vec!["Kept"]);
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_card_dragged_and_dropped_lands_where_it_was_dropped() {
    let h = Harness::start().await.unwrap();
    let seeded = seed(&h, "Drag", &[("Todo", &["Drag me"]), ("Done", &["Already done"])]).await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = open_board(&browser, &h, seeded.board).await;
    let done = seeded.columns[1];
    let snap = snapshot(&h, seeded.board).await;
    let dragged = snap.cards.iter().find(|c| c.title == "Drag me").unwrap().id;
    let target = snap.cards.iter().find(|c| c.title == "Already done").unwrap().id;

    // HTML5 drag-and-drop events, as the browser dispatches them, onto the upper half of the target card.
    tab.exec(&format!(
        r#"(() => {{
            const src = document.querySelector('[data-card-id="{dragged}"]');
            const dst = document.querySelector('[data-card-id="{target}"]');
            const dt = new DataTransfer();
            const r = dst.getBoundingClientRect();
            const at = {{ bubbles: true, cancelable: true, dataTransfer: dt, clientX: r.left + 5, clientY: r.top + 2 }};
            src.dispatchEvent(new DragEvent('dragstart', at));
            dst.dispatchEvent(new DragEvent('dragover', at));
            dst.dispatchEvent(new DragEvent('drop', at));
            src.dispatchEvent(new DragEvent('dragend', at));
        }})()"#
    ))
    .await
    .unwrap();
    tab.wait_for(
        &format!("[...document.querySelectorAll('[data-column-id=\"{done}\"] .card-title')].map(e => e.textContent).join() === 'Drag me,Already done'"),
        WAIT,
    )
    .await
    .unwrap();
    tab.wait_for(SAVED, WAIT).await.unwrap();
    let snap = snapshot(&h, seeded.board).await;
    assert_eq!(snap.cards_in(done).map(|c| c.title.as_str()).collect::<Vec<_>>(), vec!["Drag me", "Already done"]);
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn harness_hides_and_shows_a_tab_with_real_visibilitychange_events() {
    let h = Harness::start().await.unwrap();
    let browser = TestBrowser::launch().await.unwrap();
    let tabs = browser.open_tabs(&h.url("/"), 2).await.unwrap();
    for tab in &tabs {
        assert_eq!(tab.eval::<String>("document.visibilityState").await.unwrap(), "visible");
    }
    let tab = &tabs[0];
    tab.exec(
        "window.__visibility = []; document.addEventListener('visibilitychange', () => window.__visibility.push(document.visibilityState))",
    )
    .await
    .unwrap();
    tab.hide().await.unwrap();
    tab.wait_for("window.__visibility.includes('hidden')", WAIT).await.unwrap();
    assert_eq!(tab.eval::<String>("document.visibilityState").await.unwrap(), "hidden");
    assert_eq!(tabs[1].eval::<String>("document.visibilityState").await.unwrap(), "visible", "only that tab hides");

    tab.show().await.unwrap();
    tab.wait_for("window.__visibility.at(-1) === 'visible'", WAIT).await.unwrap();
    assert_eq!(tab.eval::<Vec<String>>("window.__visibility").await.unwrap(), vec!["hidden", "visible"]);
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn harness_takes_a_tab_offline_with_real_offline_and_online_events() {
    let h = Harness::start().await.unwrap();
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.exec(
        "window.__net = []; addEventListener('offline', () => __net.push('offline')); addEventListener('online', () => __net.push('online'))",
    )
    .await
    .unwrap();
    assert!(tab.eval::<bool>("navigator.onLine").await.unwrap());

    tab.set_offline(true).await.unwrap();
    tab.wait_for("__net.includes('offline')", WAIT).await.unwrap();
    assert!(!tab.eval::<bool>("navigator.onLine").await.unwrap());
    let fetch_failed: bool = tab.eval("fetch('/api/boards').then(() => false, () => true)").await.unwrap();
    assert!(fetch_failed, "fetch fails while offline");

    tab.set_offline(false).await.unwrap();
    tab.wait_for("__net.at(-1) === 'online'", WAIT).await.unwrap();
    assert!(tab.eval::<bool>("navigator.onLine").await.unwrap());
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn harness_counts_requests_as_the_server_saw_them_and_restarts_the_server() {
    let mut h = Harness::start().await.unwrap();
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.wait_for_selector(".boards", WAIT).await.unwrap();

    // Requests are attributed by the client header, so the page's own loading does not blur the count.
    let from_tab = |h: &Harness| {
        h.requests("/api/boards").into_iter().filter(|r| r.client.as_deref() == Some("tab-1")).collect::<Vec<_>>()
    };
    assert!(from_tab(&h).is_empty());
    let status: u16 = tab
        .eval("fetch('/api/boards?from=test', { headers: { 'x-syncline-client': 'tab-1' } }).then(r => r.status)")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let seen = from_tab(&h);
    assert_eq!(seen.len(), 1, "the server saw exactly the one fetch");
    let last = &seen[0];
    assert_eq!((last.method.as_str(), last.query.as_deref()), ("GET", Some("from=test")));
    // The page's sync runtime holds one socket, and the server counts it.
    tab.wait_for("window.__syncline && JSON.parse(window.__syncline()).status.state === 'live'", WAIT).await.unwrap();
    assert_eq!(h.open_websockets(), 1);

    // Same port, same database after a restart.
    let seeded = seed(&h, "Before restart", &[]).await;
    h.restart_server().await.unwrap();
    tab.exec(&format!("location.hash = '#/boards/{}'", seeded.board)).await.unwrap();
    tab.wait_for("document.querySelector('#board-title')?.value === 'Before restart'", WAIT).await.unwrap();
    assert!(!h.requests("/api/boards/").is_empty(), "the restarted server counts from zero and saw the load");
    browser.close().await;
    h.stop().await;
}

/// Produces the README screenshot: a board as a user sees it.
#[tokio::test]
async fn screenshot_of_a_board_for_the_readme() {
    let h = Harness::start().await.unwrap();
    let seeded = seed(
        &h,
        "Product launch",
        &[
            ("Backlog", &["Pricing page copy", "Customer interviews", "Press kit"]),
            ("In progress", &["Onboarding flow", "Offline outbox"]),
            ("Review", &["Leader election"]),
            ("Done", &["Change feed", "Kanban skeleton"]),
        ],
    )
    .await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = open_board(&browser, &h, seeded.board).await;
    tab.wait_for("document.querySelectorAll('.card').length === 8", WAIT).await.unwrap();
    tab.screenshot(&repo_root().join("docs/screenshot-board.png")).await.unwrap();
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_board_created_in_the_ui_opens_at_once_and_everything_on_it_is_saved() {
    let h = Harness::start().await.unwrap();
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.wait_for_selector(".boards .notice", WAIT).await.unwrap();
    tab.type_into("#new-board-title", "Fresh board").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for("document.querySelector('#board-title')?.value === 'Fresh board'", WAIT).await.unwrap();
    tab.type_into("#new-column-title", "Ideas").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for_selector(".column .new-card-title", WAIT).await.unwrap();
    tab.type_into(".column .new-card-title", "First idea").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for("[...document.querySelectorAll('.card-title')].some(e => e.textContent === 'First idea')", WAIT)
        .await
        .unwrap();
    tab.wait_for(SAVED, WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#board-title')?.value === 'Fresh board' && !document.body.textContent.includes('was deleted')", WAIT)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let found: (String, String, String) = conn
        .query_row(
            "SELECT b.title, c.title, k.title FROM boards b JOIN columns c ON c.board_id = b.id JOIN cards k ON k.column_id = c.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(found, ("Fresh board".into(), "Ideas".into(), "First idea".into()));
    // Back on the list, the board is there.
    tab.exec("location.hash = '#/'").await.unwrap();
    tab.wait_for("[...document.querySelectorAll('.board-link')].some(e => e.textContent === 'Fresh board')", WAIT)
        .await
        .unwrap();
    browser.close().await;
    h.stop().await;
}
