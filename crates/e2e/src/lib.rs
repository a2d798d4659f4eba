//! Real-Chromium test harness.
//!
//! - [`Harness`]: the syncline server in-process on a free loopback port, on a temporary SQLite file, serving
//!   the built web app (`cargo xtask test` builds it and sets `SYNCLINE_DIST_DIR`). It exposes what the
//!   *server* saw (requests, open WebSockets) and can restart the server on the same port and database.
//! - [`TestBrowser`]: Debian's Chromium, headless, driven over CDP by chromiumoxide (no browser download),
//!   with a fresh profile. Each [`Tab`] opens in its own window so it can be hidden and shown on its own with
//!   real `visibilitychange` events, and taken offline with real `offline`/`online` events.
//!
//! Waiting is done in the page (a promise that settles on a DOM mutation or an event), not by sleeping.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::browser::{
    Bounds, GetWindowForTargetParams, SetWindowBoundsParams, WindowState,
};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
#[allow(deprecated)]
use chromiumoxide::cdp::browser_protocol::network::{EmulateNetworkConditionsParams, EnableParams};
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::cdp::js_protocol::runtime::{EvaluateParams, EventExceptionThrown};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use syncline_server::{Config, RequestRecord, Server, Stats, Store};
use tempfile::TempDir;

/// Where the browser binary is; `SYNCLINE_CHROMIUM` overrides.
fn chromium_path() -> PathBuf {
    std::env::var_os("SYNCLINE_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The built web app: `SYNCLINE_DIST_DIR`, or `target/dist` of this workspace.
pub fn dist_dir() -> PathBuf {
    std::env::var_os("SYNCLINE_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dist"))
}

/// The repository root (for writing screenshots under docs/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The account every test browser signs in as unless told otherwise (the harness creates it).
pub const TEST_USER: &str = "tester";
pub const TEST_PASSWORD: &str = "correct horse battery";

/// The server under test, in-process.
pub struct Harness {
    server: Option<Server>,
    config: Config,
    dir: TempDir,
    user: uuid::Uuid,
}

impl Harness {
    /// Starts the server on a free loopback port with a new SQLite file, serving the built app.
    pub async fn start() -> Result<Harness> {
        let dist = dist_dir();
        if !dist.join("index.html").exists() || !dist.join("assets").exists() {
            bail!("the web app is not built in {}: run `cargo xtask test`", dist.display());
        }
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_tests(dir.path().join("syncline.sqlite3"));
        // Always the SQLite file, even when the test run points the server's tests at PostgreSQL: browser tests
        // check what was stored by reading this file (the cluster test is the browser test on PostgreSQL).
        config.database_url = None;
        config.static_dir = dist;
        let server = Server::start(&config).await?;
        server.stats().record_deliveries();
        // Restarts bind the same port.
        config.bind = server.addr;
        let user = syncline_server::auth::create_account(&server.state.store, TEST_USER, TEST_PASSWORD)
            .await
            .map_err(|e| anyhow!("{:?}", e.body))?;
        Ok(Harness { server: Some(server), config, dir, user: user.id })
    }

    /// The test account's id (the one [`TestBrowser::launch`] signs in as, and [`Harness::write`] writes as).
    pub fn user(&self) -> uuid::Uuid {
        self.user
    }

    /// Creates another account.
    pub async fn create_user(&self, username: &str, password: &str) -> Result<uuid::Uuid> {
        let user = syncline_server::auth::create_account(&self.server().state.store, username, password)
            .await
            .map_err(|e| anyhow!("{:?}", e.body))?;
        Ok(user.id)
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.server().url(), path)
    }

    pub fn db_path(&self) -> &Path {
        &self.config.db
    }

    /// The temporary directory holding the database (for browser profiles and other files).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Direct access to the store, to read data without going through HTTP (so it is not counted).
    pub fn store(&self) -> &Store {
        &self.server().state.store
    }

    /// The last cursor handed out in a stream (as the log names it: `board:<id>`, `user:<id>`).
    pub async fn stream_head(&self, stream: syncline_kanban::StreamName) -> Result<u64> {
        self.store()
            .transaction(move |tx| syncline_server::feed::stream_head(tx, stream))
            .await
            .map_err(|e| anyhow!("{e:?}"))
    }

    /// What the server saw.
    pub fn stats(&self) -> &Arc<Stats> {
        self.server().stats()
    }

    /// Requests the server saw, optionally only those whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<RequestRecord> {
        self.stats().recent_requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// Requests the server saw from one tab whose path starts with `prefix` (its runtime sends
    /// `x-syncline-client` on HTTP requests and `?client=` on its WebSocket).
    pub fn requests_from(&self, client: &str, prefix: &str) -> usize {
        let socket_query = format!("client={client}");
        self.requests(prefix)
            .iter()
            .filter(|r| {
                r.client.as_deref() == Some(client) || r.query.as_deref().is_some_and(|q| q.contains(&socket_query))
            })
            .count()
    }

    /// WebSockets open on the server right now.
    pub fn open_websockets(&self) -> i64 {
        self.server().metrics().websockets_open.get()
    }

    pub fn metrics(&self) -> &Arc<syncline_server::Metrics> {
        self.server().metrics()
    }

    /// Applies a write as the test user's client would (through the change log, so live clients hear of it),
    /// without an HTTP request. Returns the written entity's JSON; fails on a refusal.
    pub async fn write(&self, op: syncline_kanban::WriteOp) -> Result<serde_json::Value> {
        self.write_as(self.user, op).await
    }

    /// [`Harness::write`] as another user.
    pub async fn write_as(&self, user: uuid::Uuid, op: syncline_kanban::WriteOp) -> Result<serde_json::Value> {
        let server = self.server();
        let outcome = syncline_server::writes::execute(&server.state.store, server.metrics(), user, None, op)
            .await
            .map_err(|e| anyhow!("{:?}", e.body))?;
        if !outcome.status.is_success() {
            bail!("write refused with {}: {}", outcome.status, outcome.body);
        }
        Ok(outcome.body)
    }

    /// Stops the server (dropping open connections after a short grace) and starts it again on the same
    /// port and database. Counters start from zero.
    pub async fn restart_server(&mut self) -> Result<()> {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_millis(200)).await;
        }
        // The port was ours a moment ago; retry briefly in case the OS has not released it yet.
        let mut last_err = None;
        for _ in 0..50 {
            match Server::start(&self.config).await {
                Ok(server) => {
                    server.stats().record_deliveries();
                    self.server = Some(server);
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("could not restart")))
    }

    /// Stops the server (the port goes dark: connections are refused) until [`Harness::start_server`].
    pub async fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_millis(200)).await;
        }
    }

    /// Starts the server again on the same port and database.
    pub async fn start_server(&mut self) -> Result<()> {
        self.restart_server().await
    }

    /// Refuses (or accepts again) WebSocket upgrades, as a proxy that breaks them would. Survives restarts.
    pub fn set_websockets(&mut self, enabled: bool) {
        self.config.no_websocket = !enabled;
        self.server().state.websockets.store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(Duration::from_millis(200)).await;
        }
    }
}

/// The server in a process of its own (the `syncline-server-process` binary of this crate): for tests that
/// kill it with SIGKILL, as an operating system or an operator would, and start it again on the same port and
/// database.
pub struct ServerProcess {
    child: Option<std::process::Child>,
    program: PathBuf,
    port: u16,
    db: PathBuf,
    dir: TempDir,
    /// More flags (e.g. `--database-url`, `--public-origin`).
    extra: Vec<String>,
}

impl ServerProcess {
    /// Starts `program` on a free loopback port with a new SQLite file, serving the built app; returns once it
    /// answers.
    pub async fn start(program: &Path) -> Result<ServerProcess> {
        Self::start_with(program, Vec::new()).await
    }

    /// Like [`start`](Self::start), with more flags: e.g. `--database-url` for an instance of a cluster (its
    /// SQLite file then goes unused).
    pub async fn start_with(program: &Path, extra: Vec<String>) -> Result<ServerProcess> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let db = dir.path().join("syncline.sqlite3");
        let mut server = ServerProcess { child: None, program: program.to_path_buf(), port, db, dir, extra };
        server.spawn().await?;
        Ok(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    async fn spawn(&mut self) -> Result<()> {
        let child = std::process::Command::new(&self.program)
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--db")
            .arg(&self.db)
            .arg("--static-dir")
            .arg(dist_dir())
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        // Ready when it accepts connections (the port may still be held a moment by the killed process).
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the server did not come up on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn db_path(&self) -> &Path {
        &self.db
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: no graceful shutdown, sockets reset, whatever was in flight lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and database.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One Chromium process with its own profile.
pub struct TestBrowser {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: TempDir,
    /// The account to sign in as on the first page opened on an origin (`None`: the test signs in itself).
    auto_sign_in: Option<(String, String)>,
    signed_in: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// `scheme://host:port` of a URL.
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

impl TestBrowser {
    /// Launches headless Chromium with a fresh profile, signed in as the test account ([`TEST_USER`]) on each
    /// server it opens (created there first if it is not, e.g. on a server process).
    pub async fn launch() -> Result<TestBrowser> {
        let mut b = Self::launch_anonymous().await?;
        b.auto_sign_in = Some((TEST_USER.into(), TEST_PASSWORD.into()));
        Ok(b)
    }

    /// Launches headless Chromium with a fresh profile, signed in nowhere. The flags keep Chromium off the
    /// network (only loopback works here) and, deliberately, do *not* disable background throttling: hidden tabs
    /// behave as they do for users.
    pub async fn launch_anonymous() -> Result<TestBrowser> {
        let profile = tempfile::tempdir()?;
        let config = BrowserConfig::builder()
            .chrome_executable(chromium_path())
            .new_headless_mode()
            .no_sandbox()
            .disable_default_args()
            .user_data_dir(profile.path())
            .window_size(1280, 800)
            .viewport(None)
            .args([
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-dev-shm-usage",
                "--disable-breakpad",
                "--disable-features=Translate,MediaRouter,OptimizationHints",
                "--password-store=basic",
                "--use-mock-keychain",
                "--lang=en-US",
            ])
            .build()
            .map_err(|e| anyhow!("browser config: {e}"))?;
        let (browser, mut handler) =
            Browser::launch(config).await.with_context(|| format!("launching {}", chromium_path().display()))?;
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if event.is_err() {
                    // Errors for individual messages are not fatal to the connection; keep draining.
                    continue;
                }
            }
        });
        Ok(TestBrowser {
            browser,
            handler,
            _profile: profile,
            auto_sign_in: None,
            signed_in: std::sync::Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// Signs this browser profile in on `origin` (its session cookie is then sent by every tab), creating the
    /// account first if it does not exist. Done from a page of that origin, as the app's own form does.
    pub async fn sign_in(&self, origin: &str, username: &str, password: &str) -> Result<()> {
        // A small same-origin page that is not the app (which would start syncing before the sign-in).
        let tab = self.open_page(&format!("{origin}/healthz")).await?;
        let body = serde_json::json!({ "username": username, "password": password }).to_string();
        let js = format!(
            r#"(async () => {{
                const post = (path) => fetch(path, {{ method: 'POST', headers: {{ 'content-type': 'application/json' }}, body: {body:?} }});
                let r = await post('/api/auth/signin');
                if (r.status === 401) r = await post('/api/auth/signup');
                return r.status;
            }})()"#
        );
        let status: u16 = tab.eval(&js).await?;
        tab.page.clone().close().await.ok();
        if !(200..300).contains(&status) {
            bail!("signing in as {username} on {origin}: {status}");
        }
        self.signed_in.lock().unwrap_or_else(|p| p.into_inner()).insert(origin.to_owned());
        Ok(())
    }

    /// Opens `url` in a new window (so it can be hidden on its own) and waits until it has loaded. The first
    /// page on an origin signs the profile in there first (unless launched anonymous).
    pub async fn open(&self, url: &str) -> Result<Tab> {
        let origin = origin_of(url);
        let first = !self.signed_in.lock().unwrap_or_else(|p| p.into_inner()).contains(&origin);
        if let (true, Some((user, password))) = (first, &self.auto_sign_in) {
            self.sign_in(&origin, user, password).await?;
        }
        self.open_page(url).await
    }

    async fn open_page(&self, url: &str) -> Result<Tab> {
        let params = CreateTargetParams::builder()
            .url("about:blank")
            .new_window(true)
            .build()
            .map_err(|e| anyhow!("target params: {e}"))?;
        let page = self.browser.new_page(params).await?;
        let exceptions = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut thrown = page.event_listener::<EventExceptionThrown>().await?;
        let seen = exceptions.clone();
        let listener = tokio::spawn(async move {
            while let Some(event) = thrown.next().await {
                let details = &event.exception_details;
                let what = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.description.clone())
                    .unwrap_or_else(|| details.text.clone());
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(what);
            }
        });
        let tab = Tab { page, exceptions, _listener: AbortOnDrop(listener) };
        tab.goto(url).await?;
        Ok(tab)
    }

    /// Opens `n` tabs on `url`, each in its own window.
    pub async fn open_tabs(&self, url: &str, n: usize) -> Result<Vec<Tab>> {
        let mut tabs = Vec::with_capacity(n);
        for _ in 0..n {
            tabs.push(self.open(url).await?);
        }
        Ok(tabs)
    }

    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// One page of a [`TestBrowser`].
pub struct Tab {
    page: Page,
    exceptions: Arc<std::sync::Mutex<Vec<String>>>,
    _listener: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Tab {
    pub fn page(&self) -> &Page {
        &self.page
    }

    /// Uncaught exceptions (and unhandled rejections) the page threw so far (CDP `Runtime.exceptionThrown`).
    pub fn exceptions(&self) -> Vec<String> {
        self.exceptions.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.page.goto(url).await?;
        self.page.wait_for_navigation().await?;
        Ok(())
    }

    pub async fn reload(&self) -> Result<()> {
        self.page.reload().await?;
        Ok(())
    }

    /// Evaluates a JS expression (awaiting it if it is a promise) and returns its JSON value.
    pub async fn eval<T: DeserializeOwned>(&self, expression: &str) -> Result<T> {
        self.evaluate(expression).await?.into_value().map_err(|e| anyhow!("{expression}: {e}"))
    }

    async fn evaluate(&self, expression: &str) -> Result<chromiumoxide::js::EvaluationResult> {
        let params = EvaluateParams::builder()
            .expression(expression)
            .await_promise(true)
            .return_by_value(true)
            .build()
            .map_err(|e| anyhow!("evaluate params: {e}"))?;
        self.page.evaluate_expression(params).await.with_context(|| format!("evaluating {expression}"))
    }

    /// Evaluates a JS expression for its effect (awaiting it if it is a promise), ignoring its value.
    pub async fn exec(&self, expression: &str) -> Result<()> {
        self.evaluate(expression).await.map(|_| ())
    }

    /// Waits until the JS expression `predicate` is truthy, re-checking on every DOM mutation and every
    /// 25 ms (hidden pages throttle timers, so a hidden tab may take up to a second longer).
    pub async fn wait_for(&self, predicate: &str, timeout: Duration) -> Result<()> {
        let js = format!(
            r#"new Promise((resolve, reject) => {{
                const check = () => {{ try {{ return !!({predicate}); }} catch (e) {{ return false; }} }};
                if (check()) return resolve(true);
                const done = (ok) => {{ obs.disconnect(); clearInterval(iv); clearTimeout(to); ok ? resolve(true) : reject(new Error('timed out waiting for: ' + {quoted})); }};
                const obs = new MutationObserver(() => {{ if (check()) done(true); }});
                obs.observe(document, {{ subtree: true, childList: true, attributes: true, characterData: true }});
                const iv = setInterval(() => {{ if (check()) done(true); }}, 25);
                const to = setTimeout(() => done(check()), {ms});
            }})"#,
            quoted = serde_json::to_string(predicate)?,
            ms = timeout.as_millis()
        );
        self.eval::<bool>(&js).await.map(|_| ())
    }

    /// Waits until an element matching `selector` exists.
    pub async fn wait_for_selector(&self, selector: &str, timeout: Duration) -> Result<()> {
        self.wait_for(&format!("document.querySelector({})", serde_json::to_string(selector)?), timeout).await
    }

    /// Text content of the first element matching `selector`.
    pub async fn text(&self, selector: &str) -> Result<String> {
        self.eval(&format!("document.querySelector({}).textContent", serde_json::to_string(selector)?)).await
    }

    /// Clicks the element's centre with a real mouse event.
    /// Clicks the element (found again if a re-render replaced it between finding and clicking).
    pub async fn click(&self, selector: &str) -> Result<()> {
        self.retrying(|| async { self.page.find_element(selector).await?.click().await.map(|_| ()) }).await
    }

    /// Runs an action on a found element again (up to 3 times) when a re-render replaced the element between
    /// finding it and acting on it (CDP "Could not find node").
    async fn retrying<F, Fut>(&self, action: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), chromiumoxide::error::CdpError>>,
    {
        let mut attempt = 0;
        loop {
            match action().await {
                Err(e) if attempt < 3 && e.to_string().contains("Could not find node") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Moves the mouse over the element's centre (real `mouseenter`/`mouseover`).
    pub async fn hover(&self, selector: &str) -> Result<()> {
        self.retrying(|| async { self.page.find_element(selector).await?.hover().await.map(|_| ()) }).await
    }

    /// Gives the element keyboard focus.
    pub async fn focus(&self, selector: &str) -> Result<()> {
        self.retrying(|| async { self.page.find_element(selector).await?.focus().await.map(|_| ()) }).await
    }

    /// Lays the page out as on a phone `width` CSS pixels wide (Emulation.setDeviceMetricsOverride).
    pub async fn set_viewport(&self, width: i64, height: i64) -> Result<()> {
        let params = SetDeviceMetricsOverrideParams::builder()
            .width(width)
            .height(height)
            .device_scale_factor(1.0)
            .mobile(true)
            .build()
            .map_err(|e| anyhow!(e))?;
        self.page.execute(params).await?;
        Ok(())
    }

    /// Focuses the element and types `text` with real key events.
    pub async fn type_into(&self, selector: &str, text: &str) -> Result<()> {
        self.retrying(|| async {
            let el = self.page.find_element(selector).await?;
            el.focus().await?;
            el.type_str(text).await.map(|_| ())
        })
        .await
    }

    /// Presses a key (by its `KeyboardEvent.key` name, e.g. "ArrowRight", " ", "Enter") on the focused element.
    pub async fn press(&self, key: &str) -> Result<()> {
        let focused = self.page.find_element(":focus").await.context("no element has focus")?;
        focused.press_key(key).await?;
        Ok(())
    }

    async fn set_window_state(&self, state: WindowState) -> Result<()> {
        let window = self
            .page
            .execute(GetWindowForTargetParams::builder().target_id(self.page.target_id().clone()).build())
            .await?
            .result
            .window_id;
        let bounds = Bounds::builder().window_state(state).build();
        self.page.execute(SetWindowBoundsParams::new(window, bounds)).await?;
        Ok(())
    }

    /// Hides the tab (minimises its window): `visibilitychange` fires and `visibilityState` is "hidden".
    pub async fn hide(&self) -> Result<()> {
        self.set_window_state(WindowState::Minimized).await
    }

    /// Shows the tab again (restores its window).
    pub async fn show(&self) -> Result<()> {
        self.set_window_state(WindowState::Normal).await
    }

    /// Emulates losing (or regaining) the network: `navigator.onLine` flips and `offline`/`online` fire;
    /// new fetches and WebSockets fail. Already-open WebSockets are not broken by this.
    pub async fn set_offline(&self, offline: bool) -> Result<()> {
        self.emulate_network(offline, 0.0).await
    }

    /// Emulates a slow link: every request waits `latency_ms` more (0 to stop), so short-lived states (a
    /// refetch under way) stay on screen long enough to be seen.
    pub async fn set_latency(&self, latency_ms: f64) -> Result<()> {
        self.emulate_network(false, latency_ms).await
    }

    /// Emulates a link: added latency, and download/upload throughput in kbit/s (Chromium's network emulation).
    pub async fn set_link(&self, latency_ms: f64, down_kbps: f64, up_kbps: f64) -> Result<()> {
        self.emulate(false, latency_ms, down_kbps * 1000.0 / 8.0, up_kbps * 1000.0 / 8.0).await
    }

    async fn emulate_network(&self, offline: bool, latency: f64) -> Result<()> {
        self.emulate(offline, latency, -1.0, -1.0).await
    }

    /// Throughputs in bytes/s, -1 for no limit. The CDP method is marked deprecated in favour of per-rule
    /// conditions, but it is the one verified to fire real offline/online events in this Chromium (see
    /// shared/TOOLCHAIN.md).
    #[allow(deprecated)]
    async fn emulate(&self, offline: bool, latency: f64, download: f64, upload: f64) -> Result<()> {
        self.page.execute(EnableParams::default()).await?;
        self.page
            .execute(EmulateNetworkConditionsParams {
                offline,
                latency,
                download_throughput: download,
                upload_throughput: upload,
                connection_type: None,
                packet_loss: None,
                packet_queue_length: None,
                packet_reordering: None,
            })
            .await?;
        Ok(())
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let png =
            self.page.screenshot(ScreenshotParams::builder().format(CaptureScreenshotFormat::Png).build()).await?;
        std::fs::write(path, png)?;
        Ok(())
    }

    pub async fn close(self) -> Result<()> {
        self.page.close().await?;
        Ok(())
    }
}

/// Waits for a server-side condition (the server has no event to await from here), polling every 20 ms;
/// panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
