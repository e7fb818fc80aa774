//! The generated part of the hostile-input corpus, shared by `tests/hostile.rs` (bounds on the
//! real binary) and `benches/config.rs` (per-case speed).

/// The hostile corpus: (name, content, expected code). Generated deterministically so the
/// repository holds no 100 MB files; `tests/hostile/*.yaml` are extra committed cases.
pub fn generated() -> Vec<(String, Vec<u8>, &'static str)> {
    let mut cases: Vec<(String, Vec<u8>, &'static str)> = Vec::new();
    // Billion laughs: 10 levels of 10 aliases each, 10^10 nodes once expanded.
    let mut bomb = String::from(
        "version: 1\nproject: lol\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n"
        ));
    }
    cases.push(("alias-bomb".into(), bomb.into_bytes(), "E0006"));
    // 10,000-deep nesting, flow and block style.
    let deep_flow = format!(
        "version: 1\nproject: deep\nx: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    cases.push(("deep-flow".into(), deep_flow.into_bytes(), "E0006"));
    let deep_map = format!(
        "version: 1\nproject: deep\nx: {}1{}\n",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    cases.push(("deep-flow-map".into(), deep_map.into_bytes(), "E0006"));
    let deep_block = format!(
        "version: 1\nproject: deep\nx:\n  {}x\n",
        "- ".repeat(10_000)
    );
    cases.push(("deep-block".into(), deep_block.into_bytes(), "E0006"));
    cases.push((
        "duplicate-keys".into(),
        b"version: 1\nproject: a\nproject: b\n".to_vec(),
        "E0005",
    ));
    // Deterministic binary garbage (an LCG), with NULs and every byte value.
    let mut state: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..65_536)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect();
    cases.push(("binary-garbage".into(), garbage, "E0003"));
    cases.push((
        "invalid-utf8".into(),
        b"version: 1\nproject: \xff\xfe\n".to_vec(),
        "E0003",
    ));
    cases.push((
        "bom-inside".into(),
        "version: 1\nproject: a\u{feff}b\n".as_bytes().to_vec(),
        "E0004",
    ));
    cases.push((
        "tabs".into(),
        b"version: 1\napps:\n\tweb: {}\n".to_vec(),
        "E0004",
    ));
    cases.push(("empty".into(), Vec::new(), "E0008"));
    cases.push((
        "only-comments".into(),
        b"# nothing\n\n# here\n".to_vec(),
        "E0008",
    ));
    cases.push((
        "list-not-map".into(),
        b"- version: 1\n- project: a\n".to_vec(),
        "E0008",
    ));
    cases.push((
        "scalar-not-map".into(),
        b"just a string\n".to_vec(),
        "E0008",
    ));
    cases.push((
        "unknown-version".into(),
        b"version: 99\nproject: a\n".to_vec(),
        "E0107",
    ));
    cases.push((
        "document-storm".into(),
        "---\n".repeat(200_000).into_bytes(),
        "E0007",
    ));
    // Many small nodes, just under the size cap: the node budget stops it.
    cases.push((
        "node-flood".into(),
        format!("version: 1\nproject: a\nx: [{}]\n", "1,".repeat(1_500_000)).into_bytes(),
        "E0006",
    ));
    // One enormous key (YAML caps simple keys at 1024 characters) and one enormous value.
    cases.push((
        "huge-key".into(),
        format!("version: 1\nproject: a\n{}: 1\n", "k".repeat(3_000_000)).into_bytes(),
        "E0004",
    ));
    cases.push((
        "huge-value".into(),
        format!(
            "version: 1\nproject: acme\nreconcile: {{ drift: \"{}\" }}\n",
            "x".repeat(3_000_000)
        )
        .into_bytes(),
        "E0208",
    ));
    // Terminal escape sequences in keys must not reach the terminal raw.
    cases.push((
        "escape-sequences".into(),
        b"version: 1\nproject: a\n\"\\e[31mred\": 1\n".to_vec(),
        "E0101",
    ));
    cases
}
