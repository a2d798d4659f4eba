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
