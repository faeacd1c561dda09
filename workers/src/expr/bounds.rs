//! Bounds on untrusted program text, checked before it is parsed, and the
//! stack that parsing and compiling run on.
//!
//! jaq's lexer, parser and compiler recurse on the program's structure. The
//! text is bounded in length and in bracket nesting first (the nesting gives
//! the clear message), and loading runs on a thread of its own whose stack
//! holds the deepest structure that length allows: no text, at any size,
//! can overflow it. `expr::tests` and `tests/hostile_expressions.rs` build
//! the deepest texts of every construct at the bounds.

use std::panic::AssertUnwindSafe;

/// The longest program text, in bytes.
pub const MAX_LEN: usize = 8 * 1024;
/// The deepest nesting of `(`, `[`, `{` and string interpolations.
pub const MAX_NESTING: usize = 64;
/// The stack a load runs on, reserved and committed only as touched. The
/// deepest program of [`MAX_LEN`] bytes, measured over every construct by
/// `tests/hostile_expressions.rs`, is a run of 8 K unary minuses: it
/// overflows 64 MiB unoptimised (4 K of them fit), and fits in this.
pub const LOAD_STACK: usize = 256 * 1024 * 1024;

/// Why a text was refused before parsing: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooBig {
    /// Byte offset where the bound was passed.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// Checks `code`'s length and nesting.
pub fn check(code: &str) -> Result<(), TooBig> {
    if code.len() > MAX_LEN {
        return Err(TooBig {
            offset: MAX_LEN,
            reason: format!(
                "the expression is {} bytes long, more than {MAX_LEN}",
                code.len()
            ),
        });
    }
    // Brackets and interpolations, as the lexer nests them; inside a string
    // only `\(` opens, and its `)` closes back into the string.
    #[derive(Clone, Copy, PartialEq)]
    enum Open {
        Bracket,
        Interpolation,
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut in_string = false;
    let mut bytes = code.bytes().enumerate();
    while let Some((i, b)) = bytes.next() {
        if in_string {
            match b {
                b'"' => in_string = false,
                b'\\' => {
                    if let Some((_, b'(')) = bytes.next() {
                        stack.push(Open::Interpolation);
                        in_string = false;
                    }
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'#' => {
                    // A comment runs to the end of the line.
                    for (_, c) in bytes.by_ref() {
                        if c == b'\n' {
                            break;
                        }
                    }
                }
                b'(' | b'[' | b'{' => stack.push(Open::Bracket),
                b')' | b']' | b'}' => in_string = stack.pop() == Some(Open::Interpolation),
                _ => {}
            }
        }
        if stack.len() > MAX_NESTING {
            return Err(TooBig {
                offset: i,
                reason: format!("the expression nests deeper than {MAX_NESTING} levels"),
            });
        }
    }
    Ok(())
}

thread_local! {
    static ON_LOAD_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` on a thread with a [`LOAD_STACK`] stack and returns its
/// result; a panic in `f` is `Err` (its message, when it has one), never
/// this thread's.
pub fn isolated<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if ON_LOAD_THREAD.get() {
        // Already on one (a manifest compiling its expressions): no second thread.
        return std::panic::catch_unwind(AssertUnwindSafe(f))
            .map_err(|payload| panic_message(payload.as_ref()));
    }
    let run = || {
        ON_LOAD_THREAD.set(true);
        std::panic::catch_unwind(AssertUnwindSafe(f))
    };
    let joined = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("fabric-load".into())
            .stack_size(LOAD_STACK)
            .spawn_scoped(scope, run)
            .map(|handle| handle.join())
    });
    match joined {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(payload)) | Err(payload)) => Err(panic_message(payload.as_ref())),
        Err(e) => Err(format!("cannot start a thread to check it: {e}")),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "checking it failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_counts_brackets_and_interpolations_not_string_contents() {
        assert!(check("[[[.]]]").is_ok());
        let deep = format!("{}.{}", "[".repeat(65), "]".repeat(65));
        let err = check(&deep).unwrap_err();
        assert_eq!(err.offset, 64, "{err:?}");
        // Brackets inside a string are text.
        let text = format!("\"{}\"", "[".repeat(500));
        assert!(check(&text).is_ok());
        // Interpolations nest: each `\(` opens, its `)` returns to the string.
        let mut s = String::from(".");
        for _ in 0..70 {
            s = format!("\"\\({s})\"");
        }
        assert!(check(&s).is_err());
        // A comment's brackets are not counted.
        assert!(check(&format!("# {}\n.", "(".repeat(100))).is_ok());
    }

    #[test]
    fn length_is_bounded() {
        let long = format!(".a{}", " ".repeat(MAX_LEN));
        assert_eq!(check(&long).unwrap_err().offset, MAX_LEN);
    }

    #[test]
    fn a_panic_in_isolation_is_an_error_not_this_threads() {
        let r: Result<(), String> = isolated(|| panic!("boom"));
        assert_eq!(r.unwrap_err(), "boom");
        assert_eq!(isolated(|| 7).unwrap(), 7);
    }
}
