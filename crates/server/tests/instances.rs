//! Several server instances on one PostgreSQL database (run by the test command, which sets
//! `SYNCLINE_TEST_POSTGRES`): a client of one instance receives every change written through any other, in cursor
//! order with no gap; a write id sent to two instances at once is applied once; sessions work on every instance.

use std::time::Duration;

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
    let url = syncline_server::testing::database_url()?;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("unused.sqlite3"));
    config.database_url = Some(url);
    let a = Server::start(&config).await.unwrap();
    let b = Server::start(&config).await.unwrap();
    Some((a, b, dir))
}

async fn sign_up(base: &str, username: &str) -> (Client, String) {
    let resp = Client::new()
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"username": username, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    (Client::builder().default_headers(headers).build().unwrap(), cookie)
}

#[tokio::test]
async fn a_client_of_one_instance_gets_every_change_written_through_another_in_order() {
    let Some((a, b, _dir)) = two_instances().await else {
        eprintln!("no SYNCLINE_TEST_POSTGRES: skipped (the test command runs it on a PostgreSQL cluster)");
        return;
    };
    let (http_a, cookie) = sign_up(&a.url(), "olivia").await;
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
