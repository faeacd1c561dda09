//! The process's allocator, counted and capped: a worker's memory ceiling.
//!
//! Every binary that links this crate allocates through [`cap::Cap`] over the
//! system allocator (or mimalloc, with the `mimalloc` feature, for load
//! balancer machines: the proxy's data path allocates small buffers on every
//! request, and glibc's malloc and free took ~5% of its CPU time under
//! `bench/proxy`). The ceiling is unlimited until a process sets one; a
//! worker sets its size's at start ([`set_ceiling`]). An allocation past the
//! ceiling fails, which ends the process as running out of memory does in a
//! container: the worker's supervisor restarts it, and no other tenant's
//! worker, nor the host, pays for it. Expression runs read [`pressure`] to
//! stop cleanly before that.

use cap::Cap;

#[cfg(not(feature = "mimalloc"))]
type Inner = std::alloc::System;
#[cfg(not(feature = "mimalloc"))]
const INNER: Inner = std::alloc::System;
#[cfg(feature = "mimalloc")]
type Inner = mimalloc::MiMalloc;
#[cfg(feature = "mimalloc")]
const INNER: Inner = mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: Cap<Inner> = Cap::new(INNER, usize::MAX);

/// Caps the bytes this process may hold on its heap (thread stacks are not
/// counted). Below what it holds now, only frees succeed until it is under.
pub fn set_ceiling(bytes: usize) {
    // Cap refuses a limit below what is allocated; a start-up ceiling never is.
    let _ = ALLOCATOR.set_limit(bytes.max(ALLOCATOR.allocated()));
}

/// The ceiling, `usize::MAX` when none was set.
pub fn ceiling() -> usize {
    ALLOCATOR.limit()
}

/// Bytes held on the heap now.
pub fn in_use() -> usize {
    ALLOCATOR.allocated()
}

/// Whether the heap is past `share` (0.0–1.0) of its ceiling; never without
/// one. Two relaxed loads: cheap enough to ask on every step of a run.
pub fn pressure(share: f64) -> bool {
    let ceiling = ALLOCATOR.limit();
    ceiling != usize::MAX
        && (ceiling.saturating_sub(ALLOCATOR.remaining())) as f64 > ceiling as f64 * share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_counted_and_unlimited_until_a_ceiling_is_set() {
        assert_eq!(ceiling(), usize::MAX);
        let before = in_use();
        let block = vec![0u8; 8 * 1024 * 1024];
        assert!(in_use() >= before + block.len());
        assert!(!pressure(0.0));
        drop(block);
    }
}
