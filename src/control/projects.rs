//! Projects, and every read the control plane makes of what a project sees: its row in
//! `cp_projects`, the run records of its repository (`runs`), and its team's share of the
//! security log (`audit_records`). Written once against [`Db`], like [`super::model`], so
//! both backends run the same statements; times are unix milliseconds from the caller.
//!
//! A project belongs to exactly one team. It is a repository (`owner/name`, what `runs` and
//! `repositories` key by) plus the `project:` of its telbase.yaml (what stored env vars key
//! by: `secret_names(project, environment, name)`) and the config's path. Neither runs nor
//! stored values carry a team, so the table makes both unique across the whole server: a
//! repository and a project name are registered to one team at a time, or one team would
//! read another's plans or env var names. Repositories are kept lower-case (GitHub's names
//! are case-insensitive; `Acme/Web` and `acme/web` are one repository) and matched against
//! runs case-insensitively, through an index migration [`MIGRATION`] adds for it.

use super::db::{Db, V};
use super::secrets;
use crate::store::StoreError;
use crate::store::runs::RunRecord;

/// Migration 9 (the same text on SQLite and PostgreSQL).
pub const MIGRATION: &str = "
    -- A project: one team's claim on a repository and a config's `project:` name. Both are
    -- unique server-wide because runs (by repository) and stored env vars (by project name)
    -- carry no team. `repo` is lower-case; `config_path` is relative to the repository.
    CREATE TABLE cp_projects (
        id          TEXT PRIMARY KEY,
        team_id     TEXT NOT NULL REFERENCES cp_teams(id) ON DELETE CASCADE,
        name        TEXT NOT NULL UNIQUE,
        repo        TEXT NOT NULL UNIQUE,
        config_path TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        created_by  TEXT NOT NULL
    );
    CREATE INDEX cp_projects_team ON cp_projects(team_id, name);
    -- Runs are recorded with the repository as GitHub spelled it; projects find theirs by
    -- its lower-case form.
    CREATE INDEX cp_runs_by_lower_repo ON runs(lower(repo), started_at);
";

/// Migration 11: which repositories a team may register as projects. An operator grants
/// them (`telbase team repos add`), because a team's own word is not proof that the
/// repository is theirs: runs are found by repository and stored env vars by project name,
/// so a claim on someone else's repository would read their plans and write the values their
/// deploys receive. A pattern is `owner/name` or `owner/*`, lower-case, and belongs to one
/// team (the primary key; overlaps between teams are refused when granted).
pub const REPOS_MIGRATION: &str = "
    CREATE TABLE cp_team_repos (
        pattern    TEXT PRIMARY KEY,
        team_id    TEXT NOT NULL REFERENCES cp_teams(id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX cp_team_repos_team ON cp_team_repos(team_id, pattern);
";

/// A grant pattern: `owner/name` or `owner/*` (see [`REPOS_MIGRATION`]), lower-cased.
pub fn parse_repo_pattern(pattern: &str) -> Option<String> {
    let p = pattern.trim().to_ascii_lowercase();
    match p.strip_suffix("/*") {
        Some(owner) => valid_repo(&format!("{owner}/x")).then_some(p),
        None => valid_repo(&p).then_some(p),
    }
}

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRefused {
    /// Another team holds this pattern or one overlapping it.
    Overlaps(String),
}

/// Grants `pattern` (already parsed) to the team; `Ok(Err)` when another team holds an
/// overlapping one (`owner/*` overlaps every `owner/x`). Granting what the team has is a
/// no-op.
pub fn grant_repos(
    db: &mut impl Db,
    team_id: &str,
    pattern: &str,
    now: i64,
) -> Result<Result<(), GrantRefused>, StoreError> {
    let owner = pattern.split('/').next().unwrap_or_default();
    let wildcard = format!("{owner}/*");
    let mut others = db.rows(
        "SELECT pattern FROM cp_team_repos WHERE team_id <> $1 AND (pattern = $2 OR pattern = $3)",
        &[V::from(team_id), V::from(pattern), V::from(&wildcard)],
    )?;
    if pattern == wildcard {
        others.extend(db.rows(
            "SELECT pattern FROM cp_team_repos WHERE team_id <> $1 AND pattern LIKE $2 ESCAPE '\\'",
            &[
                V::from(team_id),
                V::from(format!("{}/%", like_escape(owner))),
            ],
        )?);
    }
    if let Some(r) = others.first() {
        return Ok(Err(GrantRefused::Overlaps(r[0].text())));
    }
    db.exec(
        "INSERT INTO cp_team_repos (pattern, team_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[V::from(pattern), V::from(team_id), V::I(now)],
    )?;
    // Read back: a concurrent grant of the same pattern to another team wins the insert,
    // and this one must then say so rather than report a grant it does not hold.
    let holder = db.row(
        "SELECT team_id FROM cp_team_repos WHERE pattern = $1",
        &[V::from(pattern)],
    )?;
    match holder {
        Some(r) if r[0].text() == team_id => Ok(Ok(())),
        _ => Ok(Err(GrantRefused::Overlaps(pattern.to_owned()))),
    }
}

/// Revokes a grant; `false` if the team did not hold it. Projects already registered stay.
pub fn revoke_repos(db: &mut impl Db, team_id: &str, pattern: &str) -> Result<bool, StoreError> {
    Ok(db.exec(
        "DELETE FROM cp_team_repos WHERE team_id = $1 AND pattern = $2",
        &[V::from(team_id), V::from(pattern)],
    )? == 1)
}

/// The team's grants, sorted.
pub fn granted_repos(db: &mut impl Db, team_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(db
        .rows(
            "SELECT pattern FROM cp_team_repos WHERE team_id = $1 ORDER BY pattern",
            &[V::from(team_id)],
        )?
        .iter()
        .map(|r| r[0].text())
        .collect())
}

/// Whether the team was granted `repo` (exactly or by its owner's `owner/*`).
pub fn repo_granted(db: &mut impl Db, team_id: &str, repo: &str) -> Result<bool, StoreError> {
    let repo = repo.to_ascii_lowercase();
    let owner = repo.split('/').next().unwrap_or_default();
    Ok(db
        .row(
            "SELECT 1 FROM cp_team_repos WHERE team_id = $1 AND (pattern = $2 OR pattern = $3)",
            &[
                V::from(team_id),
                V::from(&repo),
                V::from(format!("{owner}/*")),
            ],
        )?
        .is_some())
}

/// The repository the project `name` is registered for, by any team; `None` if no project
/// has that name.
pub fn registered_repo(db: &mut impl Db, name: &str) -> Result<Option<String>, StoreError> {
    Ok(registration(db, name)?.map(|r| r.repo))
}

/// Who holds a project name: its repository, and whether the team that registered it still
/// holds a grant covering that repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub repo: String,
    pub granted: bool,
}

/// The registration of the project `name`, by any team; `None` if no project has that
/// name. The worker asks before handing stored values of `name` to a repository.
pub fn registration(db: &mut impl Db, name: &str) -> Result<Option<Registration>, StoreError> {
    let Some(row) = db.row(
        "SELECT repo, team_id FROM cp_projects WHERE name = $1",
        &[V::from(name)],
    )?
    else {
        return Ok(None);
    };
    let (repo, team_id) = (row[0].text(), row[1].text());
    let granted = repo_granted(db, &team_id, &repo)?;
    Ok(Some(Registration { repo, granted }))
}

/// The config path of the project registered for `repo` (by any team); `None` when no
/// project holds the repository. One repository is one project, so there is at most one.
pub fn registered_config_path(db: &mut impl Db, repo: &str) -> Result<Option<String>, StoreError> {
    Ok(db
        .row(
            "SELECT config_path FROM cp_projects WHERE repo = $1",
            &[V::from(repo.to_ascii_lowercase())],
        )?
        .map(|r| r[0].text()))
}

/// Whether any stored env var value is kept under the project name `name`.
pub fn has_stored_values(db: &mut impl Db, name: &str) -> Result<bool, StoreError> {
    Ok(db
        .row(
            "SELECT 1 FROM secret_values v JOIN secret_names n ON n.id = v.name_id
             WHERE n.project = $1 LIMIT 1",
            &[V::from(name)],
        )?
        .is_some())
}

/// `LIKE` pattern text with its wildcards taken literally (owners may contain `_`).
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// The config path when none is given: what the GitHub App and `serve --watch` read.
pub const DEFAULT_CONFIG_PATH: &str = "telbase.yaml";

/// One project, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Project {
    pub id: String,
    /// The `project:` of its telbase.yaml (stored env vars are kept under it).
    pub name: String,
    /// `owner/name`, lower-case.
    pub repo: String,
    /// The config file inside the repository.
    pub config_path: String,
    #[serde(skip)]
    pub team_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// The user who created it.
    pub created_by: String,
}

const PROJECT_COLUMNS: &str = "id, team_id, name, repo, config_path, created_at, created_by";

fn project_of(r: &[V]) -> Project {
    Project {
        id: r[0].text(),
        team_id: r[1].text(),
        name: r[2].text(),
        repo: r[3].text(),
        config_path: r[4].text(),
        created_at: r[5].int(),
        created_by: r[6].text(),
    }
}

/// The same rule as telbase.yaml's `project:` (`config::file::PROJECT_PATTERN`): 2 to 40
/// lowercase letters, digits and dashes, starting with a letter, not ending with a dash.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=40).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// A GitHub repository's full name: `owner/name`, each 1 to 100 letters, digits, `-`, `_`,
/// `.`, and not `.` or `..` (which GitHub does not allow either).
pub fn valid_repo(repo: &str) -> bool {
    let mut parts = repo.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 100
                && p != "."
                && p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// A config path inside a repository: relative, `/`-separated segments of letters, digits,
/// `-`, `_`, `.`, no `.` or `..` segment, at most 256 bytes, ending `.yaml` or `.yml`.
pub fn valid_config_path(path: &str) -> bool {
    path.len() <= 256
        && (path.ends_with(".yaml") || path.ends_with(".yml"))
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

/// What a new project is.
#[derive(Debug, Clone)]
pub struct NewProject<'a> {
    pub team_id: &'a str,
    pub name: &'a str,
    pub repo: &'a str,
    pub config_path: &'a str,
    pub created_by: &'a str,
}

/// Creates a project; `None` when its name or repository is already registered (to any
/// team). One statement, so two concurrent creations cannot both win: the unique
/// constraints decide.
pub fn create(
    db: &mut impl Db,
    p: &NewProject<'_>,
    now: i64,
) -> Result<Option<Project>, StoreError> {
    let id = secrets::new_id();
    let repo = p.repo.to_ascii_lowercase();
    let n = db.exec(
        "INSERT INTO cp_projects (id, team_id, name, repo, config_path, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        &[
            V::from(&id),
            V::from(p.team_id),
            V::from(p.name),
            V::from(&repo),
            V::from(p.config_path),
            V::I(now),
            V::from(p.created_by),
        ],
    )?;
    Ok((n == 1).then(|| Project {
        id,
        team_id: p.team_id.to_owned(),
        name: p.name.to_owned(),
        repo,
        config_path: p.config_path.to_owned(),
        created_at: now,
        created_by: p.created_by.to_owned(),
    }))
}

/// The team's project of that name; another team's is `None`, exactly like a missing one.
pub fn by_name(db: &mut impl Db, team_id: &str, name: &str) -> Result<Option<Project>, StoreError> {
    Ok(db
        .row(
            &format!("SELECT {PROJECT_COLUMNS} FROM cp_projects WHERE team_id = $1 AND name = $2"),
            &[V::from(team_id), V::from(name)],
        )?
        .map(|r| project_of(&r)))
}

/// The team's projects by name, after `after`.
pub fn list(
    db: &mut impl Db,
    team_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Project>, StoreError> {
    Ok(db
        .rows(
            &format!(
                "SELECT {PROJECT_COLUMNS} FROM cp_projects WHERE team_id = $1 AND name > $2
                 ORDER BY name LIMIT $3"
            ),
            &[V::from(team_id), V::from(after), V::I(limit)],
        )?
        .iter()
        .map(|r| project_of(r))
        .collect())
}

/// Deletes the team's project; `false` if it has none of that name.
pub fn delete(db: &mut impl Db, team_id: &str, name: &str) -> Result<bool, StoreError> {
    Ok(db.exec(
        "DELETE FROM cp_projects WHERE team_id = $1 AND name = $2",
        &[V::from(team_id), V::from(name)],
    )? == 1)
}

// ---- runs of a project's repository ----

const RUN_COLUMNS: &str = "id, repo, environment, pull_request, sha, branch, trigger_kind, mode, \
     job_id, started_at, ended_at, outcome, summary, plan, report, preview_ttl_seconds";

fn run_of(r: &[V]) -> RunRecord {
    RunRecord {
        id: r[0].text(),
        repo: r[1].text(),
        environment: r[2].text(),
        pull_request: r[3].i().map(|n| n.max(0) as u64),
        sha: r[4].text(),
        branch: r[5].text(),
        trigger: r[6].text(),
        mode: r[7].text(),
        job_id: r[8].i(),
        started_at: r[9].int(),
        ended_at: r[10].i(),
        outcome: r[11].text(),
        summary: r[12].text(),
        plan: r[13].text(),
        report: r[14].text(),
        preview_ttl_seconds: r[15].i().map(|n| n.max(0) as u64),
    }
}

/// Which runs a page shows. Empty strings mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// `production` or `preview-N`.
    pub environment: String,
    /// running, success, failure or error.
    pub outcome: String,
    /// Started at or after (unix ms).
    pub since: Option<i64>,
    /// Started before (unix ms).
    pub until: Option<i64>,
    /// Continue after this run: (started_at, id) of the last one shown.
    pub after: Option<(i64, String)>,
}

/// The runs of `repo` (any case), newest first (by start, then id), filtered, after the
/// cursor. Keyset pagination: runs that start later never shift a page that follows.
pub fn runs(
    db: &mut impl Db,
    repo: &str,
    claimed_at: i64,
    q: &RunQuery,
    limit: i64,
) -> Result<Vec<RunRecord>, StoreError> {
    let (after_at, after_id) = q.after.clone().unwrap_or((i64::MAX, String::new()));
    Ok(db
        .rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE lower(repo) = $1
                   AND ($2 = '' OR environment = $2)
                   AND ($3 = '' OR outcome = $3)
                   AND started_at >= $4 AND started_at < $5
                   AND (started_at < $6 OR (started_at = $6 AND id < $7))
                 ORDER BY started_at DESC, id DESC LIMIT $8"
            ),
            &[
                V::from(repo.to_ascii_lowercase()),
                V::from(q.environment.as_str()),
                V::from(q.outcome.as_str()),
                // Never before the project's claim: runs of the repository before this team
                // registered it (another team's, or nobody's) are not this team's history.
                V::I(q.since.unwrap_or(i64::MIN).max(claimed_at)),
                V::I(q.until.unwrap_or(i64::MAX)),
                V::I(after_at),
                V::from(if q.after.is_some() {
                    after_id
                } else {
                    // No cursor: every id sorts before this one, so the started_at < MAX
                    // arm alone decides (and a run at i64::MAX is not a real time).
                    "~".to_owned()
                }),
                V::I(limit),
            ],
        )?
        .iter()
        .map(|r| run_of(r))
        .collect())
}

/// One run of `repo`; a run of another repository is `None`, like a missing one.
pub fn run(
    db: &mut impl Db,
    repo: &str,
    claimed_at: i64,
    id: &str,
) -> Result<Option<RunRecord>, StoreError> {
    Ok(db
        .row(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND lower(repo) = $2 AND started_at >= $3"
            ),
            &[
                V::from(id),
                V::from(repo.to_ascii_lowercase()),
                V::I(claimed_at),
            ],
        )?
        .map(|r| run_of(&r)))
}

/// The newest run of each environment of `repo` (production and every preview seen), by
/// environment name.
pub fn latest_per_environment(
    db: &mut impl Db,
    repo: &str,
    claimed_at: i64,
) -> Result<Vec<RunRecord>, StoreError> {
    Ok(db
        .rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs r
                 WHERE lower(r.repo) = $1 AND r.started_at >= $2
                   AND r.id = (SELECT x.id FROM runs x
                               WHERE lower(x.repo) = $1 AND x.environment = r.environment
                                 AND x.started_at >= $2
                               ORDER BY x.started_at DESC, x.id DESC LIMIT 1)
                 ORDER BY r.environment"
            ),
            &[V::from(repo.to_ascii_lowercase()), V::I(claimed_at)],
        )?
        .iter()
        .map(|r| run_of(r))
        .collect())
}

/// The newest run of one environment of `repo` whose per-resource report names a URL (a
/// resource's URL is reported by the run that created or changed it).
pub fn latest_with_urls(
    db: &mut impl Db,
    repo: &str,
    claimed_at: i64,
    environment: &str,
) -> Result<Option<RunRecord>, StoreError> {
    Ok(db
        .row(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs
                 WHERE lower(repo) = $1 AND environment = $2 AND report LIKE '%\"url\"%'
                   AND started_at >= $3
                 ORDER BY started_at DESC, id DESC LIMIT 1"
            ),
            &[
                V::from(repo.to_ascii_lowercase()),
                V::from(environment),
                V::I(claimed_at),
            ],
        )?
        .map(|r| run_of(&r)))
}

// ---- the team's share of the security log ----

/// One security-log record as stored (the chain's MACs aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at_ms: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub actor_display: String,
    pub action: String,
    pub source: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub details: String,
    pub mac: String,
}

/// Which records a page shows. Empty strings mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// At or after (unix ms).
    pub since: Option<i64>,
    /// Before (unix ms).
    pub until: Option<i64>,
    /// The actor's id or display name, exactly.
    pub actor: String,
    /// An action exactly.
    pub action: String,
    /// An action prefix ending in `.` (`config.`).
    pub action_prefix: String,
    /// Only records before this sequence number (the cursor).
    pub before_seq: Option<i64>,
}

/// The prefix of the target ids of a team's projects and env vars (see
/// `super::resources::project_target`).
pub fn team_target_prefix(team_id: &str) -> String {
    format!("{team_id}/")
}

/// The records that belong to team (`team_id`, `team_name`), newest first (see
/// docs/control-plane.md, "The audit log of a team"):
/// - about its projects, env vars and memberships: the target id starts with `TEAM_ID/`;
/// - about its API tokens: the target is a token of the team;
/// - device logins approved into it: the target is the team's name;
/// - account security (`access.session_*`, `access.login_*`) done by someone who is a
///   member now.
pub fn team_audit(
    db: &mut impl Db,
    team_id: &str,
    team_name: &str,
    q: &AuditQuery,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
    Ok(db
        .rows(
            "SELECT seq, at_ms, actor_kind, actor_id, actor_display, action, source, target_type,
                    target_id, outcome, details, mac
             FROM audit_records
             WHERE (substr(target_id, 1, length($1)) = $1
                    OR (target_type = 'token'
                        AND target_id IN (SELECT id FROM cp_tokens WHERE team_id = $2))
                    OR (target_type = 'device_login' AND target_id = $3)
                    OR ((substr(action, 1, 15) = 'access.session_'
                         OR substr(action, 1, 13) = 'access.login_')
                        AND actor_id IN (SELECT user_id FROM cp_memberships WHERE team_id = $2)))
               AND at_ms >= $4 AND at_ms < $5
               AND ($6 = '' OR actor_id = $6 OR actor_display = $6)
               AND ($7 = '' OR action = $7)
               AND ($8 = '' OR substr(action, 1, length($8)) = $8)
               AND seq < $9
             ORDER BY seq DESC LIMIT $10",
            &[
                V::from(team_target_prefix(team_id)),
                V::from(team_id),
                V::from(team_name),
                V::I(q.since.unwrap_or(i64::MIN)),
                V::I(q.until.unwrap_or(i64::MAX)),
                V::from(q.actor.as_str()),
                V::from(q.action.as_str()),
                V::from(q.action_prefix.as_str()),
                V::I(q.before_seq.unwrap_or(i64::MAX)),
                V::I(limit),
            ],
        )?
        .iter()
        .map(|r| AuditRow {
            seq: r[0].int(),
            at_ms: r[1].int(),
            actor_kind: r[2].text(),
            actor_id: r[3].text(),
            actor_display: r[4].text(),
            action: r[5].text(),
            source: r[6].t(),
            target_type: r[7].t(),
            target_id: r[8].t(),
            outcome: r[9].text(),
            details: r[10].text(),
            mac: r[11].text(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_the_config_rule() {
        let re = regex::Regex::new(crate::config::file::PROJECT_PATTERN).unwrap();
        for n in [
            "web", "a1", "a-b", "ab-", "-ab", "A", "a", "9a", "ab_c", "a--b", "", "x",
        ] {
            assert_eq!(valid_name(n), re.is_match(n), "{n:?}");
        }
        assert!(valid_name(&"a".repeat(40)));
        assert!(!valid_name(&"a".repeat(41)));
    }

    #[test]
    fn repositories_and_config_paths() {
        assert!(valid_repo("acme/web.site"));
        assert!(!valid_repo("acme"));
        assert!(!valid_repo("acme/web/x"));
        assert!(!valid_repo("acme/.."));
        assert!(!valid_repo("acme/<x>"));
        assert!(valid_config_path("telbase.yaml"));
        assert!(valid_config_path("deploy/prod.yml"));
        assert!(!valid_config_path("/etc/telbase.yaml"));
        assert!(!valid_config_path("../telbase.yaml"));
        assert!(!valid_config_path("a//telbase.yaml"));
        assert!(!valid_config_path("telbase.json"));
    }
}
