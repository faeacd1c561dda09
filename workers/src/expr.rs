//! Expressions: jq programs (through the jaq crates), compiled once at load, run per event.
//!
//! A program sees the payload as `.` and the variables `$attributes`, `$vars`,
//! `$props` and `$correlationId`. Its first output is its value; a program
//! with no output yields `null`.

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorType, FlowError};
use crate::event::Event;

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// The variables every program may use, in the order they are bound.
const GLOBALS: [&str; 4] = ["$attributes", "$vars", "$props", "$correlationId"];

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
    filter: Arc<Filter>,
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
    /// Compiles `code`.
    pub fn compile(code: &str) -> Result<Self, CompileError> {
        let arena = Arena::default();
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let loaded = Loader::new(defs).load(&arena, File { code, path: () });
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
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let filter = Compiler::default()
            .with_funs(funs)
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
            })?;
        Ok(Expr {
            filter: Arc::new(filter),
            source: code.into(),
        })
    }

    /// The program's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on `event` and returns its first output.
    pub fn eval(&self, event: &Event, props: &Value) -> Result<Value, FlowError> {
        let to_val = |v: &Value| Val::deserialize(v).map_err(|e| self.error(e.to_string()));
        let vars = [
            to_val(&event.attributes)?,
            to_val(&Value::Object(event.vars.clone()))?,
            to_val(props)?,
            Val::from(event.correlation_id.clone()),
        ];
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new(vars));
        let input = to_val(&event.payload)?;
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr);
        match outputs.next() {
            None => Ok(Value::Null),
            Some(Err(e)) => Err(self.error(e.to_string())),
            Some(Ok(val)) => serde_json::from_str(&val.to_string())
                .map_err(|e| self.error(format!("result is not JSON: {e}"))),
        }
    }

    /// Runs the program and reads its result as a condition: jq truthiness
    /// (anything but `false` and `null` is true).
    pub fn eval_bool(&self, event: &Event, props: &Value) -> Result<bool, FlowError> {
        Ok(!matches!(
            self.eval(event, props)?,
            Value::Null | Value::Bool(false)
        ))
    }

    /// Runs the program and reads its result as text: a string as it is, anything else as JSON.
    pub fn eval_text(&self, event: &Event, props: &Value) -> Result<String, FlowError> {
        Ok(match self.eval(event, props)? {
            Value::String(s) => s,
            other => other.to_string(),
        })
    }

    fn error(&self, reason: String) -> FlowError {
        FlowError::new(
            ErrorType::Expression,
            format!("{:?}: {reason}", &*self.source),
        )
    }
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

    #[test]
    fn sees_payload_and_variables() {
        let e = Expr::compile("{id: .orderId, uri: $attributes.uri.id, n: $vars.n, t: $props.threshold, c: $correlationId}").unwrap();
        let out = e
            .eval(&event(json!({"orderId": 7})), &json!({"threshold": 100}))
            .unwrap();
        assert_eq!(
            out,
            json!({"id": 7, "uri": "42", "n": 3, "t": 100, "c": "c-1"})
        );
    }

    #[test]
    fn truthiness_text_and_empty() {
        let props = json!({});
        let ev = event(json!({"a": null, "b": 0}));
        assert!(!Expr::compile(".a").unwrap().eval_bool(&ev, &props).unwrap());
        assert!(Expr::compile(".b").unwrap().eval_bool(&ev, &props).unwrap());
        assert!(
            !Expr::compile(".a != null")
                .unwrap()
                .eval_bool(&ev, &props)
                .unwrap()
        );
        assert_eq!(
            Expr::compile("\"hi \\(.b)\"")
                .unwrap()
                .eval_text(&ev, &props)
                .unwrap(),
            "hi 0"
        );
        assert_eq!(
            Expr::compile("empty").unwrap().eval(&ev, &props).unwrap(),
            Value::Null
        );
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

    #[test]
    fn run_time_errors_are_expression_errors() {
        let err = Expr::compile(".a + 1")
            .unwrap()
            .eval(&event(json!({"a": "x"})), &json!({}))
            .unwrap_err();
        assert_eq!(err.kind, ErrorType::Expression);
        let err = Expr::compile("error(\"boom\")")
            .unwrap()
            .eval(&event(json!(null)), &json!({}))
            .unwrap_err();
        assert!(err.message.contains("boom"), "{err}");
    }
}
