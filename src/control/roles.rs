//! The four roles and the ONE table of what each may do ([`allows`]). Every control-plane
//! route names its [`Action`] (see `super::api::ROUTES`) and the API layer asks [`allows`]
//! and nothing else, so this file is the whole access policy.
//!
//! The security page (5.2) says: Owner — full access, billing, team management; Admin — all
//! project actions, team invites; Member — deploy, view logs, manage env vars; Viewer — view
//! projects and logs only. Where it leaves a question open, the decision is written next to
//! the row and repeated in docs/control-plane.md.

use serde::{Deserialize, Serialize};

/// A member's role in a team, strongest first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The weaker of two roles (a token's cap applied to its user's role).
    pub fn min(self, other: Role) -> Role {
        // Declared strongest first, so the larger discriminant is the weaker role.
        std::cmp::max(self, other)
    }

    /// Whether `self` is at least as strong as `other`.
    pub fn at_least(self, other: Role) -> bool {
        self <= other
    }
}

/// Everything a principal can ask the control plane to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Projects, environments, their state and URLs.
    ViewProject,
    /// Runs: the rendered plan, per-resource results, status.
    ViewRuns,
    /// Run and deploy logs.
    ViewLogs,
    /// Start a deploy / run apply.
    Deploy,
    /// Create, configure and delete projects and environments.
    ManageProjects,
    /// Env var names and masked values.
    ViewEnvVars,
    /// Set and unset env vars.
    ManageEnvVars,
    /// The team's member list and roles.
    ViewMembers,
    /// Invite someone (as Member or Viewer; see [`may_grant`]).
    InviteMembers,
    /// Change a member's role.
    ChangeRoles,
    /// Remove a member.
    RemoveMembers,
    /// Team settings and billing-like settings; deleting the team.
    ManageTeam,
    /// One's own identity and memberships (`/me`).
    ViewSelf,
    /// Create, list and revoke one's own API tokens.
    ManageOwnTokens,
    /// Revoke any token of the team.
    ManageAllTokens,
    /// List and revoke one's own sessions and CLI logins.
    ManageOwnSessions,
    /// Approve (or deny) a device login for oneself.
    ApproveDevice,
    /// The team's audit log.
    ViewAuditLog,
}

impl Action {
    pub const ALL: [Action; 18] = [
        Action::ViewProject,
        Action::ViewRuns,
        Action::ViewLogs,
        Action::Deploy,
        Action::ManageProjects,
        Action::ViewEnvVars,
        Action::ManageEnvVars,
        Action::ViewMembers,
        Action::InviteMembers,
        Action::ChangeRoles,
        Action::RemoveMembers,
        Action::ManageTeam,
        Action::ViewSelf,
        Action::ManageOwnTokens,
        Action::ManageAllTokens,
        Action::ManageOwnSessions,
        Action::ApproveDevice,
        Action::ViewAuditLog,
    ];
}

/// THE permission table.
pub fn allows(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        // Everyone: things about oneself. A Viewer must be able to sign in from the CLI
        // and revoke a stolen session of their own.
        ViewSelf | ManageOwnTokens | ManageOwnSessions | ApproveDevice => true,
        // "View projects and logs": every role. Runs are what the logs are about.
        ViewProject | ViewRuns | ViewLogs => true,
        // "Deploy", "manage env vars": Member and up. Seeing env var names (masked values)
        // comes with managing them; a Viewer does not see them (the page gives a Viewer
        // projects and logs only, and names can be telling).
        Deploy | ManageEnvVars | ViewEnvVars => matches!(role, Owner | Admin | Member),
        // "All project actions": Admin and up.
        ManageProjects => matches!(role, Owner | Admin),
        // Decision: the member list is visible to Member and up (they work with these
        // people); not to a Viewer (projects and logs only).
        ViewMembers => matches!(role, Owner | Admin | Member),
        // "Team invites": Admin and up.
        InviteMembers => matches!(role, Owner | Admin),
        // "Team management" is the Owner's: changing roles, removing members, settings,
        // revoking other people's tokens. Decision: an Admin cannot change roles (that
        // would let an Admin make themselves Owner) nor remove members.
        ChangeRoles | RemoveMembers | ManageTeam | ManageAllTokens => role == Owner,
        // Decision: the audit log is for Owner and Admin (it names every member's
        // actions and addresses).
        ViewAuditLog => matches!(role, Owner | Admin),
    }
}

/// Whether `granter` may give someone `role` (when inviting). Decision: an Admin invites
/// Members and Viewers only; only an Owner makes Admins and Owners.
pub fn may_grant(granter: Role, role: Role) -> bool {
    match granter {
        Role::Owner => true,
        Role::Admin => matches!(role, Role::Member | Role::Viewer),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_security_page() {
        // Owner: everything.
        assert!(Action::ALL.iter().all(|a| allows(Role::Owner, *a)));
        // Viewer: view projects and logs (plus things about oneself) only.
        for a in Action::ALL {
            let viewer_ok = matches!(
                a,
                Action::ViewProject
                    | Action::ViewRuns
                    | Action::ViewLogs
                    | Action::ViewSelf
                    | Action::ManageOwnTokens
                    | Action::ManageOwnSessions
                    | Action::ApproveDevice
            );
            assert_eq!(allows(Role::Viewer, a), viewer_ok, "{a:?}");
        }
        assert!(allows(Role::Member, Action::Deploy));
        assert!(allows(Role::Member, Action::ManageEnvVars));
        assert!(!allows(Role::Member, Action::InviteMembers));
        assert!(allows(Role::Admin, Action::InviteMembers));
        assert!(allows(Role::Admin, Action::ManageProjects));
        assert!(!allows(Role::Admin, Action::ChangeRoles));
        assert!(!allows(Role::Admin, Action::ManageTeam));
        // Roles are ordered: whatever a weaker role may do, a stronger one may too.
        for a in Action::ALL {
            for w in 1..4 {
                if allows(Role::ALL[w], a) {
                    assert!(allows(Role::ALL[w - 1], a), "{a:?}");
                }
            }
        }
    }

    #[test]
    fn caps_and_grants() {
        assert_eq!(Role::Owner.min(Role::Viewer), Role::Viewer);
        assert_eq!(Role::Member.min(Role::Admin), Role::Member);
        assert!(Role::Owner.at_least(Role::Admin));
        assert!(!Role::Viewer.at_least(Role::Member));
        assert!(may_grant(Role::Admin, Role::Viewer));
        assert!(!may_grant(Role::Admin, Role::Owner));
        assert!(!may_grant(Role::Member, Role::Viewer));
    }
}
