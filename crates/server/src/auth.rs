//! Accounts over HTTP — sign up, sign in, sign out, change password, who am I — and server-side sessions.
//!
//! Sessions are `tower-sessions` sessions kept in the database's `sessions` table ([`SessionTable`]), behind an
//! HttpOnly, SameSite=Lax cookie (Secure when the public origin is HTTPS); signing in issues a new session id.
//! Ending a session (sign-out, a password change ending the others, expiry) also ends the feed connections that
//! use it: the table tells the hub, and each feed driver listening for its session closes with 4001. Passwords
//! are hashed with Argon2id. Sign-in attempts are rate-limited per account and per address (`governor`).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::args;
use crate::db::Conn;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use syncline_kanban::{ChangePassword, Credentials, ErrorCode, User, UserId};
use tower_sessions::cookie::time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use uuid::Uuid;

use crate::AppState;
use crate::access;
use crate::error::{AppError, Json};
use crate::feed::{Recorder, now_ms};
use crate::store::{Store, StoreError, StoreResult};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "syncline_session";
/// Where the signed-in user's id lives in the session.
const USER_KEY: &str = "user_id";

/// How long a session lasts after sign-in.
pub const SESSION_DAYS: i64 = 14;

/// The session layer for `/api`: sessions in the database, cookie attributes as above.
pub fn session_layer(store: &Store, secure: bool) -> SessionManagerLayer<SessionTable> {
    SessionManagerLayer::new(SessionTable { store: store.clone() })
        .with_name(SESSION_COOKIE)
        .with_http_only(true)
        .with_same_site(tower_sessions::cookie::SameSite::Lax)
        .with_secure(secure)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(tower_sessions::cookie::time::Duration::days(SESSION_DAYS)))
}

// ---- the session store ---------------------------------------------------------------------------------------

/// `tower-sessions`' store on the `sessions` table, which also records whose session it is (to end a user's
/// other sessions) and tells the hub when one ends (to close its feed connections).
#[derive(Debug, Clone)]
pub struct SessionTable {
    store: Store,
}

fn backend(e: StoreError) -> session_store::Error {
    session_store::Error::Backend(format!("{e:?}"))
}

fn user_of(record: &Record) -> Option<String> {
    record.data.get(USER_KEY).and_then(|v| v.as_str()).map(str::to_owned)
}

#[async_trait::async_trait]
impl SessionStore for SessionTable {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let (user, expires) = (user_of(record), record.expiry_date.unix_timestamp());
        let mut id = record.id;
        let id = self
            .store
            .transaction(move |conn| {
                // A collision of 128 random bits is next to impossible; still, never overwrite a session.
                loop {
                    let inserted = conn.execute(
                        "INSERT INTO sessions (id, user_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (id) DO NOTHING",
                        args![id.to_string(), user, data, expires],
                    )?;
                    if inserted == 1 {
                        return Ok(id);
                    }
                    id = Id::default();
                }
            })
            .await
            .map_err(backend)?;
        record.id = id;
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data).map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let (id, user, expires) = (record.id.to_string(), user_of(record), record.expiry_date.unix_timestamp());
        self.store
            .transaction(move |conn| {
                conn.execute(
                    "INSERT INTO sessions (id, user_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, data = excluded.data,
                     expires_at = excluded.expires_at",
                    args![id, user, data, expires],
                )?;
                Ok(())
            })
            .await
            .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let key = id.to_string();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let row: Option<(String, i64)> = self
            .store
            .transaction(move |conn| {
                let row = conn.query_opt(
                    "SELECT data, expires_at FROM sessions WHERE id = ?1 AND expires_at > ?2",
                    args![key, now],
                )?;
                row.map(|r| Ok((r.text(0)?, r.i64(1)?))).transpose()
            })
            .await
            .map_err(backend)?;
        let Some((data, expires)) = row else { return Ok(None) };
        let data = serde_json::from_str(&data).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        let expiry_date =
            OffsetDateTime::from_unix_timestamp(expires).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        Ok(Some(Record { id: *id, data, expiry_date }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let key = id.to_string();
        let k = key.clone();
        self.store
            .transaction(move |conn| {
                conn.execute("DELETE FROM sessions WHERE id = ?1", args![k])?;
                Ok(())
            })
            .await
            .map_err(backend)?;
        self.store.hub().session_ended(&key);
        Ok(())
    }
}

/// Ends every session of `user` but `keep` (after a password change), closing their feeds.
async fn end_other_sessions(store: &Store, user: UserId, keep: Option<String>) -> Result<(), AppError> {
    let ended: Vec<String> = store
        .transaction(move |tx| {
            let ids: Vec<String> = tx
                .query("SELECT id FROM sessions WHERE user_id = ?1", args![user])?
                .iter()
                .map(|r| r.text(0))
                .collect::<StoreResult<Vec<String>>>()?
                .into_iter()
                .filter(|id| Some(id) != keep.as_ref())
                .collect();
            for id in &ids {
                tx.execute("DELETE FROM sessions WHERE id = ?1", args![id])?;
            }
            Ok(ids)
        })
        .await?;
    for id in ended {
        store.hub().session_ended(&id);
    }
    Ok(())
}

/// Deletes expired sessions (from the retention sweep).
pub fn prune_sessions(tx: &dyn Conn, now_unix: i64) -> Result<usize, StoreError> {
    Ok(tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", args![now_unix])? as usize)
}

// ---- who is asking ---------------------------------------------------------------------------------------------

/// The signed-in user of a request, and the session it came with. Extracting it answers 401 when there is none:
/// every route that takes it requires a session.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: UserId,
    /// The session's id (feed drivers close when it ends).
    pub session: String,
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state).await.map_err(|_| AppError::unauthorized())?;
        let user: Option<Uuid> = session.get(USER_KEY).await.map_err(|_| AppError::unauthorized())?;
        match (user, session.id()) {
            (Some(id), Some(sid)) => Ok(CurrentUser { id, session: sid.to_string() }),
            _ => Err(AppError::unauthorized()),
        }
    }
}

// ---- rate limits -----------------------------------------------------------------------------------------------

/// Sign-in (and sign-up) attempt limits.
pub struct AuthLimits {
    per_account: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// What a refusal says: the limits in words.
    pub account_burst: u32,
    pub address_burst: u32,
}

impl AuthLimits {
    /// `account_burst` attempts per account, then one more every `account_every_secs`; likewise per address.
    pub fn new(account_burst: u32, account_every_secs: u64, address_burst: u32, address_every_secs: u64) -> AuthLimits {
        let quota = |burst: u32, every: u64| {
            let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
            Quota::with_period(std::time::Duration::from_secs(every.max(1))).expect("a period").allow_burst(burst)
        };
        AuthLimits {
            per_account: RateLimiter::keyed(quota(account_burst, account_every_secs)),
            per_address: RateLimiter::keyed(quota(address_burst, address_every_secs)),
            clock: DefaultClock::default(),
            account_burst,
            address_burst,
        }
    }

    /// Counts an attempt for this account (if named) and address; refuses with 429 and `Retry-After` when either
    /// is over its limit.
    fn attempt(&self, account: Option<&str>, address: Option<IpAddr>) -> Result<(), AppError> {
        let now = self.clock.now();
        let refused = |wait: std::time::Duration, what: &str| {
            let secs = wait.as_secs().max(1);
            let mut err = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("too many sign-in attempts for this {what}; try again in {secs} s"),
            );
            err.retry_after = Some(secs);
            err
        };
        if let Some(address) = address
            && let Err(not_until) = self.per_address.check_key(&address)
        {
            return Err(refused(not_until.wait_time_from(now), "address"));
        }
        if let Some(account) = account
            && let Err(not_until) = self.per_account.check_key(&account.to_lowercase())
        {
            return Err(refused(not_until.wait_time_from(now), "account"));
        }
        Ok(())
    }

    /// Forgets keys that are back to full quota (from the retention sweep), so memory stays bounded.
    pub fn sweep(&self) {
        self.per_account.retain_recent();
        self.per_address.retain_recent();
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy (`--trusted-proxy`) — the last address
/// in the `X-Forwarded-For` it appended.
pub struct PeerAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip());
        Ok(PeerAddr(client_address(peer, &parts.headers, &state.trusted_proxies)))
    }
}

/// See [`PeerAddr`]. A proxy appends the address it saw to `X-Forwarded-For`, so only the last entry (of the last
/// such header) is its word; earlier entries come from the client and prove nothing.
pub fn client_address(peer: Option<IpAddr>, headers: &axum::http::HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers.get_all("x-forwarded-for").iter().next_back().and_then(|v| v.to_str().ok());
    Some(forwarded.and_then(|v| v.rsplit(',').next()).and_then(|a| a.trim().parse().ok()).unwrap_or(peer))
}

// ---- password hashing ------------------------------------------------------------------------------------------

/// Argon2id with the crate's defaults (19 MiB, 2 passes), in a blocking thread.
async fn hash_password(password: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| AppError::from(StoreError::Internal(e.into())))?
    .map_err(|e| AppError::from(StoreError::Internal(anyhow::anyhow!("hashing failed: {e}"))))
}

/// A hash to verify against when the account does not exist, so the answer takes as long either way (made
/// once, of a random password).
async fn dummy_hash() -> Result<String, AppError> {
    static DUMMY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DUMMY.get_or_try_init(|| hash_password(Uuid::new_v4().to_string())).await.cloned()
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

fn invalid_field(field: &str, message: String) -> AppError {
    let mut err = AppError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidField, message);
    err.body.field = Some(field.into());
    err
}

// ---- routes ----------------------------------------------------------------------------------------------------

/// Starts a fresh session (a new id: no session fixation) for `user`.
async fn sign_in_session(session: &Session, user: UserId) -> Result<(), AppError> {
    let internal = |e: tower_sessions::session::Error| AppError::from(StoreError::Internal(anyhow::anyhow!("{e}")));
    session.cycle_id().await.map_err(internal)?;
    session.insert(USER_KEY, user).await.map_err(internal)
}

/// Creates an account (validated, password hashed); `UsernameTaken` when the name is in use. For the sign-up
/// route, and for operators and test harnesses that seed accounts.
pub async fn create_account(store: &Store, username: &str, password: &str) -> Result<User, AppError> {
    access::validate_username(username).map_err(|m| invalid_field("username", m))?;
    access::validate_password(password).map_err(|m| invalid_field("password", m))?;
    let hash = hash_password(password.to_owned()).await?;
    let username = username.to_owned();
    let created = store
        .write(move |tx| {
            let mut rec = Recorder::new(None, now_ms());
            match access::create_user(tx, &mut rec, &username, &hash, now_ms()) {
                Ok(u) => Ok((Ok(u), rec.changes().to_vec())),
                Err(StoreError::InvalidField { message, .. }) if message.ends_with("is taken") => {
                    Ok((Err(message), Vec::new()))
                }
                Err(e) => Err(e),
            }
        })
        .await?;
    created.map_err(|message| AppError::new(StatusCode::CONFLICT, ErrorCode::UsernameTaken, message))
}

/// `POST /api/auth/signup`: creates an account and signs it in.
#[utoipa::path(post, path = "/api/auth/signup", tag = "auth", request_body = Credentials,
    responses((status = 201, description = "Signed up and in; sets the session cookie", body = User),
        (status = 409, description = "Username taken", body = syncline_kanban::ApiError),
        (status = 422, description = "Invalid username or password", body = syncline_kanban::ApiError),
        (status = 429, description = "Too many attempts from this address", body = syncline_kanban::ApiError)))]
pub async fn signup(
    State(s): State<AppState>,
    PeerAddr(peer): PeerAddr,
    session: Session,
    Json(body): Json<Credentials>,
) -> Result<Response, AppError> {
    s.auth.attempt(None, peer)?;
    let user = create_account(&s.store, &body.username, &body.password).await?;
    sign_in_session(&session, user.id).await?;
    Ok((StatusCode::CREATED, axum::Json(user)).into_response())
}

/// `POST /api/auth/signin`
#[utoipa::path(post, path = "/api/auth/signin", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "Signed in; sets a new session cookie", body = User),
        (status = 401, description = "Wrong username or password", body = syncline_kanban::ApiError),
        (status = 429, description = "Too many attempts for this account or address; Retry-After", body = syncline_kanban::ApiError)))]
pub async fn signin(
    State(s): State<AppState>,
    PeerAddr(peer): PeerAddr,
    session: Session,
    Json(body): Json<Credentials>,
) -> Result<axum::Json<User>, AppError> {
    s.auth.attempt(Some(&body.username), peer)?;
    let name = body.username.clone();
    let found = s.store.read(move |tx| access::user_by_name(tx, &name)).await?;
    let hash = match &found {
        Some((_, h)) => h.clone(),
        None => dummy_hash().await?,
    };
    let verified = verify_password(body.password, hash).await;
    match found {
        Some((user, _)) if verified => {
            sign_in_session(&session, user.id).await?;
            Ok(axum::Json(user))
        }
        _ => Err(AppError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidCredentials, "wrong username or password")),
    }
}

/// `POST /api/auth/signout`: ends the session — its cookie, and every feed connection that uses it.
#[utoipa::path(post, path = "/api/auth/signout", tag = "auth", responses((status = 204, description = "Signed out")))]
pub async fn signout(session: Session) -> Result<StatusCode, AppError> {
    session.flush().await.map_err(|e| AppError::from(StoreError::Internal(anyhow::anyhow!("{e}"))))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/auth/me`
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    responses((status = 200, body = User), (status = 401, description = "Not signed in", body = syncline_kanban::ApiError)))]
pub async fn me(State(s): State<AppState>, user: CurrentUser) -> Result<axum::Json<User>, AppError> {
    let id = user.id;
    let found = s.store.read(move |tx| access::get_user(tx, id)).await?;
    found.map(|(u, _)| axum::Json(u)).ok_or_else(AppError::unauthorized)
}

/// `POST /api/auth/password`: changes the password and ends every other session of the account.
#[utoipa::path(post, path = "/api/auth/password", tag = "auth", request_body = ChangePassword,
    responses((status = 204, description = "Changed; other sessions ended"),
        (status = 401, description = "Not signed in, or the current password is wrong", body = syncline_kanban::ApiError),
        (status = 422, description = "The new password is not acceptable", body = syncline_kanban::ApiError),
        (status = 429, description = "Too many attempts", body = syncline_kanban::ApiError)))]
pub async fn change_password(
    State(s): State<AppState>,
    PeerAddr(peer): PeerAddr,
    user: CurrentUser,
    Json(body): Json<ChangePassword>,
) -> Result<StatusCode, AppError> {
    let id = user.id;
    let found = s.store.read(move |tx| access::get_user(tx, id)).await?;
    let Some((account, hash)) = found else { return Err(AppError::unauthorized()) };
    s.auth.attempt(Some(&account.username), peer)?;
    if !verify_password(body.current_password, hash).await {
        return Err(AppError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredentials,
            "the current password is wrong",
        ));
    }
    access::validate_password(&body.new_password).map_err(|m| invalid_field("new_password", m))?;
    let new_hash = hash_password(body.new_password).await?;
    s.store.transaction(move |tx| access::set_password_hash(tx, id, &new_hash)).await?;
    end_other_sessions(&s.store, id, Some(user.session)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The limits, shared by the routes.
pub type Limits = Arc<AuthLimits>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_only_its_last_entry() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 192.0.2.7".parse().unwrap());
        // Not a trusted proxy: the header is the client's own claim.
        assert_eq!(client_address(Some(proxy), &headers, &[]), Some(proxy));
        // Trusted: the entry the proxy appended, not the one the client sent.
        assert_eq!(client_address(Some(proxy), &headers, &[proxy]), Some("192.0.2.7".parse().unwrap()));
        headers.append("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_address(Some(proxy), &headers, &[proxy]), Some(proxy), "unparsable: the peer");
        assert_eq!(client_address(None, &headers, &[proxy]), None);
    }
}
