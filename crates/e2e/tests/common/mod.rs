//! Helpers shared by the browser tests that drive a server process over HTTP (chaos, cluster).

use serde_json::{Value, json};

/// An HTTP client signed up as the test account (the browsers sign in as it too).
pub async fn signed_up(base: &str) -> reqwest::Client {
    let body = json!({"username": syncline_e2e::TEST_USER, "password": syncline_e2e::TEST_PASSWORD});
    let resp =
        reqwest::Client::new().post(format!("{base}/api/auth/signup")).json(&body).send().await.expect("sign-up");
    assert_eq!(resp.status(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("cookie", cookie.parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// POSTs JSON, asserts success, returns the JSON answer.
pub async fn post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let resp = http.post(url).json(&body).send().await.expect("POST");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.expect("JSON")
}
