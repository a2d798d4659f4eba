//! Helpers shared by the browser tests that drive a server process over HTTP (chaos, cluster).

use serde_json::{Value, json};
use syncline_e2e::Tab;

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

/// The runtime's state as the page reports it (`Value::Null` while it is not up).
pub async fn state(tab: &Tab) -> Value {
    let text: String =
        tab.eval("window.__syncline ? window.__syncline() : 'null'").await.unwrap_or_else(|_| "null".into());
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Types a card into a column's form and submits it, as the user's typing would (works in hidden tabs too).
/// Returns whether the form was there to take it.
pub async fn add_card(tab: &Tab, column: &str, title: &str) -> bool {
    let js = format!(
        r#"(() => {{
            const input = document.querySelector('#new-card-{column}');
            if (!input) return false;
            input.value = {title};
            input.dispatchEvent(new Event('input', {{ bubbles: true }}));
            input.form.requestSubmit();
            return true;
        }})()"#,
        title = serde_json::to_string(title).unwrap()
    );
    tab.eval::<bool>(&js).await.unwrap_or(false)
}
