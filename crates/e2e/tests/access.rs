//! Accounts and per-board access in a real Chromium: two users sharing a board live, a member removed while
//! looking at it (their tabs say so within a second, and the server sends them nothing more of it), a viewer who
//! sees but cannot change, and two users one after the other in one browser profile who never share a cache, an
//! outbox or a leader.

use std::time::{Duration, Instant};

use serde_json::Value;
use syncline_e2e::{Harness, TEST_PASSWORD, Tab, TestBrowser, repo_root};
use syncline_kanban::{AddMember, CreateBoard, CreateCard, CreateColumn, Role, StreamId, UpdateCard, WriteOp};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

fn docs(name: &str) -> std::path::PathBuf {
    repo_root().join("docs").join(name)
}

struct Board {
    id: Uuid,
    column: Uuid,
    card: Uuid,
}

/// A board of the test user (its owner) with a column and a card, shared with `member` in `role`.
async fn shared_board(h: &Harness, title: &str, member: Option<(&str, Role)>) -> Board {
    let id_of = |v: Value| Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let id =
        id_of(h.write(WriteOp::CreateBoard { body: CreateBoard { id: None, title: title.into() } }).await.unwrap());
    let column = id_of(
        h.write(WriteOp::CreateColumn { board_id: id, body: CreateColumn { id: None, title: "Todo".into() } })
            .await
            .unwrap(),
    );
    let body = CreateCard { id: None, title: "Shared card".into(), description: String::new() };
    let card = id_of(h.write(WriteOp::CreateCard { column_id: column, body }).await.unwrap());
    if let Some((username, role)) = member {
        let body = AddMember { username: username.into(), role };
        h.write(WriteOp::AddMember { board_id: id, body }).await.unwrap();
    }
    Board { id, column, card }
}

/// A browser signed in as `username` (the account exists).
async fn browser_as(h: &Harness, username: &str) -> TestBrowser {
    let browser = TestBrowser::launch_anonymous().await.unwrap();
    browser.sign_in(&h.url(""), username, TEST_PASSWORD).await.unwrap();
    browser
}

fn shows_card_titled(title: &str) -> String {
    format!("[...document.querySelectorAll('.card-title')].some(e => e.textContent === {})", serde_json::json!(title))
}

/// Waits for `predicate` across a page reload (signing in and out reloads the page, which cuts an evaluation short).
async fn wait_across_reload(tab: &Tab, predicate: &str) {
    let start = Instant::now();
    loop {
        match tab.wait_for(predicate, Duration::from_secs(2)).await {
            Ok(()) => return,
            Err(e) if start.elapsed() > WAIT => panic!("{e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn state(tab: &Tab) -> Value {
    let text: String = tab.eval("window.__syncline ? window.__syncline() : 'null'").await.unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn two_users_share_a_board_and_changes_flow_both_ways_live() {
    let h = Harness::start().await.unwrap();
    h.create_user("bob", TEST_PASSWORD).await.unwrap();
    let board = shared_board(&h, "Together", Some(("bob", Role::Editor))).await;
    let url = h.url(&format!("/#/boards/{}", board.id));
    let alice = TestBrowser::launch().await.unwrap();
    let bob = browser_as(&h, "bob").await;
    let a = alice.open(&url).await.unwrap();
    let b = bob.open(&url).await.unwrap();
    for tab in [&a, &b] {
        tab.wait_for(&shows_card_titled("Shared card"), WAIT).await.unwrap();
        tab.wait_for("document.querySelector('#connection')?.dataset.state === 'live'", WAIT).await.unwrap();
    }
    // Alice adds a card in the UI; Bob sees it without doing anything.
    a.type_into(".column .new-card-title", "From Alice").await.unwrap();
    a.press("Enter").await.unwrap();
    b.wait_for(&shows_card_titled("From Alice"), Duration::from_secs(2)).await.unwrap();
    // Bob adds one; Alice sees it.
    b.type_into(".column .new-card-title", "From Bob").await.unwrap();
    b.press("Enter").await.unwrap();
    a.wait_for(&shows_card_titled("From Bob"), Duration::from_secs(2)).await.unwrap();
    // Each sees the other in the members list.
    let members: String = a
        .eval("[...document.querySelectorAll('.member')].map(e => e.dataset.username + ':' + e.dataset.role).join(',')")
        .await
        .unwrap();
    assert_eq!(members, "tester:owner,bob:editor");
    assert!(a.exceptions().is_empty() && b.exceptions().is_empty(), "{:?} {:?}", a.exceptions(), b.exceptions());
    alice.close().await;
    bob.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_removed_member_sees_the_revocation_within_a_second_and_receives_nothing_more() {
    let h = Harness::start().await.unwrap();
    let bob_id = h.create_user("bob", TEST_PASSWORD).await.unwrap();
    let board = shared_board(&h, "Leaving", Some(("bob", Role::Editor))).await;
    let url = h.url(&format!("/#/boards/{}", board.id));
    let bob = browser_as(&h, "bob").await;
    let leader = bob.open(&url).await.unwrap();
    leader.wait_for("document.querySelector('#connection')?.dataset.state === 'live'", WAIT).await.unwrap();
    let follower = bob.open(&url).await.unwrap();
    follower.wait_for(&shows_card_titled("Shared card"), WAIT).await.unwrap();
    let namespace = state(&leader).await["namespace"].as_str().unwrap().to_owned();
    // Bob's cache holds the board now (saved a second after it changed).
    let cached_js = format!(
        r#"new Promise((resolve, reject) => {{
            const open = indexedDB.open({namespace:?});
            open.onsuccess = () => {{
                const req = open.result.transaction('cache').objectStore('cache').getAllKeys();
                req.onsuccess = () => {{ open.result.close(); resolve(req.result.some(k => k.includes({board:?}))); }};
                req.onerror = () => reject(req.error);
            }};
            open.onerror = () => reject(open.error);
        }})"#,
        board = board.id.to_string()
    );
    let deadline = Instant::now() + WAIT;
    while !leader.eval::<bool>(&cached_js).await.unwrap() {
        assert!(Instant::now() < deadline, "the board was never cached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A change Bob does get (so the delivery log below is seen to record his deliveries).
    let body = CreateCard { id: None, title: "Before the removal".into(), description: String::new() };
    h.write(WriteOp::CreateCard { column_id: board.column, body }).await.unwrap();
    leader.wait_for(&shows_card_titled("Before the removal"), WAIT).await.unwrap();

    // The owner removes Bob.
    let removed = Instant::now();
    h.write(WriteOp::RemoveMember { board_id: board.id, user_id: bob_id }).await.unwrap();
    let removal_cursor = h.stream_head(StreamId::Board(board.id).name()).await.unwrap();
    for tab in [&leader, &follower] {
        tab.wait_for("document.querySelector('#access-revoked')", Duration::from_secs(1)).await.unwrap();
    }
    let shown_after = removed.elapsed();
    leader.screenshot(&docs("screenshot-revoked.png")).await.unwrap();
    // The owner keeps working on the board; none of it reaches Bob.
    for i in 0..5 {
        let body = UpdateCard { title: Some(format!("secret {i}")), ..Default::default() };
        h.write(WriteOp::UpdateCard { id: board.card, body }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stream = StreamId::Board(board.id).to_string();
    let to_bob: Vec<_> =
        h.stats().recent_deliveries().into_iter().filter(|d| d.user == bob_id && d.stream == stream).collect();
    assert!(!to_bob.is_empty(), "the delivery log recorded nothing sent to Bob (not even before his removal)");
    let leaked: Vec<_> = to_bob.into_iter().filter(|d| d.last_cursor >= removal_cursor).collect();
    assert!(
        leaked.is_empty(),
        "the server sent Bob changes at or after his removal (cursor {removal_cursor}): {leaked:?}"
    );
    for tab in [&leader, &follower] {
        assert!(!tab.eval::<bool>(&shows_card_titled("secret 4")).await.unwrap());
        assert!(
            !tab.eval::<bool>("document.body.textContent.includes('Shared card')").await.unwrap(),
            "dropped from memory"
        );
    }
    assert!(!leader.eval::<bool>(&cached_js).await.unwrap(), "dropped from IndexedDB");
    // His list no longer has it.
    leader.exec("location.hash = '#/'").await.unwrap();
    leader.wait_for_selector(".boards", WAIT).await.unwrap();
    leader.wait_for("!document.body.textContent.includes('Leaving')", WAIT).await.unwrap();
    eprintln!("revocation shown {shown_after:?} after the removal committed");
    bob.close().await;
    h.stop().await;
}

#[tokio::test]
async fn a_viewer_sees_the_board_live_but_cannot_change_it() {
    let h = Harness::start().await.unwrap();
    h.create_user("vera", TEST_PASSWORD).await.unwrap();
    let board = shared_board(&h, "Look only", Some(("vera", Role::Viewer))).await;
    let url = h.url(&format!("/#/boards/{}", board.id));
    let vera = browser_as(&h, "vera").await;
    let tab = vera.open(&url).await.unwrap();
    tab.wait_for(&shows_card_titled("Shared card"), WAIT).await.unwrap();
    tab.wait_for_selector("#read-only", WAIT).await.unwrap();
    // No edit controls: no add forms, no card actions, nothing draggable, read-only titles, no delete.
    let controls: Value = tab
        .eval(
            r#"({
                addColumn: !!document.querySelector('#new-column-title'),
                addCard: !!document.querySelector('.new-card-title'),
                cardActions: document.querySelectorAll('.card-actions').length,
                draggable: [...document.querySelectorAll('[data-card-id]')].some(e => e.draggable),
                titleReadOnly: document.querySelector('#board-title').readOnly,
                columnReadOnly: [...document.querySelectorAll('.column-title')].every(e => e.readOnly),
                deleteBoard: [...document.querySelectorAll('button')].some(b => b.textContent === 'Delete board'),
                addMember: !!document.querySelector('#add-member'),
            })"#,
        )
        .await
        .unwrap();
    assert_eq!(
        controls,
        serde_json::json!({"addColumn": false, "addCard": false, "cardActions": 0, "draggable": false,
            "titleReadOnly": true, "columnReadOnly": true, "deleteBoard": false, "addMember": false})
    );
    // Keyboard moves do nothing either.
    tab.focus(&format!("[data-card-id=\"{}\"]", board.card)).await.unwrap();
    tab.press(" ").await.unwrap();
    tab.press("ArrowRight").await.unwrap();
    assert_eq!(state(&tab).await["pending"], 0, "no write was queued");
    // Live: the owner's changes arrive.
    let body = CreateCard { id: None, title: "New from the owner".into(), description: String::new() };
    h.write(WriteOp::CreateCard { column_id: board.column, body }).await.unwrap();
    tab.wait_for(&shows_card_titled("New from the owner"), Duration::from_secs(2)).await.unwrap();
    // And the server refuses a viewer's write anyway.
    let status: u64 = tab
        .eval(&format!(
            r#"fetch('/api/cards/{}', {{ method: 'PATCH', headers: {{ 'content-type': 'application/json' }}, body: JSON.stringify({{ title: 'sneaky' }}) }}).then(r => r.status)"#,
            board.card
        ))
        .await
        .unwrap();
    assert_eq!(status, 403);
    vera.close().await;
    h.stop().await;
}

#[tokio::test]
async fn two_users_one_after_the_other_in_one_browser_never_share_boards_cache_outbox_or_leader() {
    let h = Harness::start().await.unwrap();
    h.create_user("alice", TEST_PASSWORD).await.unwrap();
    let bob_id = h.create_user("bob", TEST_PASSWORD).await.unwrap();
    // Alice's board (the harness writes as its test user, who shares it with Alice as owner).
    let alpha = shared_board(&h, "Alpha", Some(("alice", Role::Owner))).await;
    let browser = TestBrowser::launch_anonymous().await.unwrap();
    let tab = browser.open(&h.url("/")).await.unwrap();

    // Signing in through the form.
    tab.wait_for_selector("#sign-in-form", WAIT).await.unwrap();
    tab.screenshot(&docs("screenshot-sign-in.png")).await.unwrap();
    tab.type_into("#username", "alice").await.unwrap();
    tab.type_into("#password", TEST_PASSWORD).await.unwrap();
    tab.click("#sign-in").await.unwrap();
    wait_across_reload(&tab, "document.querySelector('#signed-in-as')?.textContent === 'alice'").await;
    tab.exec(&format!("location.hash = '#/boards/{}'", alpha.id)).await.unwrap();
    tab.wait_for(&shows_card_titled("Shared card"), WAIT).await.unwrap();
    tab.wait_for("document.querySelector('#connection')?.dataset.state === 'live'", WAIT).await.unwrap();
    let alice_ns = state(&tab).await["namespace"].as_str().unwrap().to_owned();
    // Offline, Alice adds a card: it waits in her outbox.
    tab.set_offline(true).await.unwrap();
    tab.type_into(".column .new-card-title", "Alice's unsent card").await.unwrap();
    tab.press("Enter").await.unwrap();
    tab.wait_for(&shows_card_titled("Alice's unsent card"), WAIT).await.unwrap();
    assert_eq!(state(&tab).await["pending"], 1);
    // She signs out (offline: the server cannot hear it; this browser forgets her anyway).
    tab.click("#sign-out").await.unwrap();
    wait_across_reload(&tab, "document.querySelector('#sign-in-form')").await;
    tab.set_offline(false).await.unwrap();

    // Bob signs in on the same profile.
    tab.type_into("#username", "bob").await.unwrap();
    tab.type_into("#password", TEST_PASSWORD).await.unwrap();
    tab.click("#sign-in").await.unwrap();
    wait_across_reload(&tab, "document.querySelector('#signed-in-as')?.textContent === 'bob'").await;
    tab.wait_for_selector(".boards .notice", WAIT).await.unwrap();
    let bob_state = state(&tab).await;
    let bob_ns = bob_state["namespace"].as_str().unwrap().to_owned();
    assert_ne!(bob_ns, alice_ns, "a database, channel and lock of his own");
    assert!(bob_ns.contains(&bob_id.to_string()));
    assert_eq!(bob_state["pending"], 0, "Alice's queued write is not Bob's");
    assert!(!tab.eval::<bool>("document.body.textContent.includes('Alpha')").await.unwrap(), "not her boards");
    let no_such: String =
        tab.eval(&format!("fetch('/api/boards/{}').then(r => String(r.status))", alpha.id)).await.unwrap();
    assert_eq!(no_such, "404");
    // Her write was never sent, and certainly not as Bob.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conn = rusqlite::Connection::open(h.db_path()).unwrap();
    let count = |title: &str| -> i64 {
        conn.query_row("SELECT COUNT(*) FROM cards WHERE title = ?1", [title], |r| r.get(0)).unwrap()
    };
    assert_eq!(count("Alice's unsent card"), 0);
    // Her cache is gone, her outbox kept for her.
    let counts_js = |ns: &str| {
        format!(
            r#"new Promise((resolve, reject) => {{
                const open = indexedDB.open({ns:?});
                open.onsuccess = () => {{
                    const tx = open.result.transaction(['cache', 'outbox']);
                    const c = tx.objectStore('cache').count(), o = tx.objectStore('outbox').count();
                    tx.oncomplete = () => {{ open.result.close(); resolve([c.result, o.result]); }};
                    tx.onerror = () => reject(tx.error);
                }};
                open.onerror = () => reject(open.error);
            }})"#
        )
    };
    let alice_store: Vec<u64> = tab.eval(&counts_js(&alice_ns)).await.unwrap();
    assert_eq!(alice_store, vec![0, 1], "Alice's cache cleared at sign-out, her unsent write kept");

    // Bob signs out; Alice signs in again: her write goes, as hers.
    tab.click("#sign-out").await.unwrap();
    wait_across_reload(&tab, "document.querySelector('#sign-in-form')").await;
    tab.type_into("#username", "alice").await.unwrap();
    tab.type_into("#password", TEST_PASSWORD).await.unwrap();
    tab.click("#sign-in").await.unwrap();
    wait_across_reload(&tab, "document.querySelector('#signed-in-as')?.textContent === 'alice'").await;
    let deadline = Instant::now() + WAIT;
    while count("Alice's unsent card") != 1 {
        assert!(Instant::now() < deadline, "Alice's write was not sent after she signed in again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tab.exceptions().is_empty(), "{:?}", tab.exceptions());
    browser.close().await;
    h.stop().await;
}

#[tokio::test]
async fn screenshot_of_the_members_panel() {
    let h = Harness::start().await.unwrap();
    for name in ["bob", "carol"] {
        h.create_user(name, TEST_PASSWORD).await.unwrap();
    }
    let board = shared_board(&h, "Team board", Some(("bob", Role::Editor))).await;
    let body = AddMember { username: "carol".into(), role: Role::Viewer };
    h.write(WriteOp::AddMember { board_id: board.id, body }).await.unwrap();
    let browser = TestBrowser::launch().await.unwrap();
    let tab = browser.open(&h.url(&format!("/#/boards/{}", board.id))).await.unwrap();
    tab.wait_for(&shows_card_titled("Shared card"), WAIT).await.unwrap();
    tab.exec("document.querySelector('#members').open = true").await.unwrap();
    tab.wait_for("document.querySelectorAll('.member').length === 3", WAIT).await.unwrap();
    tab.screenshot(&docs("screenshot-members.png")).await.unwrap();
    browser.close().await;
    h.stop().await;
}
