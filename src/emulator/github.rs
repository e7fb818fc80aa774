//! The GitHub REST API, as much of it as a GitHub App needs: installation access tokens,
//! file contents at a commit, commit statuses, issue comments (the PR plan comment), the
//! rate limit, an installation's repositories, and the App's webhook deliveries (the polling
//! fallback). Served under `/github` with GitHub's paths, fields and error envelope
//! (`{"message","documentation_url"}`), and checked against GitHub's published description
//! by the conformance test.
//!
//! Authentication is GitHub's, not the emulator's shared token: `/app/…` routes take an App
//! JWT (RS256, `iss` = the App id, at most 10 minutes long) whose signature is verified with
//! the App's public key when one was registered; every other route takes an installation
//! token this emulator issued, unexpired, for an installation that may see the repository.
//! A workflow's GITHUB_TOKEN is such an installation token too, seeded directly
//! (`workflow_tokens`), read-only when it stands for a fork's pull request.
//! State is seeded through `POST /_admin/github` (or [`super::Handle::github_seed`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::Answer;

/// How long an installation token lives (GitHub: one hour).
const TOKEN_TTL_MS: u64 = 3_600_000;

#[derive(Default)]
pub(crate) struct State {
    app_id: Option<u64>,
    /// PKCS#1 DER of the App's RSA public key; JWT signatures are checked when set.
    app_public_key: Option<Vec<u8>>,
    installations: BTreeMap<u64, Installation>,
    /// Issued installation tokens: token → (installation, expiry in ms).
    tokens: BTreeMap<String, (u64, u64)>,
    /// Tokens that may only read (what GitHub gives a workflow run of a fork's pull
    /// request): their writes are refused with 403.
    read_only: std::collections::BTreeSet<String>,
    /// (repo, sha) → path → content.
    files: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
    repo_ids: BTreeMap<String, u64>,
    statuses: Vec<Value>,
    comments: BTreeMap<u64, (String, u64, Value)>,
    deliveries: Vec<Value>,
    next_id: u64,
    /// Requests left in the core rate-limit window (GitHub: 5,000 an hour for an App).
    remaining: u64,
    /// Guids GitHub was asked to redeliver, in order.
    pub(crate) redeliveries: Vec<String>,
    /// (repo, branch) → head commit.
    branches: BTreeMap<(String, String), String>,
    /// (repo, number) → pull request (seeded; the polling fallback lists the open ones).
    pulls: BTreeMap<(String, u64), Pull>,
}

struct Pull {
    id: u64,
    state: String,
    head_sha: String,
    head_branch: String,
    /// The head repository's full name (another one for a fork).
    head_repo: String,
    base_branch: String,
    title: String,
    created_ms: u64,
    closed_ms: Option<u64>,
}

struct Installation {
    account: String,
    repos: Vec<String>,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        1_000 + self.next_id
    }
}

/// Counts for duplicate checks and tests.
pub(crate) fn inventory(s: &State, m: &mut BTreeMap<String, u64>) {
    m.insert("github/status".into(), s.statuses.len() as u64);
    m.insert("github/comment".into(), s.comments.len() as u64);
    m.insert("github/redelivery".into(), s.redeliveries.len() as u64);
}

fn gh_error(status: u16, message: &str) -> Answer {
    Answer::ok(
        status,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
    )
}

/// Seed state: `{"app_id": 1, "app_public_key_der_b64": "…", "installations": [{"id": 1,
/// "account": "acme", "repos": ["acme/web"]}], "commits": [{"repo": "acme/web", "sha": "…",
/// "files": {"telbase.yaml": "…"}}], "deliveries": [{…}]}`. Every part is optional and adds
/// to what is there.
pub(crate) fn seed(s: &mut State, body: &Value) -> Result<Value, String> {
    if let Some(id) = body.get("app_id").and_then(Value::as_u64) {
        s.app_id = Some(id);
        s.remaining = 5_000;
    }
    if let Some(k) = body.get("app_public_key_der_b64").and_then(Value::as_str) {
        let der = base64::engine::general_purpose::STANDARD
            .decode(k)
            .map_err(|_| "app_public_key_der_b64 is not base64".to_owned())?;
        s.app_public_key = Some(der);
    }
    for i in body
        .get("installations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = i["id"].as_u64().ok_or("installation id")?;
        let repos: Vec<String> = i["repos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        for r in &repos {
            let next = 500_000 + s.repo_ids.len() as u64;
            s.repo_ids.entry(r.clone()).or_insert(next);
        }
        s.installations.insert(
            id,
            Installation {
                account: i["account"].as_str().unwrap_or("acme").to_owned(),
                repos,
            },
        );
    }
    for c in body
        .get("commits")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let repo = c["repo"].as_str().ok_or("commit repo")?.to_owned();
        let sha = c["sha"].as_str().ok_or("commit sha")?.to_owned();
        let files = s.files.entry((repo, sha)).or_default();
        for (path, text) in c["files"].as_object().into_iter().flatten() {
            files.insert(
                path.clone(),
                text.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
    }
    for d in body
        .get("deliveries")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        s.deliveries.push(d.clone());
    }
    for b in body
        .get("branches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let repo = b["repo"].as_str().ok_or("branch repo")?.to_owned();
        let name = b["branch"].as_str().ok_or("branch name")?.to_owned();
        let sha = b["sha"].as_str().ok_or("branch sha")?.to_owned();
        s.branches.insert((repo, name), sha);
    }
    // `{"pulls": [{"repo", "number", "sha", "head_branch", "state": "open"|"closed",
    // "head_repo"?, "title"?}]}`: a pull request seeded again (same repo and number) is
    // updated, which is how tests close one without a webhook.
    for p in body
        .get("pulls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let repo = p["repo"].as_str().ok_or("pull repo")?.to_owned();
        let number = p["number"].as_u64().ok_or("pull number")?;
        let state = p["state"].as_str().unwrap_or("open").to_owned();
        if state != "open" && state != "closed" {
            return Err("pull state must be open or closed".into());
        }
        let id = s.id();
        let now = now_ms();
        let pull = s.pulls.entry((repo.clone(), number)).or_insert(Pull {
            id,
            state: String::new(),
            head_sha: String::new(),
            head_branch: String::new(),
            head_repo: repo.clone(),
            base_branch: "main".into(),
            title: format!("Pull request {number}"),
            created_ms: now,
            closed_ms: None,
        });
        if let Some(sha) = p["sha"].as_str() {
            pull.head_sha = sha.to_owned();
        }
        if let Some(b) = p["head_branch"].as_str() {
            pull.head_branch = b.to_owned();
        }
        if let Some(r) = p["head_repo"].as_str() {
            pull.head_repo = r.to_owned();
        }
        if let Some(t) = p["title"].as_str() {
            pull.title = t.to_owned();
        }
        pull.closed_ms = (state == "closed").then_some(now);
        pull.state = state;
    }
    // `{"workflow_tokens": [{"token": "ghs_…", "installation": 1, "read_only": false}]}`:
    // the runner's GITHUB_TOKEN, an installation token GitHub mints for each workflow run
    // (an hour long); `read_only` as for a pull request from a fork.
    for t in body
        .get("workflow_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let token = t["token"].as_str().ok_or("workflow token")?.to_owned();
        let inst = t["installation"]
            .as_u64()
            .ok_or("workflow token installation")?;
        s.tokens
            .insert(token.clone(), (inst, now_ms() + TOKEN_TTL_MS));
        if t["read_only"].as_bool().unwrap_or(false) {
            s.read_only.insert(token);
        } else {
            s.read_only.remove(&token);
        }
        if s.remaining == 0 {
            s.remaining = 5_000;
        }
    }
    // `{"comments": [{"repo", "issue", "body", "login", "type", "author_association"}]}`:
    // comments others wrote (people, other Apps), as a pull request collects them.
    for c in body
        .get("comments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let repo = c["repo"].as_str().ok_or("comment repo")?.to_owned();
        let issue = c["issue"].as_u64().ok_or("comment issue")?;
        let id = s.id();
        let now = now_ms();
        let mut v = comment_json(&repo, issue, id, c["body"].as_str().unwrap_or(""), now, now);
        let login = c["login"].as_str().unwrap_or("octocat");
        v["user"] = user_json(login, 100 + id, c["type"].as_str().unwrap_or("User"));
        v["author_association"] = c["author_association"].as_str().unwrap_or("NONE").into();
        s.comments.insert(id, (repo, issue, v));
    }
    if let Some(n) = body.get("rate_limit_remaining").and_then(Value::as_u64) {
        s.remaining = n;
    }
    Ok(json!({"installations": s.installations.len(), "commits": s.files.len()}))
}

/// Route one request. `token` is the bearer credential; `now_ms` the emulator's clock.
pub(crate) fn route(
    s: &mut State,
    method: &str,
    segments: &[&str],
    query: &[(String, String)],
    body: Option<&Value>,
    token: Option<&str>,
    now_ms: u64,
) -> Answer {
    let Some(token) = token else {
        return gh_error(401, "Requires authentication");
    };
    let q = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    // App-level routes: the App's own JWT.
    if segments.first() == Some(&"app") {
        if let Err(e) = check_jwt(s, token, now_ms) {
            return gh_error(401, &e);
        }
        return match (method, segments) {
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                let Some(inst) = id
                    .parse::<u64>()
                    .ok()
                    .filter(|i| s.installations.contains_key(i))
                else {
                    return gh_error(404, "Not Found");
                };
                let n = s.id();
                let token = format!("ghs_emulated{n:030}");
                let expires = now_ms + TOKEN_TTL_MS;
                s.tokens.insert(token.clone(), (inst, expires));
                Answer::ok(
                    201,
                    json!({
                        "token": token,
                        "expires_at": rfc3339(expires),
                        "permissions": {"contents": "read", "metadata": "read", "statuses": "write", "pull_requests": "write"},
                        "repository_selection": "selected",
                    }),
                )
            }
            ("GET", ["app", "hook", "deliveries"]) => {
                let per_page = q("per_page")
                    .and_then(|p| p.parse::<usize>().ok())
                    .unwrap_or(30)
                    .clamp(1, 100);
                // Newest first, as GitHub lists them; the cursor is the last id seen.
                let mut all: Vec<&Value> = s.deliveries.iter().collect();
                all.sort_by_key(|d| std::cmp::Reverse(d["id"].as_u64().unwrap_or(0)));
                let after = q("cursor").and_then(|c| c.parse::<u64>().ok());
                let page: Vec<Value> = all
                    .into_iter()
                    .filter(|d| after.is_none_or(|a| d["id"].as_u64().unwrap_or(0) < a))
                    .take(per_page)
                    .cloned()
                    .collect();
                let mut a = Answer::ok(200, Value::Array(page.clone()));
                if page.len() == per_page
                    && let Some(last) = page.last().and_then(|d| d["id"].as_u64())
                {
                    a.headers.push((
                        "link",
                        format!(
                            "</app/hook/deliveries?per_page={per_page}&cursor={last}>; rel=\"next\""
                        ),
                    ));
                }
                a
            }
            ("POST", ["app", "hook", "deliveries", id, "attempts"]) => {
                let Some(d) = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| s.deliveries.iter().find(|d| d["id"].as_u64() == Some(id)))
                    .cloned()
                else {
                    return gh_error(404, "Not Found");
                };
                // A redelivery is a new delivery with the same guid, marked as such.
                let mut again = d;
                again["id"] = (s.deliveries.len() as u64 + 10_000 + s.next_id).into();
                again["redelivery"] = true.into();
                s.redeliveries
                    .push(again["guid"].as_str().unwrap_or_default().to_owned());
                s.deliveries.push(again);
                Answer::ok(202, json!({}))
            }
            _ => gh_error(404, "Not Found"),
        };
    }
    // Everything else: an installation token.
    let Some(&(inst, expires)) = s.tokens.get(token) else {
        return gh_error(401, "Bad credentials");
    };
    if expires <= now_ms {
        return gh_error(401, "Bad credentials");
    }
    if s.remaining == 0 {
        return gh_error(403, "API rate limit exceeded for installation.");
    }
    s.remaining -= 1;
    if method != "GET" && s.read_only.contains(token) {
        return gh_error(403, "Resource not accessible by integration");
    }
    let may_see = |repo: &str| {
        s.installations
            .get(&inst)
            .is_some_and(|i| i.repos.iter().any(|r| r == repo))
    };
    match (method, segments) {
        ("GET", ["rate_limit"]) => {
            let core = json!({"limit": 5000, "used": 5000 - s.remaining, "remaining": s.remaining, "reset": now_ms / 1000 + 3600});
            let search =
                json!({"limit": 30, "used": 0, "remaining": 30, "reset": now_ms / 1000 + 60});
            Answer::ok(
                200,
                json!({"resources": {"core": core, "search": search}, "rate": core}),
            )
        }
        ("GET", ["installation", "repositories"]) => {
            let repos: Vec<Value> = s
                .installations
                .get(&inst)
                .map(|i| {
                    i.repos
                        .iter()
                        .map(|r| repo_json(s, r, &i.account))
                        .collect()
                })
                .unwrap_or_default();
            Answer::ok(
                200,
                json!({"total_count": repos.len(), "repositories": repos}),
            )
        }
        ("GET", ["repos", owner, repo, "contents", path @ ..]) => {
            let full = format!("{owner}/{repo}");
            if !may_see(&full) {
                return gh_error(404, "Not Found");
            }
            let path = path.join("/");
            let Some(r) = q("ref") else {
                return gh_error(404, "No commit found for the ref");
            };
            let Some(content) = s
                .files
                .get(&(full.clone(), r.to_owned()))
                .and_then(|f| f.get(&path))
            else {
                return gh_error(404, "Not Found");
            };
            let b64 = base64::engine::general_purpose::STANDARD.encode(content);
            // GitHub wraps the base64 at 60 characters.
            let wrapped: String = b64
                .as_bytes()
                .chunks(60)
                .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
                .collect();
            let sha = blob_sha(content);
            let api = format!("https://api.github.com/repos/{full}/contents/{path}?ref={r}");
            let html = format!("https://github.com/{full}/blob/{r}/{path}");
            let git = format!("https://api.github.com/repos/{full}/git/blobs/{sha}");
            Answer::ok(
                200,
                json!({
                    "type": "file", "encoding": "base64", "size": content.len(),
                    "name": path.rsplit('/').next().unwrap_or(&path), "path": path,
                    "content": wrapped, "sha": sha, "url": api, "git_url": git,
                    "html_url": html,
                    "download_url": format!("https://raw.githubusercontent.com/{full}/{r}/{path}"),
                    "_links": {"self": api, "git": git, "html": html},
                }),
            )
        }
        ("GET", ["repos", owner, repo]) => {
            let full = format!("{owner}/{repo}");
            if !may_see(&full) {
                return gh_error(404, "Not Found");
            }
            let account = s
                .installations
                .get(&inst)
                .map(|i| i.account.clone())
                .unwrap_or_default();
            let mut v = repo_json(s, &full, &account);
            // The full repository has timestamps (null only in the installation listing).
            for (k, x) in [
                ("created_at", json!("2026-01-01T00:00:00Z")),
                ("updated_at", json!("2026-11-29T12:00:00Z")),
                ("pushed_at", json!("2026-11-29T12:00:00Z")),
                ("has_discussions", json!(false)),
                ("network_count", json!(0)),
                ("subscribers_count", json!(0)),
            ] {
                v[k] = x;
            }
            Answer::ok(200, v)
        }
        ("GET", ["repos", owner, repo, "branches", branch]) => {
            let full = format!("{owner}/{repo}");
            let Some(sha) = s
                .branches
                .get(&(full.clone(), (*branch).to_owned()))
                .filter(|_| may_see(&full))
                .cloned()
            else {
                return gh_error(404, "Branch not found");
            };
            let api = format!("https://api.github.com/repos/{full}");
            let person =
                json!({"name": "Ada", "email": "ada@example.com", "date": "2026-11-29T12:00:00Z"});
            Answer::ok(
                200,
                json!({
                    "name": branch,
                    "commit": {
                        "sha": sha, "node_id": format!("C_{sha}"),
                        "url": format!("{api}/commits/{sha}"),
                        "html_url": format!("https://github.com/{full}/commit/{sha}"),
                        "comments_url": format!("{api}/commits/{sha}/comments"),
                        "commit": {
                            "author": person, "committer": person, "comment_count": 0,
                            "message": "commit", "url": format!("{api}/git/commits/{sha}"),
                            "tree": {"sha": sha, "url": format!("{api}/git/trees/{sha}")},
                        },
                        "author": null, "committer": null, "parents": [],
                    },
                    "_links": {"html": format!("https://github.com/{full}/tree/{branch}"), "self": format!("{api}/branches/{branch}")},
                    "protected": false,
                    "protection": {"enabled": false},
                    "protection_url": format!("{api}/branches/{branch}/protection"),
                }),
            )
        }
        ("GET", ["repos", owner, repo, "pulls"]) => {
            let full = format!("{owner}/{repo}");
            if !may_see(&full) {
                return gh_error(404, "Not Found");
            }
            let state = q("state").unwrap_or("open");
            if !matches!(state, "open" | "closed" | "all") {
                return gh_error(422, "Validation Failed: state");
            }
            let per_page = q("per_page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(30)
                .clamp(1, 100);
            let page = q("page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let account = owner.to_string();
            // Newest first, GitHub's default (sort=created, direction=desc).
            let all: Vec<Value> = s
                .pulls
                .iter()
                .rev()
                .filter(|((r, _), p)| *r == full && (state == "all" || p.state == state))
                .map(|((_, n), p)| pull_json(s, &full, *n, p, &account, false))
                .collect();
            page_of(all, page, per_page, |next| {
                format!(
                    "https://api.github.com/repos/{full}/pulls?state={state}&per_page={per_page}&page={next}"
                )
            })
        }
        ("GET", ["repos", owner, repo, "pulls", n]) => {
            let full = format!("{owner}/{repo}");
            let Some(p) = n
                .parse::<u64>()
                .ok()
                .filter(|_| may_see(&full))
                .and_then(|n| s.pulls.get(&(full.clone(), n)).map(|p| (n, p)))
            else {
                return gh_error(404, "Not Found");
            };
            Answer::ok(200, pull_json(s, &full, p.0, p.1, owner, true))
        }
        ("POST", ["repos", owner, repo, "statuses", sha]) => {
            let full = format!("{owner}/{repo}");
            if !may_see(&full) {
                return gh_error(404, "Not Found");
            }
            let state = body.and_then(|b| b["state"].as_str()).unwrap_or_default();
            if !matches!(state, "error" | "failure" | "pending" | "success") {
                return gh_error(422, "Validation Failed: state");
            }
            let id = s.id();
            let at = rfc3339(now_ms);
            let status = json!({
                "url": format!("https://api.github.com/repos/{full}/statuses/{sha}"),
                "avatar_url": null, "id": id, "node_id": format!("SC_{id}"), "state": state,
                "description": body.and_then(|b| b.get("description")).cloned().unwrap_or(Value::Null),
                "target_url": body.and_then(|b| b.get("target_url")).cloned().unwrap_or(Value::Null),
                "context": body.and_then(|b| b["context"].as_str()).unwrap_or("default"),
                "created_at": at, "updated_at": at, "creator": bot_user(),
                "sha": sha, "repo": full,
            });
            s.statuses.push(status.clone());
            let mut out = status;
            if let Some(o) = out.as_object_mut() {
                o.remove("sha");
                o.remove("repo");
            }
            Answer::ok(201, out)
        }
        ("GET", ["repos", owner, repo, "issues", n, "comments"]) => {
            let full = format!("{owner}/{repo}");
            let Some(n) = n.parse::<u64>().ok().filter(|_| may_see(&full)) else {
                return gh_error(404, "Not Found");
            };
            let per_page = q("per_page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(30)
                .clamp(1, 100);
            let page = q("page")
                .and_then(|p| p.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            let all: Vec<Value> = s
                .comments
                .values()
                .filter(|(r, i, _)| *r == full && *i == n)
                .map(|(_, _, c)| c.clone())
                .collect();
            page_of(all, page, per_page, |next| {
                format!(
                    "https://api.github.com/repos/{full}/issues/{n}/comments?per_page={per_page}&page={next}"
                )
            })
        }
        ("POST", ["repos", owner, repo, "issues", n, "comments"]) => {
            let full = format!("{owner}/{repo}");
            let Some(n) = n.parse::<u64>().ok().filter(|_| may_see(&full)) else {
                return gh_error(404, "Not Found");
            };
            let Some(text) = body.and_then(|b| b["body"].as_str()) else {
                return gh_error(422, "Validation Failed: body");
            };
            if text.chars().count() > 65_536 {
                return gh_error(
                    422,
                    "Validation Failed: body is too long (maximum is 65536 characters)",
                );
            }
            let id = s.id();
            let c = comment_json(&full, n, id, text, now_ms, now_ms);
            s.comments.insert(id, (full, n, c.clone()));
            Answer::ok(201, c)
        }
        ("PATCH", ["repos", owner, repo, "issues", "comments", id]) => {
            let full = format!("{owner}/{repo}");
            let Some(id) = id.parse::<u64>().ok().filter(|_| may_see(&full)) else {
                return gh_error(404, "Not Found");
            };
            let Some(text) = body.and_then(|b| b["body"].as_str()) else {
                return gh_error(422, "Validation Failed: body");
            };
            if text.chars().count() > 65_536 {
                return gh_error(
                    422,
                    "Validation Failed: body is too long (maximum is 65536 characters)",
                );
            }
            let Some((r, n, c)) = s.comments.get_mut(&id).filter(|(r, _, _)| *r == full) else {
                return gh_error(404, "Not Found");
            };
            let created = c["created_at"].as_str().unwrap_or_default().to_owned();
            let mut updated = comment_json(r, *n, id, text, 0, now_ms);
            updated["created_at"] = created.into();
            *c = updated.clone();
            Answer::ok(200, updated)
        }
        _ => gh_error(404, "Not Found"),
    }
}

fn user_json(login: &str, id: u64, kind: &str) -> Value {
    let api = format!(
        "https://api.github.com/users/{}",
        login.replace('[', "%5B").replace(']', "%5D")
    );
    json!({"login": login, "id": id, "node_id": format!("U_{id}"), "type": kind,
           "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}"), "gravatar_id": "",
           "url": api, "html_url": format!("https://github.com/{login}"), "site_admin": false,
           "events_url": format!("{api}/events{{/privacy}}"), "followers_url": format!("{api}/followers"),
           "following_url": format!("{api}/following{{/other_user}}"), "gists_url": format!("{api}/gists{{/gist_id}}"),
           "organizations_url": format!("{api}/orgs"), "received_events_url": format!("{api}/received_events"),
           "repos_url": format!("{api}/repos"), "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
           "subscriptions_url": format!("{api}/subscriptions")})
}

/// A pull request as GitHub lists it (`pull-request-simple`), or in full (`pull-request`).
/// One page (1-based) of `all`, with GitHub's `Link: <…>; rel="next"` header while more
/// follow (`next` makes the URL of a page).
fn page_of(
    all: Vec<Value>,
    page: usize,
    per_page: usize,
    next: impl Fn(usize) -> String,
) -> Answer {
    let more = page.saturating_mul(per_page) < all.len();
    let items: Vec<Value> = all
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    let mut a = Answer::ok(200, Value::Array(items));
    if more {
        a.headers
            .push(("link", format!("<{}>; rel=\"next\"", next(page + 1))));
    }
    a
}

fn pull_json(s: &State, full: &str, n: u64, p: &Pull, account: &str, detail: bool) -> Value {
    let api = format!("https://api.github.com/repos/{full}");
    let html = format!("https://github.com/{full}/pull/{n}");
    let link = |href: String| json!({"href": href});
    let head_owner = p.head_repo.split('/').next().unwrap_or(account);
    let side = |r: &str, branch: &str, sha: &str, who: &str| {
        json!({"label": format!("{who}:{branch}"), "ref": branch, "sha": sha,
               "user": user_json(who, 9, "Organization"), "repo": repo_json(s, r, who)})
    };
    let base_sha = s
        .branches
        .get(&(full.to_owned(), p.base_branch.clone()))
        .cloned()
        .unwrap_or_else(|| "0".repeat(40));
    let mut v = json!({
        "url": format!("{api}/pulls/{n}"), "id": p.id, "node_id": format!("PR_{}", p.id),
        "html_url": html, "diff_url": format!("{html}.diff"), "patch_url": format!("{html}.patch"),
        "issue_url": format!("{api}/issues/{n}"), "commits_url": format!("{api}/pulls/{n}/commits"),
        "review_comments_url": format!("{api}/pulls/{n}/comments"),
        "review_comment_url": format!("{api}/pulls/comments{{/number}}"),
        "comments_url": format!("{api}/issues/{n}/comments"),
        "statuses_url": format!("{api}/statuses/{}", p.head_sha),
        "number": n, "state": p.state, "locked": false, "title": p.title,
        "user": user_json("ada", 10, "User"), "body": null, "labels": [], "milestone": null,
        "active_lock_reason": null, "created_at": rfc3339(p.created_ms),
        "updated_at": rfc3339(p.closed_ms.unwrap_or(p.created_ms)),
        "closed_at": p.closed_ms.map(rfc3339), "merged_at": null, "merge_commit_sha": null,
        "assignee": null, "assignees": [], "requested_reviewers": [], "requested_teams": [],
        "author_association": "MEMBER", "auto_merge": null, "draft": false,
    });
    // Set apart: one json! literal this size exceeds the macro recursion limit.
    v["head"] = side(&p.head_repo, &p.head_branch, &p.head_sha, head_owner);
    v["base"] = side(full, &p.base_branch, &base_sha, account);
    let mut links = serde_json::Map::new();
    for (k, href) in [
        ("self", format!("{api}/pulls/{n}")),
        ("html", html.clone()),
        ("issue", format!("{api}/issues/{n}")),
        ("comments", format!("{api}/issues/{n}/comments")),
        ("review_comments", format!("{api}/pulls/{n}/comments")),
        ("review_comment", format!("{api}/pulls/comments{{/number}}")),
        ("commits", format!("{api}/pulls/{n}/commits")),
        ("statuses", format!("{api}/statuses/{}", p.head_sha)),
    ] {
        links.insert(k.into(), link(href));
    }
    v["_links"] = Value::Object(links);
    if detail {
        for (k, x) in [
            ("merged", json!(false)),
            ("mergeable", Value::Null),
            ("rebaseable", Value::Null),
            ("mergeable_state", json!("unknown")),
            ("merged_by", Value::Null),
            ("comments", json!(0)),
            ("review_comments", json!(0)),
            ("maintainer_can_modify", json!(false)),
            ("commits", json!(1)),
            ("additions", json!(1)),
            ("deletions", json!(0)),
            ("changed_files", json!(1)),
        ] {
            v[k] = x;
        }
    }
    v
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

fn bot_user() -> Value {
    user_json("telbase[bot]", 1, "Bot")
}

fn comment_json(repo: &str, issue: u64, id: u64, body: &str, created: u64, updated: u64) -> Value {
    json!({
        "id": id, "node_id": format!("IC_{id}"),
        "url": format!("https://api.github.com/repos/{repo}/issues/comments/{id}"),
        "html_url": format!("https://github.com/{repo}/pull/{issue}#issuecomment-{id}"),
        "issue_url": format!("https://api.github.com/repos/{repo}/issues/{issue}"),
        "body": body, "user": bot_user(), "author_association": "NONE",
        "created_at": rfc3339(created), "updated_at": rfc3339(updated),
    })
}

fn repo_json(s: &State, full: &str, account: &str) -> Value {
    let id = s.repo_ids.get(full).copied().unwrap_or(1);
    let name = full.split('/').nth(1).unwrap_or(full);
    let api = format!("https://api.github.com/repos/{full}");
    let mut v = json!({"id": id, "node_id": format!("R_{id}"), "name": name, "full_name": full,
           "private": true, "default_branch": "main", "description": null, "fork": false,
           "owner": user_json(account, 9, "Organization"), "html_url": format!("https://github.com/{full}"),
           "url": api, "clone_url": format!("https://github.com/{full}.git"),
           "git_url": format!("git://github.com/{full}.git"), "ssh_url": format!("git@github.com:{full}.git"),
           "svn_url": format!("https://github.com/{full}"), "homepage": null, "language": null,
           "mirror_url": null, "license": null, "pushed_at": null, "created_at": null, "updated_at": null,
           "forks": 0, "forks_count": 0, "open_issues": 0, "open_issues_count": 0, "size": 0,
           "stargazers_count": 0, "watchers": 0, "watchers_count": 0,
           "has_downloads": false, "has_issues": true, "has_projects": false, "has_wiki": false,
           "has_pages": false, "archived": false, "disabled": false});
    // The hypermedia URL templates GitHub lists on every repository.
    for k in [
        "archive",
        "assignees",
        "blobs",
        "branches",
        "collaborators",
        "comments",
        "commits",
        "compare",
        "contents",
        "contributors",
        "deployments",
        "downloads",
        "events",
        "forks",
        "git_commits",
        "git_refs",
        "git_tags",
        "hooks",
        "issue_comment",
        "issue_events",
        "issues",
        "keys",
        "labels",
        "languages",
        "merges",
        "milestones",
        "notifications",
        "pulls",
        "releases",
        "stargazers",
        "statuses",
        "subscribers",
        "subscription",
        "tags",
        "teams",
        "trees",
    ] {
        v[format!("{k}_url")] = format!("{api}/{k}").into();
    }
    v
}

/// Git's blob id: SHA-1 of `blob <len>\0<content>` (reported, not trusted, by clients).
fn blob_sha(content: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {}\0", content.len()).as_bytes());
    ctx.update(content);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Check an App JWT as GitHub does: RS256, `iss` the App id, issued no later than now (60 s
/// of clock drift allowed), expiring within 10 minutes of issue and not yet expired, and
/// signed by the App's key when the emulator knows it.
fn check_jwt(s: &State, token: &str, now_ms: u64) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("A JSON web token could not be decoded".into());
    };
    let header: Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("A JSON web token could not be decoded")?;
    if header["alg"] != "RS256" {
        return Err("A JSON web token could not be decoded: the algorithm must be RS256".into());
    }
    let claims: Value = b64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("A JSON web token could not be decoded")?;
    let iss = claims["iss"]
        .as_u64()
        .or_else(|| claims["iss"].as_str().and_then(|s| s.parse().ok()));
    if s.app_id.is_none() || iss != s.app_id {
        return Err("'Issuer' claim ('iss') must be an Integer".into());
    }
    let now = (now_ms / 1000) as i64;
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".into());
    };
    if iat > now + 60 || exp <= now || exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".into());
    }
    if let Some(der) = &s.app_public_key {
        let signature = b64
            .decode(sig)
            .map_err(|_| "A JSON web token could not be decoded")?;
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            der,
        );
        key.verify(format!("{h}.{p}").as_bytes(), &signature)
            .map_err(|_| "A JSON web token could not be decoded: signature".to_owned())?;
    }
    Ok(())
}
