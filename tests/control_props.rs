//! Property tests for the control plane's parsers of outside input: user codes typed by
//! people and cursors sent back by clients. Neither may panic on anything, each accepts
//! exactly its own language, and what the server makes parses back to what it meant.

use proptest::prelude::*;
use telbase::control::secrets::{
    USER_CODE_ALPHABET, encode_cursor, new_user_code, parse_cursor, parse_user_code,
};

fn letter() -> impl Strategy<Value = char> {
    prop::sample::select(
        USER_CODE_ALPHABET
            .iter()
            .map(|b| *b as char)
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #[test]
    fn user_code_parser_never_panics(s in ".{0,64}") {
        if let Some(code) = parse_user_code(&s) {
            prop_assert_eq!(code.len(), 8);
            prop_assert!(code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)));
        }
    }

    #[test]
    fn typed_codes_are_accepted_however_they_are_spaced_and_cased(
        letters in prop::collection::vec(letter(), 8),
        lower in any::<bool>(),
        sep in prop::sample::select(vec!["", "-", " ", " - "]),
    ) {
        let code: String = letters.iter().collect();
        let mut typed = format!("{}{sep}{}", &code[..4], &code[4..]);
        if lower {
            typed = typed.to_lowercase();
        }
        prop_assert_eq!(parse_user_code(&typed), Some(code));
    }

    #[test]
    fn a_letter_outside_the_alphabet_is_refused(
        letters in prop::collection::vec(letter(), 7),
        bad in "[AEIOUY0-9]",
        at in 0usize..8,
    ) {
        let mut code: String = letters.iter().collect();
        code.insert_str(at, &bad);
        prop_assert_eq!(parse_user_code(&code), None);
    }

    #[test]
    fn cursor_parser_never_panics(s in ".{0,200}") {
        if let Some(id) = parse_cursor(&s) {
            prop_assert!(!id.is_empty() && id.len() <= 64);
        }
    }

    #[test]
    fn cursors_round_trip(id in "[a-z2-7_-]{1,64}") {
        prop_assert_eq!(parse_cursor(&encode_cursor(&id)), Some(id));
    }
}

#[test]
fn generated_codes_use_the_whole_alphabet_evenly_enough() {
    let mut seen = [0u32; 20];
    for _ in 0..2000 {
        let c = new_user_code();
        assert_eq!(parse_user_code(&c).map(|n| n.len()), Some(8));
        for b in c.bytes().filter(|b| *b != b'-') {
            seen[USER_CODE_ALPHABET.iter().position(|a| *a == b).unwrap()] += 1;
        }
    }
    // 16000 letters, 800 expected each; a biased generator (e.g. modulo 256) shows here.
    assert!(seen.iter().all(|n| (600..1000).contains(n)), "{seen:?}");
}
