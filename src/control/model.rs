//! Users, teams, memberships, tokens, sessions, device authorizations and refresh tokens:
//! every read and write of the control plane's tables, written once against [`Db`] so both
//! backends run the same statements. Times are unix milliseconds passed in by the caller
//! (the API's injectable clock), never read here. Every state change that must not race
//! (consuming a device code, using a refresh token) is one conditional UPDATE whose row
//! count says who won, so two replicas cannot both succeed.

use secrecy::{ExposeSecret as _, SecretString};

use super::db::{Db, V};
use super::roles::Role;
use super::secrets::{self, Kind, ServerKey};
use crate::store::StoreError;

/// A short-lived access token's life.
pub const ACCESS_TTL_MS: i64 = 60 * 60 * 1000;
/// A refresh token's life (rotation issues a new one each time).
pub const REFRESH_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// A browser session ends after this long without a request (security page 4.2).
pub const SESSION_IDLE_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// A device authorization's life (RFC 8628 `expires_in`).
pub const DEVICE_TTL_MS: i64 = 15 * 60 * 1000;
/// The first polling interval (RFC 8628 3.2 default).
pub const DEVICE_INTERVAL_S: i64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Team {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Member {
    pub user: User,
    pub role: Role,
}

/// A bearer token's row (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: String,
    pub kind: String,
    pub team_id: String,
    pub user_id: String,
    pub name: String,
    pub role_cap: Role,
    #[serde(skip)]
    pub family: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub last_address: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub user_agent: String,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub id: String,
    pub client_id: String,
    pub scope: String,
    pub interval_seconds: i64,
    pub expires_at: i64,
    pub last_poll_at: Option<i64>,
    pub status: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
}

fn user_of(r: &[V]) -> User {
    User {
        id: r[0].text(),
        email: r[1].text(),
        display_name: r[2].text(),
    }
}

pub fn create_user(
    db: &mut impl Db,
    email: &str,
    name: &str,
    now: i64,
) -> Result<User, StoreError> {
    let email = email.trim().to_ascii_lowercase();
    if let Some(u) = user_by_email(db, &email)? {
        return Ok(u);
    }
    let id = secrets::new_id();
    db.exec(
        "INSERT INTO cp_users (id, email, display_name, created_at) VALUES ($1, $2, $3, $4)",
        &[V::from(&id), V::from(&email), V::from(name), V::I(now)],
    )?;
    Ok(User {
        id,
        email,
        display_name: name.to_owned(),
    })
}

pub fn user_by_email(db: &mut impl Db, email: &str) -> Result<Option<User>, StoreError> {
    Ok(db
        .row(
            "SELECT id, email, display_name FROM cp_users WHERE email = $1",
            &[V::from(email.trim().to_ascii_lowercase())],
        )?
        .map(|r| user_of(&r)))
}

pub fn user(db: &mut impl Db, id: &str) -> Result<Option<User>, StoreError> {
    Ok(db
        .row(
            "SELECT id, email, display_name FROM cp_users WHERE id = $1",
            &[V::from(id)],
        )?
        .map(|r| user_of(&r)))
}

/// Binds an identity-provider subject to a user (for the OIDC sign-in to come).
pub fn link_subject(
    db: &mut impl Db,
    provider: &str,
    subject: &str,
    user_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO cp_subjects (provider, subject, user_id, created_at) VALUES ($1, $2, $3, $4)",
        &[
            V::from(provider),
            V::from(subject),
            V::from(user_id),
            V::I(now),
        ],
    )
    .map(|_| ())
}

/// Team names: what `/teams/{team}` addresses.
pub fn valid_team_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

pub fn create_team(db: &mut impl Db, name: &str, now: i64) -> Result<Option<Team>, StoreError> {
    if team_by_name(db, name)?.is_some() {
        return Ok(None);
    }
    let id = secrets::new_id();
    db.exec(
        "INSERT INTO cp_teams (id, name, created_at) VALUES ($1, $2, $3)",
        &[V::from(&id), V::from(name), V::I(now)],
    )?;
    Ok(Some(Team {
        id,
        name: name.to_owned(),
    }))
}

pub fn team_by_name(db: &mut impl Db, name: &str) -> Result<Option<Team>, StoreError> {
    Ok(db
        .row(
            "SELECT id, name FROM cp_teams WHERE name = $1",
            &[V::from(name)],
        )?
        .map(|r| Team {
            id: r[0].text(),
            name: r[1].text(),
        }))
}

pub fn team(db: &mut impl Db, id: &str) -> Result<Option<Team>, StoreError> {
    Ok(db
        .row(
            "SELECT id, name FROM cp_teams WHERE id = $1",
            &[V::from(id)],
        )?
        .map(|r| Team {
            id: r[0].text(),
            name: r[1].text(),
        }))
}

/// Adds (or, if already a member, keeps) a membership; `false` if they were already in.
pub fn add_member(
    db: &mut impl Db,
    team_id: &str,
    user_id: &str,
    role: Role,
    now: i64,
) -> Result<bool, StoreError> {
    if role_in(db, team_id, user_id)?.is_some() {
        return Ok(false);
    }
    db.exec(
        "INSERT INTO cp_memberships (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        &[
            V::from(team_id),
            V::from(user_id),
            V::from(role.as_str()),
            V::I(now),
        ],
    )?;
    Ok(true)
}

pub fn role_in(db: &mut impl Db, team_id: &str, user_id: &str) -> Result<Option<Role>, StoreError> {
    Ok(db
        .row(
            "SELECT role FROM cp_memberships WHERE team_id = $1 AND user_id = $2",
            &[V::from(team_id), V::from(user_id)],
        )?
        .and_then(|r| Role::parse(&r[0].text())))
}

pub fn set_role(
    db: &mut impl Db,
    team_id: &str,
    user_id: &str,
    role: Role,
) -> Result<bool, StoreError> {
    Ok(db.exec(
        "UPDATE cp_memberships SET role = $3 WHERE team_id = $1 AND user_id = $2",
        &[V::from(team_id), V::from(user_id), V::from(role.as_str())],
    )? == 1)
}

pub fn remove_member(
    db: &mut impl Db,
    team_id: &str,
    user_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let gone = db.exec(
        "DELETE FROM cp_memberships WHERE team_id = $1 AND user_id = $2",
        &[V::from(team_id), V::from(user_id)],
    )? == 1;
    if gone {
        // Their tokens and CLI logins for this team stop working at once.
        db.exec(
            "UPDATE cp_tokens SET revoked_at = $3 WHERE team_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            &[V::from(team_id), V::from(user_id), V::I(now)],
        )?;
        db.exec(
            "UPDATE cp_refresh_tokens SET revoked_at = $3 WHERE team_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            &[V::from(team_id), V::from(user_id), V::I(now)],
        )?;
    }
    Ok(gone)
}

/// Locks the user's row until the transaction ends (a no-op UPDATE, as [`lock_team`]).
/// Taken by [`revoke_all`] and [`rotate_session`], so a rotation on one replica and a
/// "revoke all" on another run one after the other: a rotation never slips a new session
/// past a revoke-all (under READ COMMITTED the revoke-all's UPDATE, once it holds the
/// lock, sees the rotation's new row; a rotation that waited sees its old session ended
/// and makes none).
pub fn lock_user(db: &mut impl Db, user_id: &str) -> Result<(), StoreError> {
    db.exec(
        "UPDATE cp_users SET display_name = display_name WHERE id = $1",
        &[V::from(user_id)],
    )?;
    Ok(())
}

/// Ends the session `old` of `user_id` and starts a new one with the same user agent and
/// address; `None` (and nothing created) when `old` was already ended. Run it in a
/// transaction (the lock holds until its end).
pub fn rotate_session(
    db: &mut impl Db,
    key: &ServerKey,
    user_id: &str,
    old: &str,
    user_agent: &str,
    address: &str,
    now: i64,
) -> Result<Option<(SessionRow, SecretString)>, StoreError> {
    lock_user(db, user_id)?;
    if !revoke_session(db, user_id, old, now)? {
        return Ok(None);
    }
    create_session(db, key, user_id, user_agent, address, now).map(Some)
}

/// Locks the team's row until the transaction ends (a no-op UPDATE: the same statement on
/// both backends, where `FOR UPDATE` is PostgreSQL's alone). Taken before counting Owners,
/// so two concurrent demotions or removals of two Owners run one after the other and the
/// second sees the first's result: a team never ends with no Owner.
pub fn lock_team(db: &mut impl Db, team_id: &str) -> Result<(), StoreError> {
    db.exec(
        "UPDATE cp_teams SET name = name WHERE id = $1",
        &[V::from(team_id)],
    )?;
    Ok(())
}

pub fn owners(db: &mut impl Db, team_id: &str) -> Result<i64, StoreError> {
    Ok(db
        .row(
            "SELECT COUNT(*) FROM cp_memberships WHERE team_id = $1 AND role = 'owner'",
            &[V::from(team_id)],
        )?
        .map(|r| r[0].int())
        .unwrap_or(0))
}

/// Members ordered by user id, after the cursor's id.
pub fn members(
    db: &mut impl Db,
    team_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Member>, StoreError> {
    Ok(db
        .rows(
            "SELECT u.id, u.email, u.display_name, m.role FROM cp_memberships m
             JOIN cp_users u ON u.id = m.user_id
             WHERE m.team_id = $1 AND u.id > $2 ORDER BY u.id LIMIT $3",
            &[V::from(team_id), V::from(after), V::I(limit)],
        )?
        .iter()
        .map(|r| Member {
            user: user_of(r),
            role: Role::parse(&r[3].text()).unwrap_or(Role::Viewer),
        })
        .collect())
}

pub fn memberships_of(db: &mut impl Db, user_id: &str) -> Result<Vec<(Team, Role)>, StoreError> {
    Ok(db
        .rows(
            "SELECT t.id, t.name, m.role FROM cp_memberships m JOIN cp_teams t ON t.id = m.team_id
             WHERE m.user_id = $1 ORDER BY t.name",
            &[V::from(user_id)],
        )?
        .iter()
        .map(|r| {
            (
                Team {
                    id: r[0].text(),
                    name: r[1].text(),
                },
                Role::parse(&r[2].text()).unwrap_or(Role::Viewer),
            )
        })
        .collect())
}

const TOKEN_COLUMNS: &str = "id, kind, team_id, user_id, name, role_cap, family, created_at, \
     last_used_at, last_address, expires_at, revoked_at";

fn token_of(r: &[V]) -> TokenRow {
    TokenRow {
        id: r[0].text(),
        kind: r[1].text(),
        team_id: r[2].text(),
        user_id: r[3].text(),
        name: r[4].text(),
        role_cap: Role::parse(&r[5].text()).unwrap_or(Role::Viewer),
        family: r[6].t(),
        created_at: r[7].int(),
        last_used_at: r[8].i(),
        last_address: r[9].t(),
        expires_at: r[10].i(),
        revoked_at: r[11].i(),
    }
}

/// What a new token is for.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub kind: Kind,
    pub team_id: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub role_cap: Role,
    pub family: Option<&'a str>,
    pub expires_at: Option<i64>,
}

/// Stores a token's hash; the secret is returned once and kept nowhere.
pub fn create_token(
    db: &mut impl Db,
    key: &ServerKey,
    t: &NewToken<'_>,
    now: i64,
) -> Result<(TokenRow, SecretString), StoreError> {
    let secret = secrets::new_secret(t.kind);
    let id = secrets::new_id();
    let kind = if t.kind == Kind::Api { "api" } else { "access" };
    db.exec(
        "INSERT INTO cp_tokens (id, secret_hash, kind, team_id, user_id, name, role_cap, family,
            created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            V::from(&id),
            V::from(key.hash(t.kind.purpose(), secret.expose_secret())),
            V::from(kind),
            V::from(t.team_id),
            V::from(t.user_id),
            V::from(t.name),
            V::from(t.role_cap.as_str()),
            V::from(t.family),
            V::I(now),
            V::from(t.expires_at),
        ],
    )?;
    let row = token(db, &id)?.ok_or_else(|| StoreError::Corrupt {
        path: "cp_tokens".into(),
        what: "a token just written is missing".into(),
    })?;
    Ok((row, secret))
}

pub fn token(db: &mut impl Db, id: &str) -> Result<Option<TokenRow>, StoreError> {
    Ok(db
        .row(
            &format!("SELECT {TOKEN_COLUMNS} FROM cp_tokens WHERE id = $1"),
            &[V::from(id)],
        )?
        .map(|r| token_of(&r)))
}

/// The live token whose secret is `secret` (not revoked, not expired), recording its use.
pub fn use_token(
    db: &mut impl Db,
    key: &ServerKey,
    secret: &str,
    now: i64,
    address: &str,
) -> Result<Option<TokenRow>, StoreError> {
    let hash = key.hash("token", secret);
    let Some(r) = db.row(
        &format!("SELECT {TOKEN_COLUMNS}, secret_hash FROM cp_tokens WHERE secret_hash = $1"),
        &[V::from(&hash)],
    )?
    else {
        return Ok(None);
    };
    if !secrets::constant_time_eq(r[12].text().as_bytes(), hash.as_bytes()) {
        return Ok(None);
    }
    let t = token_of(&r);
    if t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= now) {
        return Ok(None);
    }
    db.exec(
        "UPDATE cp_tokens SET last_used_at = $2, last_address = $3 WHERE id = $1",
        &[V::from(&t.id), V::I(now), V::from(address)],
    )?;
    Ok(Some(t))
}

/// A user's long-lived API tokens (of `team_id` only, unless empty), by id after `after`.
pub fn tokens_of(
    db: &mut impl Db,
    user_id: &str,
    team_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<TokenRow>, StoreError> {
    Ok(db
        .rows(
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM cp_tokens WHERE user_id = $1 AND kind = 'api' AND id > $2
                   AND ($4 = '' OR team_id = $4)
                 ORDER BY id LIMIT $3"
            ),
            &[V::from(user_id), V::from(after), V::I(limit), V::from(team_id)],
        )?
        .iter()
        .map(|r| token_of(r))
        .collect())
}

pub fn revoke_token(db: &mut impl Db, id: &str, now: i64) -> Result<bool, StoreError> {
    Ok(db.exec(
        "UPDATE cp_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        &[V::from(id), V::I(now)],
    )? == 1)
}

const SESSION_COLUMNS: &str =
    "id, user_id, created_at, last_seen_at, revoked_at, user_agent, address";

fn session_of(r: &[V]) -> SessionRow {
    SessionRow {
        id: r[0].text(),
        user_id: r[1].text(),
        created_at: r[2].int(),
        last_seen_at: r[3].int(),
        expires_at: r[3].int() + SESSION_IDLE_MS,
        revoked_at: r[4].i(),
        user_agent: r[5].text(),
        address: r[6].text(),
    }
}

/// A new browser session (the sign-in to come creates these); the cookie value once.
pub fn create_session(
    db: &mut impl Db,
    key: &ServerKey,
    user_id: &str,
    user_agent: &str,
    address: &str,
    now: i64,
) -> Result<(SessionRow, SecretString), StoreError> {
    let secret = secrets::new_secret(Kind::Session);
    let id = secrets::new_id();
    let ua: String = user_agent.chars().take(200).collect();
    db.exec(
        "INSERT INTO cp_sessions (id, secret_hash, user_id, created_at, last_seen_at, user_agent, address)
         VALUES ($1, $2, $3, $4, $4, $5, $6)",
        &[
            V::from(&id),
            V::from(key.hash("session", secret.expose_secret())),
            V::from(user_id),
            V::I(now),
            V::from(ua),
            V::from(address),
        ],
    )?;
    let row = SessionRow {
        id,
        user_id: user_id.to_owned(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + SESSION_IDLE_MS,
        revoked_at: None,
        user_agent: user_agent.chars().take(200).collect(),
        address: address.to_owned(),
    };
    Ok((row, secret))
}

/// The live session of a cookie value (not revoked, used within 30 days), touched.
pub fn use_session(
    db: &mut impl Db,
    key: &ServerKey,
    secret: &str,
    now: i64,
) -> Result<Option<SessionRow>, StoreError> {
    let hash = key.hash("session", secret);
    let Some(r) = db.row(
        &format!("SELECT {SESSION_COLUMNS} FROM cp_sessions WHERE secret_hash = $1"),
        &[V::from(&hash)],
    )?
    else {
        return Ok(None);
    };
    let s = session_of(&r);
    if s.revoked_at.is_some() || s.expires_at <= now {
        return Ok(None);
    }
    // Touch at most once a minute: the idle clock needs no finer grain than that.
    if now - s.last_seen_at > 60_000 {
        db.exec(
            "UPDATE cp_sessions SET last_seen_at = $2 WHERE id = $1",
            &[V::from(&s.id), V::I(now)],
        )?;
    }
    Ok(Some(s))
}

/// A user's live sessions, by id after `after`.
pub fn sessions_of(
    db: &mut impl Db,
    user_id: &str,
    now: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<SessionRow>, StoreError> {
    let since = now - SESSION_IDLE_MS;
    Ok(db
        .rows(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM cp_sessions WHERE user_id = $1 AND revoked_at IS NULL
                 AND last_seen_at > $2 AND id > $3 ORDER BY id LIMIT $4"
            ),
            &[V::from(user_id), V::I(since), V::from(after), V::I(limit)],
        )?
        .iter()
        .map(|r| session_of(r))
        .collect())
}

/// Revokes one of `user_id`'s sessions; `false` if there is no such live session of theirs.
pub fn revoke_session(
    db: &mut impl Db,
    user_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    Ok(db.exec(
        "UPDATE cp_sessions SET revoked_at = $3 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        &[V::from(id), V::from(user_id), V::I(now)],
    )? == 1)
}

/// Every session and every CLI login (device grants: refresh and access tokens) of a
/// user, at once. Long-lived API tokens stay: they are managed on their own.
pub fn revoke_all(db: &mut impl Db, user_id: &str, now: i64) -> Result<u64, StoreError> {
    lock_user(db, user_id)?;
    let mut n = db.exec(
        "UPDATE cp_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        &[V::from(user_id), V::I(now)],
    )?;
    n += db.exec(
        "UPDATE cp_refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        &[V::from(user_id), V::I(now)],
    )?;
    db.exec(
        "UPDATE cp_tokens SET revoked_at = $2 WHERE user_id = $1 AND kind = 'access' AND revoked_at IS NULL",
        &[V::from(user_id), V::I(now)],
    )?;
    Ok(n)
}

/// A new device authorization: (device_code, user_code `XXXX-XXXX`), handed out once.
pub fn create_device(
    db: &mut impl Db,
    key: &ServerKey,
    client_id: &str,
    scope: &str,
    now: i64,
) -> Result<(SecretString, SecretString), StoreError> {
    let device = secrets::new_secret(Kind::DeviceCode);
    // A user-code collision with a live authorization is astronomically rare but would be
    // a UNIQUE violation; expired rows are cleared first so old codes do not pile up.
    db.exec(
        "DELETE FROM cp_device_codes WHERE expires_at < $1",
        &[V::I(now - DEVICE_TTL_MS)],
    )?;
    let user_code = secrets::new_user_code();
    let normal = secrets::parse_user_code(&user_code).unwrap_or_default();
    db.exec(
        "INSERT INTO cp_device_codes (id, device_code_hash, user_code_hash, client_id, scope,
            interval_seconds, created_at, expires_at, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending')",
        &[
            V::from(secrets::new_id()),
            V::from(key.hash("device_code", device.expose_secret())),
            V::from(key.hash("user_code", &normal)),
            V::from(client_id),
            V::from(scope),
            V::I(DEVICE_INTERVAL_S),
            V::I(now),
            V::I(now + DEVICE_TTL_MS),
        ],
    )?;
    Ok((device, SecretString::from(user_code)))
}

const DEVICE_COLUMNS: &str = "id, client_id, scope, interval_seconds, expires_at, last_poll_at, \
     status, user_id, team_id";

fn device_of(r: &[V]) -> DeviceRow {
    DeviceRow {
        id: r[0].text(),
        client_id: r[1].text(),
        scope: r[2].text(),
        interval_seconds: r[3].int(),
        expires_at: r[4].int(),
        last_poll_at: r[5].i(),
        status: r[6].text(),
        user_id: r[7].t(),
        team_id: r[8].t(),
    }
}

pub fn device_by_code(
    db: &mut impl Db,
    key: &ServerKey,
    device_code: &str,
) -> Result<Option<DeviceRow>, StoreError> {
    Ok(db
        .row(
            &format!("SELECT {DEVICE_COLUMNS} FROM cp_device_codes WHERE device_code_hash = $1"),
            &[V::from(key.hash("device_code", device_code))],
        )?
        .map(|r| device_of(&r)))
}

pub fn device_by_user_code(
    db: &mut impl Db,
    key: &ServerKey,
    normal: &str,
) -> Result<Option<DeviceRow>, StoreError> {
    Ok(db
        .row(
            &format!("SELECT {DEVICE_COLUMNS} FROM cp_device_codes WHERE user_code_hash = $1"),
            &[V::from(key.hash("user_code", normal))],
        )?
        .map(|r| device_of(&r)))
}

/// Records a poll; the new interval when it was too early (RFC 8628 3.5: +5 s).
pub fn device_polled(db: &mut impl Db, d: &DeviceRow, now: i64) -> Result<Option<i64>, StoreError> {
    let early = d
        .last_poll_at
        .is_some_and(|last| now - last < d.interval_seconds * 1000);
    let interval = if early {
        d.interval_seconds + 5
    } else {
        d.interval_seconds
    };
    db.exec(
        "UPDATE cp_device_codes SET last_poll_at = $2, interval_seconds = $3 WHERE id = $1",
        &[V::from(&d.id), V::I(now), V::I(interval)],
    )?;
    Ok(early.then_some(interval))
}

/// Approve or deny a pending authorization; `false` if it is no longer pending.
pub fn device_decide(
    db: &mut impl Db,
    id: &str,
    approve: bool,
    user_id: &str,
    team_id: &str,
) -> Result<bool, StoreError> {
    let status = if approve { "approved" } else { "denied" };
    Ok(db.exec(
        "UPDATE cp_device_codes SET status = $2, user_id = $3, team_id = $4
         WHERE id = $1 AND status = 'pending'",
        &[
            V::from(id),
            V::from(status),
            V::from(user_id),
            V::from(team_id),
        ],
    )? == 1)
}

/// Consume an approved authorization (once: a second poll finds it consumed).
pub fn device_consume(db: &mut impl Db, id: &str) -> Result<bool, StoreError> {
    Ok(db.exec(
        "UPDATE cp_device_codes SET status = 'consumed' WHERE id = $1 AND status = 'approved'",
        &[V::from(id)],
    )? == 1)
}

/// A grant's tokens: an access token and a refresh token in `family`.
#[derive(Debug)]
pub struct Grant {
    pub access: SecretString,
    pub refresh: SecretString,
    pub expires_in: i64,
}

/// Issues an access token and a refresh token for `family`, capped at the user's role.
pub fn issue_grant(
    db: &mut impl Db,
    key: &ServerKey,
    family: &str,
    user_id: &str,
    team_id: &str,
    client: &str,
    now: i64,
) -> Result<Grant, StoreError> {
    let role = role_in(db, team_id, user_id)?.unwrap_or(Role::Viewer);
    let (_, access) = create_token(
        db,
        key,
        &NewToken {
            kind: Kind::Access,
            team_id,
            user_id,
            name: client,
            role_cap: role,
            family: Some(family),
            expires_at: Some(now + ACCESS_TTL_MS),
        },
        now,
    )?;
    let refresh = secrets::new_secret(Kind::Refresh);
    db.exec(
        "INSERT INTO cp_refresh_tokens (secret_hash, family, user_id, team_id, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            V::from(key.hash("refresh", refresh.expose_secret())),
            V::from(family),
            V::from(user_id),
            V::from(team_id),
            V::I(now),
            V::I(now + REFRESH_TTL_MS),
        ],
    )?;
    Ok(Grant {
        access,
        refresh,
        expires_in: ACCESS_TTL_MS / 1000,
    })
}

/// What presenting a refresh token did.
#[derive(Debug)]
pub enum Refreshed {
    /// Rotated: new tokens; the presented one is used up.
    New(Grant),
    /// Unknown, expired or revoked.
    Invalid,
    /// Used before: the whole family is now revoked (a stolen token was replayed, or the
    /// legitimate client's copy was; either way nobody keeps the grant).
    Reused,
}

pub fn refresh(
    db: &mut impl Db,
    key: &ServerKey,
    secret: &str,
    now: i64,
) -> Result<Refreshed, StoreError> {
    let hash = key.hash("refresh", secret);
    let Some(r) = db.row(
        "SELECT family, user_id, team_id, expires_at, used_at, revoked_at FROM cp_refresh_tokens
         WHERE secret_hash = $1",
        &[V::from(&hash)],
    )?
    else {
        return Ok(Refreshed::Invalid);
    };
    let (family, user_id, team_id) = (r[0].text(), r[1].text(), r[2].text());
    if r[5].i().is_some() || r[3].int() <= now {
        return Ok(Refreshed::Invalid);
    }
    let won = r[4].i().is_none()
        && db.exec(
            "UPDATE cp_refresh_tokens SET used_at = $2 WHERE secret_hash = $1 AND used_at IS NULL",
            &[V::from(&hash), V::I(now)],
        )? == 1;
    if !won {
        revoke_family(db, &family, now)?;
        return Ok(Refreshed::Reused);
    }
    if role_in(db, &team_id, &user_id)?.is_none() {
        revoke_family(db, &family, now)?;
        return Ok(Refreshed::Invalid);
    }
    Ok(Refreshed::New(issue_grant(
        db,
        key,
        &family,
        &user_id,
        &team_id,
        "telbase-cli",
        now,
    )?))
}

/// [`refresh`] in one store transaction (see the token endpoint for why it must be one).
pub fn refresh_once(
    store: &mut crate::store::Store,
    key: &ServerKey,
    secret: &str,
    now: i64,
) -> Result<Refreshed, StoreError> {
    use crate::store::tx::TxError;
    store
        .transaction(|tx| refresh(tx, key, secret, now).map_err(TxError::<()>::Store))
        .map_err(|e| match e {
            TxError::Store(e) => e,
            TxError::Abort(()) => StoreError::Corrupt {
                path: "cp_refresh_tokens".into(),
                what: "a refresh was abandoned".into(),
            },
        })
}

/// Revokes every refresh and access token of a device grant.
pub fn revoke_family(db: &mut impl Db, family: &str, now: i64) -> Result<(), StoreError> {
    db.exec(
        "UPDATE cp_refresh_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
        &[V::from(family), V::I(now)],
    )?;
    db.exec(
        "UPDATE cp_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
        &[V::from(family), V::I(now)],
    )?;
    Ok(())
}

/// The family of a refresh token (for RFC 7009 revocation), if it is one.
pub fn refresh_family(
    db: &mut impl Db,
    key: &ServerKey,
    secret: &str,
) -> Result<Option<String>, StoreError> {
    Ok(db
        .row(
            "SELECT family FROM cp_refresh_tokens WHERE secret_hash = $1",
            &[V::from(key.hash("refresh", secret))],
        )?
        .map(|r| r[0].text()))
}

/// The row of an access or API token by its secret, live or not (for revocation).
pub fn token_by_secret(
    db: &mut impl Db,
    key: &ServerKey,
    secret: &str,
) -> Result<Option<TokenRow>, StoreError> {
    Ok(db
        .row(
            &format!("SELECT {TOKEN_COLUMNS} FROM cp_tokens WHERE secret_hash = $1"),
            &[V::from(key.hash("token", secret))],
        )?
        .map(|r| token_of(&r)))
}

/// Failures of `key` in the current window (a fixed window of `window_ms`).
pub fn failures(
    db: &mut impl Db,
    key: &str,
    now: i64,
    window_ms: i64,
) -> Result<(i64, i64), StoreError> {
    Ok(db
        .row(
            "SELECT count, window_start FROM cp_failures WHERE key = $1",
            &[V::from(key)],
        )?
        .filter(|r| r[1].int() + window_ms > now)
        .map(|r| (r[0].int(), r[1].int() + window_ms))
        .unwrap_or((0, now + window_ms)))
}

/// Counts one failure of `key`: one statement, so replicas counting at once neither lose a
/// count nor collide on the key.
pub fn record_failure(
    db: &mut impl Db,
    key: &str,
    now: i64,
    window_ms: i64,
) -> Result<(), StoreError> {
    db.exec(
        "INSERT INTO cp_failures (key, window_start, count) VALUES ($1, $2, 1)
         ON CONFLICT (key) DO UPDATE SET
           count = CASE WHEN cp_failures.window_start > $3 THEN cp_failures.count + 1 ELSE 1 END,
           window_start = CASE WHEN cp_failures.window_start > $3 THEN cp_failures.window_start ELSE $2 END",
        &[V::from(key), V::I(now), V::I(now - window_ms)],
    )?;
    Ok(())
}

/// A live CLI login (one device grant), for the list the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LoginRow {
    /// The grant's id (its refresh-token family).
    pub id: String,
    pub team: String,
    /// When the login was approved (unix ms).
    pub created_at: i64,
    /// When its tokens were last refreshed (unix ms).
    pub refreshed_at: i64,
}

/// A user's live CLI logins, by id after `after`.
pub fn logins_of(
    db: &mut impl Db,
    user_id: &str,
    now: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<LoginRow>, StoreError> {
    Ok(db
        .rows(
            "SELECT r.family, t.name, r.created_at,
                    (SELECT MIN(x.created_at) FROM cp_refresh_tokens x WHERE x.family = r.family)
             FROM cp_refresh_tokens r JOIN cp_teams t ON t.id = r.team_id
             WHERE r.user_id = $1 AND r.used_at IS NULL AND r.revoked_at IS NULL
               AND r.expires_at > $2 AND r.family > $3
             ORDER BY r.family LIMIT $4",
            &[V::from(user_id), V::I(now), V::from(after), V::I(limit)],
        )?
        .iter()
        .map(|r| LoginRow {
            id: r[0].text(),
            team: r[1].text(),
            refreshed_at: r[2].int(),
            created_at: r[3].i().unwrap_or_else(|| r[2].int()),
        })
        .collect())
}

/// Revokes one of `user_id`'s CLI logins; `false` if it is not theirs (or not live).
pub fn revoke_login(
    db: &mut impl Db,
    user_id: &str,
    id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let theirs = db
        .row(
            "SELECT 1 FROM cp_refresh_tokens WHERE family = $1 AND user_id = $2 AND revoked_at IS NULL LIMIT 1",
            &[V::from(id), V::from(user_id)],
        )?
        .is_some();
    if theirs {
        revoke_family(db, id, now)?;
    }
    Ok(theirs)
}
