//! What every request passes before a handler sees it: the `Host` it names must be one of the server's public
//! origins (a page on a rebound DNS name reaches the server with its own name as Host — refused, 421), and a
//! state-changing request must not come from another site (`Sec-Fetch-Site`, or an `Origin` that is not one of
//! ours — 403; a script with neither header is not a cross-site request). Every response carries the security
//! headers (a Content-Security-Policy that allows the app's own scripts and WebAssembly and nothing inline,
//! `nosniff`, no referrer, no framing).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use syncline_protocol::ErrorCode;

use crate::error::AppError;

/// The origins this server answers as: `scheme://host[:port]`, e.g. `https://kanban.example.com`.
#[derive(Debug, Clone)]
pub struct Origins {
    /// Its public origins (from `--public-origin`, or the bind address and its localhost forms).
    public: Vec<String>,
    /// Further origins allowed to open the feed from a browser (`--allowed-origin`).
    feed_extra: Vec<String>,
    /// The `Host` values the public origins imply.
    hosts: Vec<String>,
}

impl Origins {
    /// From the configured public origins, or — when none is configured — the address the server is bound to, as
    /// `http://` with its loopback names.
    pub fn new(configured: &[String], bound: SocketAddr, feed_extra: &[String]) -> Origins {
        let public: Vec<String> = if configured.is_empty() {
            let port = bound.port();
            let mut list = vec![
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                format!("http://[::1]:{port}"),
            ];
            if !bound.ip().is_loopback() && !bound.ip().is_unspecified() {
                list.insert(0, format!("http://{bound}"));
            }
            if bound.ip().is_unspecified() {
                tracing::warn!(
                    "listening on all interfaces without --public-origin: only localhost names are accepted as Host"
                );
            }
            list
        } else {
            configured.iter().map(|o| o.trim_end_matches('/').to_owned()).collect()
        };
        let hosts = public
            .iter()
            .filter_map(|o| o.split_once("://"))
            .flat_map(|(scheme, authority)| {
                let default_port = if scheme == "https" { ":443" } else { ":80" };
                let mut forms = vec![authority.to_owned()];
                match authority.strip_suffix(default_port) {
                    Some(bare) => forms.push(bare.to_owned()),
                    None if !has_port(authority) => forms.push(format!("{authority}{default_port}")),
                    None => {}
                }
                forms
            })
            .collect();
        Origins { public, feed_extra: feed_extra.to_vec(), hosts }
    }

    /// Whether any public origin is HTTPS (then cookies are `Secure`).
    pub fn https(&self) -> bool {
        self.public.iter().any(|o| o.starts_with("https://"))
    }

    pub fn public(&self) -> &[String] {
        &self.public
    }

    fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// An `Origin` header that is one of ours.
    pub fn is_ours(&self, origin: &str) -> bool {
        self.public.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// An `Origin` that may open the feed: ours, or one the operator allowed.
    pub fn may_open_feed(&self, origin: &str) -> bool {
        self.is_ours(origin) || self.feed_extra.iter().any(|a| a == origin || a == "*")
    }
}

fn has_port(authority: &str) -> bool {
    // `[::1]:8080` or `host:8080`, not `[::1]`.
    authority.rsplit_once(':').is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty())
        && !authority.ends_with(']')
}

fn host_of(req: &Request) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}

fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// Refuses a state-changing request from another site. Browsers send `Sec-Fetch-Site` and `Origin`; scripts
/// (curl, other servers) usually neither, and are not cross-site requests.
pub fn check_same_site(headers: &HeaderMap, origins: &Origins) -> Result<(), AppError> {
    let refused = |why: String| AppError::new(StatusCode::FORBIDDEN, ErrorCode::CrossSiteRequest, why);
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refused(format!("a {site} request may not change anything here")));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !origins.is_ours(origin)
    {
        return Err(refused(format!("requests from {origin} may not change anything here")));
    }
    Ok(())
}

/// The content security policy: the app's own scripts and wasm, its own styles, its own API and feed.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The middleware: Host, then same-site for unsafe methods, then the handler; security headers on the way out.
pub async fn guard(State(origins): State<Arc<Origins>>, req: Request, next: Next) -> Response {
    // A load balancer's health check names no host of ours; it reads nothing but "ok".
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let host = host_of(&req);
    let mut response = match host.as_deref() {
        Some(h) if origins.allows_host(h) => {
            if unsafe_method(req.method())
                && let Err(e) = check_same_site(req.headers(), &origins)
            {
                e.into_response()
            } else {
                next.run(req).await
            }
        }
        other => AppError::new(
            StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::MisdirectedRequest,
            format!("this server does not answer as {:?}", other.unwrap_or("")),
        )
        .into_response(),
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_origins_are_the_bound_address_and_its_loopback_names() {
        let o = Origins::new(&[], "127.0.0.1:8080".parse().unwrap(), &[]);
        assert!(o.allows_host("127.0.0.1:8080") && o.allows_host("localhost:8080") && o.allows_host("[::1]:8080"));
        assert!(!o.allows_host("evil.example") && !o.allows_host("evil.example:8080"));
        assert!(o.is_ours("http://localhost:8080") && !o.is_ours("http://evil.example:8080"));
        assert!(!o.https());
    }

    #[test]
    fn configured_origins_imply_their_hosts_with_and_without_the_default_port() {
        let o = Origins::new(&["https://kanban.example.com".into()], "0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(o.allows_host("kanban.example.com") && o.allows_host("kanban.example.com:443"));
        assert!(!o.allows_host("localhost:8080"));
        assert!(o.https());
    }
}
