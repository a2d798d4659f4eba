//! Accounts, board membership and the one authorization decision ([`can`]).
//!
//! Every HTTP read and write, the batch endpoint, the long-poll and the feed's log reads ask [`can`] (writes
//! through [`authorize_write`], inside the write's own transaction, so a write never races its author's removal).
//! A non-member is told a board does not exist (404); a member whose role is too low gets 403.
//!
//! Each user has their own list of boards, the stream `user:<id>`, which clients follow under the name `boards`
//! (the feed session maps it): a board's creation, renaming and deletion are recorded in the stream of every
//! member, and being added to or removed from a board in the stream of that user. Membership changes are also
//! changes on the board's own stream (`member_upserted`, `member_removed`): the feed session acts on a removal
//! in-band, so nothing of the board committed after it reaches the removed user.

use crate::args;
use crate::db::{Conn, Row};
use syncline_kanban::{
    AddMember, Board, BoardId, ChangeOp, Member, Role, SetRole, StreamId, StreamName, User, UserId, Version, WriteOp,
};
use uuid::Uuid;

use crate::feed::{LogRead, Recorder, read_log, record};
use crate::store::{self, StoreError, StoreResult};

/// The stream of `user`'s list of boards (clients follow it as `boards`).
pub fn user_stream(user: UserId) -> StreamName {
    StreamName::new(format!("user:{user}")).expect("a valid stream name")
}

/// What a request wants to do with a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See it and follow its changes.
    Read,
    /// Change its title, columns and cards.
    Edit,
    /// Add, change and remove members; delete the board.
    Manage,
}

impl Action {
    fn needs(self) -> Role {
        match self {
            Action::Read => Role::Viewer,
            Action::Edit => Role::Editor,
            Action::Manage => Role::Owner,
        }
    }
}

/// The authorization decision: `user`'s role on `board` if it allows `action`; otherwise `NotFound` for a
/// non-member (or a board that does not exist — the two look the same) and `Forbidden` for a role too low.
pub fn can(tx: &dyn Conn, user: UserId, board: BoardId, action: Action) -> StoreResult<Role> {
    match role_of(tx, user, board)? {
        None => Err(StoreError::NotFound(format!("no board with id {board}"))),
        Some(role) if role >= action.needs() => Ok(role),
        Some(role) => Err(StoreError::Forbidden(format!(
            "a {} of this board may not do that (it needs {})",
            role.as_str(),
            action.needs().as_str()
        ))),
    }
}

/// `user`'s role on `board`, if a member.
pub fn role_of(tx: &dyn Conn, user: UserId, board: BoardId) -> StoreResult<Option<Role>> {
    let role = tx.query_opt("SELECT role FROM members WHERE board_id = ?1 AND user_id = ?2", args![board, user])?;
    Ok(role.map(|r| r.text(0)).transpose()?.and_then(|r| Role::parse(&r)))
}

/// Authorizes a write before it runs, in its transaction: which board it touches and what it needs there.
/// Creating a board needs only an account; leaving a board (removing oneself) only membership.
pub fn authorize_write(tx: &dyn Conn, user: UserId, op: &WriteOp) -> StoreResult<()> {
    // (A column or card on a board the user may not see is "not found" either way: `can` says so for the board.)
    let board_of_column = |id: Uuid| store::get_column(tx, id).map(|c| c.board_id);
    let board_of_card = |id: Uuid| store::get_card(tx, id).map(|c| c.board_id);
    let (board, action) = match op {
        WriteOp::CreateBoard { .. } => return Ok(()),
        WriteOp::RenameBoard { id, .. } => (*id, Action::Edit),
        WriteOp::DeleteBoard { id, .. } => (*id, Action::Manage),
        WriteOp::CreateColumn { board_id, .. } => (*board_id, Action::Edit),
        WriteOp::RenameColumn { id, .. } | WriteOp::MoveColumn { id, .. } | WriteOp::DeleteColumn { id, .. } => {
            (board_of_column(*id)?, Action::Edit)
        }
        WriteOp::CreateCard { column_id, .. } => (board_of_column(*column_id)?, Action::Edit),
        WriteOp::UpdateCard { id, .. } | WriteOp::MoveCard { id, .. } | WriteOp::DeleteCard { id, .. } => {
            (board_of_card(*id)?, Action::Edit)
        }
        WriteOp::AddMember { board_id, .. } | WriteOp::SetMemberRole { board_id, .. } => (*board_id, Action::Manage),
        WriteOp::RemoveMember { board_id, user_id } if *user_id == user => (*board_id, Action::Read),
        WriteOp::RemoveMember { board_id, .. } => (*board_id, Action::Manage),
    };
    // Writes to one board are serialised on its stream row, held until commit: on PostgreSQL two concurrent
    // writes would otherwise both pass a base-version check (a lost update). (SQLite has one writer anyway.)
    let stream = syncline_kanban::StreamId::Board(board).name();
    tx.execute("UPDATE streams SET head = head WHERE stream = ?1", crate::args![stream.as_str()])?;
    can(tx, user, board, action).map(|_| ())
}

/// [`read_log`] for `user`: a board's stream only while they may read the board (checked in the same
/// transaction as the read), their own list always. The feed session asks for every read through this.
pub fn read_log_as(
    tx: &dyn Conn,
    user: UserId,
    log_id: Uuid,
    stream: &StreamName,
    since: syncline_kanban::Cursor,
    client_log_id: Option<Uuid>,
    limit: usize,
) -> StoreResult<LogRead> {
    if *stream != user_stream(user) {
        match StreamId::try_from(stream) {
            Ok(StreamId::Board(board)) => match can(tx, user, board, Action::Read) {
                Ok(_) => {}
                Err(StoreError::NotFound(_) | StoreError::Forbidden(_)) => {
                    return Ok(LogRead::Revoked(format!("no board with id {board} that you may see")));
                }
                Err(e) => return Err(e),
            },
            _ => return Ok(LogRead::Revoked(format!("{stream} is not a stream you may follow"))),
        }
    }
    read_log(tx, log_id, stream, since, client_log_id, limit)
}

// ---- accounts ----------------------------------------------------------------------------------------------

/// Usernames: 3–32 letters, digits, `_`, `.` or `-`; compared without case.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !(3..=32).contains(&name.len()) || !ok_chars {
        return Err("a username is 3 to 32 letters, digits, '_', '.' or '-'".into());
    }
    Ok(())
}

/// Passwords: 8 to 256 characters.
pub fn validate_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if !(8..=256).contains(&n) {
        return Err("a password is 8 to 256 characters".into());
    }
    Ok(())
}

fn user_row(r: &Row) -> StoreResult<(User, String)> {
    Ok((User { id: r.uuid(0)?, username: r.text(1)? }, r.text(2)?))
}

/// Creates an account; `UsernameTaken` (as `InvalidField` on `username`) if the name is in use.
pub fn create_user(
    tx: &dyn Conn,
    rec: &mut Recorder,
    username: &str,
    password_hash: &str,
    now_ms: u64,
) -> StoreResult<User> {
    validate_username(username).map_err(|message| StoreError::InvalidField { field: "username", message })?;
    let id = Uuid::now_v7();
    let inserted = tx.execute(
        "INSERT INTO users (id, username, username_key, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (username_key) DO NOTHING",
        args![id, username, username.to_lowercase(), password_hash, now_ms],
    )?;
    if inserted == 0 {
        return Err(StoreError::InvalidField { field: "username", message: format!("{username:?} is taken") });
    }
    // The first account adopts the boards made before there were accounts: they were everyone's, now they are
    // someone's (who can share them).
    let first = tx.query_one("SELECT COUNT(*) FROM users", &[])?.i64(0)?;
    if first == 1 {
        let ownerless: Vec<Uuid> = tx
            .query(
                "SELECT id FROM boards WHERE NOT EXISTS (SELECT 1 FROM members m WHERE m.board_id = boards.id)
                 ORDER BY created_ms, id",
                &[],
            )?
            .iter()
            .map(|r| r.uuid(0))
            .collect::<StoreResult<_>>()?;
        for board in ownerless {
            put_member(tx, rec, board, id, Role::Owner)?;
        }
    }
    Ok(User { id, username: username.to_owned() })
}

/// The account with this username (any case), with its password hash.
pub fn user_by_name(tx: &dyn Conn, username: &str) -> StoreResult<Option<(User, String)>> {
    tx.query_opt(
        "SELECT id, username, password_hash FROM users WHERE username_key = ?1",
        args![username.to_lowercase()],
    )?
    .map(|r| user_row(&r))
    .transpose()
}

pub fn get_user(tx: &dyn Conn, id: UserId) -> StoreResult<Option<(User, String)>> {
    tx.query_opt("SELECT id, username, password_hash FROM users WHERE id = ?1", args![id])?
        .map(|r| user_row(&r))
        .transpose()
}

pub fn set_password_hash(tx: &dyn Conn, id: UserId, hash: &str) -> StoreResult<()> {
    tx.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", args![id, hash])?;
    Ok(())
}

// ---- boards and members ----------------------------------------------------------------------------------

/// The boards `user` is a member of, in creation order.
pub fn boards_of(tx: &dyn Conn, user: UserId) -> StoreResult<Vec<Board>> {
    tx.query(
        "SELECT b.id, b.title, b.version FROM boards b JOIN members m ON m.board_id = b.id
         WHERE m.user_id = ?1 ORDER BY b.created_ms, b.id",
        args![user],
    )?
    .iter()
    .map(|r| Ok(Board { id: r.uuid(0)?, title: r.text(1)?, version: r.u64(2)? as Version }))
    .collect()
}

/// Members of a board: owners first, then by username.
pub fn members_of(tx: &dyn Conn, board: BoardId) -> StoreResult<Vec<Member>> {
    tx.query(
        "SELECT m.user_id, u.username, m.role, m.version FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.board_id = ?1 ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'editor' THEN 1 ELSE 2 END, u.username_key",
        args![board],
    )?
    .iter()
    .map(|r| {
        let user_id = r.uuid(0)?;
        Ok(Member {
            id: Member::id_of(board, user_id),
            board_id: board,
            user_id,
            username: r.text(1)?,
            role: Role::parse(&r.text(2)?).unwrap_or(Role::Viewer),
            version: r.u64(3)? as Version,
        })
    })
    .collect()
}

fn member(tx: &dyn Conn, board: BoardId, user: UserId) -> StoreResult<Option<Member>> {
    Ok(members_of(tx, board)?.into_iter().find(|m| m.user_id == user))
}

fn owners(tx: &dyn Conn, board: BoardId) -> StoreResult<i64> {
    tx.query_one("SELECT COUNT(*) FROM members WHERE board_id = ?1 AND role = 'owner'", args![board])?.i64(0)
}

/// Adds or updates a membership and records it: on the board's stream, and — for a new member — the board in
/// their list.
fn put_member(tx: &dyn Conn, rec: &mut Recorder, board: BoardId, user: UserId, role: Role) -> StoreResult<Member> {
    let existed = role_of(tx, user, board)?.is_some();
    tx.execute(
        "INSERT INTO members (board_id, user_id, role, version) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (board_id, user_id) DO UPDATE SET role = excluded.role, version = members.version + 1",
        args![board, user, role.as_str()],
    )?;
    let member = member(tx, board, user)?.ok_or_else(|| StoreError::Internal(anyhow::anyhow!("member vanished")))?;
    record(tx, rec, StreamId::Board(board), ChangeOp::MemberUpserted { member: member.clone() })?;
    if !existed {
        let b = store::get_board(tx, board)?;
        record(tx, rec, user_stream(user), ChangeOp::BoardUpserted { board: b })?;
    }
    Ok(member)
}

/// The creator of a new board becomes its owner.
pub fn board_created(tx: &dyn Conn, rec: &mut Recorder, board: BoardId, creator: UserId) -> StoreResult<()> {
    put_member(tx, rec, board, creator, Role::Owner).map(|_| ())
}

/// A board's title changed: every member's list shows it.
pub fn board_renamed(tx: &dyn Conn, rec: &mut Recorder, board: &Board) -> StoreResult<()> {
    for m in members_of(tx, board.id)? {
        record(tx, rec, user_stream(m.user_id), ChangeOp::BoardUpserted { board: board.clone() })?;
    }
    Ok(())
}

/// A board is about to be deleted: it leaves every member's list. (Call before the delete, which removes the
/// memberships with the board.)
pub fn board_deleting(tx: &dyn Conn, rec: &mut Recorder, board: BoardId) -> StoreResult<()> {
    for m in members_of(tx, board)? {
        record(tx, rec, user_stream(m.user_id), ChangeOp::BoardDeleted { id: board })?;
    }
    Ok(())
}

pub fn add_member(tx: &dyn Conn, rec: &mut Recorder, board: BoardId, req: AddMember) -> StoreResult<Member> {
    let (user, _) = user_by_name(tx, &req.username)?.ok_or_else(|| StoreError::Refused {
        field: "username",
        message: format!("no user named {:?}", req.username),
    })?;
    if let Some(existing) = member(tx, board, user.id)? {
        return Err(StoreError::Refused {
            field: "username",
            message: format!("{} is already a member ({})", existing.username, existing.role.as_str()),
        });
    }
    put_member(tx, rec, board, user.id, req.role)
}

pub fn set_member_role(
    tx: &dyn Conn,
    rec: &mut Recorder,
    board: BoardId,
    user: UserId,
    req: SetRole,
) -> StoreResult<Member> {
    let current = member(tx, board, user)?.ok_or_else(|| StoreError::NotFound(format!("{user} is not a member")))?;
    if let Some(base) = req.base_version.filter(|&b| b != current.version) {
        return Err(StoreError::Conflict {
            message: format!("the membership is at version {}, the write was based on {base}", current.version),
            current: serde_json::json!(current),
        });
    }
    if current.role == Role::Owner && req.role != Role::Owner && owners(tx, board)? == 1 {
        return Err(StoreError::Refused {
            field: "role",
            message: "a board keeps at least one owner: make someone else owner first".into(),
        });
    }
    if current.role == req.role {
        return Ok(current);
    }
    put_member(tx, rec, board, user, req.role)
}

/// Removes a membership: the board's stream says so (the feed session cuts the member off there), and the
/// board leaves the user's list.
pub fn remove_member(tx: &dyn Conn, rec: &mut Recorder, board: BoardId, user: UserId) -> StoreResult<()> {
    let current = member(tx, board, user)?.ok_or_else(|| StoreError::NotFound(format!("{user} is not a member")))?;
    if current.role == Role::Owner && owners(tx, board)? == 1 {
        return Err(StoreError::Refused {
            field: "user_id",
            message: "a board keeps at least one owner: make someone else owner first".into(),
        });
    }
    tx.execute("DELETE FROM members WHERE board_id = ?1 AND user_id = ?2", args![board, user])?;
    record(tx, rec, StreamId::Board(board), ChangeOp::MemberRemoved { board_id: board, user_id: user })?;
    record(tx, rec, user_stream(user), ChangeOp::BoardDeleted { id: board })
}
