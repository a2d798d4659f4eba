//! The change feed over real loopback sockets: WebSocket (tokio-tungstenite) and HTTP (reqwest) clients
//! against the real server and SQLite file.

mod common;
use std::time::{Duration, Instant};

use common::{resident_bytes, signed_in};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use syncline_kanban::{
    Board, Card, Change, ChangeOp, ClientMessage, Column, Cursor, ServerMessage, StreamCursor, StreamId, StreamName,
    WriteBatchResult,
};
use syncline_server::{Config, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
const WAIT: Duration = Duration::from_secs(10);

/// The tests in this file run in parallel in one process (unless told `--test-threads=1`), and one of them
/// measures the process's memory: while it runs, no other test's server lives (`Fixture::alone`).
static MEMORY_MEASURED: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's turn: with others, or alone.
#[allow(dead_code)] // held, never read
enum Turn {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

struct Fixture {
    server: Server,
    http: Client,
    /// The session cookie of the signed-in test user, for WebSocket upgrades.
    cookie: String,
    _dir: tempfile::TempDir,
    _turn: Turn,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with(|_| {}).await
    }

    async fn with(configure: impl FnOnce(&mut Config)) -> Fixture {
        Self::start(Turn::Shared(MEMORY_MEASURED.read().await), configure).await
    }

    /// A fixture whose test runs with no other test's server in the process (it measures the process).
    async fn alone(configure: impl FnOnce(&mut Config)) -> Fixture {
        Self::start(Turn::Alone(MEMORY_MEASURED.write().await), configure).await
    }

    async fn start(turn: Turn, configure: impl FnOnce(&mut Config)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().join("feed.sqlite3"));
        config.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
        configure(&mut config);
        let server = Server::start(&config).await.unwrap();
        let (http, cookie) = signed_in(&server.url(), "tester").await;
        Fixture { server, http, cookie, _dir: dir, _turn: turn }
    }

    /// The Prometheus text from the metrics address.
    async fn metrics(&self) -> String {
        let addr = self.server.metrics_addr.expect("metrics served");
        self.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// A WebSocket upgrade request for the feed, with the session cookie.
    fn feed_request(&self) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut request = format!("ws://{}/api/feed", self.server.addr).into_client_request().unwrap();
        request.headers_mut().insert("cookie", self.cookie.parse().unwrap());
        request
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.url(), path)
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http.get(self.url(path)).send().await.unwrap().json().await.unwrap()
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: Value) -> T {
        let resp = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// A board with one column and one card.
    async fn board(&self) -> (Board, Column, Card) {
        let board: Board = self.post("/api/boards", json!({"title": "Feed"})).await;
        let column: Column = self.post(&format!("/api/boards/{}/columns", board.id), json!({"title": "Todo"})).await;
        let card: Card = self.post(&format!("/api/columns/{}/cards", column.id), json!({"title": "Card"})).await;
        (board, column, card)
    }

    async fn rename_card(&self, card: &Card, title: &str) -> Card {
        let resp = self
            .http
            .patch(self.url(&format!("/api/cards/{}", card.id)))
            .json(&json!({"title": title}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn connect(&self) -> Ws {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.feed_request()).await.unwrap();
        match next(&mut ws).await {
            ServerMessage::Hello { .. } => ws,
            other => panic!("expected hello, got {other:?}"),
        }
    }

    async fn cursor(&self, board: &Board) -> Cursor {
        let snap: Value =
            self.http.get(self.url(&format!("/api/boards/{}", board.id))).send().await.unwrap().json().await.unwrap();
        snap["cursor"].as_u64().unwrap()
    }
}

async fn send(ws: &mut Ws, msg: &ClientMessage) {
    ws.send(Message::text(serde_json::to_string(msg).unwrap())).await.unwrap();
}

async fn subscribe(ws: &mut Ws, stream: StreamName, since: Cursor) {
    send(ws, &ClientMessage::Subscribe { streams: vec![StreamCursor { stream: stream.clone(), since }], log_id: None })
        .await;
}

/// The next feed message, skipping control frames.
async fn next(ws: &mut Ws) -> ServerMessage {
    loop {
        let frame =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a message in time").expect("socket open").unwrap();
        match frame {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Collects changes until `cursor` is reached; panics on a gap, a duplicate or a reset.
async fn changes_until(ws: &mut Ws, stream: StreamName, mut have: Cursor, until: Cursor) -> Vec<Change> {
    let mut all = Vec::new();
    while have < until {
        match next(ws).await {
            ServerMessage::Changes { stream: s, changes } => {
                assert_eq!(s, stream);
                for c in changes {
                    assert_eq!(c.cursor, have + 1, "changes arrive in order with no gap or repeat");
                    have = c.cursor;
                    all.push(c);
                }
            }
            ServerMessage::Synced { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    all
}

/// Reads until the socket closes; returns the close code and reason.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
        }
    }
}

#[tokio::test]
async fn a_client_resumes_from_its_cursor_and_gets_exactly_what_it_missed_in_order() {
    let f = Fixture::new().await;
    let (board, _, card) = f.board().await;
    let stream = StreamId::Board(board.id).name();
    let mut ws = f.connect().await;
    let since = f.cursor(&board).await;
    subscribe(&mut ws, stream.clone(), since).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Synced { stream: stream.clone(), cursor: since });
    drop(ws);

    for i in 0..100 {
        f.rename_card(&card, &format!("title {i}")).await;
    }

    let mut ws = f.connect().await;
    subscribe(&mut ws, stream.clone(), since).await;
    let got = changes_until(&mut ws, stream.clone(), since, since + 100).await;
    assert_eq!(got.len(), 100);
    for (i, change) in got.iter().enumerate() {
        match &change.op {
            // A rename carries the title alone.
            ChangeOp::CardPatched {
                title: Some(title), description: None, column_id: None, position: None, ..
            } => {
                assert_eq!(*title, format!("title {i}"))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next(&mut ws).await, ServerMessage::Synced { stream: stream.clone(), cursor: since + 100 });

    // And it is live afterwards: the next write arrives without asking.
    f.rename_card(&card, "live").await;
    let live = changes_until(&mut ws, stream.clone(), since + 100, since + 101).await;
    assert!(matches!(&live[0].op, ChangeOp::CardPatched { title: Some(t), .. } if t == "live"));
}

#[tokio::test]
async fn the_same_write_id_sent_five_times_concurrently_is_applied_once_with_identical_answers() {
    let f = Fixture::new().await;
    let (board, _, card) = f.board().await;
    let before = f.cursor(&board).await;
    let write_id = Uuid::new_v4();
    let url = f.url(&format!("/api/cards/{}", card.id));
    let sends = (0..5).map(|_| {
        let (http, url) = (f.http.clone(), url.clone());
        async move {
            let resp = http
                .patch(url)
                .header("idempotency-key", write_id.to_string())
                .json(&json!({"title": "once", "base_version": 1}))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    for answer in &answers {
        assert_eq!(answer, &answers[0], "every replay answers like the first");
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    let updated: Card = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(updated.version, 2, "applied exactly once");
    assert_eq!(f.cursor(&board).await, before + 1, "one change in the log");

    // The same id with a different write is refused, not applied.
    let resp = f
        .http
        .patch(&url)
        .header("idempotency-key", write_id.to_string())
        .json(&json!({"title": "something else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "idempotency_key_reused");
    let metrics = f.metrics().await;
    assert!(metrics.contains("syncline_duplicate_writes_total 4"), "{metrics}");
}

#[tokio::test]
async fn two_writes_on_the_same_base_version_one_wins_the_other_gets_409_with_the_current_entity() {
    let f = Fixture::new().await;
    let (_, _, card) = f.board().await;
    let url = f.url(&format!("/api/cards/{}", card.id));
    let a = f.http.patch(&url).json(&json!({"title": "A", "base_version": 1}));
    let b = f.http.patch(&url).json(&json!({"title": "B", "base_version": 1}));
    let (a, b) = tokio::join!(a.send(), b.send());
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let (winner, loser) = if a.status() == 200 { (a, b) } else { (b, a) };
    let winner: Card = winner.json().await.unwrap();
    let loser: Value = loser.json().await.unwrap();
    assert_eq!(loser["error"], "conflict");
    assert_eq!(loser["current"]["title"], winner.title.as_str());
    assert_eq!(loser["current"]["version"], 2);
}

#[tokio::test]
async fn a_long_poll_returns_within_100_ms_of_a_write_landing() {
    let f = Fixture::new().await;
    let (board, _, card) = f.board().await;
    let since = f.cursor(&board).await;
    let url = f.url(&format!("/api/changes?stream=board:{}&since={since}&wait=20", board.id));
    let poll = tokio::spawn({
        let http = f.http.clone();
        async move {
            let resp: ServerMessage = http.get(url).send().await.unwrap().json().await.unwrap();
            (resp, Instant::now())
        }
    });
    // Let the poll start waiting (the gauge says when), then write.
    let waiting = Instant::now();
    while f.server.metrics().longpolls_waiting.get() == 0 {
        assert!(waiting.elapsed() < WAIT, "the long-poll never started waiting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.rename_card(&card, "landed").await;
    let landed = Instant::now();
    let (resp, returned) = poll.await.unwrap();
    let latency = returned.saturating_duration_since(landed);
    assert!(latency < Duration::from_millis(100), "long-poll answered {latency:?} after the write");
    match resp {
        ServerMessage::Changes { changes, .. } => {
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].cursor, since + 1);
        }
        other => panic!("{other:?}"),
    }

    // With changes already there, it answers at once; with none and wait=0, at once and empty.
    let now: ServerMessage = f.get(&format!("/api/changes?stream=board:{}&since={since}&wait=20", board.id)).await;
    assert!(matches!(now, ServerMessage::Changes { ref changes, .. } if changes.len() == 1));
    let empty: ServerMessage = f.get(&format!("/api/changes?stream=board:{}&since={}", board.id, since + 1)).await;
    assert!(matches!(empty, ServerMessage::Changes { ref changes, .. } if changes.is_empty()));
    let bad = f.http.get(f.url("/api/changes?stream=cards&since=0")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"], "invalid_parameter");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_gets_everything_later_and_costs_bounded_memory() {
    // Heartbeats are not the point here: a client that does not read does not answer pings either.
    let f = Fixture::alone(|c| c.heartbeat_secs = 600.0).await;
    let (board, column, _) = f.board().await;
    let stream = StreamId::Board(board.id).name();
    let since = f.cursor(&board).await;
    let mut slow = f.connect().await;
    subscribe(&mut slow, stream.clone(), since).await;
    assert_eq!(next(&mut slow).await, ServerMessage::Synced { stream: stream.clone(), cursor: since });

    // 10,000 changes of ~4 KB each: ~40 MB that would pile up in memory if the server queued them.
    let description = "x".repeat(4000);
    let rss_before = resident_bytes();
    let started = Instant::now();
    for batch in 0..100 {
        let writes: Vec<Value> = (0..100)
            .map(|i| {
                json!({"write_id": Uuid::new_v4(), "op": {"type": "create_card", "column_id": column.id,
                       "title": format!("card {}", batch * 100 + i), "description": description}})
            })
            .collect();
        let result: WriteBatchResult = f.post("/api/writes", json!({ "writes": writes })).await;
        assert!(result.results.iter().all(|r| r.status == 201));
    }
    eprintln!("10,000 writes in {:?}", started.elapsed());
    let growth = resident_bytes().saturating_sub(rss_before);
    assert!(growth < 24 * 1024 * 1024, "memory grew by {} MB while a subscriber was not reading", growth >> 20);
    let got = changes_until(&mut slow, stream.clone(), since, since + 10_000).await;
    assert_eq!(got.len(), 10_000);
    assert!(f.server.metrics().feed_resyncs.get() > 0, "the stalled reader fell back to the log");
    assert!(matches!(&got[9_999].op, ChangeOp::CardUpserted { card } if card.title == "card 9999"));
}

#[tokio::test]
async fn a_cursor_older_than_retention_or_from_another_log_gets_reset() {
    let f = Fixture::with(|c| {
        c.retention_changes = 10;
        c.prune_interval_secs = 0.05;
    })
    .await;
    let (board, _, card) = f.board().await;
    for i in 0..30 {
        f.rename_card(&card, &format!("t{i}")).await;
    }
    let stream = StreamId::Board(board.id).name();
    let head = f.cursor(&board).await;
    // Wait for a retention sweep that ran after the last rename. One that ran while the renames were still
    // being made may have dropped only the first change, and cursor 1 would still be served: wait for this
    // stream's log to be past it (pruning only ever moves it forward), not for any sweep.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < WAIT, "retention never dropped the board's old changes");
        let polled: ServerMessage = f.get(&format!("/api/changes?stream=board:{}&since=1", board.id)).await;
        if matches!(polled, ServerMessage::Reset { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(f.server.metrics().changes_pruned.get() > 0);

    let mut ws = f.connect().await;
    subscribe(&mut ws, stream.clone(), 1).await;
    let got = next(&mut ws).await;
    assert!(
        matches!(got, ServerMessage::Reset { stream: ref s, ref reason } if *s == stream && reason.contains("retention")),
        "a cursor older than retention got {got:?}"
    );
    // A recent cursor is still served.
    subscribe(&mut ws, stream.clone(), head - 5).await;
    assert_eq!(changes_until(&mut ws, stream.clone(), head - 5, head).await.len(), 5);
    assert_eq!(next(&mut ws).await, ServerMessage::Synced { stream: stream.clone(), cursor: head });
    // A cursor from the future, or from another log, is reset too.
    subscribe(&mut ws, stream.clone(), head + 1).await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Reset { .. }));
    send(
        &mut ws,
        &ClientMessage::Subscribe {
            streams: vec![StreamCursor { stream: stream.clone(), since: head }],
            log_id: Some(Uuid::new_v4()),
        },
    )
    .await;
    assert!(matches!(next(&mut ws).await, ServerMessage::Reset { ref reason, .. } if reason.contains("change log")));
}

#[tokio::test]
async fn a_forged_origin_is_refused_and_bad_frames_close_only_their_own_socket() {
    let f = Fixture::with(|c| c.max_subscriptions = 2).await;
    let (board, _, card) = f.board().await;
    let stream = StreamId::Board(board.id).name();

    let mut request = f.feed_request();
    request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "forbidden_origin");
        }
        other => panic!("forged origin was not refused: {other:?}"),
    }
    // The server's own origin is fine.
    let mut request = f.feed_request();
    request.headers_mut().insert("origin", format!("http://{}", f.server.addr).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());

    // A bystander that must keep working through all of this.
    let mut bystander = f.connect().await;
    let since = f.cursor(&board).await;
    subscribe(&mut bystander, stream.clone(), since).await;
    assert_eq!(next(&mut bystander).await, ServerMessage::Synced { stream: stream.clone(), cursor: since });

    let cases: Vec<(Message, u16)> = vec![
        (Message::text("{not json"), 1007),
        (Message::text(r#"{"type":"subscribe","streams":[{"stream":"nope","since":0}]}"#), 1007),
        (Message::text(r#"{"type":"dance"}"#), 1007),
        (Message::Binary(Bytes::from_static(b"\x00\x01")), 1003),
        (Message::text("x".repeat(70 * 1024)), 1009),
        (
            Message::text(
                serde_json::to_string(&ClientMessage::Subscribe {
                    streams: (0..3)
                        .map(|_| StreamCursor { stream: StreamId::Board(Uuid::new_v4()).name(), since: 0 })
                        .collect(),
                    log_id: None,
                })
                .unwrap(),
            ),
            1008,
        ),
    ];
    for (frame, expected) in cases {
        let mut ws = f.connect().await;
        ws.send(frame).await.unwrap();
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, expected, "close code for a bad frame ({reason})");
        assert!(!reason.is_empty(), "a close says why");
    }

    f.rename_card(&card, "still served").await;
    let got = changes_until(&mut bystander, stream.clone(), since, since + 1).await;
    assert!(matches!(&got[0].op, ChangeOp::CardPatched { title: Some(t), .. } if t == "still served"));
    assert!(CloseCode::from(1007) != CloseCode::Normal);
}

#[tokio::test]
async fn heartbeats_go_both_ways() {
    let f = Fixture::with(|c| c.heartbeat_secs = 0.1).await;
    let mut ws = f.connect().await;
    send(&mut ws, &ClientMessage::Ping { nonce: 42 }).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Pong { nonce: 42 });
    // The server pings on its own; tungstenite answers with pongs as it reads.
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "the server pings");

    // A client that never answers is dropped with 4000 after two silent periods: simulate by not reading.
    let mut silent = f.connect().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, _) = close_of(&mut silent).await;
    assert_eq!(code, 4000);
}

#[tokio::test]
async fn snapshots_carry_etags_and_answer_304_when_unchanged() {
    let f = Fixture::new().await;
    let (board, _, card) = f.board().await;
    let url = f.url(&format!("/api/boards/{}", board.id));
    let first = f.http.get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again = f.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    f.rename_card(&card, "changed").await;
    let changed = f.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);

    let list = f.http.get(f.url("/api/boards")).send().await.unwrap();
    let etag = list.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(f.http.get(f.url("/api/boards")).header("if-none-match", &etag).send().await.unwrap().status(), 304);
}

#[tokio::test]
async fn a_batch_applies_queued_writes_in_order_each_with_its_own_outcome() {
    let f = Fixture::new().await;
    let (board, column, card) = f.board().await;
    let new_card = Uuid::new_v4();
    let writes = json!({"writes": [
        {"write_id": Uuid::new_v4(), "op": {"type": "create_card", "column_id": column.id, "id": new_card, "title": "made offline"}},
        {"write_id": Uuid::new_v4(), "op": {"type": "update_card", "id": new_card, "description": "then edited"}},
        {"write_id": Uuid::new_v4(), "op": {"type": "update_card", "id": card.id, "title": "stale", "base_version": 7}},
        {"write_id": Uuid::new_v4(), "op": {"type": "delete_card", "id": Uuid::new_v4()}},
        {"write_id": Uuid::new_v4(), "op": {"type": "move_card", "id": new_card, "column_id": column.id}},
    ]});
    let result: WriteBatchResult = f.post("/api/writes", writes.clone()).await;
    let statuses: Vec<u16> = result.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![201, 200, 409, 404, 200]);
    assert_eq!(result.results[1].body["description"], "then edited");
    assert_eq!(result.results[2].body["current"]["version"], 1);

    // Replaying the whole batch (the client never saw the answer) applies nothing again.
    let cursor = f.cursor(&board).await;
    let replay: WriteBatchResult = f.post("/api/writes", writes).await;
    assert_eq!(replay, result);
    assert_eq!(f.cursor(&board).await, cursor);

    let too_many: Vec<Value> =
        (0..101).map(|_| json!({"write_id": Uuid::new_v4(), "op": {"type": "delete_card", "id": card.id}})).collect();
    let resp = f.http.post(f.url("/api/writes")).json(&json!({"writes": too_many})).send().await.unwrap();
    assert_eq!(resp.status(), 422);
}

/// A UUIDv7 made `ago_ms` before now (as a client's outbox makes write ids).
fn write_id_made(ago_ms: i64) -> Uuid {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    uuid::Builder::from_unix_timestamp_millis((now - ago_ms) as u64, &rand_bytes()).into_uuid()
}

fn rand_bytes() -> [u8; 10] {
    *Uuid::new_v4().as_bytes().first_chunk::<10>().unwrap()
}

#[tokio::test]
async fn a_write_older_than_the_servers_memory_of_write_ids_is_refused_not_applied() {
    // A write that sat in a closed browser longer than the server remembers write ids may have been applied
    // long ago (and its card deleted since): applying it now could bring that card back.
    let f = Fixture::with(|c| c.write_id_ttl_secs = 3600).await;
    let (board, column, _) = f.board().await;
    let cursor = f.cursor(&board).await;
    let create = |write_id: Uuid| json!({"writes": [{"write_id": write_id, "op": {"type": "create_card", "column_id": column.id, "title": "from yesterday"}}]});
    let old: WriteBatchResult = f.post("/api/writes", create(write_id_made(2 * 3600 * 1000))).await;
    assert_eq!(old.results[0].status, 422);
    assert_eq!(old.results[0].body["error"], "write_expired", "{}", old.results[0].body);
    assert!(old.results[0].at.is_empty());
    assert_eq!(f.cursor(&board).await, cursor, "nothing applied");
    let future: WriteBatchResult = f.post("/api/writes", create(write_id_made(-2 * 3600 * 1000))).await;
    assert_eq!(future.results[0].body["error"], "write_expired", "a clock far ahead is refused too");
    // A recent one is applied, and says where it committed; a replay says the same.
    let id = write_id_made(30 * 60 * 1000);
    let fresh: WriteBatchResult = f.post("/api/writes", create(id)).await;
    assert_eq!(fresh.results[0].status, 201);
    let stream = StreamId::Board(board.id).name();
    assert_eq!(
        fresh.results[0].at,
        vec![syncline_kanban::StreamPosition { stream: stream.clone(), cursor: cursor + 1 }]
    );
    f.rename_card(&serde_json::from_value(fresh.results[0].body.clone()).unwrap(), "renamed since").await;
    let replay: WriteBatchResult = f.post("/api/writes", create(id)).await;
    assert_eq!(replay, fresh, "the recorded outcome, with the cursor it committed at");
    // Random (v4) keys carry no time: remembered from their first use, as before.
    let v4: WriteBatchResult = f.post("/api/writes", create(Uuid::new_v4())).await;
    assert_eq!(v4.results[0].status, 201);
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let f = Fixture::new().await;
    let (_, _, card) = f.board().await;
    let mut ws = f.connect().await;
    subscribe(&mut ws, StreamId::Boards.name(), 0).await;
    f.rename_card(&card, "x").await;
    let text = f.metrics().await;
    for name in [
        "syncline_websockets_open 1",
        "syncline_ws_messages_out_total",
        "syncline_ws_bytes_out_total",
        "syncline_writes_applied_total 4",
        "syncline_write_conflicts_total 0",
        "syncline_duplicate_writes_total 0",
        "syncline_longpolls_waiting 0",
        "syncline_fanout_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn a_frame_that_breaks_the_websocket_protocol_gets_a_1002_close_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new().await;
    let mut tcp = tokio::net::TcpStream::connect(f.server.addr).await.unwrap();
    let handshake = format!(
        "GET /api/feed HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: {}\r\n\r\n",
        f.server.addr, f.cookie
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the server closed during the handshake");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&got));
    // A client frame must be masked: an unmasked text frame is a protocol error.
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    // Read frames until the close frame (the hello comes first).
    let mut frames = got[got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..].to_vec();
    let close = loop {
        // Parse what we have: server frames are unmasked, lengths < 65536 here.
        let mut at = 0;
        let mut found = None;
        while frames.len() >= at + 2 {
            let opcode = frames[at] & 0x0f;
            let (len, head) = match frames[at + 1] & 0x7f {
                126 if frames.len() >= at + 4 => (u16::from_be_bytes([frames[at + 2], frames[at + 3]]) as usize, 4),
                126 => break,
                n => (n as usize, 2),
            };
            if frames.len() < at + head + len {
                break;
            }
            if opcode == 0x8 {
                found = Some(frames[at + head..at + head + len].to_vec());
                break;
            }
            at += head + len;
        }
        if let Some(payload) = found {
            break payload;
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.expect("a close frame in time").unwrap();
        assert!(n > 0, "the connection was cut without a close frame");
        frames.extend_from_slice(&buf[..n]);
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002, "{}", String::from_utf8_lossy(&close[2..]));
}

#[tokio::test]
async fn an_abandoned_long_poll_is_no_longer_counted_as_waiting() {
    let f = Fixture::new().await;
    let (board, _, _) = f.board().await;
    let since = f.cursor(&board).await;
    let url = f.url(&format!("/api/changes?stream=board:{}&since={since}&wait=20", board.id));
    // The client gives up after 300 ms (a tab closed, a network change).
    let abandoned = f.http.get(url).timeout(Duration::from_millis(300)).send().await;
    assert!(abandoned.is_err(), "the long-poll was still waiting");
    let waiting = || f.server.metrics().longpolls_waiting.get();
    let started = std::time::Instant::now();
    while waiting() != 0 && started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waiting(), 0, "the gauge went back down when the client left");
}

#[tokio::test]
async fn a_title_edit_of_a_card_with_a_long_description_is_a_small_message() {
    let f = Fixture::new().await;
    let (board, column, _) = f.board().await;
    let card: Card = f
        .post(&format!("/api/columns/{}/cards", column.id), json!({"title": "long", "description": "d".repeat(10_000)}))
        .await;
    let stream = StreamId::Board(board.id).name();
    let since = f.cursor(&board).await;
    let mut ws = f.connect().await;
    subscribe(&mut ws, stream.clone(), since).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Synced { stream: stream.clone(), cursor: since });
    f.rename_card(&card, "short").await;
    // The message as it travels, byte for byte.
    let text = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(t) if t.contains("\"changes\"") => break t,
            _ => {}
        }
    };
    assert!(text.len() <= 300, "a title edit took {} bytes: {}", text.len(), &text[..text.len().min(400)]);
    assert!(!text.contains("dddd"), "the description travelled again");
}

#[tokio::test]
async fn a_server_that_stops_closes_its_feeds_saying_so_and_another_user_s_sign_out_closes_none() {
    let f = Fixture::new().await;
    let (board, _, _) = f.board().await;
    let stream = StreamId::Board(board.id).name();
    let since = f.cursor(&board).await;
    let mut ws = f.connect().await;
    subscribe(&mut ws, stream.clone(), since).await;
    assert_eq!(next(&mut ws).await, ServerMessage::Synced { stream, cursor: since });
    // Another user's sign-out is not this connection's business: it stays open.
    let (other, _) = signed_in(&f.url(""), "someone-else").await;
    assert!(other.post(f.url("/api/auth/signout")).send().await.unwrap().status().is_success());
    f.server.stop(Duration::from_secs(5)).await;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("closed within the grace") {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason.as_str(), "server shutting down");
        }
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
}
