//! Accepting connections, with limits a hostile client cannot get around: hyper's HTTP/1 settings (a header-read
//! timeout, which also closes a keep-alive connection idle that long; a header size cap answered with 431), and
//! a cap on open connections overall and per client address — a connection over the cap gets a 503 with a JSON
//! body and is closed, so the server keeps answering everyone else. Stops accepting on shutdown, asks every
//! connection to finish gracefully and waits for them.
//!
//! Written with hyper's connection builder rather than `axum::serve`, which exposes none of these settings.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

/// Connection limits (`Config`: `--max-connections`, `--max-connections-per-address`, `--header-read-timeout-secs`,
/// `--max-header-bytes`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Longest a client may take to send a request's headers — and longest a keep-alive connection may idle.
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    /// Load balancers: their many connections are not one client's (exempt from the per-address cap).
    pub trusted_proxies: Arc<[IpAddr]>,
}

/// Open connections, overall and per address.
#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Holds a connection's place in [`Open`]; gives it back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
    }
}

const REFUSAL_BODY: &str =
    r#"{"error":"too_many_connections","message":"the server has too many open connections; try again shortly"}"#;

/// Serves `app` on `listener` until `shutdown` turns true, then waits for open connections to finish.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let open = Arc::new(Mutex::new(Open::default()));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        let ip = peer.ip();
        let slot = {
            let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
            let mine = o.per_address.get(&ip).copied().unwrap_or(0);
            let per_address_ok = mine < limits.max_connections_per_address || limits.trusted_proxies.contains(&ip);
            if o.total >= limits.max_connections || !per_address_ok {
                None
            } else {
                o.total += 1;
                *o.per_address.entry(ip).or_default() += 1;
                Some(Slot { open: open.clone(), ip })
            }
        };
        let Some(slot) = slot else {
            tracing::debug!(%peer, "connection refused: over the connection cap");
            tokio::spawn(refuse(stream));
            continue;
        };
        let service = match make_service.call(peer).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let limits = limits.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            // HTTP/1 (browsers speak HTTP/2 only over TLS, which a proxy in front terminates). hyper's own builder:
            // hyper-util's automatic one first waits for the first bytes, with no timeout at all.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes);
            let io = TokioIo::new(Lingering { stream: Some(stream), slot: Some(slot) });
            let connection = builder.serve_connection(io, TowerToHyperService::new(service)).with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = crate::stopped(&mut stop) => {}
            }
            // Shutting down: finish the request in flight, then close (upgraded feeds close on the same signal).
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    while connections.join_next().await.is_some() {}
}

/// A connection's socket, closed the way nginx's `lingering_close` does: when the connection ends with bytes
/// from the client still unread (a WebSocket closed for an oversized frame whose payload is still arriving, a
/// request refused before its body was read), closing the socket at once would make the kernel send a reset and
/// drop what was just written — the client would never see the close frame or the error. Instead its sending
/// side is shut (what was written goes out, then FIN) and what the client still sends is read and discarded, up to
/// [`LINGER_BYTES`] or [`LINGER_TIME`]. The connection keeps its place under the connection cap meanwhile.
struct Lingering {
    stream: Option<tokio::net::TcpStream>,
    slot: Option<Slot>,
}

const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

impl Lingering {
    fn stream(&mut self) -> &mut tokio::net::TcpStream {
        self.stream.as_mut().expect("present until dropped")
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.stream()).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(self.stream()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(self.stream()).poll_shutdown(cx)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(mut stream), slot) = (self.stream.take(), self.slot.take()) else { return };
        // Nothing unread (or the client is gone): a plain close.
        if !matches!(stream.try_read(&mut [0u8; 512]), Ok(n) if n > 0) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            use tokio::io::AsyncReadExt;
            let _slot = slot;
            let _ = stream.shutdown().await;
            let drain = async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut read = 0;
                while read < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        });
    }
}

/// A connection over the cap: its request head is read (bounded: 16 KiB, 2 s), answered with a 503 with a JSON
/// body, and the connection closed.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(1024);
    let read_head = async {
        let mut buf = [0u8; 2048];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// Raises this process's open-file limit to its hard limit (each connection is a descriptor) and returns it.
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            None
        }
    }
}
