//! GitHub Actions: the pieces `telbase ci` is made of, each usable on its own. `env` reads
//! the step's environment and event payload into types; `command` writes workflow commands
//! (annotations, masks) escaped as the runner reads them; `files` writes the step's outputs
//! (heredoc form) and job summary (within GitHub's size limit); `mask` registers every
//! secret value an apply handles with the runner before anything could print it; `comment`
//! keeps one pull-request comment per config path; `report` renders the summaries. The
//! command itself (which of these to call, exit codes) is `cli::ci`.

pub mod command;
pub mod comment;
pub mod env;
pub mod files;
pub mod mask;
pub mod report;

pub use env::{ActionsEnv, Event, PullRequestEvent, PushEvent};
