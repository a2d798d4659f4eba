//! Several server instances on one PostgreSQL database (run by the test command, which sets
//! `SYNCLINE_TEST_POSTGRES`): a client of one instance receives every change written through any other, in cursor
//! order with no gap; a write id sent to two instances at once is applied once; sessions work on every instance.

mod common;
use std::time::Duration;

use common::signed_in;
use futures_util::{SinkExt, StreamExt};
use reqwest::Client;
use serde_json::{Value, json};
use syncline_kanban::{ClientMessage, Cursor, ServerMessage, StreamCursor, StreamId};
use syncline_server::{Config, Server};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(10);

/// Two instances on one fresh database, or `None` when no PostgreSQL cluster is given.
async fn two_instances() -> Option<(Server, Server, tempfile::TempDir)> {
    two_instances_with(|_| {}).await
}

async fn two_instances_with(tweak: impl FnOnce(&mut Config)) -> Option<(Server, Server, tempfile::TempDir)> {
    let url = syncline_server::testing::database_url()?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("unused.sqlite3"));
    config.database_url = Some(url);
    tweak(&mut config);
    let a = Server::start(&config).await.unwrap();
    let b = Server::start(&config).await.unwrap();
    Some((a, b, dir))
}

#[tokio::test]
async fn a_client_of_one_instance_gets_every_change_written_through_another_in_order() {
    let Some((a, b, _dir)) = two_instances().await else {
        eprintln!("no SYNCLINE_TEST_POSTGRES: skipped (the test command runs it on a PostgreSQL cluster)");
        return;
    };
    let (http_a, cookie) = signed_in(&a.url(), "olivia").await;
    // The same session is good on the other instance: sessions live in the database.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    let http_b = Client::builder().default_headers(headers).build().unwrap();
    assert_eq!(http_b.get(format!("{}/api/auth/me", b.url())).send().await.unwrap().status(), 200);

    let post = |http: &Client, url: String, body: Value| {
        let http = http.clone();
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.json::<Value>().await.unwrap()
        }
    };
    let board = post(&http_a, format!("{}/api/boards", a.url()), json!({"title": "Shared"})).await;
    let board_id = board["id"].as_str().unwrap().to_owned();
    let column = post(&http_a, format!("{}/api/boards/{board_id}/columns", a.url()), json!({"title": "Todo"})).await;
    let column_id = column["id"].as_str().unwrap().to_owned();
    let snapshot: Value =
        http_a.get(format!("{}/api/boards/{board_id}", a.url())).send().await.unwrap().json().await.unwrap();
    let since: Cursor = snapshot["cursor"].as_u64().unwrap();

    // A subscriber on instance A.
    let mut request = format!("ws://{}/api/feed", a.addr).into_client_request().unwrap();
    request.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let stream = StreamId::Board(board_id.parse().unwrap()).name();
    let subscribe =
        ClientMessage::Subscribe { streams: vec![StreamCursor { stream: stream.clone(), since }], log_id: None };
    ws.send(Message::text(serde_json::to_string(&subscribe).unwrap())).await.unwrap();

    // 40 writes, alternating instances, some of them concurrent.
    let mut writers = Vec::new();
    for i in 0..40 {
        let (http, base) = if i % 2 == 0 { (http_a.clone(), a.url()) } else { (http_b.clone(), b.url()) };
        let url = format!("{base}/api/columns/{column_id}/cards");
        writers.push(tokio::spawn(async move {
            let resp = http.post(url).json(&json!({"title": format!("card {i}")})).send().await.unwrap();
            assert_eq!(resp.status(), 201);
        }));
        if i % 10 == 9 {
            for w in writers.drain(..) {
                w.await.unwrap();
            }
        }
    }
    let mut have = since;
    let started = std::time::Instant::now();
    while have < since + 40 {
        let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("changes in time").unwrap().unwrap();
        let Message::Text(text) = frame else { continue };
        if let ServerMessage::Changes { changes, .. } = serde_json::from_str(&text).unwrap() {
            for c in changes {
                assert_eq!(c.cursor, have + 1, "in cursor order, no gap, no repeat");
                have = c.cursor;
            }
        }
    }
    eprintln!("40 writes through two instances reached a subscriber of one in {:?}", started.elapsed());

    // A write id sent to both instances at once is applied once.
    let write_id = Uuid::now_v7();
    let batch = json!({"writes": [{"write_id": write_id, "op": {"type": "create_card", "column_id": column_id, "title": "once"}}]});
    let (ra, rb) = tokio::join!(
        http_a.post(format!("{}/api/writes", a.url())).json(&batch).send(),
        http_b.post(format!("{}/api/writes", b.url())).json(&batch).send()
    );
    let (ra, rb): (Value, Value) = (ra.unwrap().json().await.unwrap(), rb.unwrap().json().await.unwrap());
    assert_eq!(ra["results"][0]["status"], 201);
    assert_eq!(ra["results"][0]["body"], rb["results"][0]["body"], "the same outcome from both");
    let snapshot: Value =
        http_b.get(format!("{}/api/boards/{board_id}", b.url())).send().await.unwrap().json().await.unwrap();
    let once = snapshot["cards"].as_array().unwrap().iter().filter(|c| c["title"] == "once").count();
    assert_eq!(once, 1);
    a.stop(Duration::from_secs(1)).await;
    b.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_commit_hint_wakes_the_other_instances_and_a_lost_listener_costs_latency_never_a_change() {
    // Tail rounds every 3 s: only the hint explains a delivery much sooner.
    let Some((a, b, _dir)) = two_instances_with(|c| c.tail_interval_secs = 3.0).await else {
        eprintln!("no SYNCLINE_TEST_POSTGRES: skipped (the test command runs it on a PostgreSQL cluster)");
        return;
    };
    let (http, cookie) = signed_in(&a.url(), "hinted").await;
    let board: Value = http
        .post(format!("{}/api/boards", a.url()))
        .json(&json!({"title": "B"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let board_id = board["id"].as_str().unwrap().to_owned();
    let column: Value = http
        .post(format!("{}/api/boards/{board_id}/columns", a.url()))
        .json(&json!({"title": "C"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let column_id = column["id"].as_str().unwrap().to_owned();
    let snapshot: Value =
        http.get(format!("{}/api/boards/{board_id}", a.url())).send().await.unwrap().json().await.unwrap();
    let mut have: Cursor = snapshot["cursor"].as_u64().unwrap();
    let mut request = format!("ws://{}/api/feed", a.addr).into_client_request().unwrap();
    request.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let stream = StreamId::Board(board_id.parse().unwrap()).name();
    let subscribe =
        ClientMessage::Subscribe { streams: vec![StreamCursor { stream: stream.clone(), since: have }], log_id: None };
    ws.send(Message::text(serde_json::to_string(&subscribe).unwrap())).await.unwrap();
    // Let instance A take up the stream (its first round reads the head) before writing through B.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Writes through B; returns how long until the subscriber of A had it.
    let mut write_through_b = async |title: &str| {
        let started = std::time::Instant::now();
        let resp = http
            .post(format!("{}/api/columns/{column_id}/cards", b.url()))
            .json(&json!({ "title": title }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        loop {
            let frame = tokio::time::timeout(WAIT, ws.next()).await.expect("the change in time").unwrap().unwrap();
            let Message::Text(text) = frame else { continue };
            if let ServerMessage::Changes { changes, .. } = serde_json::from_str(&text).unwrap() {
                for c in changes {
                    assert_eq!(c.cursor, have + 1, "in cursor order, no gap, no repeat");
                    have = c.cursor;
                }
                return started.elapsed();
            }
        }
    };
    let hinted = write_through_b("hinted").await;
    assert!(hinted < Duration::from_secs(1), "woken by the hint, not the 3 s round: {hinted:?}");

    // Every instance's listener connection is cut (as a failover or a network blip would).
    let admin_url = a.state.store.postgres_url().unwrap().to_owned();
    let cut = tokio::task::spawn_blocking(move || {
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                &[],
            )
            .unwrap();
        rows.len()
    })
    .await
    .unwrap();
    assert_eq!(cut, 2, "one listener per instance");
    let after_cut = write_through_b("while the listeners were gone").await;
    assert!(after_cut < WAIT, "delivered anyway");
    // Back, and hinting again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = write_through_b("hinted again").await;
    assert!(again < Duration::from_secs(1), "the listener reconnected: {again:?}");
    eprintln!("cross-instance delivery: {hinted:?} on a hint, {after_cut:?} with the listeners cut, {again:?} after");
    a.stop(Duration::from_secs(1)).await;
    b.stop(Duration::from_secs(1)).await;
}
