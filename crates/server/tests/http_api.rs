//! The HTTP API over a real loopback socket against a real SQLite file.

mod common;
use std::time::Duration;

use common::{post_json, post_status, resident_bytes, signed_in};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use syncline_kanban::{Board, BoardList, BoardSnapshot, Card, Column};
use syncline_server::{Config, Server};

struct Fixture {
    server: Server,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&Config::for_tests(dir.path().join("test.sqlite3"))).await.unwrap();
        let client = signed_in(&server.url(), "tester").await.0;
        Fixture { server, client, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.server.url(), path)
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.client.post(self.url(path)).json(&body).send().await.unwrap()
    }

    async fn patch(&self, path: &str, body: Value) -> Response {
        self.client.patch(self.url(path)).json(&body).send().await.unwrap()
    }

    async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A board with two columns "Todo" and "Done" and one card in "Todo".
    async fn board(&self) -> (Board, Column, Column, Card) {
        let board: Board = self.post("/api/boards", json!({"title": "Project"})).await.json().await.unwrap();
        let todo: Column = self
            .post(&format!("/api/boards/{}/columns", board.id), json!({"title": "Todo"}))
            .await
            .json()
            .await
            .unwrap();
        let done: Column = self
            .post(&format!("/api/boards/{}/columns", board.id), json!({"title": "Done"}))
            .await
            .json()
            .await
            .unwrap();
        let card: Card = self
            .post(&format!("/api/columns/{}/cards", todo.id), json!({"title": "Write tests"}))
            .await
            .json()
            .await
            .unwrap();
        (board, todo, done, card)
    }

    async fn snapshot(&self, board: &Board) -> BoardSnapshot {
        self.get(&format!("/api/boards/{}", board.id)).await.json().await.unwrap()
    }
}

/// Asserts status and error code, and that the body says something.
async fn assert_error(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"), "error bodies are JSON");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    body
}

#[tokio::test]
async fn boards_columns_and_cards_round_trip_with_versions() {
    let f = Fixture::new().await;
    let (board, todo, done, card) = f.board().await;
    assert_eq!((board.version, todo.version, card.version), (1, 1, 1));
    assert!(todo.position < done.position, "columns are appended in order");

    let second: Card =
        f.post(&format!("/api/columns/{}/cards", todo.id), json!({"title": "Ship"})).await.json().await.unwrap();
    assert!(card.position < second.position);

    // Move the first card after the second: one row changes, its version goes up.
    let moved: Card = f
        .post(&format!("/api/cards/{}/move", card.id), json!({"column_id": todo.id, "after_card_id": second.id}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved.version, 2);
    let snap = f.snapshot(&board).await;
    let order: Vec<_> = snap.cards_in(todo.id).map(|c| c.id).collect();
    assert_eq!(order, vec![second.id, card.id]);

    // Into the other column, first place.
    let moved: Card =
        f.post(&format!("/api/cards/{}/move", card.id), json!({"column_id": done.id})).await.json().await.unwrap();
    assert_eq!((moved.column_id, moved.version), (done.id, 3));

    let edited: Card = f
        .patch(&format!("/api/cards/{}", card.id), json!({"title": "Write more tests", "description": "e2e too"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (edited.title.as_str(), edited.description.as_str(), edited.version),
        ("Write more tests", "e2e too", 4)
    );

    let renamed: Board =
        f.patch(&format!("/api/boards/{}", board.id), json!({"title": "Renamed"})).await.json().await.unwrap();
    assert_eq!(renamed.version, 2);

    // Columns reorder too.
    let summary: Value = f.get(&format!("/api/boards/{}/summary", board.id)).await.json().await.unwrap();
    assert_eq!(summary["total_cards"], 2);
    assert_eq!(summary["described_cards"], 1);
    assert_eq!(summary["columns"][1]["cards"], 1);

    let moved_col: Column = f.post(&format!("/api/columns/{}/move", done.id), json!({})).await.json().await.unwrap();
    assert!(moved_col.position < todo.position);

    assert_eq!(f.client.delete(f.url(&format!("/api/cards/{}", second.id))).send().await.unwrap().status(), 204);
    assert_eq!(f.client.delete(f.url(&format!("/api/columns/{}", done.id))).send().await.unwrap().status(), 204);
    let snap = f.snapshot(&board).await;
    assert_eq!(snap.columns.len(), 1);
    assert!(snap.cards.is_empty(), "deleting a column deletes its cards");
    assert_eq!(f.client.delete(f.url(&format!("/api/boards/{}", board.id))).send().await.unwrap().status(), 204);
    let boards: BoardList = f.get("/api/boards").await.json().await.unwrap();
    assert!(boards.boards.is_empty());
}

#[tokio::test]
async fn malformed_json_is_400() {
    let f = Fixture::new().await;
    let resp = f
        .client
        .post(f.url("/api/boards"))
        .header("content-type", "application/json")
        .body("{\"title\": ")
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;
}

#[tokio::test]
async fn wrong_shape_is_422_invalid_body() {
    let f = Fixture::new().await;
    assert_error(f.post("/api/boards", json!({"title": 5})).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        .await;
    assert_error(f.post("/api/boards", json!({"titel": "x"})).await, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body")
        .await;
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let f = Fixture::new().await;
    let resp = f
        .client
        .post(f.url("/api/boards"))
        .header("content-type", "text/plain")
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let f = Fixture::new().await;
    let ghost = uuid::Uuid::now_v7();
    assert_error(f.get(&format!("/api/boards/{ghost}")).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(
        f.patch(&format!("/api/cards/{ghost}"), json!({"title": "x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        f.post(&format!("/api/columns/{ghost}/cards"), json!({"title": "x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let resp = f.client.delete(f.url(&format!("/api/columns/{ghost}"))).send().await.unwrap();
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(f.get("/api/nothing-here").await, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn ids_that_are_not_uuids_are_400() {
    let f = Fixture::new().await;
    assert_error(f.get("/api/boards/42").await, StatusCode::BAD_REQUEST, "invalid_parameter").await;
}

#[tokio::test]
async fn wrong_method_is_405() {
    let f = Fixture::new().await;
    let resp = f.client.put(f.url("/api/boards")).json(&json!({})).send().await.unwrap();
    assert_error(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn invalid_fields_are_422_and_write_nothing() {
    let f = Fixture::new().await;
    let (board, todo, _done, card) = f.board().await;
    let before = f.snapshot(&board).await;

    let body = assert_error(
        f.patch(&format!("/api/cards/{}", card.id), json!({"title": "  "})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    assert_eq!(body["field"], "title");

    // Title over the limit, even though the description in the same write is fine: nothing is written.
    let body = assert_error(
        f.patch(&format!("/api/cards/{}", card.id), json!({"title": "x".repeat(201), "description": "ok"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
    )
    .await;
    assert_eq!(body["field"], "title");

    // Well-formed writes that what they name does not allow are `refused` (still 422, and the field named).
    // A move into a column of another board.
    let (_other_board, other_col, _, _) = f.board().await;
    let body = assert_error(
        f.post(&format!("/api/cards/{}/move", card.id), json!({"column_id": other_col.id})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    )
    .await;
    assert_eq!(body["field"], "column_id");

    // After a card that is not in the target column.
    let body = assert_error(
        f.post(
            &format!("/api/cards/{}/move", card.id),
            json!({"column_id": todo.id, "after_card_id": uuid::Uuid::now_v7()}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    )
    .await;
    assert_eq!(body["field"], "after_card_id");

    // A client-chosen id that is taken.
    let body = assert_error(
        f.post("/api/boards", json!({"id": board.id, "title": "dup"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refused",
    )
    .await;
    assert_eq!(body["field"], "id");

    assert_eq!(f.snapshot(&board).await, before, "refused writes change nothing");

    // An empty patch changes nothing and is not an error: the card as it is, at the same version.
    let same = f.patch(&format!("/api/cards/{}", card.id), json!({})).await;
    assert_eq!(same.status(), StatusCode::OK);
    let same: serde_json::Value = same.json().await.unwrap();
    assert_eq!(same["version"], card.version, "{same}");
    assert_eq!(f.snapshot(&board).await, before, "an empty patch changes nothing");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let f = Fixture::new().await;
    let huge = "x".repeat(2 * 1024 * 1024);
    assert_error(
        f.post("/api/boards", json!({"title": huge})).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let boards: BoardList = f.get("/api/boards").await.json().await.unwrap();
    assert!(boards.boards.is_empty());
}

#[tokio::test]
async fn stale_base_version_is_409_with_the_current_entity() {
    let f = Fixture::new().await;
    let (_board, _todo, _done, card) = f.board().await;
    let ok = f.patch(&format!("/api/cards/{}", card.id), json!({"title": "mine", "base_version": 1})).await;
    assert_eq!(ok.status(), 200);
    let body = assert_error(
        f.patch(&format!("/api/cards/{}", card.id), json!({"title": "theirs", "base_version": 1})).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    assert_eq!(body["current"]["title"], "mine");
    assert_eq!(body["current"]["version"], 2);
}

#[tokio::test]
async fn data_survives_a_restart_on_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::for_tests(dir.path().join("nested/dir/db.sqlite3"));
    let server = Server::start(&config).await.unwrap();
    let client = signed_in(&server.url(), "tester").await.0;
    let board: Board = client
        .post(format!("{}/api/boards", server.url()))
        .json(&json!({"title": "Durable"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.stop(Duration::from_secs(1)).await;

    let server = Server::start(&config).await.unwrap();
    let boards: BoardList =
        client.get(format!("{}/api/boards", server.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(boards.boards, vec![board]);
    assert!(server.stats().requests_total() >= 1, "the server counts what it serves");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let f = Fixture::new().await;
    let doc: Value = f.get("/api/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("get", "/api/boards"),
        ("post", "/api/boards"),
        ("get", "/api/boards/{id}"),
        ("patch", "/api/boards/{id}"),
        ("delete", "/api/boards/{id}"),
        ("post", "/api/boards/{id}/columns"),
        ("get", "/api/boards/{id}/summary"),
        ("patch", "/api/columns/{id}"),
        ("delete", "/api/columns/{id}"),
        ("post", "/api/columns/{id}/move"),
        ("post", "/api/columns/{id}/cards"),
        ("get", "/api/cards/{id}"),
        ("patch", "/api/cards/{id}"),
        ("delete", "/api/cards/{id}"),
        ("post", "/api/cards/{id}/move"),
        ("post", "/api/writes"),
        ("get", "/api/changes"),
        ("get", "/api/feed"),
    ];
    for (method, path) in routes {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not documented");
    }
    assert!(doc["paths"]["/metrics"].is_null(), "/metrics is served on --metrics-bind only, not here");
    // What a generated client (or a fuzzer) needs to be right: links from a created board to what uses its id,
    // idempotency keys that are UUIDs, write ops closed to fields the server refuses.
    let link = &doc["paths"]["/api/boards"]["post"]["responses"]["201"]["links"]["get_board"];
    assert_eq!(link["operationId"], "get_board", "{link}");
    assert_eq!(link["parameters"]["id"], "$response.body#/id");
    let params = doc["paths"]["/api/cards/{id}"]["patch"]["parameters"].as_array().unwrap();
    let key = params.iter().find(|p| p["name"] == "Idempotency-Key").expect("the idempotency key is documented");
    assert_eq!(key["schema"]["format"], "uuid");
    for variant in doc["components"]["schemas"]["WriteOp"]["oneOf"].as_array().unwrap() {
        assert_eq!(variant["additionalProperties"], false, "{variant}");
        assert!(variant["properties"]["type"].is_object(), "{variant}");
    }
    assert_eq!(
        doc["components"]["schemas"]["Write_WriteOp"]["properties"]["op"]["$ref"],
        "#/components/schemas/WriteOp"
    );
    for schema in
        ["Board", "BoardSnapshot", "Card", "ApiError", "ErrorCode", "ServerMessage", "ClientMessage", "WriteOp"]
    {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
}

#[tokio::test]
async fn the_web_app_is_served_precompressed_with_immutable_assets_and_a_revalidated_index() {
    // A build's layout: index.html at the top, the rest under assets/<hash>/, each with .br and .gz copies.
    let dir = tempfile::tempdir().unwrap();
    let static_dir = dir.path().join("dist");
    let assets = static_dir.join("assets").join("0123abcd");
    std::fs::create_dir_all(&assets).unwrap();
    for (path, body) in [(static_dir.join("index.html"), "<!doctype html>index"), (assets.join("app.wasm"), "wasm!")] {
        std::fs::write(&path, body).unwrap();
        std::fs::write(format!("{}.br", path.display()), format!("br:{body}")).unwrap();
        std::fs::write(format!("{}.gz", path.display()), format!("gz:{body}")).unwrap();
    }
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.static_dir = static_dir;
    let server = Server::start(&config).await.unwrap();
    let http = Client::new();
    let get = |path: &str, encoding: Option<&str>| {
        let mut request = http.get(format!("{}{path}", server.url()));
        if let Some(e) = encoding {
            request = request.header("accept-encoding", e);
        }
        request.send()
    };
    let header = |resp: &Response, name: &str| {
        resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };

    let wasm = get("/assets/0123abcd/app.wasm", Some("gzip, deflate, br")).await.unwrap();
    assert_eq!(wasm.status(), 200);
    assert_eq!(header(&wasm, "content-encoding"), "br");
    assert_eq!(header(&wasm, "content-type"), "application/wasm");
    assert_eq!(header(&wasm, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&wasm, "vary"), "accept-encoding");
    assert_eq!(wasm.text().await.unwrap(), "br:wasm!");
    let gzip = get("/assets/0123abcd/app.wasm", Some("gzip")).await.unwrap();
    assert_eq!(header(&gzip, "content-encoding"), "gzip");
    assert_eq!(gzip.text().await.unwrap(), "gz:wasm!");
    let plain = get("/assets/0123abcd/app.wasm", None).await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), "");
    assert_eq!(plain.text().await.unwrap(), "wasm!");

    // index.html names the current build: revalidated on every load, 304 when unchanged.
    let index = get("/", Some("br")).await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(header(&index, "cache-control"), "no-cache");
    assert_eq!(header(&index, "content-encoding"), "br");
    let modified = header(&index, "last-modified");
    assert!(!modified.is_empty(), "a validator to revalidate with");
    let again = http.get(server.url()).header("if-modified-since", modified).send().await.unwrap();
    assert_eq!(again.status(), 304);
    // An unknown asset is not cached for a year.
    let missing = get("/assets/0123abcd/nope.js", None).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(header(&missing, "cache-control"), "no-cache");
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn every_refusal_is_json_even_from_extractors_and_the_feed_route() {
    let f = Fixture::new().await;
    let (board, _, _, _) = f.board().await;
    // A query parameter that does not parse, on DELETE.
    let bad = f.client.delete(f.url(&format!("/api/boards/{}?base_version=abc", board.id))).send().await.unwrap();
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    // The feed without an upgrade.
    let plain = f.get("/api/feed").await;
    assert_error(plain, StatusCode::UPGRADE_REQUIRED, "upgrade_required").await;
    // Absurd long-poll waits are capped, not a panic; nonsense is a 400.
    for wait in ["-1", "NaN", "inf", "1e400"] {
        let resp = f.get(&format!("/api/changes?stream=boards&since=0&wait={wait}")).await;
        assert_error(resp, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    }
    // A cursor no log reaches (the databases store them as 63-bit integers).
    let resp = f.get("/api/changes?stream=boards&since=9223372036854775808").await;
    assert_error(resp, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    let capped = tokio::time::timeout(
        Duration::from_secs(5),
        f.get(&format!("/api/changes?stream=board:{}&since=0&wait=1e20", board.id)),
    )
    .await
    .expect("changes exist: answered at once");
    assert_eq!(capped.status(), 200);
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_cut_off_and_oversized_headers_get_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.header_read_timeout_secs = 1.0;
    config.max_header_bytes = 8 * 1024;
    let server = Server::start(&config).await.unwrap();
    // Slowloris: one header byte every 300 ms never completes the request; the server closes the connection.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /api/auth/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        if slow.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {} // a 408 before the close
            Err(_) => {}
        }
    }
    assert!(closed, "the dribbling connection was closed");
    assert!(started.elapsed() < Duration::from_secs(4), "within the header timeout: {:?}", started.elapsed());
    // An idle keep-alive connection is closed too.
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(4), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "idle connection closed: {read:?}");
    // A 20 KB header: 431.
    let resp = Client::new()
        .get(format!("{}/api/auth/me", server.url()))
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_with_json_while_others_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.max_connections = 50;
    config.max_connections_per_address = 40;
    let server = Server::start(&config).await.unwrap();
    // 40 idle connections from one address fill its share.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = Client::new().get(format!("{}/api/auth/me", server.url())).send().await.unwrap();
    assert_error(refused, StatusCode::SERVICE_UNAVAILABLE, "too_many_connections").await;
    // Their owner goes away: everyone is answered again.
    drop(idle);
    let mut answered = false;
    for _ in 0..50 {
        let resp = Client::new().get(format!("{}/api/auth/me", server.url())).send().await.unwrap();
        if resp.status() == StatusCode::UNAUTHORIZED {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "answered once the idle connections closed");
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_sent_too_slowly_gets_a_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.body_timeout_secs = 1.0;
    let server = Server::start(&config).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/auth/signin HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user",
        server.addr
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "answered and closed within the body timeout");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""error":"request_timeout""#), "{text}");
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_online_backup_is_consistent_while_writes_go_on() {
    let f = Fixture::new().await;
    if f.server.state.store.postgres_url().is_some() {
        return; // a SQLite feature (PostgreSQL has pg_dump)
    }
    let (_, todo, _, _) = f.board().await;
    let db = f._dir.path().join("test.sqlite3");
    let (client, url) = (f.client.clone(), f.url(&format!("/api/columns/{}/cards", todo.id)));
    let writer = tokio::spawn(async move {
        for i in 0..150 {
            let resp = client.post(&url).json(&json!({ "title": format!("c{i}") })).send().await.unwrap();
            assert_eq!(resp.status(), 201);
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let to = f._dir.path().join("backup.sqlite3");
    let (from, copy) = (db.clone(), to.clone());
    tokio::task::spawn_blocking(move || syncline_server::schema::backup(&from, &copy)).await.unwrap().unwrap();
    writer.await.unwrap();
    // The copy is a database of its own, consistent: every card's column exists, cursors match the log.
    let conn = rusqlite::Connection::open(&to).unwrap();
    let cards: i64 = conn.query_row("SELECT COUNT(*) FROM cards", [], |r| r.get(0)).unwrap();
    let orphans: i64 = conn
        .query_row("SELECT COUNT(*) FROM cards WHERE column_id NOT IN (SELECT id FROM columns)", [], |r| r.get(0))
        .unwrap();
    assert!(cards >= 1, "the copy has the data written before it");
    assert_eq!(orphans, 0);
    // It does not overwrite.
    assert!(syncline_server::schema::backup(&db, &to).is_err());
}

/// Every status a route answers is in the OpenAPI document: each documented operation is sent a battery of bad
/// requests (anonymous, foreign Host, cross-site, unknown and malformed ids, bad query, malformed, mis-shaped,
/// non-JSON and oversized bodies) and a good-looking one; any status the document does not list for it fails.
#[tokio::test]
async fn every_status_a_route_answers_is_documented() {
    let f = Fixture::new().await;
    let (board, todo, _, card) = f.board().await;
    let doc: Value = f.get("/api/openapi.json").await.json().await.unwrap();
    let anonymous = Client::new();
    let mut undocumented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/") || path == "/api/openapi.json" {
            continue;
        }
        for (method, op) in ops.as_object().unwrap() {
            let documented: Vec<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let writes = method != reqwest::Method::GET;
            let with = |ids: &[(&str, String)]| {
                let mut p = path.clone();
                for (name, value) in ids {
                    p = p.replace(name, value);
                }
                f.url(&p)
            };
            // The entity the path names is real where the route is about the board, card or column we made.
            let real_id = if path.starts_with("/api/cards") {
                card.id.to_string()
            } else if path.starts_with("/api/columns") {
                todo.id.to_string()
            } else {
                board.id.to_string()
            };
            let real = with(&[("{id}", real_id), ("{user_id}", uuid::Uuid::nil().to_string())]);
            let unknown =
                with(&[("{id}", uuid::Uuid::new_v4().to_string()), ("{user_id}", uuid::Uuid::new_v4().to_string())]);
            let malformed = with(&[("{id}", "not-a-uuid".into()), ("{user_id}", "nope".into())]);
            let mut requests: Vec<reqwest::RequestBuilder> = vec![
                anonymous.request(method.clone(), &real),
                f.client.request(method.clone(), &real).header("host", "evil.example"),
                f.client.request(method.clone(), &unknown),
                f.client.request(method.clone(), &malformed),
                f.client.request(method.clone(), format!("{real}?base_version=x&since=x&wait=x&stream=x")),
            ];
            if writes {
                let big = "x".repeat(2 * 1024 * 1024);
                requests.extend([
                    f.client.request(method.clone(), &real).header("origin", "https://evil.example").json(&json!({})),
                    f.client.request(method.clone(), &real).header("content-type", "application/json").body("{"),
                    f.client.request(method.clone(), &real).json(&json!({"unexpected": [1, 2]})),
                    f.client.request(method.clone(), &real).header("content-type", "text/plain").body("hello"),
                    f.client.request(method.clone(), &real).header("content-type", "application/json").body(big),
                    f.client.request(method.clone(), &real).json(
                        &json!({"title": "ok", "username": "nobody", "role": "viewer",
                        "password": "x", "current_password": "x", "new_password": "y", "column_id": todo.id,
                        "writes": [], "before": null, "after": null}),
                    ),
                ]);
            } else {
                requests.push(f.client.request(method.clone(), &real));
            }
            for request in requests {
                let resp = request.send().await.unwrap();
                let status = resp.status().as_u16().to_string();
                if !documented.contains(&status.as_str()) {
                    undocumented.push(format!("{method} {path} answered {status}"));
                }
            }
        }
    }
    undocumented.sort();
    undocumented.dedup();
    assert!(undocumented.is_empty(), "statuses the OpenAPI document does not list:\n{}", undocumented.join("\n"));
}

#[tokio::test]
async fn creations_past_a_quota_are_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.max_boards_per_user = 2;
    config.max_columns_per_board = 2;
    config.max_cards_per_board = 3;
    let server = Server::start(&config).await.unwrap();
    let client = signed_in(&server.url(), "quota").await.0;
    let post = |path: String, body: Value| {
        let client = client.clone();
        let url = format!("{}{path}", server.url());
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    let board: Board = post("/api/boards".into(), json!({"title": "one"})).await.json().await.unwrap();
    assert_eq!(post("/api/boards".into(), json!({"title": "two"})).await.status(), 201);
    let third = post("/api/boards".into(), json!({"title": "three"})).await;
    let body = assert_error(third, StatusCode::UNPROCESSABLE_ENTITY, "quota_exceeded").await;
    assert_eq!(body["field"], "boards_per_user");
    let column: Column =
        post(format!("/api/boards/{}/columns", board.id), json!({"title": "a"})).await.json().await.unwrap();
    assert_eq!(post(format!("/api/boards/{}/columns", board.id), json!({"title": "b"})).await.status(), 201);
    let body = assert_error(
        post(format!("/api/boards/{}/columns", board.id), json!({"title": "c"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "quota_exceeded",
    )
    .await;
    assert_eq!(body["field"], "columns_per_board");
    let mut cards = Vec::new();
    for i in 0..3 {
        let card: Card = post(format!("/api/columns/{}/cards", column.id), json!({"title": format!("c{i}")}))
            .await
            .json()
            .await
            .unwrap();
        cards.push(card);
    }
    // Through the batch endpoint too: refused as that write's outcome.
    let batch = json!({"writes": [{"write_id": uuid::Uuid::new_v4(), "op": {"type": "create_card", "column_id": column.id, "title": "c3"}}]});
    let result: Value = post("/api/writes".into(), batch).await.json().await.unwrap();
    assert_eq!(result["results"][0]["status"], 422);
    assert_eq!(result["results"][0]["body"]["field"], "cards_per_board");
    // Deleting one makes room.
    let deleted = client.delete(format!("{}/api/cards/{}", server.url(), cards[0].id)).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(post(format!("/api/columns/{}/cards", column.id), json!({"title": "c4"})).await.status(), 201);
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn writes_past_the_rate_get_429_and_a_refused_batch_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.writes_per_second_per_user = 1;
    config.write_burst_per_user = 5;
    let server = Server::start(&config).await.unwrap();
    let (client, _) = signed_in(&server.url(), "hasty").await;
    let url = |path: &str| format!("{}{path}", server.url());
    let board: Board = post_json(&client, &url("/api/boards"), json!({"title": "b"})).await;
    let column: Column =
        post_json(&client, &url(&format!("/api/boards/{}/columns", board.id)), json!({"title": "c"})).await;
    let cards = url(&format!("/api/columns/{}/cards", column.id));
    // Two writes so far; a batch of four would make six: refused whole, before any of it runs.
    let batch: Vec<Value> = (0..4)
        .map(|i| json!({"write_id": uuid::Uuid::new_v4(), "op": {"type": "create_card", "column_id": column.id, "title": format!("t{i}")}}))
        .collect();
    let refused = client.post(url("/api/writes")).json(&json!({ "writes": batch })).send().await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body = assert_error(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(body["message"].as_str().unwrap().contains("per user"), "{body}");
    let snap: BoardSnapshot =
        client.get(url(&format!("/api/boards/{}", board.id))).send().await.unwrap().json().await.unwrap();
    assert!(snap.cards.is_empty(), "a refused batch applied nothing");
    // Three more single writes fit in the burst; the next one is refused, with the same JSON.
    for i in 0..3 {
        assert_eq!(post_status(&client, &cards, json!({"title": format!("s{i}")})).await, 201);
    }
    let over = client.post(&cards).json(&json!({"title": "over"})).send().await.unwrap();
    assert_error(over, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another user has a bucket of their own; reads are not limited.
    let (other, _) = signed_in(&server.url(), "calm").await;
    assert_eq!(post_status(&other, &url("/api/boards"), json!({"title": "mine"})).await, 201);
    assert_eq!(client.get(url("/api/boards")).send().await.unwrap().status(), 200);
    // The rate refills: one write a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post_status(&client, &cards, json!({"title": "later"})).await, 201);
}

#[tokio::test]
async fn one_user_may_hold_only_so_many_sockets_and_waiting_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("test.sqlite3"));
    config.max_sockets_per_user = 2;
    config.max_longpolls_per_user = 1;
    let server = Server::start(&config).await.unwrap();
    let (client, cookie) = signed_in(&server.url(), "hoarder").await;
    let open = || {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/api/feed", server.addr).into_client_request().unwrap();
        request.headers_mut().insert("cookie", cookie.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let first = open().await.unwrap().0;
    let _second = open().await.unwrap().0;
    match open().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"], "rate_limited", "{body}");
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = open().await {
            reopened = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "a closed socket gives its place back");

    // Long-polls: one may wait; a second, while it waits, is refused.
    let cursor = client
        .get(format!("{}/api/boards", server.url()))
        .send()
        .await
        .unwrap()
        .json::<BoardList>()
        .await
        .unwrap()
        .cursor;
    let waiting_url = format!("{}/api/changes?stream=boards&since={cursor}&wait=3", server.url());
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = waiting_url.clone();
        async move { client.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = client.get(&waiting_url).send().await.unwrap();
    assert_error(second, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_thousand_requests_with_400_kb_headers_get_431_and_leave_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let f = Fixture::new().await;
    let addr = f.server.addr;
    let header = "x".repeat(400 * 1024);
    let rss_before = resident_bytes();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /api/boards HTTP/1.1\r\nHost: {addr}\r\nX-Big-{i}: {header}\r\n\r\n");
        // The server answers once the head passes its cap and stops reading: the rest may not be taken.
        let _ = s.write_all(request.as_bytes()).await;
        let mut answer = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer)).await.unwrap().unwrap_or(0);
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 431"), "request {i}: {answer:?}");
    }
    let growth = resident_bytes().saturating_sub(rss_before);
    assert!(growth < 32 * 1024 * 1024, "memory grew by {} MB over 1,000 requests with 400 KB headers", growth >> 20);
    // And the server still answers.
    assert_eq!(f.get("/api/boards").await.status(), 200);
}
