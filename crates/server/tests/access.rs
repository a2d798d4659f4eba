//! Access control over real loopback sockets: every route × {anonymous, non-member, viewer, editor, owner}, the
//! long-poll and the WebSocket subscribe in the same matrix; revocation on a live feed; sessions ending; the
//! Host / Origin / same-site guard; sign-in rate limits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use syncline_kanban::{ClientMessage, ServerMessage, StreamCursor, StreamId};
use syncline_server::{Config, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Account {
    id: Uuid,
    http: Client,
    cookie: String,
}

async fn sign_up(base: &str, username: &str) -> Account {
    let resp = Client::new()
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "sign-up of {username}");
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    Account { id, http: Client::builder().default_headers(headers).build().unwrap(), cookie }
}

async fn sign_in(base: &str, username: &str) -> Account {
    let resp = Client::new()
        .post(format!("{base}/api/auth/signin"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "sign-in of {username}");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    Account { id, http: Client::builder().default_headers(headers).build().unwrap(), cookie }
}

async fn start(configure: impl FnOnce(&mut Config)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("access.sqlite3"));
    configure(&mut config);
    (Server::start(&config).await.unwrap(), dir)
}

async fn call(client: &Client, method: Method, url: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    SignedIn,
    Viewer,
    Editor,
    Owner,
}

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    NonMember,
    Viewer,
    Editor,
    Owner,
}

fn expected(need: Need, who: Who) -> (StatusCode, Option<&'static str>) {
    let level = match who {
        Who::Anonymous => return (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        Who::NonMember => Need::SignedIn,
        Who::Viewer => Need::Viewer,
        Who::Editor => Need::Editor,
        Who::Owner => Need::Owner,
    };
    if level >= need {
        (StatusCode::OK, None) // any 2xx
    } else if who == Who::NonMember {
        (StatusCode::NOT_FOUND, Some("not_found"))
    } else {
        (StatusCode::FORBIDDEN, Some("forbidden"))
    }
}

/// A board made by the owner, with the viewer and editor as members, a column and a card, and `tim` as a
/// viewer for member changes to act on.
struct Board {
    id: Uuid,
    column: Uuid,
    card: Uuid,
}

async fn fresh_board(base: &str, owner: &Account) -> Board {
    let post = |path: String, body: Value| {
        let http = owner.http.clone();
        async move {
            let resp = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            resp.json::<Value>().await.unwrap()
        }
    };
    let id: Uuid =
        post("/api/boards".into(), json!({"title": "Shared"})).await["id"].as_str().unwrap().parse().unwrap();
    for (name, role) in [("victor", "viewer"), ("eddie", "editor"), ("tim", "viewer")] {
        post(format!("/api/boards/{id}/members"), json!({"username": name, "role": role})).await;
    }
    let column: Uuid = post(format!("/api/boards/{id}/columns"), json!({"title": "Todo"})).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let card: Uuid = post(format!("/api/columns/{column}/cards"), json!({"title": "Card"})).await["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    Board { id, column, card }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_user_as_its_role_allows() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let owner = sign_up(&base, "olivia").await;
    let viewer = sign_up(&base, "victor").await;
    let editor = sign_up(&base, "eddie").await;
    let non_member = sign_up(&base, "nora").await;
    let tim = sign_up(&base, "tim").await;
    sign_up(&base, "amy").await;
    let anonymous = Client::new();

    type Route = (Method, &'static str, Option<Value>, Need);
    let routes: Vec<Route> = vec![
        (Method::GET, "/api/boards", None, Need::SignedIn),
        (Method::POST, "/api/boards", Some(json!({"title": "Mine"})), Need::SignedIn),
        (Method::GET, "/api/boards/{board}", None, Need::Viewer),
        (Method::GET, "/api/boards/{board}/summary", None, Need::Viewer),
        (Method::GET, "/api/boards/{board}/members", None, Need::Viewer),
        (Method::GET, "/api/cards/{card}", None, Need::Viewer),
        (Method::GET, "/api/changes?stream=board:{board}&since=0", None, Need::Viewer),
        (Method::PATCH, "/api/boards/{board}", Some(json!({"title": "Renamed"})), Need::Editor),
        (Method::POST, "/api/boards/{board}/columns", Some(json!({"title": "More"})), Need::Editor),
        (Method::PATCH, "/api/columns/{column}", Some(json!({"title": "Doing"})), Need::Editor),
        (Method::POST, "/api/columns/{column}/move", Some(json!({"after_column_id": null})), Need::Editor),
        (Method::POST, "/api/columns/{column}/cards", Some(json!({"title": "New"})), Need::Editor),
        (Method::PATCH, "/api/cards/{card}", Some(json!({"title": "Edited"})), Need::Editor),
        (Method::POST, "/api/cards/{card}/move", Some(json!({"column_id": "{column}"})), Need::Editor),
        (Method::DELETE, "/api/cards/{card}", None, Need::Editor),
        (Method::DELETE, "/api/columns/{column}", None, Need::Editor),
        (Method::POST, "/api/boards/{board}/members", Some(json!({"username": "amy", "role": "viewer"})), Need::Owner),
        (Method::PATCH, "/api/boards/{board}/members/{tim}", Some(json!({"role": "editor"})), Need::Owner),
        (Method::DELETE, "/api/boards/{board}/members/{tim}", None, Need::Owner),
        (Method::DELETE, "/api/boards/{board}", None, Need::Owner),
    ];
    let mut checked = 0;
    for (method, template, body, need) in &routes {
        for who in [Who::Anonymous, Who::NonMember, Who::Viewer, Who::Editor, Who::Owner] {
            let board = fresh_board(&base, &owner).await;
            let fill = |s: &str| {
                s.replace("{board}", &board.id.to_string())
                    .replace("{column}", &board.column.to_string())
                    .replace("{card}", &board.card.to_string())
                    .replace("{tim}", &tim.id.to_string())
            };
            let url = format!("{base}{}", fill(template));
            let body = body.as_ref().map(|b| serde_json::from_str::<Value>(&fill(&b.to_string())).unwrap());
            let client = match who {
                Who::Anonymous => &anonymous,
                Who::NonMember => &non_member.http,
                Who::Viewer => &viewer.http,
                Who::Editor => &editor.http,
                Who::Owner => &owner.http,
            };
            let (status, answer) = call(client, method.clone(), &url, body.as_ref()).await;
            let (want, code) = expected(*need, who);
            let ok = if want == StatusCode::OK { status.is_success() } else { status == want };
            assert!(ok, "{method} {template} as {who:?}: {status} {answer}, expected {want}");
            if let Some(code) = code {
                assert_eq!(answer["error"], code, "{method} {template} as {who:?}: {answer}");
                assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * 5);

    // The batch endpoint answers each write by the same decision.
    let board = fresh_board(&base, &owner).await;
    for (who, client, want) in
        [(Who::NonMember, &non_member.http, 404), (Who::Viewer, &viewer.http, 403), (Who::Editor, &editor.http, 200)]
    {
        let batch = json!({"writes": [{"write_id": Uuid::now_v7(), "op": {"type": "update_card", "id": board.card, "title": format!("{who:?}")}}]});
        let (status, answer) = call(client, Method::POST, &format!("{base}/api/writes"), Some(&batch)).await;
        assert_eq!(status, 200);
        assert_eq!(answer["results"][0]["status"], want, "batch as {who:?}: {answer}");
    }
    let (status, _) = call(&anonymous, Method::POST, &format!("{base}/api/writes"), Some(&json!({"writes": []}))).await;
    assert_eq!(status, 401);
    // Another account replaying someone's write id learns nothing of its outcome.
    let write_id = Uuid::now_v7();
    let op = json!({"type": "update_card", "id": board.card, "title": "mine"});
    let (_, first) = call(
        &editor.http,
        Method::POST,
        &format!("{base}/api/writes"),
        Some(&json!({"writes": [{"write_id": write_id, "op": op}]})),
    )
    .await;
    assert_eq!(first["results"][0]["status"], 200);
    let (_, replay) = call(
        &owner.http,
        Method::POST,
        &format!("{base}/api/writes"),
        Some(&json!({"writes": [{"write_id": write_id, "op": op}]})),
    )
    .await;
    assert_eq!(replay["results"][0]["status"], 422, "{replay}");
    assert_eq!(replay["results"][0]["body"]["error"], "idempotency_key_reused");
    server.stop(Duration::from_secs(1)).await;
}

fn feed_request(server: &Server, cookie: Option<&str>) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}/api/feed", server.addr).into_client_request().unwrap();
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    request
}

async fn next(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time")? {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(frame)) => {
                let frame = frame.expect("a close frame");
                panic!("closed: {} {}", u16::from(frame.code), frame.reason)
            }
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(_) => return None,
        }
    }
}

async fn subscribe(ws: &mut Ws, stream: syncline_kanban::StreamName) {
    let msg = ClientMessage::Subscribe { streams: vec![StreamCursor { stream, since: 0 }], log_id: None };
    ws.send(Message::text(serde_json::to_string(&msg).unwrap())).await.unwrap();
}

/// Reads until `synced` (true) or `revoked` (false) for the stream.
async fn followed(ws: &mut Ws) -> bool {
    loop {
        match next(ws).await.expect("open") {
            ServerMessage::Synced { .. } => return true,
            ServerMessage::Revoked { .. } => return false,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn the_feed_serves_a_board_only_to_its_members_and_needs_a_session() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let owner = sign_up(&base, "olivia").await;
    let viewer = sign_up(&base, "victor").await;
    sign_up(&base, "eddie").await;
    sign_up(&base, "tim").await;
    let non_member = sign_up(&base, "nora").await;
    let board = fresh_board(&base, &owner).await;
    let stream = StreamId::Board(board.id).name();

    match tokio_tungstenite::connect_async(feed_request(&server, None)).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("an anonymous feed was not refused: {other:?}"),
    }
    for (account, allowed) in [(&owner, true), (&viewer, true), (&non_member, false)] {
        let (mut ws, _) = tokio_tungstenite::connect_async(feed_request(&server, Some(&account.cookie))).await.unwrap();
        assert!(matches!(next(&mut ws).await, Some(ServerMessage::Hello { .. })));
        subscribe(&mut ws, stream.clone()).await;
        assert_eq!(followed(&mut ws).await, allowed);
    }
    // Each user's `boards` is their own list.
    let (mut ws, _) = tokio_tungstenite::connect_async(feed_request(&server, Some(&non_member.cookie))).await.unwrap();
    next(&mut ws).await;
    subscribe(&mut ws, StreamId::Boards.name()).await;
    match next(&mut ws).await.unwrap() {
        ServerMessage::Synced { stream, cursor } => assert_eq!((stream, cursor), (StreamId::Boards.name(), 0)),
        other => panic!("nora has no boards: {other:?}"),
    }
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_removed_member_is_cut_off_at_once_and_told_and_learns_it_in_their_list() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let owner = sign_up(&base, "olivia").await;
    let viewer = sign_up(&base, "victor").await;
    sign_up(&base, "eddie").await;
    sign_up(&base, "tim").await;
    let board = fresh_board(&base, &owner).await;
    let stream = StreamId::Board(board.id).name();
    let (mut ws, _) = tokio_tungstenite::connect_async(feed_request(&server, Some(&viewer.cookie))).await.unwrap();
    next(&mut ws).await;
    subscribe(&mut ws, stream.clone()).await;
    assert!(followed(&mut ws).await);
    subscribe(&mut ws, StreamId::Boards.name()).await;
    assert!(followed(&mut ws).await);

    let url = format!("{base}/api/boards/{}/members/{}", board.id, viewer.id);
    assert_eq!(owner.http.delete(&url).send().await.unwrap().status(), 204);
    // Writes after the removal must not reach the viewer.
    let card_url = format!("{base}/api/cards/{}", board.card);
    for i in 0..5 {
        let resp = owner.http.patch(&card_url).json(&json!({"title": format!("secret {i}")})).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut revoked = false;
    let mut list_dropped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline && !(revoked && list_dropped) {
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), next(&mut ws)).await else { break };
        match msg {
            ServerMessage::Revoked { stream: s, .. } if s == stream => revoked = true,
            ServerMessage::Changes { stream: s, changes } if s == stream => {
                assert!(
                    !changes.iter().any(|c| matches!(&c.op, syncline_kanban::ChangeOp::CardUpserted { card } if card.title.starts_with("secret"))),
                    "a change after the removal reached the removed member: {changes:?}"
                );
            }
            ServerMessage::Changes { stream: s, changes } if s == StreamId::Boards.name() => {
                list_dropped |= changes
                    .iter()
                    .any(|c| matches!(c.op, syncline_kanban::ChangeOp::BoardDeleted { id } if id == board.id));
            }
            _ => {}
        }
    }
    assert!(revoked, "the removed member was told");
    assert!(list_dropped, "the board left their list live");
    // And nothing else comes of that stream.
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), next(&mut ws)).await {
        assert!(!matches!(&msg, ServerMessage::Changes { stream: s, .. } if *s == stream), "{msg:?}");
    }
    // Their reads and writes are refused as a non-member's.
    assert_eq!(viewer.http.get(format!("{base}/api/boards/{}", board.id)).send().await.unwrap().status(), 404);
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn signing_out_ends_the_session_everywhere_it_is_used_but_not_the_users_other_sessions() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let first = sign_up(&base, "olivia").await;
    let second = sign_in(&base, "olivia").await;
    assert_ne!(first.cookie, second.cookie, "each sign-in is a new session");
    let (mut ws1, _) = tokio_tungstenite::connect_async(feed_request(&server, Some(&first.cookie))).await.unwrap();
    let (mut ws2, _) = tokio_tungstenite::connect_async(feed_request(&server, Some(&second.cookie))).await.unwrap();
    next(&mut ws1).await;
    next(&mut ws2).await;
    // A long-poll waiting on the first session.
    let waiting = tokio::spawn({
        let http = first.http.clone();
        let url = format!("{base}/api/changes?stream=boards&since=0&wait=20");
        async move { http.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(first.http.post(format!("{base}/api/auth/signout")).send().await.unwrap().status(), 204);
    match tokio::time::timeout(WAIT, ws1.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::from(4001)),
        other => panic!("the signed-out feed was not closed with 4001: {other:?}"),
    }
    assert_eq!(tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(first.http.get(format!("{base}/api/auth/me")).send().await.unwrap().status(), 401);
    // The other session lives on.
    assert_eq!(second.http.get(format!("{base}/api/auth/me")).send().await.unwrap().status(), 200);
    ws2.send(Message::text(r#"{"type":"ping","nonce":7}"#)).await.unwrap();
    assert_eq!(next(&mut ws2).await, Some(ServerMessage::Pong { nonce: 7 }));

    // A password change ends every other session of the account.
    let third = sign_in(&base, "olivia").await;
    let change = json!({"current_password": PASSWORD, "new_password": "another long one"});
    assert_eq!(second.http.post(format!("{base}/api/auth/password")).json(&change).send().await.unwrap().status(), 204);
    assert_eq!(third.http.get(format!("{base}/api/auth/me")).send().await.unwrap().status(), 401);
    assert_eq!(second.http.get(format!("{base}/api/auth/me")).send().await.unwrap().status(), 200);
    ws2.send(Message::text(r#"{"type":"ping","nonce":8}"#)).await.unwrap();
    assert_eq!(next(&mut ws2).await, Some(ServerMessage::Pong { nonce: 8 }), "the session that changed it lives on");
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn cross_site_and_non_json_writes_foreign_hosts_and_the_metrics_are_refused() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let owner = sign_up(&base, "olivia").await;
    let url = format!("{base}/api/boards");
    let body = json!({"title": "x"});
    let from = |origin: &str, site: Option<&str>| {
        let mut req = owner.http.post(&url).header("origin", origin).json(&body);
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        req
    };
    let resp = from("http://evil.example", None).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "cross_site_request");
    let resp = from(&base, Some("cross-site")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(from(&base, Some("same-origin")).send().await.unwrap().status(), 201, "the app's own requests");
    assert_eq!(owner.http.post(&url).json(&body).send().await.unwrap().status(), 201, "scripts send neither header");
    // A form or a text/plain body (what a cross-site form could send) is not JSON.
    let form = owner.http.post(&url).header("content-type", "application/x-www-form-urlencoded").body("title=x");
    assert_eq!(form.send().await.unwrap().status(), 415);
    let text = owner.http.post(&url).header("content-type", "text/plain").body(r#"{"title":"x"}"#);
    assert_eq!(text.send().await.unwrap().status(), 415);
    // DNS rebinding: a page on another name reaches us with its name as Host.
    let resp = owner.http.get(&url).header("host", "evil.example").send().await.unwrap();
    assert_eq!(resp.status(), 421);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "misdirected_request");
    let resp =
        owner.http.post(&url).header("host", "evil.example:80").header("origin", "http://evil.example").json(&body);
    assert_eq!(resp.send().await.unwrap().status(), 421);
    // Security headers, and no metrics on the public address.
    let resp = owner.http.get(&url).send().await.unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("'wasm-unsafe-eval'") && !csp.contains("unsafe-inline")
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(resp.headers().contains_key("referrer-policy"));
    assert_eq!(owner.http.get(format!("{base}/metrics")).send().await.unwrap().status(), 404);
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_account_and_per_address() {
    let (server, _dir) = start(|c| {
        c.signin_attempts_per_account = 5;
        c.signin_attempts_per_address = 12;
    })
    .await;
    let base = server.url();
    sign_up(&base, "olivia").await;
    let attempt = |user: &str, password: &str| {
        let body = json!({"username": user, "password": password});
        let url = format!("{base}/api/auth/signin");
        async move { Client::new().post(url).json(&body).send().await.unwrap() }
    };
    for _ in 0..5 {
        let resp = attempt("olivia", "wrong password!").await;
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_credentials");
    }
    let resp = attempt("olivia", PASSWORD).await;
    assert_eq!(resp.status(), 429, "after 5 failed sign-ins, even the right password waits");
    assert!(resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "rate_limited");
    // Per address: other accounts from the same address, up to its limit.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(attempt(&format!("nobody{i}"), "whatever123").await.status().as_u16());
    }
    // 12 per address: the sign-up, the 5 failures and the refused attempt spent 7.
    assert_eq!(statuses.iter().filter(|&&s| s == 401).count(), 5, "{statuses:?}");
    assert!(statuses.ends_with(&[429, 429]), "{statuses:?}");
    server.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_last_owner_cannot_leave_and_roles_change_live_for_the_member() {
    let (server, _dir) = start(|_| {}).await;
    let base = server.url();
    let owner = sign_up(&base, "olivia").await;
    let viewer = sign_up(&base, "victor").await;
    sign_up(&base, "eddie").await;
    sign_up(&base, "tim").await;
    let board = fresh_board(&base, &owner).await;
    let leave = owner.http.delete(format!("{base}/api/boards/{}/members/{}", board.id, owner.id));
    let resp = leave.send().await.unwrap();
    assert_eq!(resp.status(), 422, "a board keeps an owner");
    let demote = owner
        .http
        .patch(format!("{base}/api/boards/{}/members/{}", board.id, owner.id))
        .json(&json!({"role": "editor"}));
    assert_eq!(demote.send().await.unwrap().status(), 422);
    // The viewer becomes an editor: now their edit goes through.
    let card_url = format!("{base}/api/cards/{}", board.card);
    assert_eq!(viewer.http.patch(&card_url).json(&json!({"title": "v"})).send().await.unwrap().status(), 403);
    let promote = owner
        .http
        .patch(format!("{base}/api/boards/{}/members/{}", board.id, viewer.id))
        .json(&json!({"role": "editor"}));
    assert_eq!(promote.send().await.unwrap().status(), 200);
    assert_eq!(viewer.http.patch(&card_url).json(&json!({"title": "v"})).send().await.unwrap().status(), 200);
    // A member may leave on their own.
    let leave = viewer.http.delete(format!("{base}/api/boards/{}/members/{}", board.id, viewer.id));
    assert_eq!(leave.send().await.unwrap().status(), 204);
    assert_eq!(viewer.http.get(format!("{base}/api/boards/{}", board.id)).send().await.unwrap().status(), 404);
    server.stop(Duration::from_secs(1)).await;
}
