//! Several threads serving one queue (UBLK_F_PER_IO_DAEMON, Linux 6.16+):
//! `UBLK_STACK_QUEUE_THREADS=N` gives each queue N threads, each with its
//! own io_uring, arming and serving the tags `t` with `t % N` equal to its
//! index. The kernel sends a tag's requests to the thread that armed it.
//!
//! The default is one thread per queue: on the 2-vCPU test VM two threads on
//! one queue ran 4 KiB random reads and copy-mode writes at 0.61-0.74x of one
//! thread, in every round (benches/vm/README.md, "PER_IO_DAEMON"): each burst
//! of a queue's requests woke both. More queues (`queues = N`, one thread
//! each) spread the work on every kernel. The kernel sets PER_IO_DAEMON on
//! every device that is not a batch device, asked or not; a batch queue has
//! one thread.

use crate::ublk::sys;

pub const ENV: &str = "UBLK_STACK_QUEUE_THREADS";
/// The first kernel whose ublk driver has UBLK_F_PER_IO_DAEMON.
pub const SINCE: &str = "Linux 6.16";
/// More threads than this per queue would only take turns.
const MAX: u16 = 16;

/// `UBLK_STACK_QUEUE_THREADS`: unset means 1.
pub fn parse(value: Option<&str>) -> Result<u16, String> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(1);
    };
    match value.parse::<u16>() {
        Ok(n @ 1..=MAX) => Ok(n),
        _ => Err(format!(
            "{ENV}={value:?}: expected a thread count from 1 to {MAX}"
        )),
    }
}

pub fn from_env() -> Result<u16, String> {
    parse(std::env::var(ENV).ok().as_deref())
}

/// Threads per queue for a new device on a kernel offering `offered`:
/// `wanted` when it is 1 or the kernel lets several threads serve a queue,
/// an error naming the kernel needed otherwise. `depth` bounds it (each
/// thread needs a tag).
pub fn choose(offered: u64, batch: bool, depth: u16, wanted: u16) -> Result<u16, String> {
    if wanted <= 1 {
        return Ok(1);
    }
    if offered & sys::UBLK_F_PER_IO_DAEMON == 0 {
        return Err(format!(
            "{ENV}={wanted}: this kernel's ublk driver serves a queue from one thread only (several need UBLK_F_PER_IO_DAEMON, {SINCE} or later; it offers {offered:#x})"
        ));
    }
    if batch {
        return Err(format!(
            "{ENV}={wanted}: a batch I/O device (UBLK_STACK_BATCH_IO=on) is served by one thread per queue"
        ));
    }
    if wanted > depth {
        return Err(format!(
            "{ENV}={wanted}: more threads than the queue has tags (queue_depth = {depth})"
        ));
    }
    Ok(wanted)
}

/// The feature a device served by `threads` threads per queue uses beyond
/// what ADD_DEV asked for (the kernel sets PER_IO_DAEMON unasked).
pub fn flag(threads: u16) -> u64 {
    if threads > 1 {
        sys::UBLK_F_PER_IO_DAEMON
    } else {
        0
    }
}

/// Which of a queue's tags one thread serves: those with `tag % of == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagShare {
    pub index: u16,
    pub of: u16,
}

impl TagShare {
    pub fn owns(self, tag: u16) -> bool {
        tag % self.of == self.index
    }

    /// How many of `depth` tags this thread serves.
    pub fn count(self, depth: u16) -> usize {
        (0..depth).filter(|&tag| self.owns(tag)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_6_12: u64 = 0x1fe;
    const LINUX_7_3: u64 = 0x1f_ffff;

    #[test]
    fn several_threads_need_the_kernel_feature_and_name_its_version() {
        assert_eq!(choose(LINUX_6_12, false, 32, 1), Ok(1));
        assert_eq!(choose(LINUX_7_3, false, 32, 2), Ok(2));
        let err = choose(LINUX_6_12, false, 32, 2).unwrap_err();
        assert!(
            err.contains("Linux 6.16 or later") && err.contains("0x1fe"),
            "{err}"
        );
        let err = choose(LINUX_7_3, true, 32, 2).unwrap_err();
        assert!(err.contains("batch"), "{err}");
        let err = choose(LINUX_7_3, false, 2, 3).unwrap_err();
        assert!(err.contains("queue_depth = 2"), "{err}");
    }

    #[test]
    fn the_knob_takes_a_small_count() {
        assert_eq!(parse(None), Ok(1));
        assert_eq!(parse(Some("")), Ok(1));
        assert_eq!(parse(Some("4")), Ok(4));
        for bad in ["0", "17", "two", "-1"] {
            let err = parse(Some(bad)).unwrap_err();
            assert!(err.contains("from 1 to 16"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_threads_of_a_queue_share_its_tags_exactly_once() {
        for of in 1..=5u16 {
            let mut served = [0u8; 37];
            let mut counted = 0;
            for index in 0..of {
                let share = TagShare { index, of };
                counted += share.count(37);
                for tag in 0..37u16 {
                    served[usize::from(tag)] += u8::from(share.owns(tag));
                }
            }
            assert_eq!(counted, 37);
            assert!(served.iter().all(|&n| n == 1), "{of} threads: {served:?}");
        }
        let whole = TagShare { index: 0, of: 1 };
        assert!(whole.owns(0) && whole.owns(31));
        assert_eq!((flag(1), flag(2)), (0, sys::UBLK_F_PER_IO_DAEMON));
    }
}
