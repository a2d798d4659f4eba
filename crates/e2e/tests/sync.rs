//! The sync acceptance list in a real Chromium: one connection per browser, silent hidden followers, leader
//! failover, offline and back. Request and socket counts are the server's, not the page's.

use std::time::{Duration, Instant};

use serde_json::Value;
use syncline_e2e::{Harness, Tab, TestBrowser, eventually};
use syncline_kanban::{CreateBoard, CreateCard, CreateColumn, UpdateCard, WriteOp};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

struct Board {
    id: Uuid,
    column: Uuid,
    card: Uuid,
}

async fn seed(h: &Harness) -> Board {
    let id_of = |v: Value| Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let id =
        id_of(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: "Sync".into() } }).await.unwrap());
    let column = id_of(
        h.write(WriteOp::CreateColumn { board_id: id, body: CreateColumn { id: None, title: "Todo".into() } })
            .await
            .unwrap(),
    );
    let body = CreateCard { id: None, title: "Watch me".into(), description: String::new() };
    let card = id_of(h.write(WriteOp::CreateCard { column_id: column, body }).await.unwrap());
    Board { id, column, card }
}

/// A server with a seeded board, a browser, and the board's URL.
async fn setup() -> (Harness, Board, TestBrowser, String) {
    let h = Harness::start().await.unwrap();
    let board = seed(&h).await;
    let browser = TestBrowser::launch().await.unwrap();
    let url = h.url(&format!("/#/boards/{}", board.id));
    (h, board, browser, url)
}

/// Two tabs on the board: the first live as leader, the second showing the board as a follower.
async fn leader_and_follower(browser: &TestBrowser, url: &str, board: &Board) -> (Tab, Tab) {
    let leader = browser.open(url).await.unwrap();
    leader.wait_for(&live(true), WAIT).await.unwrap();
    let follower = browser.open(url).await.unwrap();
    follower.wait_for(&shows(board.card, "Watch me"), WAIT).await.unwrap();
    (leader, follower)
}

async fn rename(h: &Harness, card: Uuid, title: &str) {
    let body = UpdateCard { title: Some(title.into()), ..Default::default() };
    h.write(WriteOp::UpdateCard { id: card, body }).await.unwrap();
}

/// The tab's runtime state: `{tab, leader, status: {state}, pending, metrics}`.
async fn state(tab: &Tab) -> Value {
    let text: String = tab.eval("window.__syncline ? window.__syncline() : 'null'").await.unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn client_id(tab: &Tab) -> String {
    tab.wait_for("window.__syncline", WAIT).await.unwrap();
    state(tab).await["tab"].as_str().unwrap().to_owned()
}

fn live(tab_is_leader: bool) -> String {
    format!(
        "window.__syncline && (s => s.leader === {tab_is_leader} && s.status.state === 'live')(JSON.parse(window.__syncline()))"
    )
}

fn shows(card: Uuid, title: &str) -> String {
    format!(
        "document.querySelector('[data-card-id=\"{card}\"] .card-title')?.textContent === {}",
        serde_json::to_string(title).unwrap()
    )
}

#[tokio::test]
async fn four_tabs_share_one_websocket_and_one_fetch_per_query() {
    let (h, board, browser, url) = setup().await;
    let mut tabs = Vec::new();
    for _ in 0..4 {
        let tab = browser.open(&url).await.unwrap();
        tab.wait_for(&shows(board.card, "Watch me"), WAIT).await.unwrap();
        tabs.push(tab);
    }
    let leader_tabs = {
        let mut n = 0;
        for t in &tabs {
            if state(t).await["leader"] == true {
                n += 1;
            }
        }
        n
    };
    assert_eq!(leader_tabs, 1, "one leader");
    eventually("one socket", WAIT, || h.open_websockets() == 1).await;
    let board_fetches = h.requests(&format!("/api/boards/{}", board.id)).len();
    assert_eq!(board_fetches, 1, "the board was fetched once for all four tabs");
    // A change reaches every tab through the one socket.
    rename(&h, board.card, "Seen by all").await;
    for t in &tabs {
        t.wait_for(&shows(board.card, "Seen by all"), WAIT).await.unwrap();
    }
    assert_eq!(h.open_websockets(), 1);
    assert_eq!(h.requests(&format!("/api/boards/{}", board.id)).len(), 1, "deltas, not refetches");
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn hidden_followers_make_no_requests_while_changes_stream_in() {
    let (h, board, browser, url) = setup().await;
    let leader = browser.open(&url).await.unwrap();
    leader.wait_for(&live(true), WAIT).await.unwrap();
    let mut followers = Vec::new();
    for _ in 0..2 {
        let tab = browser.open(&url).await.unwrap();
        tab.wait_for(&shows(board.card, "Watch me"), WAIT).await.unwrap();
        tab.hide().await.unwrap();
        tab.wait_for("document.visibilityState === 'hidden'", WAIT).await.unwrap();
        followers.push(tab);
    }
    let ids: Vec<String> = futures::future::join_all(followers.iter().map(client_id)).await;
    let before: Vec<usize> = ids.iter().map(|c| h.requests_from(c, "/")).collect();
    // A render asked for just before a tab was hidden still runs (on its 200 ms timer, which a hidden page may hold
    // back to a second) and reads the data as it is then: let those pass, so what follows arrives while hidden.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Hidden for two seconds, a follower falls asleep: it closes its channel and hears no other tab.
    let mut heard = Vec::new();
    for f in &followers {
        f.wait_for("JSON.parse(window.__syncline()).asleep === true", WAIT).await.unwrap();
        heard.push(state(f).await["metrics"]["tab_messages_in"].as_u64().unwrap());
    }
    // 30 s at one change per second.
    for i in 0..30 {
        rename(&h, board.card, &format!("change {i}")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    leader.wait_for(&shows(board.card, "change 29"), WAIT).await.unwrap();
    for (client, before) in ids.iter().zip(before) {
        assert_eq!(h.requests_from(client, "/") - before, 0, "hidden follower {client} made requests");
    }
    assert_eq!(h.open_websockets(), 1, "the browser holds exactly one socket");
    // Nobody looks at a hidden tab: it rendered none of the 30 changes...
    let title_js =
        format!("document.querySelector('[data-card-id=\"{}\"] .card-title')?.textContent ?? 'none'", board.card);
    for (f, heard) in followers.iter().zip(heard) {
        let state = state(f).await;
        assert_eq!(state["leader"], false);
        assert_eq!(state["metrics"]["tab_messages_in"], heard, "an asleep follower heard the other tabs");
        let shown: String = f.eval(&title_js).await.unwrap();
        assert_eq!(shown, "Watch me", "a hidden follower rendered a change");
    }
    // ...and shows the current board as soon as it is shown (it wakes, and the leader, which kept the board
    // current for it, sends it the 30 changes its copy lacks — not the board).
    for f in &followers {
        let data_in = state(f).await["metrics"]["tab_data_in"].as_u64().unwrap();
        let shown_at = Instant::now();
        f.show().await.unwrap();
        if let Err(e) = f.wait_for(&shows(board.card, "change 29"), WAIT).await {
            let title: String = f.eval(&title_js).await.unwrap_or_default();
            panic!("a shown follower did not catch up: shows {title:?}; state {}; {e}", state(f).await);
        }
        eprintln!("a hidden follower shown: current after {:?} (including the CDP round trips)", shown_at.elapsed());
        let state = state(f).await;
        assert_eq!(state["metrics"]["tab_data_in"], data_in, "a woken follower was sent the whole board: {state}");
        let waited =
            state["metrics"]["change_to_screen"]["values"].as_array().unwrap().iter().filter_map(|v| v.as_u64());
        assert!(waited.max().unwrap_or(0) < 5_000, "changes made while it slept counted as change → screen: {state}");
    }
    browser.close().await;
    h.stop().await;
}

/// An asleep follower says nothing at all (no heartbeat): the leader knows it lives by the Web Lock the tab holds
/// for its life, and learns it is gone when the browser releases that lock — here a tab closed without a last
/// word, as a crashed or discarded one would be.
#[tokio::test]
async fn an_asleep_follower_that_goes_without_a_word_is_forgotten_when_its_tab_lock_is_released() {
    let (h, board, browser, url) = setup().await;
    let (leader, follower) = leader_and_follower(&browser, &url, &board).await;
    let id = client_id(&follower).await;
    follower.hide().await.unwrap();
    follower.wait_for("JSON.parse(window.__syncline()).asleep === true", WAIT).await.unwrap();
    let counted = format!("JSON.parse(window.__syncline()).asleep_peers.includes('{id}')");
    leader.wait_for(&counted, WAIT).await.unwrap();
    // Its last word (`Goodbye`) is lost, as a crashed tab's would be.
    let _: bool = follower.eval("(BroadcastChannel.prototype.postMessage = function () {}, true)").await.unwrap();
    let closed = Instant::now();
    follower.close().await.unwrap();
    if let Err(e) = leader.wait_for(&format!("!({counted})"), Duration::from_secs(3)).await {
        panic!("the leader still counts the closed tab as asleep: {}; {e}", state(&leader).await);
    }
    eprintln!("an asleep tab closed without a word: forgotten by its leader after {:?}", closed.elapsed());
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn closing_the_leader_hands_over_within_a_second_and_misses_nothing() {
    let (h, board, browser, url) = setup().await;
    let (leader, follower) = leader_and_follower(&browser, &url, &board).await;
    assert_eq!(state(&follower).await["leader"], false);

    let closed = Instant::now();
    leader.close().await.unwrap();
    rename(&h, board.card, "written during the handover").await;
    follower.wait_for(&live(true), Duration::from_secs(1)).await.unwrap();
    let handover = closed.elapsed();
    follower.wait_for(&shows(board.card, "written during the handover"), WAIT).await.unwrap();
    eprintln!("leader handover: live again {handover:?} after the leader tab closed");
    eventually("one socket after the handover", WAIT, || h.open_websockets() == 1).await;
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn offline_then_online_is_live_again_within_a_second_with_nothing_missed() {
    let (h, board, browser, _) = setup().await;
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    // Live, and the board loaded: the socket can be live before the board's first fetch answers (a stream joins
    // once it has a cursor), and offline then there is no data to show the age of (it failed so in CI).
    tab.wait_for(&live(true), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "Watch me"), WAIT).await.unwrap();

    tab.set_offline(true).await.unwrap();
    tab.wait_for("document.querySelector('#sync-status')?.dataset.connection === 'offline'", WAIT).await.unwrap();
    // The engine closes its own socket on `offline` (emulation does not break it); when the server hears of
    // that depends on the emulated link, so it is not waited for here.
    // Meanwhile: someone else changes the card, and this user edits another one offline.
    rename(&h, board.card, "changed while you were away").await;
    let text = tab.text("#sync-status").await.unwrap();
    assert!(text.starts_with("Offline") && text.contains("ago"), "offline, with the data's age: {text}");
    assert_eq!(tab.eval::<String>("document.querySelector('#sync-status').dataset.freshness").await.unwrap(), "paused");
    tab.type_into(&format!("#new-card-{}", board.column), "Written offline").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for("document.querySelector('#sync-status')?.dataset.pending === '1'", WAIT).await.unwrap();

    let back = Instant::now();
    tab.set_offline(false).await.unwrap();
    tab.wait_for(&live(true), Duration::from_secs(1)).await.unwrap();
    let relive = back.elapsed();
    tab.wait_for(&shows(board.card, "changed while you were away"), WAIT).await.unwrap();
    tab.wait_for("JSON.parse(window.__syncline()).pending === 0", WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#sync-status')?.dataset.freshness === 'fresh'", WAIT).await.unwrap();
    eprintln!("back online: live again {relive:?} after `online`");
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let n: i64 =
        conn.query_row("SELECT COUNT(*) FROM cards WHERE title = 'Written offline'", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "the offline write is applied exactly once");
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_server_restart_is_survived_with_backoff_and_a_resume_from_the_cursor() {
    let (mut h, board, browser, _) = setup().await;
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for(&live(true), WAIT).await.unwrap();
    h.restart_server().await.unwrap();
    rename(&h, board.card, "after the restart").await;
    tab.wait_for(&shows(board.card, "after the restart"), WAIT).await.unwrap();
    tab.wait_for(&live(true), WAIT).await.unwrap();
    let s = state(&tab).await;
    assert!(s["metrics"]["reconnects"].as_u64().unwrap() >= 1, "{s}");
    // It resumes from its cursor (the change above came through the feed). Not asserted: that no snapshot is
    // refetched at all — once, under full-suite load, one was; see the closing note of issue 5.
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn without_websockets_it_stays_fresh_by_long_poll_and_upgrades_back_when_they_return() {
    let mut h = Harness::start().await.unwrap();
    let board = seed(&h).await;
    h.set_websockets(false);
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for("document.querySelector('#sync-status')?.dataset.connection === 'polling'", Duration::from_secs(20))
        .await
        .unwrap();
    rename(&h, board.card, "by long-poll").await;
    let sent = Instant::now();
    tab.wait_for(&shows(board.card, "by long-poll"), WAIT).await.unwrap();
    eprintln!("change to DOM by long-poll: {:?}", sent.elapsed());
    assert!(!h.requests("/api/changes").is_empty(), "long-polls reached the server");
    assert_eq!(h.open_websockets(), 0);
    // WebSockets come back: the next probe upgrades (probes come every 15–30 s).
    h.set_websockets(true);
    tab.wait_for(&live(true), Duration::from_secs(40)).await.unwrap();
    eventually("a socket", WAIT, || h.open_websockets() == 1).await;
    rename(&h, board.card, "live again").await;
    tab.wait_for(&shows(board.card, "live again"), WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

/// Types a new card title into a column's "Add a card" box and submits.
async fn add_card(tab: &Tab, column: Uuid, title: &str) {
    tab.type_into(&format!("#new-card-{column}"), title).await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for(
        &format!(
            "[...document.querySelectorAll('.card-title')].some(e => e.textContent === {})",
            serde_json::to_string(title).unwrap()
        ),
        WAIT,
    )
    .await
    .unwrap();
}

fn titles_in_db(h: &Harness, title: &str) -> i64 {
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    conn.query_row("SELECT COUNT(*) FROM cards WHERE title = ?1", [title], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn offline_writes_in_two_tabs_survive_closing_one_and_are_applied_once() {
    let (h, board, browser, url) = setup().await;
    let (a, b) = leader_and_follower(&browser, &url, &board).await;
    a.set_offline(true).await.unwrap();
    b.set_offline(true).await.unwrap();
    a.wait_for("document.querySelector('#sync-status')?.dataset.connection === 'offline'", WAIT).await.unwrap();
    add_card(&a, board.column, "from A").await;
    add_card(&b, board.column, "from B").await;
    // Each tab knows of both pending writes (shared through the BroadcastChannel and IndexedDB).
    a.wait_for("JSON.parse(window.__syncline()).pending === 2", WAIT).await.unwrap();
    // The leader, holding both writes, is closed while offline.
    a.close().await.unwrap();
    b.set_offline(false).await.unwrap();
    b.wait_for(&live(true), WAIT).await.unwrap();
    b.wait_for("JSON.parse(window.__syncline()).pending === 0", WAIT).await.unwrap();
    assert_eq!(titles_in_db(&h, "from A"), 1, "the closed tab's write was sent by the next leader, once");
    assert_eq!(titles_in_db(&h, "from B"), 1);
    for title in ["from A", "from B"] {
        b.wait_for(
            &format!(
                "[...document.querySelectorAll('.card-title')].filter(e => e.textContent === '{title}').length === 1"
            ),
            WAIT,
        )
        .await
        .unwrap();
    }
    browser.close().await;
    h.stop().await;
}

/// Opens the editor of a card, sets its title and saves.
async fn edit_title(tab: &Tab, card: Uuid, title: &str) {
    tab.exec(&format!("document.querySelector('[data-card-id=\"{card}\"] .card-actions button').click()"))
        .await
        .unwrap();
    tab.wait_for_selector(".edit-title", WAIT).await.unwrap();
    tab.exec(&format!(
        "(() => {{ const i = document.querySelector('.edit-title'); i.value = {}; i.dispatchEvent(new Event('input', {{bubbles: true}})); document.querySelector('.card-editor button[type=submit]').click(); }})()",
        serde_json::to_string(title).unwrap()
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn two_browsers_editing_one_title_offline_get_a_winner_and_a_question_not_a_silent_loss() {
    let h = Harness::start().await.unwrap();
    let board = seed(&h).await;
    let url = h.url(&format!("/#/boards/{}", board.id));
    let alice = TestBrowser::launch().await.unwrap();
    let bob = TestBrowser::launch().await.unwrap();
    let ta = alice.open(&url).await.unwrap();
    let tb = bob.open(&url).await.unwrap();
    for t in [&ta, &tb] {
        t.wait_for(&live(true), WAIT).await.unwrap();
        t.wait_for(&shows(board.card, "Watch me"), WAIT).await.unwrap();
    }
    ta.set_offline(true).await.unwrap();
    tb.set_offline(true).await.unwrap();
    edit_title(&ta, board.card, "Alice's title").await;
    edit_title(&tb, board.card, "Bob's title").await;
    ta.wait_for(&shows(board.card, "Alice's title"), WAIT).await.unwrap();
    // Alice comes back first: her write is based on the current version and wins.
    ta.set_offline(false).await.unwrap();
    ta.wait_for("JSON.parse(window.__syncline()).pending === 0", WAIT).await.unwrap();
    assert_eq!(titles_in_db(&h, "Alice's title"), 1);
    // Bob's write was based on the old version: the stated policy (same field changed) asks him.
    tb.set_offline(false).await.unwrap();
    tb.wait_for_selector(".conflict", WAIT).await.unwrap();
    let text = tb.text(".conflict span").await.unwrap();
    assert!(text.contains("Alice's title"), "Bob is told what Alice wrote: {text}");
    assert_eq!(titles_in_db(&h, "Bob's title"), 0, "nothing applied behind Bob's back");
    // Bob keeps his: re-sent on the current version; Alice sees it.
    tb.click(".conflict .keep-mine").await.unwrap();
    tb.wait_for("JSON.parse(window.__syncline()).pending === 0", WAIT).await.unwrap();
    assert_eq!(titles_in_db(&h, "Bob's title"), 1);
    ta.wait_for(&shows(board.card, "Bob's title"), WAIT).await.unwrap();
    alice.close().await;
    bob.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_change_updates_every_view_from_its_own_data_and_refetches_only_the_server_computed_one() {
    let (h, board, browser, _) = setup().await;
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for(&live(true), WAIT).await.unwrap();
    let board_path = format!("/api/boards/{}", board.id);
    let summary_path = format!("/api/boards/{}/summary", board.id);
    let count = |h: &Harness, path: &str| h.stats().recent_requests().iter().filter(|r| r.path == path).count();
    // (The socket can be live before the board's fetch has been answered.)
    eventually("the board fetched", WAIT, || count(&h, &board_path) >= 1).await;
    assert_eq!(count(&h, &board_path), 1);

    // Without the summary open, a change is applied from its own data: no HTTP request at all.
    let before = h.stats().requests_total();
    rename(&h, board.card, "renamed").await;
    tab.wait_for(&shows(board.card, "renamed"), WAIT).await.unwrap();
    assert_eq!(h.stats().requests_total(), before, "a delta, no request");

    // Open the summary: the server computes it, so it is fetched...
    tab.exec("document.querySelector('#board-summary').open = true").await.unwrap();
    tab.wait_for("document.querySelector('.summary-figures')?.dataset.total === '1'", WAIT).await.unwrap();
    assert_eq!(count(&h, &summary_path), 1);
    tab.wait_for("document.querySelector('#board-summary .freshness-mark')?.dataset.freshness === 'fresh'", WAIT)
        .await
        .unwrap();
    // Its freshness mark says when it is being refreshed (a slow link keeps that on screen long enough to see).
    tab.set_latency(300.0).await.unwrap();
    tab.exec(
        "window.__summary = []; new MutationObserver(() => window.__summary.push(document.querySelector('#board-summary .freshness-mark').dataset.freshness))
            .observe(document.querySelector('#board-summary'), { attributes: true, subtree: true, attributeFilter: ['data-freshness'] })",
    )
    .await
    .unwrap();
    // ...and a card added elsewhere updates the board in place (the column, its count) and refetches the
    // summary exactly once; the board itself is not refetched.
    let body = CreateCard { id: None, title: "Second".into(), description: "with words".into() };
    h.write(WriteOp::CreateCard { column_id: board.column, body }).await.unwrap();
    tab.wait_for("[...document.querySelectorAll('.card-title')].some(e => e.textContent === 'Second')", WAIT)
        .await
        .unwrap();
    tab.wait_for("document.querySelector('.column .count')?.textContent === '2'", WAIT).await.unwrap();
    tab.wait_for("document.querySelector('.summary-figures')?.dataset.total === '2'", WAIT).await.unwrap();
    assert_eq!(count(&h, &summary_path), 2, "the dependent query, once");
    tab.wait_for("document.querySelector('#board-summary .freshness-mark')?.dataset.freshness === 'fresh'", WAIT)
        .await
        .unwrap();
    let marks: Vec<String> = tab.eval("window.__summary").await.unwrap();
    assert!(marks.contains(&"fetching".to_owned()), "the summary said it was refreshing: {marks:?}");
    tab.set_latency(0.0).await.unwrap();
    assert_eq!(count(&h, &board_path), 1, "the board is never refetched");
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn leadership_moves_to_the_visible_tab_when_the_leader_is_hidden() {
    let (h, board, browser, url) = setup().await;
    let (first, second) = leader_and_follower(&browser, &url, &board).await;
    assert_eq!(state(&second).await["leader"], false);
    first.hide().await.unwrap();
    second.wait_for(&live(true), WAIT).await.unwrap();
    first.wait_for("JSON.parse(window.__syncline()).leader === false", WAIT).await.unwrap();
    eventually("one socket after the move", WAIT, || h.open_websockets() == 1).await;
    rename(&h, board.card, "through the new leader").await;
    second.wait_for(&shows(board.card, "through the new leader"), WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_single_hidden_tab_lets_go_of_the_network_and_catches_up_when_shown() {
    let (h, board, browser, _) = setup().await;
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for(&live(true), WAIT).await.unwrap();
    let client = client_id(&tab).await;
    tab.hide().await.unwrap();
    // After the grace period (30 s) the socket closes; then nothing, however much changes.
    eventually("the hidden tab to close its socket", Duration::from_secs(40), || h.open_websockets() == 0).await;
    let before = h.requests_from(&client, "/");
    for i in 0..5 {
        rename(&h, board.card, &format!("while hidden {i}")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(h.requests_from(&client, "/"), before, "a paused tab makes no requests");
    tab.show().await.unwrap();
    tab.wait_for(&live(true), WAIT).await.unwrap();
    tab.wait_for(&shows(board.card, "while hidden 4"), WAIT).await.unwrap();
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn closing_its_own_socket_throws_nothing_in_the_page() {
    // Found in a real browser: every time a tab closed its own socket (going offline, losing leadership) the
    // page threw "closure invoked recursively or after being dropped": the socket's handlers were dropped while
    // the WebSocket could still call them.
    let (h, board, browser, url) = setup().await;
    let (first, second) = leader_and_follower(&browser, &url, &board).await;
    first.set_offline(true).await.unwrap();
    first.wait_for("document.querySelector('#sync-status')?.dataset.connection === 'offline'", WAIT).await.unwrap();
    first.set_offline(false).await.unwrap();
    first.wait_for(&live(true), WAIT).await.unwrap();
    // Leadership moves to the visible tab: the first one closes its socket as it steps down.
    first.hide().await.unwrap();
    second.wait_for(&live(true), WAIT).await.unwrap();
    first.wait_for("JSON.parse(window.__syncline()).leader === false", WAIT).await.unwrap();
    eventually("one socket after the move", WAIT, || h.open_websockets() == 1).await;
    // Give a late close event time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(first.exceptions(), Vec::<String>::new(), "uncaught exceptions in the first tab");
    assert_eq!(second.exceptions(), Vec::<String>::new(), "uncaught exceptions in the second tab");
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_tab_opened_next_to_a_live_leader_says_live_at_once() {
    // Found in a real browser: a new follower said "Idle" until the leader's state next changed.
    let (h, board, browser, url) = setup().await;
    let (_leader, follower) = leader_and_follower(&browser, &url, &board).await;
    follower
        .wait_for("document.querySelector('#connection')?.dataset.state === 'live'", Duration::from_secs(1))
        .await
        .expect("the new tab's badge says live within a second, with nothing changing meanwhile");
    assert_eq!(state(&follower).await["leader"], false);
    browser.close().await;
    h.stop().await;
}

/// Found by the chaos test in CI: a tab shown after sleeping rendered for ~100 ms, its leader's answer waited
/// behind that long task with the timer that ends the 50 ms wait for it, the timer ran first, and the tab took the
/// lead from a leader that had answered. The browser's socket was dropped and opened again, and the tab showed its
/// old board until its own socket caught up. Here the follower runs a 150 ms task each time it is shown, right
/// after the runtime hears of it (as rendering what it held back would).
#[tokio::test]
async fn a_follower_busy_when_shown_leaves_the_lead_with_the_leader_that_answered() {
    let (h, board, browser, url) = setup().await;
    let (leader, follower) = leader_and_follower(&browser, &url, &board).await;
    let busy = "document.addEventListener('visibilitychange', () => {
        if (document.visibilityState === 'visible') { const end = performance.now() + 150; while (performance.now() < end) {} }
    }); true";
    assert!(follower.eval::<bool>(busy).await.unwrap());
    let opens = state(&leader).await["metrics"]["socket_opens"].clone();
    for i in 0..4 {
        follower.hide().await.unwrap();
        follower.wait_for("JSON.parse(window.__syncline()).asleep === true", WAIT).await.unwrap();
        rename(&h, board.card, &format!("while asleep {i}")).await;
        follower.show().await.unwrap();
        follower.wait_for(&shows(board.card, &format!("while asleep {i}")), WAIT).await.unwrap();
        // Past the wait for the leader's answer and the moment more it listens.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (f, l) = (state(&follower).await, state(&leader).await);
        assert_eq!(f["leader"], false, "shown (time {}), the busy follower took the lead: {f}", i + 1);
        assert_eq!(l["leader"], true, "{l}");
    }
    assert_eq!(state(&leader).await["metrics"]["socket_opens"], opens, "the leader's socket was opened again");
    assert_eq!(h.open_websockets(), 1);
    browser.close().await;
    h.stop().await;
}
