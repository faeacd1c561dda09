//! Where an expression runs: only builtins that see nothing but the event,
//! and a meter that stops a run past its budget of steps, time or stack.
//!
//! Every term jaq evaluates first looks itself up through the run's data
//! ([`HasLut::lut`]); the meter counts there. Past a limit it unwinds the
//! run with [`std::panic::resume_unwind`] (no panic hook, no message), and
//! [`run`] catches it at the run's edge: jq is pure, so nothing the run
//! touched outlives it.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use jaq_core::data::HasLut;
use jaq_core::load::parse::Def;
use jaq_core::native::{self, Fun};
use jaq_core::{Ctx, Cv, DataT, Lut, RunPtr, ValXs, Vars};
use jaq_json::Val;
use serde_json::Value;

/// Builtins that reach outside the event: the process, its environment,
/// its input streams or its exit. Neither their definitions nor their
/// native parts are given to programs, so naming one is a compile error.
pub const REMOVED: [&str; 14] = [
    "env",
    "halt",
    "halt_error",
    "input",
    "inputs",
    "input_filename",
    "debug",
    "debug_empty",
    "stderr",
    "stderr_empty",
    "localtime",
    "strflocaltime",
    "get_search_list",
    "$__prog_name",
];

/// The kind of data a metered program runs on: JSON values, and a meter.
pub struct Metered;

impl DataT for Metered {
    type V<'a> = Val;
    type Data<'a> = Meter<'a>;
}

/// A compiled program in the sandbox.
pub type Filter = jaq_core::Filter<Metered>;

/// The run's data: the program, and the gauge every term's evaluation ticks.
#[derive(Clone)]
pub struct Meter<'a> {
    lut: &'a Lut<Metered>,
    gauge: &'a Gauge,
}

impl<'a> HasLut<'a, Metered> for Meter<'a> {
    fn lut(&self) -> &'a Lut<Metered> {
        self.gauge.tick();
        self.lut
    }
}

/// What one run may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Terms evaluated.
    pub steps: u64,
    /// Wall-clock time.
    pub time: Duration,
    /// Bytes of the thread's stack the run may use below where it starts.
    pub stack: usize,
}

/// Why a run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// More terms than [`Budget::steps`].
    Steps(u64),
    /// Longer than [`Budget::time`].
    Time(Duration),
    /// Recursion deeper than [`Budget::stack`] allows.
    Depth,
    /// The worker's heap is near its ceiling ([`MEMORY_PRESSURE`]).
    Memory,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::Steps(n) => write!(f, "the expression ran past its budget of {n} steps"),
            Exhausted::Time(t) => write!(f, "the expression ran past its budget of {t:?}"),
            Exhausted::Depth => f.write_str("the expression recursed deeper than its stack allows"),
            Exhausted::Memory => f.write_str("the expression used more memory than its worker has"),
        }
    }
}

/// How a run ended without a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The program raised an error (a type error, `error(...)`) on this input.
    Error(String),
    /// The program's output is not JSON (NaN, or nested past serde_json's limit).
    NotJson(String),
    /// The meter stopped it.
    Exhausted(Exhausted),
    /// jaq itself failed (a bug); the run is abandoned, the thread is fine.
    Panicked,
}

/// Counts a run's steps and watches its time and stack.
pub struct Gauge {
    steps: Cell<u64>,
    budget: Budget,
    deadline: Instant,
    stack_top: usize,
}

/// How many steps pass between two reads of the clock.
const CLOCK_EVERY: u64 = 256;

/// The share of the worker's memory ceiling past which every run stops: a
/// run that builds a large value stops with an error here, while the rest of
/// the heap still holds what the worker needs to answer it. (One step that
/// asks for more than the rest at once, `"x" * 1e10`, fails its allocation
/// and ends the worker; see `common::memory`.)
pub const MEMORY_PRESSURE: f64 = 0.75;

/// Where this thread's stack is now (it grows down on every supported target).
#[inline(never)]
fn stack_position() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

impl Gauge {
    fn new(budget: Budget) -> Self {
        Gauge {
            steps: Cell::new(0),
            budget,
            deadline: Instant::now() + budget.time,
            stack_top: stack_position(),
        }
    }

    fn tick(&self) {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        let stop = |why| std::panic::resume_unwind(Box::new(why));
        if n > self.budget.steps {
            stop(Exhausted::Steps(self.budget.steps));
        }
        if n.is_multiple_of(CLOCK_EVERY) && Instant::now() > self.deadline {
            stop(Exhausted::Time(self.budget.time));
        }
        // Every step: a few steps can double a value (`. + .`).
        if common::memory::pressure(MEMORY_PRESSURE) {
            stop(Exhausted::Memory);
        }
        if self.stack_top.saturating_sub(stack_position()) > self.budget.stack {
            stop(Exhausted::Depth);
        }
    }
}

/// The standard library's definitions, less those that reach the host.
pub fn defs() -> impl Iterator<Item = Def<&'static str>> {
    jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .filter(|d| !REMOVED.contains(&d.name))
}

/// Native filters replaced by bounded ones here.
const REPLACED: [&str; 2] = ["fromjson", "range"];

/// The standard library's native filters, less those that reach the host,
/// and with `fromjson` and `range/3` bounded.
pub fn funs() -> impl Iterator<Item = Fun<Metered>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !REMOVED.contains(name) && !REPLACED.contains(name))
        .chain([
            native::run::<Metered>(("fromjson", native::v(0), fromjson as RunPtr<Metered>)),
            native::run::<Metered>(("range", native::v(3), range as RunPtr<Metered>)),
        ])
}

/// `range($from; $to; $by)`, ticking the meter once per output. jaq's own
/// yields each number without evaluating a term, so `last(range(1e18))`
/// would spin, and `[range(1e18)]` fill the heap, without one step counted.
fn range(mut cv: Cv<'_, Metered>) -> ValXs<'_, Val> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let from = cv.0.pop_var();
    let gauge = cv.0.data().gauge;
    let direction = by.partial_cmp(&Val::from(0isize)).unwrap_or(Equal);
    let mut next = Some(Ok(from));
    Box::new(std::iter::from_fn(move || {
        gauge.tick();
        match next.take()? {
            Ok(x) => {
                let more = match direction {
                    Greater => x < to,
                    Less => x > to,
                    Equal => x != to,
                };
                if more {
                    next = Some((x.clone() + by.clone()).map_err(jaq_core::Exn::from));
                    Some(Ok(x))
                } else {
                    None
                }
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// The deepest value a program may read from text or give back: serde_json's
/// own recursion limit.
pub const MAX_VALUE_DEPTH: usize = 128;

/// `fromjson`, reading one JSON value nested at most [`MAX_VALUE_DEPTH`]
/// deep (serde_json's limit). jaq's own reads any depth in one step,
/// which would let a program build a value too deep to print or drop
/// without metering a single level of it.
fn fromjson(cv: Cv<'_, Metered>) -> ValXs<'_, Val> {
    use jaq_std::ValT as _;
    let parsed = cv.1.try_as_utf8_bytes().and_then(|text| {
        serde_json::from_slice::<Val>(text)
            .map_err(|e| jaq_core::Error::str(format_args!("cannot parse as JSON: {e}")))
    });
    native::bome(parsed)
}

/// How deep `v` nests, counted without recursion, stopping past `limit`.
fn deeper_than(v: &Val, limit: usize) -> bool {
    let mut pending = vec![(v, 1usize)];
    while let Some((v, depth)) = pending.pop() {
        if depth > limit {
            return true;
        }
        match v {
            Val::Arr(items) => pending.extend(items.iter().map(|i| (i, depth + 1))),
            Val::Obj(map) => pending.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    false
}

/// Runs `filter` on `input` with `vars` bound, within `budget`, on this
/// thread; returns its first output as JSON (`null` when it has none).
pub fn run(filter: &Filter, vars: Vec<Val>, input: Val, budget: Budget) -> Result<Value, Failure> {
    let gauge = Gauge::new(budget);
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let meter = Meter {
            lut: &filter.lut,
            gauge: &gauge,
        };
        let ctx = Ctx::<Metered>::new(meter, Vars::new(vars));
        let mut outputs = filter.id.run((ctx, input));
        match outputs.next() {
            None => Ok(Value::Null),
            // Printing recurses, so the depth is checked first, without recursing.
            Some(Ok(val)) if deeper_than(&val, MAX_VALUE_DEPTH) => Err(Failure::NotJson(format!(
                "the result nests deeper than {MAX_VALUE_DEPTH} levels"
            ))),
            Some(Ok(val)) => serde_json::from_str(&val.to_string())
                .map_err(|e| Failure::NotJson(format!("the result is not JSON: {e}"))),
            Some(Err(e)) => Err(match e.get_err() {
                Ok(err) => Failure::Error(err.to_string()),
                // Only `halt` raises anything else at the top, and it is removed.
                Err(_) => Failure::Error("the expression stopped without a value".into()),
            }),
        }
    }));
    match outcome {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<Exhausted>() {
            Ok(why) => Err(Failure::Exhausted(*why)),
            Err(_) => Err(Failure::Panicked),
        },
    }
}
