//! Webhook deliveries as GitHub sends them: the signature vectors from GitHub's docs
//! (../shared/test-vectors/github-webhook) and real payloads
//! (../shared/provider-apis/github/webhooks), read into the decisions Telbase makes.

mod common;

use std::path::PathBuf;

use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::Value;
use telbase::github::webhook::{self, Event, Intent, SignatureError};

fn shared(rel: &str) -> Option<PathBuf> {
    let p = common::root().join("../shared").join(rel);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{rel} not found beside the repository: CI must provide ../shared"
    );
    eprintln!("skipping: ../shared/{rel} not found");
    None
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

#[test]
fn githubs_signature_vectors() {
    let Some(p) = shared("test-vectors/github-webhook/vectors.json") else {
        return;
    };
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let got = webhook::verify(
            &[secret(c["secret"].as_str().unwrap())],
            c["body"].as_str().unwrap().as_bytes(),
            c["x_hub_signature_256"].as_str(),
        );
        match c["expect"].as_str().unwrap() {
            "valid" => assert_eq!(got, Ok(()), "{name}"),
            "invalid" => assert!(got.is_err(), "{name} was accepted"),
            // Upper-case hex decodes to the same bytes; accepting it is harmless (the
            // vector's note allows either policy). Ours: accept.
            "policy" => assert_eq!(got, Ok(()), "{name}"),
            other => panic!("unknown expectation {other}"),
        }
    }
    // The legacy SHA-1 header alone is never enough, and says why.
    let only_sha1 = cases
        .iter()
        .find(|c| c["name"] == "sha1_header_only")
        .unwrap();
    assert_eq!(
        webhook::verify(
            &[secret(only_sha1["secret"].as_str().unwrap())],
            b"Hello, World!",
            None
        ),
        Err(SignatureError::Missing)
    );
}

#[test]
fn a_rotated_secret_keeps_working_until_removed() {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let header = webhook::sign(&secret("old"), body);
    assert_eq!(
        webhook::verify(&[secret("new"), secret("old")], body, Some(&header)),
        Ok(())
    );
    assert_eq!(
        webhook::verify(&[secret("new")], body, Some(&header)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        webhook::verify(&[], body, Some(&header)),
        Err(SignatureError::NoSecret)
    );
}

fn payload(name: &str) -> Option<Vec<u8>> {
    shared(&format!(
        "provider-apis/github/webhooks/{name}.payload.json"
    ))
    .map(|p| std::fs::read(p).unwrap())
}

#[test]
fn real_payloads_become_the_right_decisions() {
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    assert_eq!(
        webhook::parse("push", &push).unwrap().intents(),
        vec![Intent::Push {
            installation: 1,
            repo: "Codertocat/Hello-World".into(),
            branch: "master".into(),
            sha: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".into(),
        }]
    );

    let opened = payload("pull_request.opened").unwrap();
    assert_eq!(
        webhook::parse("pull_request", &opened).unwrap().intents(),
        vec![Intent::Preview {
            installation: 1,
            repo: "Codertocat/Hello-World".into(),
            pr: 2,
            sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
            head_branch: "changes".into(),
        }]
    );

    // Closed without merging: the preview goes all the same.
    let closed = payload("pull_request.closed").unwrap();
    assert_eq!(
        webhook::parse("pull_request", &closed).unwrap().intents(),
        vec![Intent::Teardown {
            installation: 1,
            repo: "Codertocat/Hello-World".into(),
            pr: 2,
            sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
            head_branch: "changes".into(),
        }]
    );

    let installed = payload("installation.created").unwrap();
    assert_eq!(
        webhook::parse("installation", &installed)
            .unwrap()
            .intents(),
        vec![Intent::Installed {
            installation: 957387,
            account: "Codertocat".into(),
            repos: vec!["Codertocat/Hello-World".into()],
        }]
    );

    let ping = payload("ping.with-app_id").unwrap();
    let event = webhook::parse("ping", &ping).unwrap();
    assert!(matches!(event, Event::Ping(ref p) if p.hook_id == 109948940));
    assert!(matches!(event.intents()[..], [Intent::Ignore(_)]));

    assert_eq!(
        webhook::parse("check_run", b"{}").unwrap(),
        Event::Other("check_run".into())
    );
}

/// Edits of a real payload: what users expect from tags, deleted branches and forks.
#[test]
fn tags_deleted_branches_and_forks_are_not_deployed() {
    let Some(push) = payload("push.create-default-branch.with-installation") else {
        return;
    };
    let push: Value = serde_json::from_slice(&push).unwrap();
    let intents = |event: &str, v: &Value| {
        webhook::parse(event, v.to_string().as_bytes())
            .unwrap()
            .intents()
    };

    let mut tag = push.clone();
    tag["ref"] = "refs/tags/v1.0.0".into();
    assert!(
        matches!(&intents("push", &tag)[..], [Intent::Ignore(r)] if r.contains("not a branch"))
    );

    let mut deleted = push.clone();
    deleted["deleted"] = true.into();
    deleted["after"] = "0000000000000000000000000000000000000000".into();
    assert!(matches!(&intents("push", &deleted)[..], [Intent::Ignore(r)] if r.contains("deleted")));

    let mut no_installation = push.clone();
    no_installation
        .as_object_mut()
        .unwrap()
        .remove("installation");
    assert!(matches!(
        &intents("push", &no_installation)[..],
        [Intent::Ignore(_)]
    ));

    let mut fork: Value = serde_json::from_slice(&payload("pull_request.opened").unwrap()).unwrap();
    fork["pull_request"]["head"]["repo"]["id"] = 999_999_999u64.into();
    fork["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    assert!(
        matches!(&intents("pull_request", &fork)[..], [Intent::Ignore(r)] if r.contains("fork"))
    );
    // A fork that was deleted has no head repository at all.
    fork["pull_request"]["head"]["repo"] = Value::Null;
    assert!(matches!(
        &intents("pull_request", &fork)[..],
        [Intent::Ignore(_)]
    ));

    let mut labeled: Value =
        serde_json::from_slice(&payload("pull_request.opened").unwrap()).unwrap();
    labeled["action"] = "labeled".into();
    assert!(matches!(
        &intents("pull_request", &labeled)[..],
        [Intent::Ignore(_)]
    ));
}

#[test]
fn a_payload_of_the_wrong_shape_is_a_clear_error() {
    let err = webhook::parse("push", br#"{"ref": 7}"#).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("push payload"), "{msg}");
    let err = webhook::parse("pull_request", b"not json").unwrap_err();
    assert!(err.to_string().contains("pull_request"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any change to a signed body, however small, is refused.
    #[test]
    fn a_changed_body_never_verifies(
        body in proptest::collection::vec(any::<u8>(), 1..512),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let key = secret("s3cret");
        let header = webhook::sign(&key, &body);
        prop_assert_eq!(webhook::verify(std::slice::from_ref(&key), &body, Some(&header)), Ok(()));
        let mut changed = body.clone();
        let i = at.index(changed.len());
        changed[i] ^= 1 << bit;
        prop_assert_eq!(
            webhook::verify(&[key], &changed, Some(&header)),
            Err(SignatureError::Mismatch)
        );
    }

    /// Hostile bytes under any event name: an error or an event, never a panic.
    #[test]
    fn parsing_never_panics(
        event in prop::sample::select(vec!["push", "pull_request", "installation", "installation_repositories", "ping", "other"]),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Ok(e) = webhook::parse(event, &body) {
            let _ = e.intents();
        }
    }

    /// Any header that is not exactly a valid signature is refused, never a panic.
    #[test]
    fn garbage_headers_are_refused(header in ".{0,80}") {
        let refused = webhook::verify(&[secret("k")], b"{}", Some(&header)).is_err();
        prop_assert!(refused);
    }
}
