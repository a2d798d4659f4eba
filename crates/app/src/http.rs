//! A plain HTTP client, for what does not go through the sync runtime yet: the boards page (list and create).

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use syncline_protocol::ApiError;

/// A failed call, with what to tell the user.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError(pub String);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn finish(response: Result<Response, gloo_net::Error>) -> Result<Response, CallError> {
    let response = response.map_err(|e| CallError(format!("network error: {e}")))?;
    if response.ok() {
        return Ok(response);
    }
    let status = response.status();
    Err(match response.json::<ApiError>().await {
        Ok(err) => CallError(err.message),
        Err(_) => CallError(format!("the server answered {status}")),
    })
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, CallError> {
    response.json().await.map_err(|e| CallError(format!("unexpected answer from the server: {e}")))
}

pub async fn get<T: DeserializeOwned>(path: String) -> Result<T, CallError> {
    decode(finish(Request::get(&path).send().await).await?).await
}

async fn send<B: Serialize, T: DeserializeOwned>(builder: RequestBuilder, body: B) -> Result<T, CallError> {
    let request = builder.json(&body).map_err(|e| CallError(format!("could not encode the request: {e}")))?;
    decode(finish(request.send().await).await?).await
}

pub async fn post<B: Serialize, T: DeserializeOwned>(path: String, body: B) -> Result<T, CallError> {
    send(Request::post(&path), body).await
}
