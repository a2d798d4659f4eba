//! Sync made visible, in a real Chromium: the connection badge in each state, the freshness line, pending and
//! conflict marks, the preferences panel (applied in every tab, observed on the server), the metrics panel,
//! hover prefetch, long tasks during a burst, a render that waited for a frame when the page is hidden, keyboard
//! use, 375 px. The state screenshots in docs/ come from here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use syncline_e2e::{Harness, Tab, TestBrowser, eventually, repo_root};
use syncline_kanban::{CreateBoard, CreateCard, CreateColumn, Rename, UpdateCard, WriteOp};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

struct Board {
    id: Uuid,
    columns: Vec<Uuid>,
    /// The first card of the first column.
    card: Uuid,
}

fn id_of(v: Value) -> Uuid {
    Uuid::parse_str(v["id"].as_str().unwrap()).unwrap()
}

/// A board that reads like a real one (the screenshots show it).
async fn seed(h: &Harness, title: &str) -> Board {
    let id =
        id_of(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: title.into() } }).await.unwrap());
    let layout: [(&str, &[&str]); 3] = [
        ("To do", &["Write the release notes", "Check the offline outbox on Safari"]),
        ("Doing", &["Measure change → screen latency"]),
        ("Done", &["Long-poll fallback"]),
    ];
    let mut columns = Vec::new();
    let mut first_card = None;
    for (column, cards) in layout {
        let col = id_of(
            h.write(WriteOp::CreateColumn { board_id: id, body: CreateColumn { id: None, title: column.into() } })
                .await
                .unwrap(),
        );
        for title in cards {
            let body = CreateCard { id: None, title: title.to_string(), description: String::new() };
            let card = id_of(h.write(WriteOp::CreateCard { column_id: col, body }).await.unwrap());
            first_card.get_or_insert(card);
        }
        columns.push(col);
    }
    Board { id, columns, card: first_card.unwrap() }
}

async fn setup(title: &str) -> (Harness, Board, TestBrowser, String) {
    let h = Harness::start().await.unwrap();
    let board = seed(&h, title).await;
    let browser = TestBrowser::launch().await.unwrap();
    let url = h.url(&format!("/#/boards/{}", board.id));
    (h, board, browser, url)
}

async fn state(tab: &Tab) -> Value {
    let text: String = tab.eval("window.__syncline ? window.__syncline() : 'null'").await.unwrap();
    serde_json::from_str(&text).unwrap()
}

fn badge(state: &str) -> String {
    format!("document.querySelector('#connection')?.dataset.state === '{state}'")
}

fn freshness(state: &str) -> String {
    format!("document.querySelector('#sync-status')?.dataset.freshness === '{state}'")
}

fn live_leader() -> &'static str {
    "window.__syncline && (s => s.leader && s.status.state === 'live')(JSON.parse(window.__syncline()))"
}

fn shows(card: Uuid, title: &str) -> String {
    format!(
        "document.querySelector('[data-card-id=\"{card}\"] .card-title')?.textContent === {}",
        serde_json::to_string(title).unwrap()
    )
}

async fn text(tab: &Tab, selector: &str) -> String {
    tab.text(selector).await.unwrap().trim().to_owned()
}

fn docs(name: &str) -> std::path::PathBuf {
    repo_root().join("docs").join(name)
}

async fn rename(h: &Harness, card: Uuid, title: &str) {
    let body = UpdateCard { title: Some(title.into()), ..Default::default() };
    h.write(WriteOp::UpdateCard { id: card, body }).await.unwrap();
}

/// Seconds in "… in 12 s …".
fn seconds_in(text: &str) -> Option<u64> {
    let i = text.find(" in ")?;
    text[i + 4..].split_whitespace().next()?.parse().ok()
}

// ---- connection states -------------------------------------------------------------------------------------

#[tokio::test]
async fn live_badge_fresh_board_and_a_metrics_panel_that_counts_what_happened() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.wait_for(&badge("live"), WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#connection').textContent.trim().startsWith('Live')", WAIT).await.unwrap();
    tab.wait_for(&freshness("fresh"), WAIT).await.unwrap();
    assert_eq!(text(&tab, "#sync-status .freshness").await, "Up to date");
    assert!(tab.eval::<bool>("!document.querySelector('#retry-now')").await.unwrap(), "nothing to retry while live");
    rename(&h, board.card, "Write the release notes (v1.2)").await;
    tab.wait_for(&shows(board.card, "Write the release notes (v1.2)"), WAIT).await.unwrap();
    tab.screenshot(&docs("state-live.png")).await.unwrap();

    tab.click("#open-metrics").await.unwrap();
    tab.wait_for_selector("#metrics-panel", WAIT).await.unwrap();
    // The change above was measured from its commit on the server to the frame that showed it.
    tab.wait_for("/^\\d+ \\/ \\d+ ms$/.test(document.querySelector('#m-change-to-screen')?.textContent)", WAIT)
        .await
        .unwrap();
    let s = state(&tab).await;
    let requests = s["metrics"]["requests"].as_u64().unwrap();
    assert!(requests >= 1);
    assert_eq!(text(&tab, "#m-requests").await, requests.to_string(), "the panel shows the runtime's count");
    let socket = text(&tab, "#m-socket").await;
    let messages_in: u64 = socket.split(" / ").next().unwrap().parse().unwrap();
    assert!(messages_in >= 2, "hello, synced, the change: {socket}");
    assert!(text(&tab, "#m-fetch-latency").await.ends_with(" ms"));
    assert_eq!(text(&tab, "#m-reconnects").await, "0");
    // Long tasks since the page loaded (starting the wasm module can be one); the burst test below is the bound.
    let long = state(&tab).await["long_tasks"]["count"].as_u64().unwrap();
    assert!(text(&tab, "#m-long-tasks").await.starts_with(&long.to_string()));
    assert!(text(&tab, "#m-time-live").await.ends_with(" s"));
    // The chart plots rates over windows of 2 s or more: it has a line once the page is that old.
    tab.wait_for(
        "document.querySelector('#metrics-chart .series-messages')?.getAttribute('points').trim().length > 0",
        WAIT,
    )
    .await
    .unwrap();
    let peak: String = tab.text(".chart-scale").await.unwrap();
    assert!(peak.starts_with("peak ") && peak.ends_with("/min · last 10 min"), "{peak}");
    tab.screenshot(&docs("metrics-panel.png")).await.unwrap();
    // Escape closes it (keyboard users are not trapped).
    tab.wait_for("document.activeElement?.closest('#metrics-panel')", WAIT).await.unwrap();
    tab.press("Escape").await.unwrap();
    tab.wait_for("!document.querySelector('#metrics-panel')", WAIT).await.unwrap();
    // Focus goes back to the button that opened it.
    tab.wait_for("document.activeElement?.id === 'open-metrics'", WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_render_waiting_for_a_frame_when_the_page_is_hidden_runs_then_and_does_not_wait_to_be_shown() {
    let (h, board, browser, url) = setup("Frames").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    // No frame comes after this (as for a page hidden between asking for a frame and drawing it): a change is
    // applied, and its render waits.
    tab.exec("window.requestAnimationFrame = () => 0").await.unwrap();
    // (A frame asked for before that still comes: let it pass.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = state(&tab).await["metrics"]["deltas_applied"].as_u64().unwrap();
    rename(&h, board.card, "Renamed while no frame came").await;
    tab.wait_for(&format!("JSON.parse(window.__syncline()).metrics.deltas_applied > {applied}"), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tab.eval::<bool>(&shows(board.card, "Write the release notes")).await.unwrap(), "it waits for a frame");
    // Hidden, the page gets no frame until shown: what waited runs now, as a task (every later render would
    // wait behind it otherwise).
    tab.hide().await.unwrap();
    tab.wait_for(&shows(board.card, "Renamed while no frame came"), Duration::from_secs(5)).await.unwrap();
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn offline_the_badge_counts_the_changes_saved_and_each_card_is_marked_and_the_live_region_says_so() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.set_offline(true).await.unwrap();
    tab.wait_for(&badge("offline"), WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#announcer')?.textContent.startsWith('Offline')", WAIT).await.unwrap();
    tab.wait_for(&freshness("paused"), WAIT).await.unwrap();
    assert!(text(&tab, "#sync-status .freshness").await.starts_with("Offline — last updated"));
    // Two edits while offline: a new card and a renamed one.
    tab.type_into(&format!("#new-card-{}", board.columns[1]), "Draft the blog post").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.click(&format!("[data-card-id=\"{}\"] .card-actions button", board.card)).await.unwrap();
    tab.wait_for_selector(".card-editor .edit-title", WAIT).await.unwrap();
    tab.exec("document.querySelector('.card-editor .edit-title').select()").await.unwrap();
    tab.type_into(".card-editor .edit-title", "Write the release notes - offline edit").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for(
        "document.querySelector('#connection .badge-detail')?.textContent.includes('2 changes saved on this device')",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(text(&tab, "#connection .badge-label").await, "Offline");
    tab.wait_for("document.querySelectorAll('.card.pending .pending-mark').length === 2", WAIT).await.unwrap();
    assert!(text(&tab, "#sync-status").await.contains("2 changes not yet on the server"));
    // The badge detail is in the live region's words too.
    assert!(text(&tab, "#announcer").await.starts_with("Offline."));
    tab.screenshot(&docs("state-offline.png")).await.unwrap();

    tab.set_offline(false).await.unwrap();
    tab.wait_for(&badge("live"), WAIT).await.unwrap();
    tab.wait_for("document.querySelectorAll('.pending-mark').length === 0", WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#announcer')?.textContent.startsWith('Connection live')", WAIT)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM cards WHERE title IN ('Draft the blog post', 'Write the release notes - offline edit')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn with_the_server_down_the_badge_counts_down_to_the_next_attempt_and_retry_now_reconnects_at_once() {
    let (mut h, _board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    h.stop_server().await;
    tab.wait_for(&badge("reconnecting"), WAIT).await.unwrap();
    // After a few refused attempts it waits longer between them; the badge counts down to the next.
    tab.wait_for(
        "(t => /^Reconnecting in \\d+ s/.test(t) && parseInt(t.match(/in (\\d+) s/)[1]) >= 3)(document.querySelector('#connection')?.textContent || '')",
        Duration::from_secs(40),
    )
    .await
    .unwrap();
    let before = text(&tab, "#connection .badge-label").await;
    tab.wait_for_selector("#retry-now", WAIT).await.unwrap();
    tab.wait_for(&freshness("stale"), WAIT).await.unwrap();
    assert!(
        text(&tab, "#sync-status .freshness").await.starts_with("Updated "),
        "not \"up to date\" while disconnected"
    );
    tab.screenshot(&docs("state-reconnecting.png")).await.unwrap();
    assert!(
        tab.eval::<String>("document.querySelector('#announcer').textContent").await.unwrap().contains("Reconnecting")
    );
    let waited = seconds_in(&before).unwrap();
    h.start_server().await.unwrap();
    let clicked = Instant::now();
    tab.click("#retry-now").await.unwrap();
    tab.wait_for(&badge("live"), Duration::from_secs(3)).await.unwrap();
    let back = clicked.elapsed();
    eprintln!("retry now: live {back:?} after the click; the badge had said \"{before}\"");
    assert!(
        back < Duration::from_secs(waited.saturating_sub(1).max(1)),
        "sooner than the scheduled attempt ({before}): {back:?}"
    );
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn without_websockets_the_badge_says_polling_and_why_and_retry_now_probes_the_socket() {
    let mut h = Harness::start().await.unwrap();
    let board = seed(&h, "Launch plan").await;
    h.set_websockets(false);
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for(&badge("polling"), Duration::from_secs(20)).await.unwrap();
    tab.wait_for("/^Polling — the WebSocket is unavailable; trying it again in \\d+ s/.test(document.querySelector('#connection').textContent)", WAIT)
        .await
        .unwrap();
    tab.wait_for(&freshness("fresh"), WAIT).await.unwrap();
    tab.screenshot(&docs("state-polling.png")).await.unwrap();
    let probes = h.requests("/api/feed").len();
    tab.click("#retry-now").await.unwrap();
    eventually("a socket attempt right after retry now", Duration::from_secs(2), || {
        h.requests("/api/feed").len() > probes
    })
    .await;
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_conflict_is_marked_on_the_card_and_take_theirs_drops_mine() {
    let h = Harness::start().await.unwrap();
    let board = seed(&h, "Launch plan").await;
    let url = h.url(&format!("/#/boards/{}", board.id));
    let alice = TestBrowser::launch().await.unwrap();
    let bob = TestBrowser::launch().await.unwrap();
    let ta = alice.open(&url).await.unwrap();
    let tb = bob.open(&url).await.unwrap();
    ta.wait_for(live_leader(), WAIT).await.unwrap();
    tb.wait_for(live_leader(), WAIT).await.unwrap();
    tb.set_offline(true).await.unwrap();
    tb.wait_for(&badge("offline"), WAIT).await.unwrap();
    tb.click(&format!("[data-card-id=\"{}\"] .card-actions button", board.card)).await.unwrap();
    tb.wait_for_selector(".card-editor .edit-title", WAIT).await.unwrap();
    tb.exec("document.querySelector('.card-editor .edit-title').select()").await.unwrap();
    tb.type_into(".card-editor .edit-title", "Bob's release notes").await.unwrap();
    tb.press("Enter").await.unwrap();
    // Meanwhile Alice renames the same card.
    rename(&h, board.card, "Alice's release notes").await;
    tb.set_offline(false).await.unwrap();
    tb.wait_for_selector(&format!("[data-card-id=\"{}\"].conflicted .conflict-mark", board.card), WAIT).await.unwrap();
    assert!(text(&tb, ".conflict span").await.contains("Alice's release notes"));
    tb.screenshot(&docs("state-conflict.png")).await.unwrap();
    tb.click(".conflict .take-theirs").await.unwrap();
    tb.wait_for(&shows(board.card, "Alice's release notes"), WAIT).await.unwrap();
    tb.wait_for("!document.querySelector('.conflicted') && JSON.parse(window.__syncline()).pending === 0", WAIT)
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let bobs: i64 =
        conn.query_row("SELECT COUNT(*) FROM cards WHERE title = ?1", ["Bob's release notes"], |r| r.get(0)).unwrap();
    assert_eq!(bobs, 0, "taking theirs sends nothing");
    alice.close().await;
    bob.close().await;
    h.stop().await;
}

/// What someone is typing into the board's or a column's title (not yet committed: no `change` event) is theirs
/// until they commit it: a live change elsewhere on the board — another user's edit of a card — leaves it alone.
#[tokio::test]
async fn a_title_being_typed_is_not_reset_by_a_live_change_to_a_card() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    let value = |selector: &str| format!("document.querySelector({}).value", serde_json::to_string(selector).unwrap());
    for (n, (selector, typed)) in [("#board-title", " (draft)"), (".column-title", " later")].into_iter().enumerate() {
        let before: String = tab.eval(&value(selector)).await.unwrap();
        tab.focus(selector).await.unwrap();
        tab.exec(&format!(
            "(e => e.setSelectionRange(e.value.length, e.value.length))(document.querySelector({}))",
            serde_json::to_string(selector).unwrap()
        ))
        .await
        .unwrap();
        tab.type_into(selector, typed).await.unwrap();
        let title = format!("Edited elsewhere {n}");
        rename(&h, board.card, &title).await;
        tab.wait_for(&shows(board.card, &title), WAIT).await.unwrap();
        let now: String = tab.eval(&value(selector)).await.unwrap();
        assert_eq!(now, format!("{before}{typed}"), "{selector}: the typing was reset by a change to a card");
        let focused: bool = tab
            .eval(&format!(
                "document.activeElement === document.querySelector({})",
                serde_json::to_string(selector).unwrap()
            ))
            .await
            .unwrap();
        assert!(focused, "{selector} kept the focus");
    }
    browser.close().await;
    h.stop().await;
}

/// Someone else renames the board (a column) while this user is typing its title: the typing stays, and
/// committing it (leaving the field) is a conflict put to the user — their rename is not overwritten unseen.
#[tokio::test]
async fn a_title_renamed_elsewhere_while_being_typed_keeps_the_typing_and_committing_asks() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    let js = |selector: &str| serde_json::to_string(selector).unwrap();
    let fields: [(&str, &str, &str, WriteOp, &str); 2] = [
        (
            "#board-title",
            "the board",
            "SELECT title FROM boards WHERE id = ?1",
            WriteOp::RenameBoard { id: board.id, body: Rename { title: "Their board".into(), base_version: None } },
            &board.id.to_string(),
        ),
        (
            ".column-title",
            "the column",
            "SELECT title FROM columns WHERE id = ?1",
            WriteOp::RenameColumn {
                id: board.columns[0],
                body: Rename { title: "Their column".into(), base_version: None },
            },
            &board.columns[0].to_string(),
        ),
    ];
    for (n, (selector, what, query, theirs, id)) in fields.into_iter().enumerate() {
        tab.focus(selector).await.unwrap();
        tab.exec(&format!("document.querySelector({}).select()", js(selector))).await.unwrap();
        tab.type_into(selector, "Mine").await.unwrap();
        h.write(theirs).await.unwrap();
        // (The live change reaches the page in milliseconds.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let value: String = tab.eval(&format!("document.querySelector({}).value", js(selector))).await.unwrap();
        assert_eq!(value, "Mine", "{selector}: a rename elsewhere reset the typing");
        tab.exec("document.activeElement.blur()").await.unwrap();
        tab.wait_for_selector(".conflict .keep-mine", WAIT).await.unwrap();
        let stored: String =
            rusqlite::Connection::open(h.db_path()).unwrap().query_row(query, [id], |r| r.get(0)).unwrap();
        assert!(stored.starts_with("Their"), "{selector}: their rename was overwritten: {stored}");
        let banner = text(&tab, ".conflict span").await;
        assert!(banner.contains(&format!("changed {what} to “Their")), "{selector}: the banner says {banner:?}");
        // The user is about to answer (focus on a button of the banner) when a change to a card arrives: the
        // banner stays as it is, focus included.
        tab.focus(".conflict .take-theirs").await.unwrap();
        let meanwhile = format!("Meanwhile {n}");
        rename(&h, board.card, &meanwhile).await;
        tab.wait_for(&shows(board.card, &meanwhile), WAIT).await.unwrap();
        let focused: bool =
            tab.eval("document.activeElement?.classList.contains('take-theirs') ?? false").await.unwrap();
        assert!(focused, "{selector}: a live change to a card took the focus off the conflict's buttons");
        tab.click(".conflict .take-theirs").await.unwrap();
        tab.wait_for("!document.querySelector('.conflict')", WAIT).await.unwrap();
    }
    browser.close().await;
    h.stop().await;
}

/// A card's editor holds what its user typed until they save or cancel: another user's change to the same card
/// while it is open does not reset it. Saving then sends the fields this user changed, based on the card as it was
/// when the editor opened: their change to the other field is kept, and a change to the same field is a conflict
/// shown on the card, not overwritten unseen.
#[tokio::test]
async fn a_card_editor_keeps_what_was_typed_through_a_live_change_to_its_card() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&url).await.unwrap();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    let card = |rest: &str| format!("[data-card-id=\"{}\"] {rest}", board.card);
    let editor_value = |field: &str| format!("document.querySelector('.card-editor .{field}').value");
    let db = || {
        let conn = rusqlite::Connection::open(h.db_path()).unwrap();
        conn.query_row("SELECT title, description FROM cards WHERE id = ?1", [board.card.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
    };

    // Someone else changes the description while this user types a title.
    tab.click(&card(".card-actions button")).await.unwrap();
    tab.wait_for_selector(".card-editor .edit-title", WAIT).await.unwrap();
    tab.exec("(e => e.setSelectionRange(e.value.length, e.value.length))(document.querySelector('.card-editor .edit-title'))")
        .await
        .unwrap();
    tab.type_into(".card-editor .edit-title", " for 2.0").await.unwrap();
    let body = UpdateCard { description: Some("Theirs".into()), ..Default::default() };
    h.write(WriteOp::UpdateCard { id: board.card, body }).await.unwrap();
    // (The live change reaches the page in milliseconds.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let typed: String = tab.eval(&editor_value("edit-title")).await.unwrap();
    assert_eq!(typed, "Write the release notes for 2.0", "a live change reset the editor");
    tab.press("Enter").await.unwrap();
    tab.wait_for(&shows(board.card, "Write the release notes for 2.0"), WAIT).await.unwrap();
    tab.wait_for("JSON.parse(window.__syncline()).pending === 0", WAIT).await.unwrap();
    assert_eq!(db(), ("Write the release notes for 2.0".to_owned(), "Theirs".to_owned()), "both changes kept");

    // Someone else changes the title while this user types one: saving is a conflict, not an overwrite.
    tab.click(&card(".card-actions button")).await.unwrap();
    tab.wait_for_selector(".card-editor .edit-title", WAIT).await.unwrap();
    tab.exec("document.querySelector('.card-editor .edit-title').select()").await.unwrap();
    tab.type_into(".card-editor .edit-title", "Mine").await.unwrap();
    rename(&h, board.card, "Theirs too").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let typed: String = tab.eval(&editor_value("edit-title")).await.unwrap();
    assert_eq!(typed, "Mine", "a live change reset the editor");
    tab.press("Enter").await.unwrap();
    tab.wait_for_selector(&card(".conflict-mark"), WAIT).await.unwrap();
    assert_eq!(db().0, "Theirs too", "their title is not overwritten unseen");
    browser.close().await;
    h.stop().await;
}

// ---- freshness ---------------------------------------------------------------------------------------------

/// Navigates within the app (a hash change: no page load for `goto` to wait for).
async fn go(tab: &Tab, url: &str) {
    tab.exec(&format!("location.hash = new URL({}).hash", serde_json::to_string(url).unwrap())).await.unwrap();
}

/// Sets preferences before the app starts (as a returning user's saved ones).
async fn with_preferences(tab: &Tab, url: &str, prefs: Value) {
    tab.exec(&format!(
        "localStorage.setItem('syncline.preferences', {})",
        serde_json::to_string(&prefs.to_string()).unwrap()
    ))
    .await
    .unwrap();
    go(tab, url).await;
    tab.reload().await.unwrap();
}

#[tokio::test]
async fn a_failed_refresh_shows_the_error_and_retry_time_then_refreshing_then_fresh_and_old_data_shows_its_age() {
    let (mut h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&h.url("/")).await.unwrap();
    // Realtime off, refetched every 2 s.
    let prefs = serde_json::json!({ "realtime": false, "foreground_interval_ms": 2000 });
    with_preferences(&tab, &url, prefs).await;
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    tab.wait_for(&badge("polling"), WAIT).await.unwrap();
    assert!(text(&tab, "#connection").await.contains("realtime is off"));
    h.stop_server().await;
    tab.wait_for(&freshness("error"), WAIT).await.unwrap();
    let message = text(&tab, "#sync-status .freshness").await;
    assert!(message.starts_with("Could not refresh") && seconds_in(&message).is_some(), "{message}");
    tab.wait_for_selector("#sync-status .retry-fetch", WAIT).await.unwrap();
    h.start_server().await.unwrap();
    // Record every freshness state the line goes through from here.
    tab.exec(
        "window.__seen = []; new MutationObserver(() => window.__seen.push(document.querySelector('#sync-status').dataset.freshness))
            .observe(document.querySelector('main'), { attributes: true, subtree: true, attributeFilter: ['data-freshness'] })",
    )
    .await
    .unwrap();
    tab.set_latency(300.0).await.unwrap();
    tab.click("#sync-status .retry-fetch").await.unwrap();
    tab.wait_for(&freshness("fresh"), Duration::from_secs(3)).await.unwrap();
    let seen: Vec<String> = tab.eval("window.__seen").await.unwrap();
    assert!(seen.contains(&"fetching".to_owned()), "refreshing was shown: {seen:?}");
    tab.set_latency(0.0).await.unwrap();

    // Stale: polled every 2 min, the data is older than the 30 s stale time before the next poll.
    let prefs = serde_json::json!({ "realtime": false, "foreground_interval_ms": 120000 });
    with_preferences(&tab, &url, prefs).await;
    tab.wait_for(&freshness("fresh"), WAIT).await.unwrap();
    tab.wait_for(&freshness("stale"), Duration::from_secs(40)).await.unwrap();
    let message = text(&tab, "#sync-status .freshness").await;
    assert!(message.starts_with("Updated ") && message.ends_with(" s ago"), "{message}");
    browser.close().await;
    h.stop().await;
}

// ---- preferences -------------------------------------------------------------------------------------------

/// Clears a number field with the keyboard and types a new value.
async fn retype(tab: &Tab, selector: &str, value: &str) {
    tab.focus(selector).await.unwrap();
    for _ in 0..6 {
        tab.press("Backspace").await.unwrap();
    }
    tab.type_into(selector, value).await.unwrap();
}

#[tokio::test]
async fn preferences_set_with_the_keyboard_in_one_tab_take_effect_in_the_leader_tab_as_the_server_sees_it() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let a = browser.open(&url).await.unwrap();
    a.wait_for(live_leader(), WAIT).await.unwrap();
    let b = browser.open(&url).await.unwrap();
    b.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    let leader = state(&a).await["tab"].as_str().unwrap().to_owned();
    assert_eq!(h.open_websockets(), 1);
    assert_eq!(h.requests_from(state(&b).await["tab"].as_str().unwrap(), "/api/"), 0, "the follower asks nothing");

    // In tab B, keyboard only: open the panel, realtime off, foreground interval 1 s, save.
    b.focus("#open-preferences").await.unwrap();
    b.press("Enter").await.unwrap();
    b.wait_for_selector("#preferences-panel", WAIT).await.unwrap();
    // Focus moves into the panel, onto its first field.
    b.wait_for("document.activeElement?.id === 'pref-realtime'", WAIT).await.unwrap();
    b.press(" ").await.unwrap();
    retype(&b, "#pref-foreground", "0").await;
    b.focus("#preferences-save").await.unwrap();
    b.press("Enter").await.unwrap();
    // 0 s is refused with a reason, and nothing is saved.
    b.wait_for_selector("#preferences-error", WAIT).await.unwrap();
    assert!(text(&b, "#preferences-error").await.contains("between 1 s and 1 h"));
    assert_eq!(state(&a).await["preferences"]["realtime"], true);
    retype(&b, "#pref-foreground", "1").await;
    b.focus("#preferences-save").await.unwrap();
    b.press("Enter").await.unwrap();
    b.wait_for("document.querySelector('#preferences-saved')?.textContent.startsWith('Saved')", WAIT).await.unwrap();

    // Tab A (the leader) follows: its socket closes and it polls the board every second.
    eventually("the leader's socket closed", WAIT, || h.open_websockets() == 0).await;
    a.wait_for("document.querySelector('#connection')?.textContent.includes('realtime is off')", WAIT).await.unwrap();
    let path = format!("/api/boards/{}", board.id);
    let start = h.requests_from(&leader, &path);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fast = h.requests_from(&leader, &path) - start;
    assert!((3..=7).contains(&fast), "about one poll a second from the leader, saw {fast} in 5 s");
    // A's own panel shows what B set.
    a.click("#open-preferences").await.unwrap();
    a.wait_for_selector("#preferences-panel", WAIT).await.unwrap();
    a.wait_for("document.activeElement?.id === 'pref-realtime'", WAIT).await.unwrap();
    assert!(!a.eval::<bool>("document.querySelector('#pref-realtime').checked").await.unwrap());
    assert_eq!(a.eval::<String>("document.querySelector('#pref-foreground').value").await.unwrap(), "1");
    // And back from A: 10 s; the server sees the leader slow down.
    retype(&a, "#pref-foreground", "10").await;
    a.click("#preferences-save").await.unwrap();
    b.wait_for("document.querySelector('#pref-foreground')?.value === '10'", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = h.requests_from(&leader, &path);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let slow = h.requests_from(&leader, &path) - start;
    assert!(slow <= 1, "at most one poll in 5 s at a 10 s interval, saw {slow}");

    // The other settings travel the same way: background behaviour and interval, data saver, retry cap.
    b.exec("(s => { s.value = 'slower'; s.dispatchEvent(new Event('change')); })(document.querySelector('#pref-background'))").await.unwrap();
    retype(&b, "#pref-background-interval", "90").await;
    b.focus("#pref-data-saver").await.unwrap();
    b.press(" ").await.unwrap();
    retype(&b, "#pref-max-retry", "20").await;
    b.click("#preferences-save").await.unwrap();
    a.wait_for("(p => p.background === 'slower' && p.background_interval_ms === 90000 && p.data_saver && p.max_retry_delay_ms === 20000)(JSON.parse(window.__syncline()).preferences)", WAIT)
        .await
        .unwrap();
    a.wait_for("document.querySelector('#pref-background')?.value === 'slower' && document.querySelector('#pref-data-saver').checked", WAIT).await.unwrap();
    // Saved for the next visit too.
    b.reload().await.unwrap();
    b.wait_for(
        "(p => p.background === 'slower' && p.data_saver && !p.realtime)(JSON.parse(window.__syncline()).preferences)",
        WAIT,
    )
    .await
    .unwrap();
    browser.close().await;
    h.stop().await;
}

/// Preferences another tab saves while this tab's panel is open show up in it — except in a field this user has
/// changed and not yet saved: what they typed stays theirs, and saving keeps the other tab's change to the rest.
#[tokio::test]
async fn a_preference_being_edited_is_not_reset_when_another_tab_saves_preferences() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let a = browser.open(&url).await.unwrap();
    a.wait_for(live_leader(), WAIT).await.unwrap();
    let b = browser.open(&url).await.unwrap();
    b.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    for tab in [&a, &b] {
        tab.click("#open-preferences").await.unwrap();
        tab.wait_for_selector("#preferences-panel", WAIT).await.unwrap();
    }
    // A types a foreground interval and does not save yet.
    retype(&a, "#pref-foreground", "42").await;
    // B turns the data saver on and saves.
    b.focus("#pref-data-saver").await.unwrap();
    b.press(" ").await.unwrap();
    b.click("#preferences-save").await.unwrap();
    a.wait_for("JSON.parse(window.__syncline()).preferences.data_saver === true", WAIT).await.unwrap();
    // A's panel follows B's change and keeps A's typing.
    a.wait_for("document.querySelector('#pref-data-saver').checked", WAIT).await.unwrap();
    assert_eq!(
        a.eval::<String>("document.querySelector('#pref-foreground').value").await.unwrap(),
        "42",
        "another tab's save reset what was typed"
    );
    // Saving A keeps both.
    a.click("#preferences-save").await.unwrap();
    b.wait_for(
        "(p => p.foreground_interval_ms === 42000 && p.data_saver)(JSON.parse(window.__syncline()).preferences)",
        WAIT,
    )
    .await
    .unwrap();
    b.wait_for("document.querySelector('#pref-foreground')?.value === '42'", WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

// ---- prefetch ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn hovering_or_focusing_a_board_link_prefetches_it_and_the_board_then_opens_without_a_request() {
    let h = Harness::start().await.unwrap();
    let first = seed(&h, "Launch plan").await;
    let second = seed(&h, "Hiring").await;
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.wait_for("document.querySelectorAll('.board-link').length === 2", WAIT).await.unwrap();
    let link = |b: Uuid| format!("a.board-link[href='#/boards/{b}']");
    let fetches = |b: Uuid| h.requests(&format!("/api/boards/{b}")).len();
    assert_eq!(fetches(first.id), 0);
    tab.hover(&link(first.id)).await.unwrap();
    eventually("the hovered board fetched", WAIT, || fetches(first.id) == 1).await;
    tab.focus(&link(second.id)).await.unwrap();
    eventually("the focused board fetched", WAIT, || fetches(second.id) == 1).await;
    // Give the answer a moment to land in the cache, then open: the board is on screen at once.
    tab.wait_for("(s => s.metrics.requests >= 3)(JSON.parse(window.__syncline()))", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tab.click(&link(first.id)).await.unwrap();
    tab.wait_for(&shows(first.card, "Write the release notes"), Duration::from_millis(500)).await.unwrap();
    tab.wait_for(&badge("live"), WAIT).await.unwrap();
    assert_eq!(fetches(first.id), 1, "opened from the prefetched copy, no second request");

    // With data saver on, hovering fetches nothing.
    let third = seed(&h, "Data saver").await;
    go(&tab, &h.url("/")).await;
    tab.wait_for("document.querySelectorAll('.board-link').length === 3", WAIT).await.unwrap();
    tab.exec("localStorage.setItem('syncline.preferences', JSON.stringify({ data_saver: true }))").await.unwrap();
    tab.reload().await.unwrap();
    tab.wait_for("document.querySelectorAll('.board-link').length === 3 && JSON.parse(window.__syncline()).preferences.data_saver", WAIT).await.unwrap();
    tab.hover(&link(third.id)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fetches(third.id), 0, "no prefetch with data saver");
    browser.close().await;
    h.stop().await;
}

/// How many times each card's view re-ran a part of itself since the last call.
async fn card_renders(tab: &Tab) -> HashMap<Uuid, u32> {
    serde_json::from_str(&tab.eval::<String>("window.__cardRenders()").await.unwrap()).unwrap()
}

// ---- no degradation ----------------------------------------------------------------------------------------

#[tokio::test]
async fn on_a_1000_card_board_one_change_re_renders_one_card_and_a_burst_of_100_causes_no_long_task() {
    let h = Harness::start().await.unwrap();
    let board = id_of(
        h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: "Big board".into() } }).await.unwrap(),
    );
    let mut cards = Vec::new();
    for c in 0..5 {
        let column = id_of(
            h.write(WriteOp::CreateColumn {
                board_id: board,
                body: CreateColumn { id: None, title: format!("Column {c}") },
            })
            .await
            .unwrap(),
        );
        for i in 0..200 {
            let body =
                CreateCard { id: None, title: format!("Card {c}-{i}"), description: "Some description text".into() };
            cards.push(id_of(h.write(WriteOp::CreateCard { column_id: column, body }).await.unwrap()));
        }
    }
    let browser = TestBrowser::launch().await.unwrap();
    // Opening the board from the list (the page and its wasm already loaded): no long task either.
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.wait_for_selector(".board-link", WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loaded = state(&tab).await["long_tasks"].clone();
    assert_eq!(loaded["observed"], true, "this Chromium reports long tasks");
    let opened = Instant::now();
    tab.click(".board-link").await.unwrap();
    tab.wait_for("document.querySelectorAll('.card').length === 1000", Duration::from_secs(20)).await.unwrap();
    let open_time = opened.elapsed();
    tab.wait_for(live_leader(), WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = state(&tab).await["long_tasks"].clone();
    eprintln!(
        "opening 1,000 cards: all on screen after {open_time:?}; long tasks at load {loaded}, after opening {before}"
    );
    // Mounting the whole board at once was one 210–270 ms task; mounted progressively it is none in most runs,
    // but an IndexedDB callback sometimes shows up as one 50–95 ms task here (see the issue 6 note), so opening
    // is held to no task over 150 ms. The burst below is held to none at all.
    assert!(before["max_ms"].as_f64().unwrap() < 150.0, "no long task over 150 ms opening the board: {before}");
    // The browser skips off-screen cards by blocks of 50 (`content-visibility` on 20 blocks, not on 1,000 cards:
    // tracking each card's visibility on every frame is what held a 5,000-card board's scrolling to 28 fps).
    let skipped: Vec<u32> = tab
        .eval("[document.querySelectorAll('.card-block').length, [...document.querySelectorAll('.card-block, .card')].filter(e => getComputedStyle(e).contentVisibility === 'auto').length]")
        .await
        .unwrap();
    assert_eq!(skipped, vec![20, 20], "20 blocks of 50 cards, each skipped as one");
    // The cards' events are heard by their columns: the page's listeners do not grow with the board (each card
    // had seven: 7,056 here).
    let counters = tab
        .page()
        .execute(chromiumoxide::cdp::browser_protocol::memory::GetDomCountersParams::default())
        .await
        .unwrap()
        .result;
    assert!(counters.js_event_listeners < 200, "{} event listeners on a 1,000-card board", counters.js_event_listeners);

    // One change to one card re-renders that card and no other (counted, not timed): the view is O(change).
    card_renders(&tab).await;
    let changed = cards[517];
    rename(&h, changed, "Only this one").await;
    tab.wait_for(
        &format!("document.querySelector('[data-card-id=\"{changed}\"] .card-title').textContent === 'Only this one'"),
        WAIT,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = card_renders(&tab).await;
    eprintln!("one change: renders {counted:?}");
    assert_eq!(counted.keys().copied().collect::<Vec<_>>(), vec![changed], "only the changed card re-renders");
    assert!(counted[&changed] <= 3, "its title (text and label), nothing else: {counted:?}");
    // The same with a pending write of this browser's own: the card shows it and is marked, no other renders.
    tab.click(&format!("[data-card-id=\"{}\"] .card-actions button", cards[3])).await.unwrap();
    tab.wait_for_selector(".card-editor .edit-title", WAIT).await.unwrap();
    card_renders(&tab).await;
    tab.exec("document.querySelector('.card-editor .edit-title').value = 'Mine'; document.querySelector('.card-editor .edit-title').dispatchEvent(new Event('input')); document.querySelector('.card-editor').requestSubmit()").await.unwrap();
    tab.wait_for(
        &format!("document.querySelector('[data-card-id=\"{}\"] .card-title')?.textContent === 'Mine'", cards[3]),
        WAIT,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counted = card_renders(&tab).await;
    let others = counted.keys().filter(|c| **c != cards[3]).count();
    assert_eq!(others, 0, "only the edited card re-renders: {} others did", others);

    // 100 changes, committed one after another as fast as the server takes them (100 feed messages).
    let started = Instant::now();
    for (i, card) in cards.iter().step_by(10).enumerate() {
        rename(&h, *card, &format!("Burst {i}")).await;
    }
    let committed = started.elapsed();
    tab.wait_for(
        "[...document.querySelectorAll('.card-title')].filter(e => e.textContent.startsWith('Burst ')).length === 100",
        WAIT,
    )
    .await
    .unwrap();
    let shown = started.elapsed();
    // Long enough for the deferred IndexedDB save of the changed board to happen inside the window too.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after = state(&tab).await;
    let long = &after["long_tasks"];
    eprintln!(
        "burst: 100 changes committed in {committed:?}, all on screen after {shown:?}; long tasks before {before}, after {long}; change→screen samples {}",
        after["metrics"]["change_to_screen"]["values"].as_array().map_or(0, Vec::len)
    );
    assert_eq!(long["count"], before["count"], "no long task during the burst: {long}");

    // The observer does see long tasks (so the assertion above could fail): a 120 ms busy loop is one.
    tab.exec("setTimeout(() => { const t = performance.now(); while (performance.now() - t < 120) {} }, 0)")
        .await
        .unwrap();
    tab.wait_for(&format!("JSON.parse(window.__syncline()).long_tasks.count > {}", long["count"]), WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

// ---- small screens -----------------------------------------------------------------------------------------

#[tokio::test]
async fn at_375_px_nothing_overflows_the_page_and_the_badge_and_panels_fit() {
    let (h, board, browser, url) = setup("Launch plan").await;
    let tab = browser.open(&h.url("/")).await.unwrap();
    tab.set_viewport(375, 740).await.unwrap();
    go(&tab, &url).await;
    tab.wait_for(&shows(board.card, "Write the release notes"), WAIT).await.unwrap();
    tab.wait_for(&badge("live"), WAIT).await.unwrap();
    let wide: Vec<String> = tab
        .eval("[document.documentElement.scrollWidth + ''].concat([...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 375.5 && !e.closest('.column')).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)))")
        .await
        .unwrap();
    assert!(
        tab.eval::<bool>("document.documentElement.scrollWidth <= 375").await.unwrap(),
        "no sideways page scroll; too wide: {wide:?}"
    );
    let fits = |sel: &str| {
        format!(
            "(r => r.left >= 0 && r.right <= 375 && r.width > 0)(document.querySelector('{sel}').getBoundingClientRect())"
        )
    };
    for sel in ["#connection", "#open-preferences", "#open-metrics", "#sync-status", ".board-header .danger"] {
        assert!(tab.eval::<bool>(&fits(sel)).await.unwrap(), "{sel} fits in 375 px");
    }
    tab.screenshot(&docs("mobile-375.png")).await.unwrap();
    tab.click("#open-preferences").await.unwrap();
    tab.wait_for_selector("#preferences-panel", WAIT).await.unwrap();
    assert!(tab.eval::<bool>(&fits("#preferences-panel")).await.unwrap());
    assert!(tab.eval::<bool>(&fits("#preferences-save")).await.unwrap() || tab.eval::<bool>("document.querySelector('#preferences-panel').scrollHeight > document.querySelector('#preferences-panel').clientHeight").await.unwrap());
    browser.close().await;
    h.stop().await;
}
