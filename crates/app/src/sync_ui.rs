//! Sync made visible: the connection badge, the freshness line of each view, the preferences and metrics panels
//! and the ARIA live region that announces connection changes. Everything here reads the runtime; the only
//! timer is the one-second clock that makes ages and countdowns tick on screen (only while the page is visible).

use std::time::Duration;

use leptos::prelude::*;
use syncline_engine::{BackgroundMode, ConnectionStatus, Freshness, HISTORY_SPAN_MS, Notification, Preferences};
use syncline_kanban::QueryKey;

use wasm_bindgen::JsCast;

use crate::rt;

/// Signals every sync widget of the page shares.
#[derive(Clone, Copy)]
pub struct SyncSignals {
    /// Bumped when the connection, the outbox or the preferences change.
    pub status: RwSignal<u64>,
    /// This tab's clock (the runtime's), ticking every second so ages and countdowns move.
    pub now: RwSignal<u64>,
    /// Bumped when the preferences in force change (here or in another tab).
    pub prefs: RwSignal<u64>,
}

/// Creates the shared signals (once, in the app root) and keeps them current.
pub fn provide() -> SyncSignals {
    let s = SyncSignals { status: RwSignal::new(0), now: RwSignal::new(rt().now()), prefs: RwSignal::new(0) };
    rt().on_notify(move |n| match n {
        Notification::Connection { .. } | Notification::Outbox { .. } => s.status.update(|v| *v += 1),
        Notification::Preferences => s.prefs.update(|v| *v += 1),
        _ => {}
    });
    // The clock ticks only while the page is visible: a hidden tab shows nobody an age, and a timer a second is
    // most of what an asleep tab would still spend. Shown, it reads the time at once and ticks again.
    let tick: StoredValue<Option<IntervalHandle>, LocalStorage> = StoredValue::new_local(None);
    let follow_visibility = move || {
        let (hidden, ticking) = (document().hidden(), tick.with_value(Option::is_some));
        if hidden && ticking {
            tick.update_value(|t| {
                if let Some(handle) = t.take() {
                    handle.clear();
                }
            });
        } else if !hidden && !ticking {
            s.now.set(rt().now());
            tick.set_value(set_interval_with_handle(move || s.now.set(rt().now()), Duration::from_secs(1)).ok());
        }
    };
    follow_visibility();
    // The app's root lives as long as the page: the listener is never removed.
    std::mem::forget(window_event_listener_untyped("visibilitychange", move |_| follow_visibility()));
    provide_context(s);
    s
}

fn signals() -> SyncSignals {
    expect_context::<SyncSignals>()
}

/// "a few seconds ago", "40 s ago", "2 min ago", "3 h ago".
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=9 => "a few seconds ago".into(),
        10..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// Whole seconds from `now` until `at`, rounded up.
fn seconds_until(at: u64, now: u64) -> u64 {
    at.saturating_sub(now).div_ceil(1000)
}

fn changes_saved(n: usize) -> String {
    match n {
        0 => "nothing waiting to be sent".into(),
        1 => "1 change saved on this device".into(),
        n => format!("{n} changes saved on this device"),
    }
}

/// The status's name, as in the `state` field of its JSON form (`live`, `polling`, …).
pub fn state_name(status: &ConnectionStatus) -> &'static str {
    match status {
        ConnectionStatus::Idle => "idle",
        ConnectionStatus::Connecting => "connecting",
        ConnectionStatus::Live => "live",
        ConnectionStatus::Polling { .. } => "polling",
        ConnectionStatus::Reconnecting { .. } => "reconnecting",
        ConnectionStatus::Paused => "paused",
        ConnectionStatus::Offline { .. } => "offline",
    }
}

/// The badge text: a headline and a detail.
fn describe(status: &ConnectionStatus, now: u64) -> (String, Option<String>) {
    match status {
        ConnectionStatus::Idle => ("Idle".into(), None),
        ConnectionStatus::Connecting => ("Connecting…".into(), None),
        ConnectionStatus::Live => ("Live".into(), Some("changes appear as they happen".into())),
        ConnectionStatus::Polling { reason, retry_socket_at } => {
            let detail = match retry_socket_at {
                Some(at) => format!("{reason}; trying it again in {} s", seconds_until(*at, now)),
                None => reason.clone(),
            };
            ("Polling".into(), Some(detail))
        }
        ConnectionStatus::Reconnecting { retry_at } => {
            (format!("Reconnecting in {} s", seconds_until(*retry_at, now)), Some("the connection dropped".into()))
        }
        ConnectionStatus::Paused => ("Paused".into(), Some("no tab is visible".into())),
        ConnectionStatus::Offline { pending_writes } => ("Offline".into(), Some(changes_saved(*pending_writes))),
    }
}

/// What the live region says when the connection changes (no countdowns: only changes of state are announced).
fn announcement(status: &ConnectionStatus) -> String {
    match status {
        ConnectionStatus::Idle | ConnectionStatus::Connecting => String::new(),
        ConnectionStatus::Live => "Connection live: changes appear as they happen.".into(),
        ConnectionStatus::Polling { reason, .. } => format!("Polling for changes: {reason}."),
        ConnectionStatus::Reconnecting { .. } => "Connection lost. Reconnecting.".into(),
        ConnectionStatus::Paused => "Sync paused while no tab is visible.".into(),
        ConnectionStatus::Offline { pending_writes } => format!("Offline. {}.", changes_saved(*pending_writes)),
    }
}

/// Live · Polling (why) · Reconnecting in N s (retry now) · Offline — N changes saved on this device.
#[component]
pub fn ConnectionBadge() -> impl IntoView {
    let s = signals();
    let status = Memo::new(move |_| {
        s.status.get();
        rt().status()
    });
    let text = move || describe(&status.get(), s.now.get());
    let can_retry = move || {
        matches!(
            status.get(),
            ConnectionStatus::Reconnecting { .. } | ConnectionStatus::Polling { retry_socket_at: Some(_), .. }
        )
    };
    view! {
        <div id="connection" class="badge" data-state=move || state_name(&status.get())>
            <span class="dot" aria-hidden="true"></span>
            <span class="badge-label">{move || text().0}</span>
            <span class="badge-detail">{move || text().1.map(|d| format!(" — {d}")).unwrap_or_default()}</span>
            <Show when=can_retry>
                <button id="retry-now" class="badge-action" on:click=|_| rt().retry_now()>"Retry now"</button>
            </Show>
        </div>
    }
}

/// A visually hidden live region: screen readers hear each change of connection state once.
#[component]
pub fn Announcer() -> impl IntoView {
    let s = signals();
    let message = RwSignal::new(String::new());
    let last = StoredValue::new(None::<&'static str>);
    Effect::new(move |_| {
        s.status.get();
        let status = rt().status();
        let name = state_name(&status);
        if last.get_value() != Some(name) {
            // The first state is what the page loads in: not news.
            if last.get_value().is_some() {
                message.set(announcement(&status));
            }
            last.set_value(Some(name));
        }
    });
    view! { <div id="announcer" class="visually-hidden" role="status" aria-live="polite">{move || message.get()}</div> }
}

/// A query's freshness, re-read when the view's data, the connection or the clock (ages) move.
fn tracked_freshness(key: QueryKey, version: RwSignal<u64>) -> impl Fn() -> Freshness + Copy + Send + Sync + 'static {
    let s = signals();
    move || {
        version.get();
        s.status.get();
        s.now.get();
        rt().freshness(&key)
    }
}

/// How current a view is: fresh, stale (with age), fetching, paused (offline, with age), error (with retry time),
/// and what has not reached the server yet. `version` is the view's own change counter.
pub fn freshness_line(key: QueryKey, version: RwSignal<u64>) -> impl IntoView {
    let s = signals();
    let freshness = tracked_freshness(key, version);
    let text = move || {
        let now = s.now.get();
        match freshness() {
            Freshness::Fresh => "Up to date".to_owned(),
            Freshness::Stale { age_ms: None } => "Showing a saved copy; checking for changes".to_owned(),
            Freshness::Stale { age_ms: Some(age_ms) } => format!("Updated {}", ago(age_ms)),
            Freshness::Fetching => "Refreshing…".to_owned(),
            Freshness::Paused { age_ms: None } => "Offline — not loaded yet".to_owned(),
            Freshness::Paused { age_ms: Some(age_ms) } => format!("Offline — last updated {}", ago(age_ms)),
            Freshness::Error { message, retry_at } => {
                format!("Could not refresh ({message}); retrying in {} s", seconds_until(retry_at, now))
            }
        }
    };
    let state = move || freshness_state(&freshness());
    let pending = move || {
        version.get();
        s.status.get();
        rt().pending_count()
    };
    let connection = move || {
        s.status.get();
        state_name(&rt().status())
    };
    view! {
        <p id="sync-status" class="sync-status" data-connection=connection data-freshness=state
            data-pending=move || pending().to_string()>
            <span class="freshness">{text}</span>
            {move || match pending() {
                0 => String::new(),
                1 => " · 1 change not yet on the server".to_owned(),
                n => format!(" · {n} changes not yet on the server"),
            }}
            <Show when=move || state() == "error">
                <button class="link retry-fetch" on:click=|_| rt().retry_now()>"Retry now"</button>
            </Show>
        </p>
    }
}

/// After the next render, focuses the first element matching the first of `selectors` that matches any.
fn focus_later(selectors: Vec<String>) {
    request_animation_frame(move || {
        let found = selectors.iter().find_map(|s| document().query_selector(s).ok().flatten());
        if let Some(el) = found.and_then(|el| el.dyn_into::<web_sys::HtmlElement>().ok()) {
            let _ = el.focus();
        }
    });
}

/// A panel under the top bar, shown while `open`; Escape or × closes it. Opening moves keyboard focus into it;
/// closing gives it back to `opener` (the button that opened it).
#[component]
fn Panel(
    id: &'static str,
    title: &'static str,
    opener: &'static str,
    open: RwSignal<bool>,
    children: ChildrenFn,
) -> impl IntoView {
    let title_id = format!("{id}-title");
    Effect::new(move |was_open: Option<bool>| {
        let is_open = open.get();
        if is_open {
            // Its first field, or (a panel without fields) its close button.
            focus_later(vec![format!("#{id} input, #{id} select"), format!("#{id} .panel-header button")]);
        } else if was_open == Some(true) {
            focus_later(vec![format!("#{opener}")]);
        }
        is_open
    });
    view! {
        <Show when=move || open.get()>
            <section id=id class="panel" role="dialog" aria-labelledby=title_id.clone()
                on:keydown=move |ev: leptos::ev::KeyboardEvent| if ev.key() == "Escape" { open.set(false) }>
                <header class="panel-header">
                    <h2 id=title_id.clone()>{title}</h2>
                    <button class="icon" aria-label=format!("Close {}", title.to_ascii_lowercase()) on:click=move |_| open.set(false)>"×"</button>
                </header>
                {children()}
            </section>
        </Show>
    }
}

/// A short freshness mark for a secondary view (the board summary): nothing when fresh.
pub fn freshness_mark(key: QueryKey, version: RwSignal<u64>) -> impl IntoView {
    let freshness = tracked_freshness(key, version);
    let (state, text) = (
        move || freshness_state(&freshness()),
        move || match freshness() {
            Freshness::Fresh => String::new(),
            Freshness::Stale { age_ms: None } | Freshness::Paused { age_ms: None } => " · saved copy".into(),
            Freshness::Stale { age_ms: Some(age_ms) } | Freshness::Paused { age_ms: Some(age_ms) } => {
                format!(" · updated {}", ago(age_ms))
            }
            Freshness::Fetching => " · refreshing…".into(),
            Freshness::Error { .. } => " · could not refresh".into(),
        },
    );
    view! { <span class="freshness-mark" data-freshness=state>{text}</span> }
}

fn freshness_state(f: &Freshness) -> &'static str {
    match f {
        Freshness::Fresh => "fresh",
        Freshness::Stale { .. } => "stale",
        Freshness::Fetching => "fetching",
        Freshness::Paused { .. } => "paused",
        Freshness::Error { .. } => "error",
    }
}

// ---- preferences -------------------------------------------------------------------------------------------

fn secs(ms: u64) -> String {
    (ms / 1000).to_string()
}

fn parse_secs(field: &str, value: &str) -> Result<u64, String> {
    value.trim().parse::<u64>().map(|s| s * 1000).map_err(|_| format!("{field}: enter a whole number of seconds"))
}

fn background_name(mode: BackgroundMode) -> String {
    match mode {
        BackgroundMode::Pause => "pause",
        BackgroundMode::CriticalOnly => "critical_only",
        BackgroundMode::Slower => "slower",
    }
    .to_owned()
}

/// Sets a form field to `now`, unless the user has changed it from what it last showed (`was`).
fn follow<T: PartialEq + Send + Sync + 'static>(field: RwSignal<T>, was: Option<T>, now: T) {
    if was.is_none_or(|was| field.with_untracked(|value| *value == was)) {
        field.set(now);
    }
}

/// Realtime, polling intervals, background behaviour, data saver, maximum retry delay: validated, saved for
/// every tab of this browser, applied at once.
#[component]
pub fn PreferencesPanel(open: RwSignal<bool>) -> impl IntoView {
    let s = signals();
    let realtime = RwSignal::new(true);
    let foreground = RwSignal::new(String::new());
    let background = RwSignal::new(String::new());
    let background_interval = RwSignal::new(String::new());
    let data_saver = RwSignal::new(false);
    let max_retry = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let saved = RwSignal::new(false);
    // The form shows the preferences in force, including those another tab saves while it is open — except in a
    // field the user has changed since it was last shown: what they typed stays theirs until they save it (and
    // saving then keeps the other tab's change to the fields they did not touch).
    let shown = StoredValue::new(None::<Preferences>);
    Effect::new(move |_| {
        s.prefs.get();
        let now = rt().preferences();
        let was = shown.get_value();
        let was = was.as_ref();
        follow(realtime, was.map(|p| p.realtime), now.realtime);
        follow(foreground, was.map(|p| secs(p.foreground_interval_ms)), secs(now.foreground_interval_ms));
        follow(background, was.map(|p| background_name(p.background)), background_name(now.background));
        follow(background_interval, was.map(|p| secs(p.background_interval_ms)), secs(now.background_interval_ms));
        follow(data_saver, was.map(|p| p.data_saver), now.data_saver);
        follow(max_retry, was.map(|p| secs(p.max_retry_delay_ms)), secs(now.max_retry_delay_ms));
        shown.set_value(Some(now));
    });
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        saved.set(false);
        let prefs = (|| -> Result<Preferences, String> {
            Ok(Preferences {
                realtime: realtime.get_untracked(),
                foreground_interval_ms: parse_secs("Foreground interval", &foreground.get_untracked())?,
                background: match background.get_untracked().as_str() {
                    "critical_only" => BackgroundMode::CriticalOnly,
                    "slower" => BackgroundMode::Slower,
                    _ => BackgroundMode::Pause,
                },
                background_interval_ms: parse_secs("Background interval", &background_interval.get_untracked())?,
                data_saver: data_saver.get_untracked(),
                max_retry_delay_ms: parse_secs("Maximum retry delay", &max_retry.get_untracked())?,
            })
        })();
        match prefs.and_then(|p| rt().set_preferences(p)) {
            Ok(()) => {
                error.set(None);
                saved.set(true);
            }
            Err(e) => error.set(Some(e)),
        }
    };
    let number =
        move |id: &'static str, label: &'static str, hint: &'static str, value: RwSignal<String>, min: &'static str| {
            view! {
                <label for=id>{label}</label>
                <div class="pref-field">
                    <input id=id type="number" inputmode="numeric" min=min max="3600" step="1" required
                        prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev)) />
                    <span class="unit">"s"</span>
                </div>
                <p class="pref-hint">{hint}</p>
            }
        };
    let checkbox = move |id: &'static str, label: &'static str, hint: &'static str, value: RwSignal<bool>| {
        view! {
            <label class="check">
                <input id=id type="checkbox" prop:checked=move || value.get()
                    on:change=move |ev| value.set(event_target_checked(&ev)) />
                {label}
            </label>
            <p class="pref-hint">{hint}</p>
        }
    };
    view! {
        <Panel id="preferences-panel" title="Sync preferences" opener="open-preferences" open=open>
                <form class="prefs" on:submit=save novalidate>
                    {checkbox("pref-realtime", "Realtime (WebSocket)", "Off: refresh by polling instead.", realtime)}
                    {number("pref-foreground", "Foreground polling interval", "While a tab is visible and not live: 1–3600 s.", foreground, "1")}
                    <label for="pref-background">"When no tab is visible"</label>
                    <select id="pref-background" prop:value=move || background.get()
                        on:change=move |ev| background.set(event_target_value(&ev))>
                        <option value="pause">"Pause all sync"</option>
                        <option value="critical_only">"Critical data only"</option>
                        <option value="slower">"Poll more slowly"</option>
                    </select>
                    {number("pref-background-interval", "Background interval", "How often hidden tabs poll when they do: 30–3600 s.", background_interval, "30")}
                    {checkbox("pref-data-saver", "Data saver", "Fewer, later requests; no prefetching.", data_saver)}
                    {number("pref-max-retry", "Maximum retry delay", "The longest wait between retries: 1–3600 s.", max_retry, "1")}
                    {move || error.get().map(|e| view! { <p id="preferences-error" class="error" role="alert">{e}</p> })}
                    <div class="panel-actions">
                        <button type="submit" id="preferences-save">"Save"</button>
                        <span id="preferences-saved" class="saved" role="status">
                            {move || if saved.get() { "Saved; every open tab uses them now." } else { "" }}
                        </span>
                    </div>
                </form>
        </Panel>
    }
}

// ---- metrics -----------------------------------------------------------------------------------------------

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    }
}

fn ms_pair(p50: Option<u64>, p99: Option<u64>) -> String {
    match (p50, p99) {
        (Some(a), Some(b)) => format!("{a} / {b} ms"),
        _ => "—".into(),
    }
}

const CHART_W: f64 = 600.0;
const CHART_H: f64 = 120.0;

/// Points of a polyline: `series` per-minute rates at times, over the last ten minutes, scaled to `max`.
fn chart_xy(series: &[(u64, f64)], now: u64, max: f64) -> Vec<(f64, f64)> {
    let span = HISTORY_SPAN_MS as f64;
    series
        .iter()
        .map(|&(at, v)| {
            // Time runs left to right: ten minutes ago at 0, now at the right edge.
            let x = 6.0 + (at as f64 - now as f64 + span) / span * (CHART_W - 12.0);
            (x, CHART_H - 4.0 - v / max * (CHART_H - 8.0))
        })
        .collect()
}

fn polyline(series: &[(u64, f64)], now: u64, max: f64) -> String {
    chart_xy(series, now, max).iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" ")
}

/// A dot per point, so a young history (one point) still shows.
fn dots(series: &[(u64, f64)], now: u64, max: f64, class: &'static str) -> impl IntoView + use<> {
    chart_xy(series, now, max).into_iter().map(|(x, y)| view! { <circle class=class cx=x cy=y r="4" /> }).collect_view()
}

/// What this tab's sync engine did: rates, volumes, latencies, time in each state, long tasks, and a chart.
#[component]
pub fn MetricsPanel(open: RwSignal<bool>) -> impl IntoView {
    let s = signals();
    let snapshot = move || {
        s.now.get();
        s.status.get();
        (rt().metrics(), rt().long_tasks(), rt().now(), rt().is_leader())
    };
    let row = move |id: &'static str, label: &'static str, value: Box<dyn Fn() -> String + Send + Sync>| {
        view! { <div class="metric"><dt>{label}</dt><dd id=id>{move || value()}</dd></div> }
    };
    view! {
        <Panel id="metrics-panel" title="Sync metrics" opener="open-metrics" open=open>
                <p class="pref-hint">{move || if snapshot().3 {
                    "This tab holds the connection for every tab of this browser."
                } else {
                    "Another tab holds the connection; this one makes no requests of its own."
                }}</p>
                <dl class="metrics">
                    {row("m-requests-per-min", "Requests / min", Box::new(move || { let (m, _, now, _) = snapshot(); m.requests_per_minute(now).to_string() }))}
                    {row("m-requests", "Requests", Box::new(move || snapshot().0.requests.to_string()))}
                    {row("m-bytes", "Bytes in / out", Box::new(move || { let m = snapshot().0; format!("{} / {}", bytes(m.bytes_in), bytes(m.bytes_out)) }))}
                    {row("m-socket", "Socket messages in / out", Box::new(move || { let m = snapshot().0; format!("{} / {}", m.socket_messages_in, m.socket_messages_out) }))}
                    {row("m-reconnects", "Reconnects", Box::new(move || snapshot().0.reconnects.to_string()))}
                    {row("m-fetch-latency", "Fetch latency p50 / p99", Box::new(move || { let m = snapshot().0; ms_pair(m.fetch_latency.percentile(0.5), m.fetch_latency.percentile(0.99)) }))}
                    {row("m-change-to-screen", "Change → screen p50 / p99", Box::new(move || { let m = snapshot().0; ms_pair(m.change_to_screen.percentile(0.5), m.change_to_screen.percentile(0.99)) }))}
                    {row("m-dedupe", "Dedupe hits", Box::new(move || snapshot().0.dedupe_hits.to_string()))}
                    {row("m-time-live", "Time live", Box::new(move || duration(snapshot().0.states.live_ms)))}
                    {row("m-time-polling", "Time polling", Box::new(move || duration(snapshot().0.states.polling_ms)))}
                    {row("m-time-offline", "Time offline", Box::new(move || duration(snapshot().0.states.offline_ms)))}
                    {row("m-long-tasks", "Long tasks (> 50 ms)", Box::new(move || {
                        let l = snapshot().1;
                        if !l.observed { "not reported by this browser".into() }
                        else if l.count == 0 { "0".into() }
                        else { format!("{} (longest {:.0} ms)", l.count, l.max_ms) }
                    }))}
                </dl>
                <figure class="chart">
                    {move || {
                        let (m, _, now, _) = snapshot();
                        // Per-minute rates between consecutive history points, the last one ending now.
                        let mut points: Vec<_> = m.history.iter().copied().collect();
                        points.push(m.point(now));
                        let rate = |f: &dyn Fn(&syncline_engine::MetricsPoint) -> u64| -> Vec<(u64, f64)> {
                            // (A window of under 2 s — the newest, ending now, can be — says little.)
                            points.windows(2).filter(|w| w[1].at >= w[0].at + 2_000)
                                .map(|w| (w[1].at, (f(&w[1]) - f(&w[0])) as f64 * 60_000.0 / (w[1].at - w[0].at) as f64))
                                .collect()
                        };
                        let requests = rate(&|p| p.requests);
                        let messages = rate(&|p| p.socket_messages);
                        let max = requests.iter().chain(messages.iter()).map(|p| p.1).fold(1.0_f64, f64::max);
                        view! {
                            <svg id="metrics-chart" viewBox=format!("0 0 {CHART_W} {CHART_H}")
                                role="img" aria-label="Requests and socket messages per minute over the last 10 minutes">
                                <line x1="0" y1=CHART_H - 4.0 x2=CHART_W y2=CHART_H - 4.0 class="axis" />
                                <polyline class="series-requests" fill="none" points=polyline(&requests, now, max) />
                                <polyline class="series-messages" fill="none" points=polyline(&messages, now, max) />
                                {dots(&requests, now, max, "dot-requests")}
                                {dots(&messages, now, max, "dot-messages")}
                            </svg>
                            <figcaption>
                                <span class="key key-requests">"requests/min"</span>
                                <span class="key key-messages">"socket messages/min"</span>
                                <span class="chart-scale">{format!("peak {max:.0}/min · last 10 min")}</span>
                            </figcaption>
                        }
                    }}
                </figure>
        </Panel>
    }
}
