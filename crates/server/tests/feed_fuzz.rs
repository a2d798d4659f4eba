//! A property test of the WebSocket feed against a live server: random sequences of frames — valid messages,
//! JSON of the wrong shape, arbitrary text, binary, oversized and invalid UTF-8 frames, WebSocket pings and
//! pongs, too many streams, client closes — on real loopback connections.
//!
//! Properties: every server frame is a `ServerMessage`; the first frame the server must refuse closes the
//! connection with the documented close code for it (docs/protocol.md), and nothing else closes it; every `ping`
//! before that is answered with its nonce; after every sequence the server still serves a new client.

mod common;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use syncline_kanban::{Board, ServerMessage};
use syncline_protocol::feed::close_code;
use syncline_server::{Config, Server};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use uuid::Uuid;

const MAX_FRAME_BYTES: usize = 16 * 1024;
const MAX_SUBSCRIPTIONS: usize = 8;
const WAIT: Duration = Duration::from_secs(10);

/// A stream a generated `subscribe` or `unsubscribe` names.
#[derive(Debug, Clone)]
enum Stream {
    Boards,
    /// The test user's own board.
    Own,
    /// A board the user is not a member of (answered `revoked`, not closed).
    Foreign(u128),
    /// A well-formed stream name that is no stream here (1007).
    Unknown(String),
}

#[derive(Debug, Clone)]
enum Step {
    Subscribe(Vec<(Stream, u64)>),
    Unsubscribe(Vec<Stream>),
    Ping(u64),
    WsPing(Vec<u8>),
    WsPong(Vec<u8>),
    /// Arbitrary text (almost never a valid message: 1007).
    Text(String),
    /// JSON that is not a client message (1007).
    WrongShape(serde_json::Value),
    Binary(Vec<u8>),
    /// A text frame over the frame limit (1009).
    Oversized(usize),
    /// A text frame that is not UTF-8 (1007).
    InvalidUtf8(Vec<u8>),
    /// More streams than one connection may follow (1008).
    TooMany,
    /// The client closes: the server ends the connection without a code of its own.
    Close(u16),
}

impl Step {
    /// The close code the server must answer this step with, if it refuses it.
    fn refusal(&self) -> Option<u16> {
        match self {
            Step::Subscribe(streams) if streams.iter().any(|(s, _)| matches!(s, Stream::Unknown(_))) => {
                Some(close_code::INVALID_PAYLOAD)
            }
            Step::Unsubscribe(streams) if streams.iter().any(|s| matches!(s, Stream::Unknown(_))) => {
                Some(close_code::INVALID_PAYLOAD)
            }
            Step::Text(_) | Step::WrongShape(_) | Step::InvalidUtf8(_) => Some(close_code::INVALID_PAYLOAD),
            Step::Binary(_) => Some(close_code::UNSUPPORTED_DATA),
            Step::Oversized(_) => Some(close_code::MESSAGE_TOO_BIG),
            Step::TooMany => Some(close_code::POLICY_VIOLATION),
            _ => None,
        }
    }
}

fn stream() -> impl Strategy<Value = Stream> {
    prop_oneof![
        3 => Just(Stream::Boards),
        3 => Just(Stream::Own),
        2 => any::<u128>().prop_map(Stream::Foreign),
        1 => "(board|card|column|x):[a-z0-9]{0,12}".prop_map(Stream::Unknown),
    ]
}

fn cursor() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5, any::<u64>(), Just(i64::MAX as u64), Just(u64::MAX)]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec((stream(), cursor()), 1..3).prop_map(Step::Subscribe),
        2 => prop::collection::vec(stream(), 1..3).prop_map(Step::Unsubscribe),
        4 => any::<u64>().prop_map(Step::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..125).prop_map(Step::WsPing),
        1 => prop::collection::vec(any::<u8>(), 0..125).prop_map(Step::WsPong),
        1 => "\\PC{0,64}".prop_filter("not a message by chance", |t| serde_json::from_str::<
            syncline_kanban::ClientMessage,
        >(t)
        .is_err())
        .prop_map(Step::Text),
        1 => prop_oneof![
            "[a-z_]{0,12}".prop_map(|t| json!({"type": t})),
            Just(json!({"type": "subscribe", "streams": "boards"})),
            Just(json!({"type": "subscribe", "streams": [{"stream": "boards", "since": -1}]})),
            Just(json!({"type": "subscribe", "streams": [{"stream": "boards"}]})),
            Just(json!({"type": "ping", "nonce": "seven"})),
            Just(json!({"type": "unsubscribe", "streams": ["no spaces allowed"]})),
            Just(json!([1, 2, 3])),
            Just(json!(null)),
        ]
        .prop_filter("not a message by chance", |v| serde_json::from_value::<syncline_kanban::ClientMessage>(
            v.clone()
        )
        .is_err())
        .prop_map(Step::WrongShape),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Step::Binary),
        1 => (MAX_FRAME_BYTES + 1..MAX_FRAME_BYTES * 2).prop_map(Step::Oversized),
        1 => prop::collection::vec(any::<u8>(), 1..32)
            .prop_map(|mut b| {
                b.push(0xff); // never valid in UTF-8
                b
            })
            .prop_map(Step::InvalidUtf8),
        1 => Just(Step::TooMany),
        1 => prop_oneof![Just(1000u16), Just(1001u16), 3000u16..5000].prop_map(Step::Close),
    ]
}

fn stream_name(s: &Stream, own: &Board) -> String {
    match s {
        Stream::Boards => "boards".into(),
        Stream::Own => format!("board:{}", own.id),
        Stream::Foreign(n) => format!("board:{}", Uuid::from_u128(*n)),
        Stream::Unknown(name) => name.clone(),
    }
}

fn frame(step: &Step, own: &Board) -> Message {
    match step {
        Step::Subscribe(streams) => {
            let streams: Vec<_> =
                streams.iter().map(|(s, since)| json!({"stream": stream_name(s, own), "since": since})).collect();
            Message::text(json!({"type": "subscribe", "streams": streams}).to_string())
        }
        Step::Unsubscribe(streams) => {
            let streams: Vec<_> = streams.iter().map(|s| stream_name(s, own)).collect();
            Message::text(json!({"type": "unsubscribe", "streams": streams}).to_string())
        }
        Step::Ping(nonce) => Message::text(json!({"type": "ping", "nonce": nonce}).to_string()),
        Step::WsPing(b) => Message::Ping(Bytes::from(b.clone())),
        Step::WsPong(b) => Message::Pong(Bytes::from(b.clone())),
        Step::Text(t) => Message::text(t.clone()),
        Step::WrongShape(v) => Message::text(v.to_string()),
        Step::Binary(b) => Message::Binary(Bytes::from(b.clone())),
        Step::Oversized(n) => Message::text(" ".repeat(*n)),
        Step::InvalidUtf8(b) => Message::Frame(Frame::message(Bytes::from(b.clone()), OpCode::Data(Data::Text), true)),
        Step::TooMany => {
            let streams: Vec<_> = (0..=MAX_SUBSCRIPTIONS as u128)
                .map(|n| json!({"stream": format!("board:{}", Uuid::from_u128(n + 1)), "since": 0}))
                .collect();
            Message::text(json!({"type": "subscribe", "streams": streams}).to_string())
        }
        Step::Close(code) => Message::Close(Some(CloseFrame { code: (*code).into(), reason: "bye".into() })),
    }
}

struct Live {
    server: Server,
    cookie: String,
    board: Board,
}

impl Live {
    fn request(&self) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let mut request = format!("ws://{}/api/feed", self.server.addr).into_client_request().unwrap();
        request.headers_mut().insert("cookie", self.cookie.parse().unwrap());
        request
    }

    /// Plays one sequence on a new connection and checks what the server answered.
    async fn play(&self, steps: &[Step]) -> Result<(), String> {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.request()).await.map_err(|e| e.to_string())?;
        // Up to the first step the server must refuse (or the client's close): what is sent, and what is expected.
        let cut = steps.iter().position(|s| s.refusal().is_some() || matches!(s, Step::Close(_)));
        let played = &steps[..cut.map_or(steps.len(), |i| i + 1)];
        let expected_close = cut.and_then(|i| steps[i].refusal());
        let client_closed = cut.is_some_and(|i| matches!(steps[i], Step::Close(_)));
        let mut nonces: Vec<u64> =
            played.iter().filter_map(|s| if let Step::Ping(n) = s { Some(*n) } else { None }).collect();
        // A sequence the server accepts ends with a ping of our own: its pong says everything before was read.
        const SENTINEL: u64 = 0x05e1_71e1;
        if cut.is_none() {
            nonces.push(SENTINEL);
        }
        for step in played {
            if ws.send(frame(step, &self.board)).await.is_err() {
                break; // the server may already have closed
            }
        }
        if cut.is_none() {
            let _ = ws.send(Message::text(json!({"type": "ping", "nonce": SENTINEL}).to_string())).await;
        }
        let mut hello = false;
        let mut closed_with = None;
        let mut ended = None;
        loop {
            let next = tokio::time::timeout(WAIT, ws.next()).await.map_err(|_| {
                format!(
                    "no answer within {WAIT:?} (pongs still awaited: {nonces:?}, close awaited: {expected_close:?})"
                )
            })?;
            match next {
                None => break,
                Some(Err(e)) => {
                    ended = Some(e.to_string());
                    break;
                }
                Some(Ok(Message::Text(text))) => {
                    let msg: ServerMessage = serde_json::from_str(&text)
                        .map_err(|e| format!("the server sent something that is not a message ({e}): {text}"))?;
                    match msg {
                        ServerMessage::Hello { .. } => hello = true,
                        ServerMessage::Pong { nonce } => {
                            if let Some(i) = nonces.iter().position(|n| *n == nonce) {
                                nonces.remove(i);
                            }
                            if nonce == SENTINEL && cut.is_none() {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    closed_with = Some(frame.map(|f| u16::from(f.code)));
                    break;
                }
                Some(Ok(Message::Binary(_))) => return Err("the server sent a binary frame".into()),
                Some(Ok(_)) => {}
            }
        }
        if !hello {
            return Err("no hello".into());
        }
        match (expected_close, closed_with) {
            (Some(code), Some(Some(got))) if got == code => {}
            (Some(code), got) => return Err(format!("expected close {code}, got {got:?} (transport: {ended:?})")),
            // The client closed: the server answers the close (tungstenite echoes the client's code).
            (None, _) if client_closed => {}
            (None, Some(got)) => return Err(format!("a valid sequence was closed with {got:?}")),
            (None, None) => {}
        }
        if !nonces.is_empty() && !client_closed {
            return Err(format!("pings never answered: {nonces:?}"));
        }
        Ok(())
    }

    /// A well-behaved client still gets served: hello, then `synced` for its list of boards.
    async fn still_serves(&self) -> Result<(), String> {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.request()).await.map_err(|e| e.to_string())?;
        ws.send(Message::text(json!({"type": "subscribe", "streams": [{"stream": "boards", "since": 0}]}).to_string()))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.contains("\"synced\"") || t.contains("\"changes\"") => {
                    return Ok(());
                }
                Ok(Some(Ok(_))) => {}
                other => return Err(format!("a well-behaved client was not served: {other:?}")),
            }
        }
    }
}

#[test]
fn random_frames_get_only_documented_close_codes_and_the_server_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let live = rt.block_on(async {
        let mut config = Config::for_tests(dir.path().join("fuzz.sqlite3"));
        config.max_frame_bytes = MAX_FRAME_BYTES;
        config.max_subscriptions = MAX_SUBSCRIPTIONS;
        let server = Server::start(&config).await.unwrap();
        let (http, cookie) = common::signed_in(&server.url(), "fuzzer").await;
        let board: Board =
            common::post_json(&http, &format!("{}/api/boards", server.url()), json!({"title": "Fuzzed"})).await;
        Live { server, cookie, board }
    });
    // A fixed seed: the same sequences every run (a failure prints the shrunk sequence).
    let config = ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&prop::collection::vec(step(), 0..8), |steps| {
        rt.block_on(async {
            live.play(&steps).await.map_err(TestCaseError::fail)?;
            live.still_serves().await.map_err(TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(live.server.stop(Duration::from_secs(5)));
}
