//! Helpers shared by the server's integration tests.

use reqwest::Client;
use serde_json::json;

/// Signs up `username` on a fresh client; returns a client that sends the session cookie, and the cookie (for
/// WebSocket upgrades).
pub async fn signed_in(base: &str, username: &str) -> (Client, String) {
    let resp = Client::new()
        .post(format!("{base}/api/auth/signup"))
        .json(&json!({"username": username, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "sign-up");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    (Client::builder().default_headers(headers).build().unwrap(), cookie)
}

/// This process's resident memory, in bytes (the server under test runs in it).
#[allow(dead_code)] // not every test binary measures memory
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// POSTs `body` as JSON and returns the JSON answer (a test helper: panics on any failure).
#[allow(dead_code)] // not every test binary posts
pub async fn post_json<T: serde::de::DeserializeOwned>(client: &Client, url: &str, body: serde_json::Value) -> T {
    client.post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

/// POSTs `body` as JSON and returns the status.
#[allow(dead_code)]
pub async fn post_status(client: &Client, url: &str, body: serde_json::Value) -> reqwest::StatusCode {
    client.post(url).json(&body).send().await.unwrap().status()
}
