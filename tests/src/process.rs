//! A child process under test: its output read line by line, killed by pid when dropped;
//! and the stop and kill every harness uses for its processes.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A running child whose stdout and stderr lines arrive on a channel.
pub struct Proc {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line seen so far, for failure messages.
    pub seen: Vec<(Stream, String)>,
    /// Stopped with SIGINT (then SIGKILL after a grace) when dropped, so a
    /// process that owns children (`fabric up` and its workers) stops them
    /// even when the test fails half-way.
    graceful: bool,
}

fn pump(
    stream: impl Read + Send + 'static,
    which: Stream,
    tx: std::sync::mpsc::Sender<(Stream, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send((which, line)).is_err() {
                break;
            }
        }
    });
}

impl Proc {
    /// Starts `cmd` with piped stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (tx, lines) = channel();
        pump(
            child.stdout.take().expect("piped stdout"),
            Stream::Stdout,
            tx.clone(),
        );
        pump(
            child.stderr.take().expect("piped stderr"),
            Stream::Stderr,
            tx,
        );
        Proc {
            child,
            lines,
            seen: Vec::new(),
            graceful: false,
        }
    }

    /// Like [`Proc::spawn`], but dropping it sends SIGINT and waits up to
    /// 30 s before SIGKILL.
    pub fn spawn_graceful(cmd: Command) -> Self {
        let mut p = Self::spawn(cmd);
        p.graceful = true;
        p
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        pid_of(&self.child)
    }

    /// Waits up to `timeout` for a line matching `pred` and returns it.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((stream, line)) => {
                    self.seen.push((stream, line.clone()));
                    if pred(stream, &line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no matching line within {timeout:?}; saw {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("process closed its output; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the child");
    }

    /// Waits up to `timeout` for the child to exit, collecting its remaining output.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                // The pumps end when the pipes close; take what they have.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "process did not exit within {timeout:?}; saw {:#?}",
                    self.seen
                );
            }
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(20)) {
                self.seen.push(line);
            }
        }
    }

    /// Takes every line the child has written so far into `seen`.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// All lines seen on `stream`.
    pub fn lines_of(&self, stream: Stream) -> Vec<&str> {
        self.seen
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.as_str())
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful {
            stop(&mut self.child, Signal::SIGINT, Duration::from_secs(30));
        } else {
            kill9(&mut self.child);
        }
    }
}

/// Sends `signal` to a running `child`, waits up to `grace` for it to exit,
/// then SIGKILLs it; either way it is reaped.
pub fn stop(child: &mut Child, signal: Signal, grace: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = kill(pid_of(child), signal);
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    kill9(child);
}

/// SIGKILLs `child` if it still runs, and reaps it.
pub fn kill9(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = kill(pid_of(child), Signal::SIGKILL);
        let _ = child.wait();
    }
}

/// SIGKILLs the process `pid`, which is not our child (a worker the control
/// plane started): a crash, as fault injection wants it.
pub fn kill9_pid(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}
