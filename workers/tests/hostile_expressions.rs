//! Expressions and manifests as a hostile tenant writes them: every text,
//! at any size and nesting, is compiled or refused, never a crash.
//!
//! The deepest text of each construct is built at the length bound (what
//! `expr::bounds::LOAD_STACK` is sized for), and a property test throws
//! random nestings of the constructs at the compiler and the manifest loader.

use proptest::prelude::*;
use workers::expr::Expr;
use workers::expr::bounds::MAX_LEN;
use workers::manifest;

/// `open` repeated, then `middle`, then `close` repeated, as many times as
/// fit in `len` bytes.
fn nest(open: &str, middle: &str, close: &str, len: usize) -> String {
    let n = (len - middle.len()) / (open.len() + close.len());
    format!("{}{middle}{}", open.repeat(n), close.repeat(n))
}

/// The deepest programs of every construct the parser or compiler recurses
/// on, at `len` bytes.
fn deepest(len: usize) -> Vec<(&'static str, String)> {
    vec![
        ("brackets", nest("[", ".", "]", len)),
        ("parens", nest("(", ".", ")", len)),
        ("objects", nest("{a:", ".", "}", len)),
        ("if", nest("if . then ", ".", " else . end", len)),
        (
            "elif",
            format!(
                "if . then .{} else . end",
                " elif . then .".repeat((len - 30) / 15)
            ),
        ),
        ("reduce", nest("reduce . as $x (.; ", ".", ")", len)),
        ("foreach", nest("foreach . as $x (.; ", ".", ")", len)),
        ("def", nest("def f: ", ".", "; f", len)),
        ("def-args", nest("def f(g): ", "g", "; f(.)", len)),
        ("try", nest("try ", ".", "", len)),
        ("label", nest("label $x | ", ".", "", len)),
        ("as", nest(". as $x | ", ".", "", len)),
        ("negation", nest("-", "1", "", len)),
        ("pipes", nest(". | ", ".", "", len)),
        ("commas", nest(". , ", ".", "", len)),
        ("sums", nest("1 + ", "1", "", len)),
        ("alternatives", nest(". // ", ".", "", len)),
        ("and", nest(". and ", ".", "", len)),
        ("paths", nest(".a", "", "", len)),
        ("optional", nest(".a?", "", "", len)),
        ("indexes", nest(".[0]", ".", "", len)),
        ("slices", nest(".[1:]", ".", "", len)),
        ("calls", nest("not | ", ".", "", len)),
        ("interpolation", nest("\"\\(", ".", ")\"", len)),
        ("updates", nest(".a |= ", ".", "", len)),
    ]
}

#[test]
fn the_deepest_text_of_every_construct_compiles_or_is_refused() {
    for len in [MAX_LEN - 1, MAX_LEN, MAX_LEN + 1, 4 * MAX_LEN] {
        for (what, code) in deepest(len) {
            // Either is fine; returning at all is the point.
            let outcome = Expr::compile(&code).map(|_| ());
            if code.len() > MAX_LEN {
                assert!(outcome.is_err(), "{what}: {} bytes compiled", code.len());
            }
        }
    }
}

#[test]
fn a_thousand_nested_brackets_are_refused_with_where() {
    // The issue's own crash: a 2 KB request that overflowed the control plane.
    let code = format!("{}.{}", "[".repeat(1000), "]".repeat(1000));
    let err = Expr::compile(&code).unwrap_err();
    assert!(err.reason.contains("nests deeper"), "{err}");
    assert_eq!(err.offset, 64);
    let parens = format!("{}.{}", "(".repeat(5000), ")".repeat(5000));
    assert!(Expr::compile(&parens).is_err());
}

fn manifest_with(expr: &str) -> String {
    // A YAML single-quoted scalar: quotes doubled, no line breaks.
    let quoted = expr.replace('\'', "''").replace('\n', " ");
    format!(
        "name: hostile\nflows:\n  - name: f\n    source: {{ http: {{ method: GET, path: /x }} }}\n    steps:\n      - set-payload: '{quoted}'\n"
    )
}

#[test]
fn manifests_holding_the_deepest_expressions_load_or_are_refused_with_a_line() {
    for (what, code) in deepest(MAX_LEN) {
        if let Err(e) = manifest::load(&manifest_with(&code)) {
            assert!(e.line >= 1, "{what}: {e}");
        }
    }
}

#[test]
fn deeply_nested_yaml_and_steps_are_refused_not_a_crash() {
    let flow_seq = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let yaml = format!("name: x\nproperties: {{ a: {flow_seq} }}\nflows: []\n");
    assert!(manifest::load(&yaml).is_err());
    // Choices inside choices, as deep as YAML's own depth limit lets them go.
    let mut steps = String::from("[ { log: '\"leaf\"' } ]");
    for _ in 0..200 {
        steps = format!("[ {{ choice: {{ when: [ {{ if: 'true', steps: {steps} }} ] }} }} ]");
    }
    let yaml = format!("name: x\nflows:\n  - name: f\n    steps: {steps}\n");
    assert!(manifest::load(&yaml).is_err());
    let huge = format!(
        "name: x\nflows: []\n#{}",
        " ".repeat(manifest::MAX_MANIFEST_BYTES)
    );
    assert!(manifest::load(&huge).unwrap_err().reason.contains("bytes"));
}

const PIECES: [&str; 24] = [
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    "{a:",
    "def f: ",
    "; f",
    "reduce . as $x (.; ",
    "if . then ",
    " else . end",
    " end",
    ".",
    "|",
    ",",
    "\"\\(",
    ")\"",
    "try ",
    "-",
    "$x",
    " as $x | ",
    "..",
    "f",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_nestings_compile_or_are_refused(
        pieces in proptest::collection::vec(0..PIECES.len(), 0..400),
        repeat in 1usize..40,
    ) {
        let unit: String = pieces.iter().map(|&i| PIECES[i]).collect();
        let code = unit.repeat(repeat);
        let _ = Expr::compile(&code);
        let _ = manifest::load(&manifest_with(&code));
    }

    #[test]
    fn any_text_compiles_or_is_refused(code in "\\PC{0,2000}") {
        let _ = Expr::compile(&code);
    }
}

#[test]
fn aliases_cannot_multiply_the_expressions_a_manifest_compiles() {
    // One anchored expression of the longest length, aliased 99 times (the
    // YAML reader refuses 100 aliases of one anchor by itself):
    // 800 KiB of text to compile from a 10 KiB manifest.
    let long = format!("{}1", "- ".repeat((MAX_LEN - 1) / 2));
    let mut yaml = format!(
        "name: aliases\nflows:\n  - name: f\n    source: {{ http: {{ method: GET, path: /x }} }}\n    steps:\n      - set-payload: &e '{long}'\n"
    );
    for _ in 0..99 {
        yaml.push_str("      - set-payload: *e\n");
    }
    let e = manifest::load(&yaml).unwrap_err();
    assert!(e.reason.contains("aliases expanded"), "{e}");

    // Aliases of aliases (a "billion laughs"): refused by the replay limit.
    let mut bomb = String::from("name: laughs\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n");
    for i in 1..10 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!("x{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
    }
    bomb.push_str("flows:\n  - name: f\n    steps:\n      - log: '1'\n");
    assert!(manifest::load(&bomb).is_err());
}
