//! The chunked parser under the lane's rules and the smuggling checks': the
//! hostile bodies, and a body fed in pieces read as when fed whole.

use proptest::prelude::*;

use super::*;
use crate::express::CHUNK_RULES as LANE;
use crate::smuggle::CHUNK_RULES as CHECKS;

/// Feeds `parts` in turn to a parser under `rules`: where the body
/// stands after the last one fed (a feed that ends or breaks the body
/// is the last), how many bytes, from the first, it let pass, and where
/// that last feed started.
fn feed_all(rules: Rules, parts: &[&[u8]]) -> (Progress, usize, usize) {
    let mut parser = Parser::new(rules);
    let (mut passed, mut start) = (0, 0);
    for part in parts {
        let fed = parser.feed(part);
        passed += fed.body;
        if fed.progress != Progress::Going {
            return (fed.progress, passed, start);
        }
        start += part.len();
    }
    (Progress::Going, passed, start)
}

/// [`feed_all`]'s progress and bytes passed.
fn run(rules: Rules, parts: &[&[u8]]) -> (Progress, usize) {
    let (progress, passed, _) = feed_all(rules, parts);
    (progress, passed)
}

/// Under the lane's rules: where the body ends, counted from the first
/// byte fed, if it ends in `parts`.
fn ends(parts: &[&[u8]]) -> Result<Option<usize>, Malformed> {
    match run(LANE, parts) {
        (Progress::Going, _) => Ok(None),
        (Progress::Ended, end) => Ok(Some(end)),
        (Progress::Malformed(why), _) => Err(why),
    }
}

#[test]
fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
    let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
    let end = body.len() - 4;
    assert_eq!(ends(&[body]).unwrap(), Some(end));
    // Split anywhere, the same end.
    for i in 1..body.len() {
        assert_eq!(ends(&[&body[..i], &body[i..]]).unwrap(), Some(end), "{i}");
    }
    assert_eq!(ends(&[b"0\r\n\r\n"]).unwrap(), Some(5));
    assert_eq!(ends(&[b"5\r\nhel"]).unwrap(), None);
}

#[test]
fn malformed_chunked_bodies_are_errors() {
    for bad in [
        &b"zz\r\n"[..],
        b"5\r\nhelloXX",
        b"ffffffffffffffffff\r\n",
        b"-1\r\n",
    ] {
        assert!(ends(&[bad]).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let long = vec![b'1'; LANE.max_line + 10];
    assert!(ends(&[&long]).is_err());
    // A bare LF ends no line: the next response's head must never be
    // read as this body's trailers, nor the other way round.
    for bare in [&b"0\n\r\n"[..], b"0\r\n\n", b"5\nhello\r\n0\r\n\r\n"] {
        assert!(
            ends(&[bare]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bare)
        );
    }
    let trailers = "x: 1\r\n".repeat(LANE.max_trailers + 1);
    assert!(ends(&[format!("0\r\n{trailers}\r\n").as_bytes()]).is_err());
}

#[test]
fn the_chunks_before_a_malformed_piece_may_pass() {
    for (bytes, good) in [
        (&b"5\r\nhello\r\nzz\r\n"[..], 10),
        (b"5\r\nhelloXX", 8),
        (b"zz\r\n", 0),
        (b"0\r\nx: 1\n", 3),
    ] {
        let fed = Parser::new(LANE).feed(bytes);
        assert!(
            matches!(fed.progress, Progress::Malformed(_)),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(fed.body, good);
    }
    let mut parser = Parser::new(LANE);
    let fed = parser.feed(b"5\r\nhel");
    assert_eq!((fed.progress, fed.body), (Progress::Going, 6));
    let fed = parser.feed(b"lo\r\n0\r\n\r\nNEXT");
    assert_eq!((fed.progress, fed.body), (Progress::Ended, 9));
}

/// What the lane and the checks each make of one whole body.
struct Case {
    body: Vec<u8>,
    lane: Progress,
    checks: Progress,
}

fn case(body: impl AsRef<[u8]>, lane: Progress, checks: Progress) -> Case {
    Case {
        body: body.as_ref().to_vec(),
        lane,
        checks,
    }
}

/// The hostile bodies, and where the rules differ on purpose: each
/// under both rules, whole and split at every byte.
#[test]
fn hostile_bodies_under_both_rules() {
    use Malformed::*;
    use Progress::{Ended, Going, Malformed as Bad};
    let tail = "\r\nhello\r\n0\r\n\r\n";
    let cases = [
        // Sizes past what a u64 holds, or than the rules take.
        case("ffffffffffffffffff\r\n", Bad(Size), Bad(Size)),
        case("10000000000000000\r\n", Bad(Size), Bad(Size)),
        case("00000000000000005\r\nhello\r\n", Bad(Size), Bad(Size)),
        // 16 digits: a u64 for the lane, too long for the checks.
        case("ffffffffffffffff\r\nabc", Going, Bad(Size)),
        case("fffffffffffffff\r\nabc", Going, Going),
        // Not hex, signed, prefixed.
        case("zz\r\nhello\r\n0\r\n\r\n", Bad(Size), Bad(Size)),
        case("-1\r\n", Bad(Size), Bad(Size)),
        case("+5\r\nhello\r\n0\r\n\r\n", Bad(Size), Bad(Size)),
        case("0x5\r\nhello\r\n0\r\n\r\n", Bad(Size), Bad(Size)),
        // Whitespace: after the size for both, before it for the checks
        // only, a CR on the line for the checks only.
        case(format!("5 \t;x{tail}"), Ended, Ended),
        case(format!(" 5{tail}"), Bad(Size), Ended),
        case(format!("5\x0c{tail}"), Bad(Size), Ended),
        case(format!("5;a\rb{tail}"), Bad(Size), Ended),
        case(format!("5\r{tail}"), Bad(Size), Ended),
        // No digits: size 0 as httparse reads it, refused by the checks.
        case("\r\n\r\n", Ended, Bad(Size)),
        case(";x\r\n\r\n", Ended, Bad(Size)),
        // Chunk data longer than its size, or no CRLF after it: the lane
        // stops at the first wrong byte, the checks at the line's end.
        case("5\r\nhelloXX", Bad(DataOverrun), Going),
        case(
            "5\r\nhelloXX\r\n0\r\n\r\n",
            Bad(DataOverrun),
            Bad(DataOverrun),
        ),
        case("5\r\nhello\rX\r\n", Bad(DataOverrun), Bad(DataOverrun)),
        case("5\r\nhello0\r\n\r\n", Bad(DataOverrun), Bad(DataOverrun)),
        // A bare LF: refused by the lane, a line end for the checks.
        case("5\nhello\r\n0\r\n\r\n", Bad(BareLf), Ended),
        case("5\r\nhello\n0\r\n\r\n", Bad(DataOverrun), Ended),
        case("0\n\r\n", Bad(BareLf), Ended),
        case("0\r\n\n", Bad(BareLf), Ended),
        case("0\r\nx: 1\n\r\n", Bad(BareLf), Ended),
        // A huge extension: past the lane's line, within the checks'.
        case(
            format!("5;{}{tail}", "e".repeat(LANE.max_line)),
            Bad(LineTooLong),
            Ended,
        ),
        case(
            format!("5;{}{tail}", "e".repeat(CHECKS.max_line)),
            Bad(LineTooLong),
            Bad(LineTooLong),
        ),
        // A line with no end at all, as long as each rule allows, and
        // one byte more.
        case("1".repeat(LANE.max_line), Going, Going),
        case("1".repeat(LANE.max_line + 1), Bad(LineTooLong), Going),
        case(
            "1".repeat(CHECKS.max_line + 1),
            Bad(LineTooLong),
            Bad(LineTooLong),
        ),
        // Trailers: as many as the lane allows, one more, and a long one.
        case(
            format!("0\r\n{}\r\n", "x: 1\r\n".repeat(LANE.max_trailers)),
            Ended,
            Ended,
        ),
        case(
            format!("0\r\n{}\r\n", "x: 1\r\n".repeat(LANE.max_trailers + 1)),
            Bad(TooManyTrailers),
            Ended,
        ),
        case(
            format!("0\r\nx: {}\r\n\r\n", "v".repeat(LANE.max_line)),
            Bad(LineTooLong),
            Ended,
        ),
        // Cut short anywhere: the body goes on.
        case("5\r\nhel", Going, Going),
        case("5\r\nhello\r", Going, Going),
        case("0\r\nx: 1\r\n", Going, Going),
    ];
    for Case { body, lane, checks } in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
        for (rules, want) in [(LANE, lane), (CHECKS, checks)] {
            let (whole, _) = run(rules, &[&body]);
            assert_eq!(whole, want, "{shown:?} under {rules:?}");
            // Every split says the same (the long cases at fewer places).
            let step = (body.len() / 64).max(1);
            for at in (1..body.len()).step_by(step) {
                let (split, _) = run(rules, &[&body[..at], &body[at..]]);
                assert_eq!(split, want, "{shown:?} split at {at} under {rules:?}");
            }
        }
    }
}

#[test]
fn a_body_ends_where_it_ends_and_nothing_after_it_is_read() {
    for rules in [LANE, CHECKS] {
        let mut parser = Parser::new(rules);
        let fed = parser.feed(b"3\r\nabc\r\n0\r\n\r\nzz\r\n");
        assert_eq!((fed.progress, fed.body), (Progress::Ended, 13));
        // Fed again, it stays ended and takes nothing.
        let fed = parser.feed(b"zz\r\n");
        assert_eq!((fed.progress, fed.body), (Progress::Ended, 0));
        // Restarted, it reads the next body.
        parser.restart();
        let fed = parser.feed(b"0\r\n\r\n");
        assert_eq!((fed.progress, fed.body), (Progress::Ended, 5));
    }
    let mut parser = Parser::new(LANE);
    assert_eq!(
        parser.feed(b"zz\r\n").progress,
        Progress::Malformed(Malformed::Size)
    );
    let fed = parser.feed(b"0\r\n\r\n");
    assert_eq!(fed.body, 0);
    assert_eq!(fed.progress, Progress::Malformed(Malformed::Size));
}

/// A well-formed chunked body: its chunks (each with extensions or
/// not), trailers, and whether its lines end with a bare LF.
fn well_formed(bare_lf: bool) -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        proptest::collection::vec(any::<u8>(), 1..40),
        proptest::option::of("[a-z]{1,5}(=[a-z0-9]{0,5})?"),
        0..3usize,
        any::<bool>(),
    );
    let eols = proptest::collection::vec(any::<bool>(), 64);
    (
        proptest::collection::vec(chunk, 0..6),
        proptest::collection::vec("[a-z-]{1,8}: [ -~]{0,12}", 0..4),
        eols,
    )
        .prop_map(move |(chunks, trailers, eols)| {
            let mut eols = eols.into_iter().cycle();
            let mut eol = |body: &mut Vec<u8>| {
                let bare = bare_lf && eols.next().unwrap_or(false);
                body.extend_from_slice(if bare { b"\n" } else { b"\r\n" });
            };
            let mut body = Vec::new();
            for (data, ext, zeros, upper) in chunks {
                let size = format!("{}{:x}", "0".repeat(zeros), data.len());
                let size = if upper { size.to_uppercase() } else { size };
                body.extend_from_slice(size.as_bytes());
                if let Some(ext) = ext {
                    body.extend_from_slice(format!(";{ext}").as_bytes());
                }
                eol(&mut body);
                body.extend_from_slice(&data);
                eol(&mut body);
            }
            body.extend_from_slice(b"0");
            eol(&mut body);
            for trailer in trailers {
                body.extend_from_slice(trailer.as_bytes());
                eol(&mut body);
            }
            eol(&mut body);
            body
        })
}

/// Bytes a chunked body is made of, often in the wrong place.
fn framing_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b';'),
        Just(b' '),
        Just(b'\t'),
        Just(b'0'),
        Just(b'3'),
        Just(b'f'),
        Just(b'z'),
        Just(b':'),
        any::<u8>(),
    ];
    proptest::collection::vec(byte, 0..200)
}

/// A well-formed body with a few bytes changed, put in or taken out.
fn damaged() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), 0..3u8, framing_bytes());
    (well_formed(true), proptest::collection::vec(edit, 1..4)).prop_map(|(mut body, edits)| {
        for (at, kind, bytes) in edits {
            let at = at.index(body.len() + 1);
            match kind {
                0 => {
                    body.insert(at, bytes.first().copied().unwrap_or(b'\n'));
                }
                1 if at < body.len() => {
                    body.remove(at);
                }
                _ if at < body.len() => body[at] = bytes.first().copied().unwrap_or(b'x'),
                _ => {}
            }
        }
        body
    })
}

fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        well_formed(false),
        well_formed(true),
        damaged(),
        framing_bytes()
    ]
}

/// The rules under test: each user's, and each with tight limits, so
/// that long lines and many trailers come up in small bodies.
fn rules() -> impl Strategy<Value = Rules> {
    prop_oneof![
        Just(LANE),
        Just(CHECKS),
        Just(Rules {
            max_line: 12,
            max_trailers: 1,
            ..LANE
        }),
        Just(Rules {
            max_line: 12,
            max_trailers: 1,
            ..CHECKS
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Fed in pieces split anywhere, a body is read as when fed whole:
    /// the same end, or the same fault, after passing the same bytes
    /// (and those of a bad piece begun in an earlier piece, which had
    /// already gone on).
    #[test]
    fn fed_in_pieces_a_body_reads_as_when_fed_whole(
        rules in rules(),
        body in any_body(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut parts = Vec::new();
        let mut from = 0;
        for cut in cuts.into_iter().chain([body.len()]) {
            parts.push(&body[from..cut]);
            from = cut;
        }
        let (whole, whole_passed) = run(rules, &[&body]);
        let (split, split_passed, last_feed) = feed_all(rules, &parts);
        prop_assert_eq!(split, whole);
        if let Progress::Malformed(_) = whole {
            prop_assert_eq!(split_passed, whole_passed.max(last_feed));
        } else {
            prop_assert_eq!(split_passed, whole_passed);
        }
    }

    /// A well-formed body ends exactly at its end, under either rules.
    #[test]
    fn a_well_formed_body_ends_at_its_last_byte(body in well_formed(false), lf in well_formed(true)) {
        prop_assert_eq!(run(LANE, &[&body]), (Progress::Ended, body.len()));
        prop_assert_eq!(run(CHECKS, &[&body]), (Progress::Ended, body.len()));
        prop_assert_eq!(run(CHECKS, &[&lf]), (Progress::Ended, lf.len()));
    }
}
