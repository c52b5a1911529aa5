//! The control device, /dev/ublk-control: add, configure, start, stop and delete
//! ublk devices.
//!
//! Control commands are io_uring passthrough commands (`IORING_OP_URING_CMD`) whose
//! 32-byte payload needs the 80-byte command area of a 128-byte SQE, so this ring is
//! built with SQE128 (the per-queue rings are not). Every command is issued and
//! waited for synchronously: they are rare, and START_DEV / STOP_DEV / DEL_DEV
//! block in the kernel until the device reaches the new state anyway.
//!
//! Opcodes: kernels since 6.4 accept ioctl-encoded opcodes (`UBLK_U_CMD_*`) and
//! advertise UBLK_F_CMD_IOCTL_ENCODE through GET_FEATURES (6.5+); 6.0–6.4 know only
//! the plain numbers. We ask GET_FEATURES first and fall back to the plain numbers
//! when the kernel does not know it, which is exactly the set of kernels that need
//! them.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::sys::{self, CtrlCmd, DevInfo, Params};

pub const CONTROL_PATH: &str = "/dev/ublk-control";

/// Written into `ublksrv_flags` (server-private, kept by the kernel) of every device
/// this daemon creates, so a later `up` can recognise and delete a device whose
/// daemon was killed without touching devices of other servers. ASCII "ublkstk1".
pub const DAEMON_MARK: u64 = u64::from_le_bytes(*b"ublkstk1");

/// Why the control device cannot be used.
#[derive(Debug)]
pub enum CtrlError {
    /// /dev/ublk-control does not exist: ublk_drv is not loaded (or not built).
    NotLoaded,
    /// Opening it or a command was refused for lack of privilege.
    NotPermitted,
    /// Any other failure of a named command.
    Command {
        what: &'static str,
        error: io::Error,
    },
}

impl fmt::Display for CtrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtrlError::NotLoaded => write!(f, "{CONTROL_PATH} is missing"),
            CtrlError::NotPermitted => {
                write!(
                    f,
                    "permission denied on {CONTROL_PATH}: ublk devices need root (CAP_SYS_ADMIN)"
                )
            }
            CtrlError::Command { what, error } => write!(f, "ublk {what}: {error}"),
        }
    }
}

impl std::error::Error for CtrlError {}

fn command_error(what: &'static str, error: io::Error) -> CtrlError {
    match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => CtrlError::NotPermitted,
        _ => CtrlError::Command { what, error },
    }
}

/// An open control device with its SQE128 ring.
pub struct Control {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    file: File,
    /// Use `UBLK_U_CMD_*` (else the legacy plain numbers).
    ioctl_encode: bool,
    /// What GET_FEATURES reported (0 on kernels without it).
    features: u64,
    /// A command is stuck in the submission queue (the kernel refused to take
    /// it): entering the ring again would submit it with a stale buffer.
    broken: bool,
}

impl Control {
    /// Open /dev/ublk-control and learn what the driver supports.
    pub fn open() -> Result<Control, CtrlError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => CtrlError::NotLoaded,
                io::ErrorKind::PermissionDenied => CtrlError::NotPermitted,
                _ => CtrlError::Command {
                    what: "open",
                    error: e,
                },
            })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build(4)
            .map_err(|e| CtrlError::Command {
                what: "io_uring setup (SQE128)",
                error: e,
            })?;
        let mut ctrl = Control {
            ring,
            file,
            ioctl_encode: true,
            features: 0,
            broken: false,
        };
        ctrl.features = ctrl.query_features()?;
        ctrl.ioctl_encode = ctrl.features & sys::UBLK_F_CMD_IOCTL_ENCODE != 0;
        Ok(ctrl)
    }

    /// Feature flags the driver supports (0 on kernels before 6.5, which cannot say).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether I/O commands must use the ioctl-encoded opcodes.
    pub fn ioctl_encode(&self) -> bool {
        self.ioctl_encode
    }

    fn query_features(&mut self) -> Result<u64, CtrlError> {
        let mut features = 0u64;
        let cmd = CtrlCmd {
            dev_id: u32::MAX,
            queue_id: u16::MAX,
            len: sys::UBLK_FEATURES_LEN,
            addr: std::ptr::addr_of_mut!(features) as u64,
            ..CtrlCmd::default()
        };
        match self.submit(sys::UBLK_U_CMD_GET_FEATURES, cmd) {
            Ok(_) => Ok(features),
            // 6.0–6.4: the command (or its encoding) is unknown; they speak the
            // legacy opcodes and negotiate flags through ADD_DEV alone.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(command_error("GET_FEATURES", e)),
        }
    }

    fn opcode(&self, legacy: u32, encoded: u32) -> u32 {
        if self.ioctl_encode {
            encoded
        } else {
            legacy
        }
    }

    /// Issue one command and wait for its completion; a negative result becomes the
    /// error. Buffers named by `cmd.addr` are borrowed by the caller for this call,
    /// which returns only after the CQE (see [`wait_for_cqe`]).
    fn submit(&mut self, cmd_op: u32, cmd: CtrlCmd) -> io::Result<i32> {
        if self.broken {
            return Err(io::Error::other(
                "the control ring holds a command the kernel never took; reopen it",
            ));
        }
        let entry = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), cmd_op)
            .cmd(cmd.to_sqe_cmd())
            .build()
            .user_data(1);
        // SAFETY: the command payload is copied into the SQE; `cmd.addr`, when set,
        // points at a buffer of `cmd.len` bytes that the caller keeps alive across
        // this call, and `wait_for_cqe` returns only once the kernel has posted the
        // command's CQE or never took the SQE (then the ring is marked broken and
        // never entered again, so the SQE is never submitted). The fd is ours for
        // the life of `self`.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::other("control ring full"))?;
        }
        match wait_for_cqe(&mut self.ring) {
            Ok(res) if res < 0 => Err(io::Error::from_raw_os_error(-res)),
            Ok(res) => Ok(res),
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// ADD_DEV: create /dev/ublkcN. `info.dev_id` is the requested id or
    /// `u32::MAX`; on return `info` holds what the kernel granted (id, queues, buffer
    /// size, negotiated flags).
    pub fn add_dev(&mut self, info: &mut DevInfo) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id: info.dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: info as *mut DevInfo as u64,
            ..CtrlCmd::default()
        };
        let op = self.opcode(sys::UBLK_CMD_ADD_DEV, sys::UBLK_U_CMD_ADD_DEV);
        self.submit(op, cmd)
            .map(drop)
            .map_err(|e| command_error("ADD_DEV", e))
    }

    pub fn set_params(&mut self, dev_id: u32, params: &Params) -> Result<(), CtrlError> {
        let mut params = *params;
        params.len = std::mem::size_of::<Params>() as u32;
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<Params>() as u16,
            addr: std::ptr::addr_of_mut!(params) as u64,
            ..CtrlCmd::default()
        };
        let op = self.opcode(sys::UBLK_CMD_SET_PARAMS, sys::UBLK_U_CMD_SET_PARAMS);
        self.submit(op, cmd)
            .map(drop)
            .map_err(|e| command_error("SET_PARAMS", e))
    }

    /// START_DEV: blocks until every queue has armed every tag, then adds
    /// /dev/ublkbN.
    pub fn start_dev(&mut self, dev_id: u32, server_pid: i32) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [server_pid as u64],
            ..CtrlCmd::default()
        };
        let op = self.opcode(sys::UBLK_CMD_START_DEV, sys::UBLK_U_CMD_START_DEV);
        self.submit(op, cmd)
            .map(drop)
            .map_err(|e| command_error("START_DEV", e))
    }

    /// STOP_DEV: removes /dev/ublkbN (the queues must keep serving until it returns,
    /// as the kernel drains in-flight requests) and then aborts every armed tag.
    pub fn stop_dev(&mut self, dev_id: u32) -> Result<(), CtrlError> {
        self.simple(
            dev_id,
            sys::UBLK_CMD_STOP_DEV,
            sys::UBLK_U_CMD_STOP_DEV,
            "STOP_DEV",
        )
    }

    /// DEL_DEV: removes /dev/ublkcN; waits until the char device is closed.
    pub fn del_dev(&mut self, dev_id: u32) -> Result<(), CtrlError> {
        self.simple(
            dev_id,
            sys::UBLK_CMD_DEL_DEV,
            sys::UBLK_U_CMD_DEL_DEV,
            "DEL_DEV",
        )
    }

    /// DEL_DEV_ASYNC: removes /dev/ublkcN without waiting for the device to
    /// be released (which waits for every opener of /dev/ublkbN, a mount
    /// included, to let go). `Ok(false)` when the kernel does not know the
    /// command (before 6.9): the caller falls back to DEL_DEV.
    pub fn del_dev_async(&mut self, dev_id: u32) -> Result<bool, CtrlError> {
        if !self.ioctl_encode {
            return Ok(false);
        }
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        };
        match self.submit(sys::UBLK_U_CMD_DEL_DEV_ASYNC, cmd) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(command_error("DEL_DEV_ASYNC", e)),
        }
    }

    /// TRY_STOP_DEV (kernels offering UBLK_F_SAFE_STOP_DEV): STOP_DEV if
    /// /dev/ublkbN has no opener, refusing new opens from then on; `Ok(false)`,
    /// with the device untouched, when it has one.
    pub fn try_stop_dev(&mut self, dev_id: u32) -> Result<bool, CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        };
        match self.submit(sys::UBLK_U_CMD_TRY_STOP_DEV, cmd) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(command_error("TRY_STOP_DEV", e)),
        }
    }

    /// QUIESCE_DEV (devices created with UBLK_F_QUIESCE): new requests are
    /// held, and once every queue has an idle tag the server's FETCH commands
    /// complete with UBLK_IO_RES_ABORT; requests in flight in the server are
    /// still committed. `timeout_ms` 0 waits as long as that takes.
    pub fn quiesce_dev(&mut self, dev_id: u32, timeout_ms: u64) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [timeout_ms],
            ..CtrlCmd::default()
        };
        self.submit(sys::UBLK_U_CMD_QUIESCE_DEV, cmd)
            .map(drop)
            .map_err(|e| command_error("QUIESCE_DEV", e))
    }

    /// UPDATE_SIZE (UBLK_F_UPDATE_SIZE): the device exposes `bytes` (a
    /// multiple of 512) from now on; the kernel tells the block layer.
    pub fn update_size(&mut self, dev_id: u32, bytes: u64) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [bytes / 512],
            ..CtrlCmd::default()
        };
        self.submit(sys::UBLK_U_CMD_UPDATE_SIZE, cmd)
            .map(drop)
            .map_err(|e| command_error("UPDATE_SIZE", e))
    }

    fn simple(
        &mut self,
        dev_id: u32,
        legacy: u32,
        encoded: u32,
        what: &'static str,
    ) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            ..CtrlCmd::default()
        };
        let op = self.opcode(legacy, encoded);
        self.submit(op, cmd)
            .map(drop)
            .map_err(|e| command_error(what, e))
    }

    /// GET_PARAMS: the parameters the device was started with (what a recovering
    /// daemon compares its config against).
    pub fn get_params(&mut self, dev_id: u32) -> Result<Params, CtrlError> {
        let mut params = Params {
            // The kernel copies at most `len` bytes: the size we know.
            len: std::mem::size_of::<Params>() as u32,
            ..Params::default()
        };
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<Params>() as u16,
            addr: std::ptr::addr_of_mut!(params) as u64,
            ..CtrlCmd::default()
        };
        let op = self.opcode(sys::UBLK_CMD_GET_PARAMS, sys::UBLK_U_CMD_GET_PARAMS);
        self.submit(op, cmd)
            .map_err(|e| command_error("GET_PARAMS", e))?;
        Ok(params)
    }

    /// START_USER_RECOVERY: forget the dead daemon's queues so a new process may
    /// open /dev/ublkcN and FETCH again. The kernel answers EBUSY until the old
    /// process has fully gone (char device closed) and the device is quiesced;
    /// that error is returned as is for the caller to retry.
    pub fn start_user_recovery(&mut self, dev_id: u32) -> Result<(), CtrlError> {
        self.simple(
            dev_id,
            sys::UBLK_CMD_START_USER_RECOVERY,
            sys::UBLK_U_CMD_START_USER_RECOVERY,
            "START_USER_RECOVERY",
        )
    }

    /// END_USER_RECOVERY: blocks until every queue has armed every tag, records
    /// the new server pid and lets the held requests through.
    pub fn end_user_recovery(&mut self, dev_id: u32, server_pid: i32) -> Result<(), CtrlError> {
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            data: [server_pid as u64],
            ..CtrlCmd::default()
        };
        let op = self.opcode(
            sys::UBLK_CMD_END_USER_RECOVERY,
            sys::UBLK_U_CMD_END_USER_RECOVERY,
        );
        self.submit(op, cmd)
            .map(drop)
            .map_err(|e| command_error("END_USER_RECOVERY", e))
    }

    /// GET_DEV_INFO; `Ok(None)` when no device has this id.
    pub fn dev_info(&mut self, dev_id: u32) -> Result<Option<DevInfo>, CtrlError> {
        let mut info = DevInfo::default();
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of::<DevInfo>() as u16,
            addr: std::ptr::addr_of_mut!(info) as u64,
            ..CtrlCmd::default()
        };
        let op = self.opcode(sys::UBLK_CMD_GET_DEV_INFO, sys::UBLK_U_CMD_GET_DEV_INFO);
        match self.submit(op, cmd) {
            Ok(_) => Ok(Some(info)),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(command_error("GET_DEV_INFO", e)),
        }
    }

    /// GET_QUEUE_AFFINITY: the CPUs whose requests land on queue `queue`.
    pub fn queue_affinity(&mut self, dev_id: u32, queue: u16) -> Result<Vec<usize>, CtrlError> {
        // A cpumask for up to 1024 CPUs, in u64 words as the kernel requires
        // (length a multiple of sizeof(long), at least nr_cpu_ids bits).
        let mut mask = [0u64; 16];
        let cmd = CtrlCmd {
            dev_id,
            queue_id: u16::MAX,
            len: std::mem::size_of_val(&mask) as u16,
            addr: mask.as_mut_ptr() as u64,
            data: [u64::from(queue)],
            ..CtrlCmd::default()
        };
        let op = self.opcode(
            sys::UBLK_CMD_GET_QUEUE_AFFINITY,
            sys::UBLK_U_CMD_GET_QUEUE_AFFINITY,
        );
        self.submit(op, cmd)
            .map_err(|e| command_error("GET_QUEUE_AFFINITY", e))?;
        Ok(mask_to_cpus(&mask))
    }
}

/// The two things [`wait_for_cqe`] does with a ring: enter it, and look for
/// the command's completion. A trait so that the waiting is tested without the
/// kernel.
trait CommandRing {
    /// Submit what is queued and wait for a completion (`io_uring_enter`).
    fn enter(&mut self) -> io::Result<usize>;
    /// The result of the command's CQE, once posted.
    fn reap(&mut self) -> Option<i32>;
    /// Whether the kernel has taken the queued SQE (the submission queue is empty).
    fn taken(&mut self) -> bool;
}

impl CommandRing for IoUring<squeue::Entry128, cqueue::Entry> {
    fn enter(&mut self) -> io::Result<usize> {
        self.submit_and_wait(1)
    }

    fn reap(&mut self) -> Option<i32> {
        self.completion().next().map(|cqe| cqe.result())
    }

    fn taken(&mut self) -> bool {
        self.submission().is_empty()
    }
}

/// Wait for the CQE of the one command queued on `ring`, whatever interrupts.
///
/// Once the kernel has taken the SQE it owns the command's buffer (`cmd.addr`,
/// on the caller's stack) until it posts the CQE, and it may write there at
/// any moment until then. So an `io_uring_enter` that fails after that point
/// (EINTR when a signal arrives while waiting: a SIGINT, SIGHUP or a profiler's
/// signal during a STOP_DEV that drains I/O, say) must not end the wait, or the
/// caller would free a buffer the kernel is about to fill. Entering again does
/// not resubmit: the SQE has left the queue, so only the wait is repeated.
/// Only an error while the SQE is still queued (the kernel never saw the
/// command, so no buffer is lent) is returned; the caller must then never
/// enter the ring again, since that would submit the stale SQE.
fn wait_for_cqe(ring: &mut impl CommandRing) -> io::Result<i32> {
    let mut complained = false;
    loop {
        if let Some(res) = ring.reap() {
            return Ok(res);
        }
        match ring.enter() {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if !ring.taken() => return Err(e),
            Err(e) => {
                // Not expected with one command on a ring of four; waiting is
                // the only safe answer, but not a busy one.
                if !std::mem::replace(&mut complained, true) {
                    tracing::error!(
                        "ublk control ring: {e} while a command is in flight; waiting for it"
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn mask_to_cpus(mask: &[u64]) -> Vec<usize> {
    let mut cpus = Vec::new();
    for (word_index, word) in mask.iter().enumerate() {
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                cpus.push(word_index * 64 + bit);
            }
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpumask_words_become_cpu_numbers() {
        let mut mask = [0u64; 16];
        mask[0] = 0b101;
        mask[1] = 1;
        assert_eq!(mask_to_cpus(&mask), vec![0, 2, 64]);
    }

    /// A ring that answers `enter` from a script; the command is taken by the
    /// kernel at the first `enter` unless `refuse` says otherwise, and its CQE
    /// is posted after the script runs out.
    struct Scripted {
        script: Vec<io::Result<usize>>,
        refuse: bool,
        taken: bool,
        enters: usize,
    }

    impl Scripted {
        fn new(script: Vec<io::Result<usize>>) -> Scripted {
            Scripted {
                script,
                refuse: false,
                taken: false,
                enters: 0,
            }
        }
    }

    impl CommandRing for Scripted {
        fn enter(&mut self) -> io::Result<usize> {
            self.enters += 1;
            if !self.refuse {
                self.taken = true;
            }
            if self.script.is_empty() {
                return Ok(0);
            }
            self.script.remove(0)
        }

        fn reap(&mut self) -> Option<i32> {
            (self.taken && self.script.is_empty()).then_some(-libc::ENODEV)
        }

        fn taken(&mut self) -> bool {
            self.taken
        }
    }

    fn errno(code: i32) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn eintr_while_in_flight_waits_on_for_the_completion() {
        let mut ring = Scripted::new(vec![Ok(1), errno(libc::EINTR), errno(libc::EINTR)]);
        assert_eq!(wait_for_cqe(&mut ring).unwrap(), -libc::ENODEV);
        assert_eq!(ring.enters, 3);
    }

    #[test]
    fn other_errors_while_in_flight_wait_for_the_completion_too() {
        let mut ring = Scripted::new(vec![errno(libc::EINTR), errno(libc::EBUSY)]);
        assert_eq!(wait_for_cqe(&mut ring).unwrap(), -libc::ENODEV);
    }

    #[test]
    fn an_error_before_the_kernel_takes_the_command_is_returned() {
        let mut ring = Scripted::new(vec![errno(libc::ENOMEM)]);
        ring.refuse = true;
        let error = wait_for_cqe(&mut ring).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOMEM));
        assert_eq!(ring.enters, 1);
    }

    #[test]
    fn daemon_mark_is_ascii() {
        assert_eq!(&DAEMON_MARK.to_le_bytes(), b"ublkstk1");
    }
}
