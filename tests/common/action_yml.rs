//! The action metadata file (`action.yml`) read into types, for the metadata check
//! (tests/action_metadata.rs) and the composite-step runner (tests/action.rs). The fields are
//! GitHub's action metadata syntax; a key GitHub does not define is refused, so a typo such
//! as `working_directory` cannot pass silently.

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub name: Option<String>,
    pub description: Option<String>,
    pub author: Option<String>,
    pub branding: Option<Branding>,
    #[serde(default)]
    pub inputs: BTreeMap<String, Input>,
    #[serde(default)]
    pub outputs: BTreeMap<String, Output>,
    pub runs: Option<Runs>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branding {
    pub icon: Option<String>,
    pub color: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    pub default: Option<String>,
    #[serde(rename = "deprecationMessage")]
    pub deprecation_message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub description: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runs {
    pub using: Option<String>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "if")]
    pub if_: Option<String>,
    pub run: Option<String>,
    pub shell: Option<String>,
    pub uses: Option<String>,
    #[serde(default)]
    pub with: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(rename = "working-directory")]
    pub working_directory: Option<String>,
    #[serde(rename = "continue-on-error")]
    pub continue_on_error: Option<bool>,
}

pub fn parse(src: &str) -> Result<Action, String> {
    serde_saphyr::from_str::<Action>(src).map_err(|e| e.to_string())
}

pub fn read() -> Action {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("action.yml");
    let src = std::fs::read_to_string(&path).expect("read action.yml");
    parse(&src).unwrap_or_else(|e| panic!("action.yml: {e}"))
}

/// The `${{ … }}` expressions in `text`, trimmed, in order. An unclosed `${{` is returned as
/// an error so the callers can refuse it.
pub fn expressions(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed ${{{{ in {text:?}"))?;
        out.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    Ok(out)
}
