//! The one parser of the chunked transfer coding (RFC 9112 §7.1), fed a
//! body's bytes as they arrive, for both of its users.
//!
//! The lane (`express.rs`) follows a worker's chunked answer with it, to
//! know how many bytes to relay and where the answer ends; the smuggling
//! checks (`smuggle.rs`) follow a client's chunked request body with it, to
//! know where the next request starts and to flag a body hyper and a worker
//! could read two ways. The parser only follows framing: it never changes or
//! copies the body's bytes, and buffers no more than one partial line.
//!
//! The two users read bodies by different [`Rules`], on purpose: the lane
//! relays what it reads, so it is strict and stops at the first byte that
//! breaks the framing; the checks only watch, ahead of hyper's own decoder,
//! so they flag what is ambiguous and leave the rest to hyper. Each
//! difference is one field of [`Rules`].

/// How a chunked body may be written: where the lane and the smuggling
/// checks differ, each says its value and why (`express::CHUNK_RULES`,
/// `smuggle::CHUNK_RULES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Whether a line may end with a bare LF; when false, only CRLF ends one.
    pub bare_lf: bool,
    /// Longest line (a chunk size, the line end after a chunk's data, a
    /// trailer), counted with its LF; a partial line longer than this is
    /// malformed before its end arrives. Bounds the one line buffered.
    pub max_line: usize,
    /// Most trailer lines after the last chunk (not counting the empty line
    /// that ends them).
    pub max_trailers: usize,
    /// Fewest hex digits a chunk size may have.
    pub min_digits: usize,
    /// Most hex digits a chunk size may have (leading zeros count).
    pub max_digits: usize,
    /// Where whitespace may stand in a chunk-size line.
    pub size_space: SizeSpace,
    /// How the line end after a chunk's data is checked.
    pub data_end: DataEnd,
}

/// Where whitespace may stand in a chunk-size line (`size [; extensions]`);
/// what follows the first `;` is never read, beyond what is said here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpace {
    /// Spaces and tabs after the digits only, and no CR anywhere on the line
    /// before its line end, extensions included: how httparse reads a
    /// chunk-size line.
    AfterOnly,
    /// Any ASCII whitespace (a CR included) on either side of the digits; the
    /// extensions may hold any byte.
    Around,
}

/// How the line end after a chunk's data is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEnd {
    /// Byte by byte: the first byte that cannot be part of the line end is
    /// malformed at once, and the bytes before it (a CR included) are good.
    /// For a reader that passes bytes on as it reads them.
    Bytes,
    /// As a whole line, which must be empty: malformed once its LF arrives.
    Line,
}

/// What broke a chunked body's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A line grew past [`Rules::max_line`].
    #[error("a line too long")]
    LineTooLong,
    /// A line ended with a bare LF where [`Rules::bare_lf`] is false.
    #[error("a line not ended by CRLF")]
    BareLf,
    /// A chunk-size line that [`Rules`] do not allow.
    #[error("a malformed chunk size")]
    Size,
    /// Something other than the line end followed a chunk's data: the chunk
    /// was longer than its size said.
    #[error("no CRLF after chunk data")]
    DataOverrun,
    /// More trailer lines than [`Rules::max_trailers`].
    #[error("too many trailer lines")]
    TooManyTrailers,
}

/// What the parser made of the bytes it was just fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// How many of them are the body's and well formed: all of them while
    /// the body goes on, those up to its end, or those before the piece (a
    /// size line, a line end, a trailer line) found malformed; a piece begun
    /// in an earlier feed counts from 0 here.
    pub body: usize,
    /// Whether the body goes on, ended, or broke its framing.
    pub progress: Progress,
}

/// Where a chunked body stands after a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// It goes on past the bytes fed.
    Going,
    /// It ended, with its last chunk and trailers, after [`Fed::body`] bytes.
    Ended,
    /// Its framing broke; every later feed says so again.
    Malformed(Malformed),
}

/// Follows one chunked body's framing, by its [`Rules`].
#[derive(Debug)]
pub struct Parser {
    rules: Rules,
    state: State,
    /// The start of a line that began in an earlier feed (its LF not yet
    /// seen); empty when each line is whole within one feed, as most are.
    line: Vec<u8>,
    /// Trailer lines so far.
    trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A chunk-size line.
    Size,
    /// This many data bytes to go.
    Data(u64),
    /// The line end after chunk data; `cr` once its CR has been read (byte
    /// by byte only).
    DataEnd { cr: bool },
    /// Trailer lines, up to the empty one.
    Trailer,
    /// The body ended.
    Ended,
    /// The framing broke.
    Failed(Malformed),
}

impl Parser {
    /// A parser at the start of a chunked body.
    pub fn new(rules: Rules) -> Self {
        Parser {
            rules,
            state: State::Size,
            line: Vec::new(),
            trailers: 0,
        }
    }

    /// Starts over at the start of another body, keeping the line buffer's
    /// room.
    pub fn restart(&mut self) {
        self.state = State::Size;
        self.line.clear();
        self.trailers = 0;
    }

    /// Follows the next `bytes` of the body.
    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        let mut at = 0;
        while at < bytes.len() {
            // Where the piece read in this turn starts.
            let piece = at;
            let read = match self.state {
                State::Ended => {
                    return Fed {
                        body: 0,
                        progress: Progress::Ended,
                    };
                }
                State::Failed(why) => {
                    return Fed {
                        body: 0,
                        progress: Progress::Malformed(why),
                    };
                }
                State::Data(left) => {
                    let take = ((bytes.len() - at) as u64).min(left);
                    at += take as usize;
                    self.state = if take == left {
                        State::DataEnd { cr: false }
                    } else {
                        State::Data(left - take)
                    };
                    Ok(())
                }
                State::DataEnd { cr } if self.rules.data_end == DataEnd::Bytes => {
                    let byte = bytes[at];
                    at += 1;
                    self.data_end_byte(cr, byte)
                }
                State::Size | State::DataEnd { .. } | State::Trailer => {
                    self.line_piece(&bytes[at..], &mut at)
                }
            };
            if let Err(why) = read {
                self.state = State::Failed(why);
                return Fed {
                    body: piece,
                    progress: Progress::Malformed(why),
                };
            }
            if self.state == State::Ended {
                return Fed {
                    body: at,
                    progress: Progress::Ended,
                };
            }
        }
        Fed {
            body: bytes.len(),
            progress: Progress::Going,
        }
    }

    /// One byte of the line end after chunk data, checked byte by byte.
    fn data_end_byte(&mut self, cr: bool, byte: u8) -> Result<(), Malformed> {
        match (cr, byte) {
            (false, b'\r') => self.state = State::DataEnd { cr: true },
            (true, b'\n') => self.state = State::Size,
            (false, b'\n') if self.rules.bare_lf => self.state = State::Size,
            _ => return Err(Malformed::DataOverrun),
        }
        Ok(())
    }

    /// Reads from `rest` (the bytes from `at` on) up to the end of the
    /// current line, or all of it when the line goes on; a whole line is
    /// checked in place, with no copy, unless it began in an earlier feed.
    fn line_piece(&mut self, rest: &[u8], at: &mut usize) -> Result<(), Malformed> {
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if self.line.len() + rest.len() > self.rules.max_line {
                return Err(Malformed::LineTooLong);
            }
            self.line.extend_from_slice(rest);
            *at += rest.len();
            return Ok(());
        };
        *at += lf + 1;
        if self.line.len() + lf + 1 > self.rules.max_line {
            return Err(Malformed::LineTooLong);
        }
        if self.line.is_empty() {
            return self.on_line(&rest[..lf]);
        }
        self.line.extend_from_slice(&rest[..lf]);
        let mut line = std::mem::take(&mut self.line);
        let read = self.on_line(&line);
        // Keeps the buffer's room for the next split line.
        line.clear();
        self.line = line;
        read
    }

    /// A whole line, without its LF.
    fn on_line(&mut self, line: &[u8]) -> Result<(), Malformed> {
        let line = match line.strip_suffix(b"\r") {
            Some(line) => line,
            None if self.rules.bare_lf => line,
            // A bare LF is where readers disagree: the next message's head
            // must never be read as this body's trailers, nor the other way.
            None => return Err(Malformed::BareLf),
        };
        match self.state {
            State::Size => {
                self.state = match chunk_size(line, &self.rules).ok_or(Malformed::Size)? {
                    0 => State::Trailer,
                    size => State::Data(size),
                };
            }
            State::DataEnd { .. } if line.is_empty() => self.state = State::Size,
            State::DataEnd { .. } => return Err(Malformed::DataOverrun),
            State::Trailer if line.is_empty() => self.state = State::Ended,
            State::Trailer => {
                self.trailers = self.trailers.saturating_add(1);
                if self.trailers > self.rules.max_trailers {
                    return Err(Malformed::TooManyTrailers);
                }
            }
            State::Data(_) | State::Ended | State::Failed(_) => {}
        }
        Ok(())
    }
}

/// The size a chunk-size line (without its line end) gives, if `rules`
/// allow the line.
fn chunk_size(line: &[u8], rules: &Rules) -> Option<u64> {
    let before_extensions = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = match rules.size_space {
        SizeSpace::AfterOnly => {
            if line.contains(&b'\r') {
                return None;
            }
            let end = before_extensions
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |last| last + 1);
            &before_extensions[..end]
        }
        SizeSpace::Around => before_extensions.trim_ascii(),
    };
    if digits.len() < rules.min_digits || digits.len() > rules.max_digits {
        return None;
    }
    digits.iter().try_fold(0u64, |size, &b| {
        let digit = char::from(b).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests;
