//! Expressions: jq programs (through the jaq crates), checked and compiled
//! once at load, run per event in a sandbox under a budget.
//!
//! A program sees the payload as `.` and the variables `$attributes`,
//! `$vars`, `$props` and `$correlationId`. Its first output is its value; a
//! program with no output yields `null`. Programs are untrusted code: their
//! text is bounded before it is parsed ([`bounds`]), builtins that reach the
//! host are not there ([`sandbox::REMOVED`]), and every run is metered: a
//! short one inline, a longer one again on the evaluation threads
//! ([`Evaluator`]), so the async runtime never waits on one for long.

pub mod bounds;
pub mod pool;
pub mod sandbox;

use std::sync::Arc;

use jaq_core::Compiler;
use jaq_core::load::{Arena, File, Loader};
use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorType, FlowError};
use crate::event::Event;
pub use sandbox::{Budget, Exhausted, Failure};

/// The variables every program may use, in the order they are bound.
const GLOBALS: [&str; 4] = ["$attributes", "$vars", "$props", "$correlationId"];

/// The stack of each evaluation thread: reserved, and committed only as a
/// run touches it. [`BUDGET`]'s `stack` keeps a metered run inside half of
/// it; the other half holds what jaq does unmetered on the deepest value a
/// run can build within its steps (about one level per three steps): drop
/// it (under 1 KiB a level unoptimised), compare or print it.
pub const EVAL_STACK: usize = 1024 * 1024 * 1024;

/// What one expression run may spend, at every worker size: a larger
/// worker runs more expressions at once (it has more evaluation threads),
/// not longer ones. A million steps take 27–90 ms in a release build
/// (measured: a `range` loop 27 ms, a `reduce` 62 ms, plain recursion
/// 88 ms), far beyond what a flow's expression needs; they also bound how
/// deep a value a run can build (see [`EVAL_STACK`]).
pub const BUDGET: Budget = Budget {
    steps: 1_000_000,
    time: std::time::Duration::from_secs(1),
    stack: EVAL_STACK / 2,
};

/// The longest error text an expression passes on (it may quote the input).
const MAX_ERROR_TEXT: usize = 200;

/// Why a program did not compile: where in its text, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (at character {offset} of the expression)")]
pub struct CompileError {
    /// Byte offset into the program text.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// A compiled program, cheap to clone and share across tasks.
#[derive(Clone)]
pub struct Expr {
    filter: Arc<sandbox::Filter>,
    source: Arc<str>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

fn offset_in(code: &str, part: &str) -> usize {
    // `part` is a slice of `code` (jaq reports positions that way); anything else is the end.
    let (start, p) = (code.as_ptr() as usize, part.as_ptr() as usize);
    if p >= start && p <= start + code.len() {
        p - start
    } else {
        code.len()
    }
}

impl Expr {
    /// Compiles `code`: bounded first, then parsed and compiled on a thread
    /// whose stack holds any text within the bounds.
    pub fn compile(code: &str) -> Result<Self, CompileError> {
        bounds::check(code).map_err(|e| CompileError {
            offset: e.offset,
            reason: e.reason,
        })?;
        let filter = bounds::isolated(|| compile_here(code)).map_err(|m| CompileError {
            offset: 0,
            reason: format!("cannot compile the expression ({m})"),
        })??;
        Ok(Expr {
            filter: Arc::new(filter),
            source: code.into(),
        })
    }

    /// The program's text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

fn compile_here(code: &str) -> Result<sandbox::Filter, CompileError> {
    let arena = Arena::default();
    let loaded = Loader::new(sandbox::defs()).load(&arena, File { code, path: () });
    let modules = loaded.map_err(|errors| {
        let first = errors.into_iter().next().map(|(_, e)| e);
        let (offset, reason) = match first {
            Some(jaq_core::load::Error::Lex(errs)) => match errs.first() {
                Some((expect, at)) => {
                    (offset_in(code, at), format!("expected {}", expect.as_str()))
                }
                None => (0, "cannot read the expression".into()),
            },
            Some(jaq_core::load::Error::Parse(errs)) => match errs.first() {
                Some((expect, at)) => {
                    (offset_in(code, at), format!("expected {}", expect.as_str()))
                }
                None => (0, "cannot parse the expression".into()),
            },
            Some(jaq_core::load::Error::Io(_)) => (0, "modules cannot be imported".into()),
            None => (0, "cannot parse the expression".into()),
        };
        CompileError { offset, reason }
    })?;
    Compiler::default()
        .with_funs(sandbox::funs())
        .with_global_vars(GLOBALS)
        .compile(modules)
        .map_err(|errors| {
            let first = errors
                .into_iter()
                .next()
                .and_then(|(_, errs)| errs.into_iter().next());
            match first {
                Some((name, undefined)) => CompileError {
                    offset: offset_in(code, name),
                    reason: format!("undefined {} {name}", undefined.as_str()),
                },
                None => CompileError {
                    offset: 0,
                    reason: "cannot compile the expression".into(),
                },
            }
        })
}

/// What a run may spend on the async runtime's own thread before it is
/// handed to the evaluation threads: a few thousand steps take well under a
/// millisecond, and a value a run builds within them is a few hundred levels
/// deep at most, which the runtime thread's stack holds whatever jaq does
/// with it. Nearly every flow expression finishes here (a typical one takes
/// tens of steps); the hand-off to a thread and back cost ~50 µs a run.
pub const INLINE: Budget = Budget {
    steps: 1_000,
    time: std::time::Duration::from_millis(50),
    stack: 256 * 1024,
};

/// Runs a worker's expressions, each within the worker size's budget: first
/// inline within [`INLINE`], and a run that needs more is run again, from
/// the start, on the evaluation threads (jq is pure: a run leaves nothing
/// behind). Cheap to clone.
#[derive(Clone)]
pub struct Evaluator {
    pool: pool::Pool,
    budget: Budget,
    /// `$props`, converted once.
    props: Val,
}

fn to_val(v: &Value) -> Result<Val, FlowError> {
    Val::deserialize(v).map_err(|e| FlowError::new(ErrorType::Expression, e.to_string()))
}

impl Evaluator {
    /// Starts `threads` evaluation threads for an app with `props`.
    pub fn start(budget: Budget, threads: usize, props: &Value) -> std::io::Result<Self> {
        let props = Val::deserialize(props).map_err(std::io::Error::other)?;
        Ok(Evaluator {
            pool: pool::Pool::new(threads, EVAL_STACK),
            budget,
            props,
        })
    }

    /// What each run may spend.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Runs `expr` on `event` and returns its first output.
    pub async fn value(&self, expr: &Expr, event: &Event) -> Result<Value, FlowError> {
        let vars = vec![
            to_val(&event.attributes)?,
            to_val(&Value::Object(event.vars.clone()))?,
            self.props.clone(),
            Val::from(event.correlation_id.clone()),
        ];
        let input = to_val(&event.payload)?;
        let inline = Budget {
            steps: INLINE.steps.min(self.budget.steps),
            ..INLINE
        };
        let outcome = match sandbox::run(&expr.filter, vars.clone(), input.clone(), inline) {
            // Past the inline budget: all over again, where it may run long.
            Err(Failure::Exhausted(
                Exhausted::Steps(_) | Exhausted::Depth | Exhausted::Time(_),
            )) if inline.steps < self.budget.steps => {
                let (filter, budget) = (expr.filter.clone(), self.budget);
                self.pool
                    .run(move || sandbox::run(&filter, vars, input, budget))
                    .await
                    .map_err(|e| FlowError::new(ErrorType::Expression, e.to_string()))?
            }
            done => done,
        };
        outcome.map_err(|failure| {
            if !matches!(failure, Failure::Error(_)) {
                tracing::warn!(expression = %expr.source(), ?failure, correlation_id = %event.correlation_id, "expression stopped");
            }
            failure_error(failure)
        })
    }

    /// Runs `expr` and reads its result as a condition: jq truthiness
    /// (anything but `false` and `null` is true).
    pub async fn truth(&self, expr: &Expr, event: &Event) -> Result<bool, FlowError> {
        Ok(!matches!(
            self.value(expr, event).await?,
            Value::Null | Value::Bool(false)
        ))
    }

    /// Runs `expr` and reads its result as text: a string as it is, anything else as JSON.
    pub async fn text(&self, expr: &Expr, event: &Event) -> Result<String, FlowError> {
        Ok(match self.value(expr, event).await? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }
}

/// The flow error a failed run becomes. Its message never quotes the
/// program (a client must not see a flow's source): a failure on the
/// event's own data is a 400, a run the sandbox stopped a 500.
fn failure_error(failure: Failure) -> FlowError {
    match failure {
        Failure::Error(text) => {
            let mut e = FlowError::new(
                ErrorType::Expression,
                format!("an expression failed on this event: {}", clip(&text)),
            );
            e.status = Some(axum::http::StatusCode::BAD_REQUEST);
            e
        }
        Failure::NotJson(text) => FlowError::new(ErrorType::Expression, clip(&text)),
        Failure::Exhausted(why) => FlowError::new(ErrorType::Expression, why.to_string()),
        Failure::Panicked => FlowError::new(ErrorType::Expression, "an expression could not run"),
    }
}

/// `text`, cut to [`MAX_ERROR_TEXT`] bytes at a character boundary.
fn clip(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(payload: Value) -> Event {
        let mut e = Event::new(payload, json!({"uri": {"id": "42"}}));
        e.vars.insert("n".into(), json!(3));
        e.correlation_id = "c-1".into();
        e
    }

    const TEST_BUDGET: Budget = Budget {
        steps: 1_000_000,
        time: std::time::Duration::from_secs(10),
        stack: 64 * 1024 * 1024,
    };

    fn evaluator(props: Value) -> Evaluator {
        Evaluator::start(TEST_BUDGET, 2, &props).unwrap()
    }

    async fn eval(code: &str, payload: Value) -> Result<Value, FlowError> {
        evaluator(json!({}))
            .value(&Expr::compile(code).unwrap(), &event(payload))
            .await
    }

    #[tokio::test]
    async fn sees_payload_and_variables() {
        let e = Expr::compile("{id: .orderId, uri: $attributes.uri.id, n: $vars.n, t: $props.threshold, c: $correlationId}").unwrap();
        let out = evaluator(json!({"threshold": 100}))
            .value(&e, &event(json!({"orderId": 7})))
            .await
            .unwrap();
        assert_eq!(
            out,
            json!({"id": 7, "uri": "42", "n": 3, "t": 100, "c": "c-1"})
        );
    }

    #[tokio::test]
    async fn truthiness_text_and_empty() {
        let ev = evaluator(json!({}));
        let e = event(json!({"a": null, "b": 0}));
        let c = |code: &str| Expr::compile(code).unwrap();
        assert!(!ev.truth(&c(".a"), &e).await.unwrap());
        assert!(ev.truth(&c(".b"), &e).await.unwrap());
        assert!(!ev.truth(&c(".a != null"), &e).await.unwrap());
        assert_eq!(ev.text(&c("\"hi \\(.b)\""), &e).await.unwrap(), "hi 0");
        assert_eq!(ev.value(&c("empty"), &e).await.unwrap(), Value::Null);
    }

    #[test]
    fn compile_errors_say_where() {
        let err = Expr::compile(".a | (").unwrap_err();
        assert!(err.reason.contains("expected"), "{err}");
        let err = Expr::compile(".a | nosuchfn(1)").unwrap_err();
        assert_eq!(err.offset, 5, "{err}");
        assert!(err.reason.contains("nosuchfn"), "{err}");
        let err = Expr::compile("$nope").unwrap_err();
        assert!(err.reason.contains("nope"), "{err}");
    }

    #[tokio::test]
    async fn run_time_errors_are_expression_errors_that_quote_no_source() {
        let err = eval(".a + 1", json!({"a": "x"})).await.unwrap_err();
        assert_eq!(err.kind, ErrorType::Expression);
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(!err.message.contains(".a + 1"), "{err}");
        let err = eval("error(\"boom\")", json!(null)).await.unwrap_err();
        assert!(err.message.contains("boom"), "{err}");
        // A long payload quoted by jq's message is cut.
        let err = eval(".a", json!("x".repeat(10_000))).await.unwrap_err();
        assert!(err.message.len() < 400, "{}", err.message.len());
    }

    #[test]
    fn builtins_that_reach_the_host_do_not_exist() {
        for code in [
            "env",
            "$ENV",
            "env.PATH",
            "halt",
            "halt(7)",
            "halt_error",
            "halt_error(1)",
            "input",
            "inputs",
            "input_filename",
            "debug",
            "debug(1)",
            "stderr",
            "localtime",
            "$__prog_name",
        ] {
            assert!(Expr::compile(code).is_err(), "{code} compiles");
        }
    }

    #[tokio::test]
    async fn loops_and_runaway_recursion_stop_at_the_budget_and_the_threads_go_on() {
        let ev = Evaluator::start(
            Budget {
                steps: 200_000,
                time: std::time::Duration::from_secs(5),
                stack: 8 * 1024 * 1024,
            },
            1,
            &json!({}),
        )
        .unwrap();
        for code in [
            "last(repeat(1))",
            "def f: f; f",
            "def f: 1 + f; f",
            "def f: [f]; f",
            "[recurse(. + 1)]",
            "reduce range(1e9) as $i (0; . + $i)",
            "[limit(1e9; repeat(1))] | length",
            "until(false; .)",
            "last(range(1e18))",
            "[range(1e18)] | length",
            "last(range(0; 1; 0))",
            "[limit(1e18; range(1e18))] | length",
            "first(skip(1e18; range(1e18)))",
            "range(1e18) | select(. < 0)",
        ] {
            let err = ev
                .value(&Expr::compile(code).unwrap(), &event(json!(0)))
                .await
                .unwrap_err();
            assert_eq!(err.kind, ErrorType::Expression, "{code}");
            assert_eq!(
                err.status(),
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "{code}: {err}"
            );
        }
        // The one thread that ran them all still serves.
        let ok = ev
            .value(&Expr::compile(". + 1").unwrap(), &event(json!(1)))
            .await
            .unwrap();
        assert_eq!(ok, json!(2));
    }

    #[tokio::test]
    async fn short_runs_stay_inline_and_long_ones_finish_on_the_evaluation_threads() {
        let ev = Evaluator::start(BUDGET, 1, &json!({"greeting": "hi"})).unwrap();
        let short = Expr::compile(r#"{got: ., hello: "\($props.greeting)"}"#).unwrap();
        assert_eq!(
            ev.value(&short, &event(json!(1))).await.unwrap(),
            json!({"got": 1, "hello": "hi"})
        );
        assert!(!ev.pool.started(), "a short run needs no thread");
        // Past the inline steps: run again from the start, to the same answer.
        let long = Expr::compile("reduce range(5000) as $i (0; . + $i)").unwrap();
        assert_eq!(
            ev.value(&long, &event(json!(null))).await.unwrap(),
            json!(12497500)
        );
        assert!(ev.pool.started());
        // Recursing past the inline stack goes the same way.
        let deep = Expr::compile("def f: if . < 300 then . + 1 | f else . end; 0 | f").unwrap();
        assert_eq!(
            ev.value(&deep, &event(json!(null))).await.unwrap(),
            json!(300)
        );
    }

    #[tokio::test]
    async fn deep_values_are_refused_as_results_and_as_json_text() {
        // The steps and stack of every worker; time to spare for an unoptimised build.
        let budget = Budget {
            time: std::time::Duration::from_secs(60),
            ..BUDGET
        };
        let ev = Evaluator::start(budget, 1, &json!({})).unwrap();
        let run = |code: &str| {
            let (ev, e) = (ev.clone(), Expr::compile(code).unwrap());
            async move { ev.value(&e, &event(json!(0))).await }
        };
        // As deep as the steps allow, then dropped: an answer, not a crash.
        let n = run("reduce range(200000) as $i (null; [.]) | length").await;
        assert_eq!(n.unwrap(), json!(1));
        let err = run("reduce range(200) as $i (null; [.])")
            .await
            .unwrap_err();
        assert!(err.message.contains("deeper than 128"), "{err}");
        let err = run("(\"[\" * 100000) + (\"]\" * 100000) | fromjson")
            .await
            .unwrap_err();
        assert!(err.message.contains("recursion limit"), "{err}");
        assert_eq!(run("\"[[1]]\" | fromjson").await.unwrap(), json!([[1]]));
    }
}
