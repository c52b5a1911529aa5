//! `ublk-stack features [--json]`: the ublk features the running kernel
//! offers (GET_FEATURES, decoded by name) and those a device `up` creates
//! would use. Without ublk_drv the answer is that it is not loaded and how to
//! load it (exit 0: that is what the kernel offers); only a driver that cannot
//! be asked (no permission, a failing command) exits 1.

use serde::Serialize;

use crate::ublk::ctrl::{Control, CtrlError, CONTROL_PATH};
use crate::ublk::{batch, features, queue_threads, sys, user_copy, zero_copy};

/// Said when /dev/ublk-control is missing.
pub const NOT_LOADED: &str = "ublk_drv is not loaded (/dev/ublk-control is missing): load it with \
     `modprobe ublk_drv` (Linux 6.0 or later built with CONFIG_BLK_DEV_UBLK), \
     or serve the stack without it with `up CONFIG --nbd ADDR`";

/// The answer, as `--json` prints it.
#[derive(Debug, PartialEq, Serialize)]
pub struct Report {
    pub control: &'static str,
    /// Whether /dev/ublk-control exists.
    pub loaded: bool,
    /// Why the features are not known; `None` when they are.
    pub error: Option<String>,
    /// GET_FEATURES (0 before Linux 6.5, which cannot say).
    pub kernel_features: Option<u64>,
    pub kernel_features_hex: Option<String>,
    /// The named bits of `kernel_features`.
    pub offered: Vec<&'static str>,
    /// Bits this build has no name for.
    pub unknown_bits: Vec<u32>,
    /// How request data moves for a stack of file and disk leaves under
    /// raid0, mirror and fault: `zero-copy` or `copy` (other stacks: `copy`),
    /// or `user-copy` when UBLK_STACK_ZERO_COPY asks for it.
    pub data_path: Option<&'static str>,
    /// What a device created now would use (recovery not for a stack with a
    /// memory leaf, nor for one with a cache without QUIESCE; see the README).
    pub in_use: Vec<&'static str>,
    /// How `down` tells a device in use: `TRY_STOP_DEV` or `open check`.
    pub safe_stop: Option<&'static str>,
}

impl Report {
    /// From what opening the control device gave (its GET_FEATURES answer).
    pub fn from_kernel(opened: Result<u64, CtrlError>) -> Report {
        let mut report = Report {
            control: CONTROL_PATH,
            loaded: true,
            error: None,
            kernel_features: None,
            kernel_features_hex: None,
            offered: Vec::new(),
            unknown_bits: Vec::new(),
            data_path: None,
            in_use: Vec::new(),
            safe_stop: None,
        };
        match opened {
            Ok(offered) => {
                report.kernel_features = Some(offered);
                report.kernel_features_hex = Some(features::hex(offered));
                report.offered = features::names(offered);
                report.unknown_bits = features::unknown_bits(offered);
                // For a stack that can take the request's pages (the common
                // case); the others stay in copy mode.
                let path = zero_copy::Wanted::from_env()
                    .and_then(|wanted| zero_copy::choose(offered, None, wanted))
                    .unwrap_or(zero_copy::DataPath::Copy);
                report.data_path = Some(path.name());
                let batch_io = batch::choose::Wanted::from_env()
                    .and_then(|wanted| batch::choose::choose(offered, wanted))
                    .unwrap_or(false);
                // Several threads per queue use PER_IO_DAEMON, which the
                // kernel sets on a device unasked.
                let threads = queue_threads::from_env()
                    .and_then(|wanted| queue_threads::choose(offered, batch_io, u16::MAX, wanted))
                    .unwrap_or(1);
                let asked = features::add_dev_flags(offered, true)
                    | path.flag()
                    | batch::choose::flag(batch_io);
                report.in_use = features::names(
                    features::in_use(asked, offered) | queue_threads::flag(threads),
                );
                report.safe_stop = Some(if offered & sys::UBLK_F_SAFE_STOP_DEV != 0 {
                    "TRY_STOP_DEV"
                } else {
                    "open check"
                });
            }
            Err(CtrlError::NotLoaded) => {
                report.loaded = false;
                report.error = Some(NOT_LOADED.to_string());
            }
            Err(other) => report.error = Some(other.to_string()),
        }
        report
    }

    /// 0 when the question is answered (features read, or no driver); 1 when
    /// the driver is there but could not be asked.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.loaded && self.error.is_some())
    }

    /// The table a terminal shows.
    pub fn render(&self) -> String {
        let Some(offered) = self.kernel_features else {
            let why = self.error.as_deref().unwrap_or("unknown");
            return format!("{why}\n");
        };
        let mut out = format!(
            "ublk_drv: loaded ({}), GET_FEATURES {}",
            self.control,
            features::hex(offered)
        );
        if offered == 0 {
            out.push_str(" (Linux before 6.5 cannot report its features)");
        }
        out.push('\n');
        out.push_str(&format!(
            "{:<24} {:>3}  {:<7}  {}\n",
            "FEATURE", "BIT", "OFFERED", "USED"
        ));
        for (index, (bit, name)) in features::NAMES.iter().enumerate() {
            let mark = |set: bool| if set { "yes" } else { "-" };
            out.push_str(&format!(
                "{name:<24} {index:>3}  {:<7}  {}\n",
                mark(offered & bit != 0),
                mark(self.in_use.contains(name))
            ));
        }
        for bit in &self.unknown_bits {
            out.push_str(&format!(
                "{:<24} {bit:>3}  {:<7}  -\n",
                "(unknown to this build)", "yes"
            ));
        }
        out.push_str(&match self.data_path.unwrap_or("copy") {
            "user-copy" => format!("data path: user-copy for every stack ({})\n", zero_copy::ENV),
            path => format!(
                "data path: {path} for stacks of file and disk leaves under raid0, mirror and fault; copy for the others\n"
            ),
        });
        // As `up` decides it, with the default user copy limit.
        let wanted = zero_copy::for_memory_file(offered, offered & sys::UBLK_F_USER_COPY != 0);
        let tmpfs = match zero_copy::choose(offered, None, wanted) {
            Ok(path) if path.is_zero_copy() => format!(
                "{}, with user copy for requests up to {} KiB",
                path.name(),
                user_copy::Max::DEFAULT.0 >> 10
            ),
            Ok(path) => path.name().to_string(),
            Err(_) => zero_copy::DataPath::Copy.name().to_string(),
        };
        out.push_str(&format!(
            "data path of a buffered file on tmpfs or ramfs alone (auto): {tmpfs}\n"
        ));
        out.push_str(match self.safe_stop {
            Some("TRY_STOP_DEV") => {
                "down: refuses a device in use, decided by the kernel (TRY_STOP_DEV)\n"
            }
            _ => "down: refuses a device in use, found by looking for mounts and open files (no SAFE_STOP_DEV)\n",
        });
        out.push_str(
            "USER_RECOVERY is used for stacks without a memory leaf; with a cache only where QUIESCE is offered, and such a device is resumed only after a clean upgrade (see the README)\n",
        );
        out
    }
}

/// `ublk-stack features [--json]`.
pub fn command(as_json: bool) -> u8 {
    let report = Report::from_kernel(Control::open().map(|ctrl| ctrl.features()));
    if as_json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("ublk-stack: {e}");
                return 1;
            }
        }
    } else if report.exit_code() != 0 {
        eprint!("ublk-stack: {}", report.render());
    } else {
        print!("{}", report.render());
    }
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_says_which_module_and_how_to_load_it() {
        let report = Report::from_kernel(Err(CtrlError::NotLoaded));
        assert!(!report.loaded);
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.kernel_features, None);
        assert!(report.in_use.is_empty());
        let text = report.render();
        assert!(text.contains("ublk_drv is not loaded"), "{text}");
        assert!(text.contains("modprobe ublk_drv"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["loaded"], false);
        assert!(json["kernel_features"].is_null());
    }

    #[test]
    fn permission_denied_is_an_error() {
        let report = Report::from_kernel(Err(CtrlError::NotPermitted));
        assert!(report.loaded);
        assert_eq!(report.exit_code(), 1);
        assert!(report.render().contains("permission denied"));
    }

    #[test]
    fn linux_6_12_uses_recovery_and_checks_openers_itself() {
        let report = Report::from_kernel(Ok(0x1fe));
        assert_eq!(report.exit_code(), 0);
        assert_eq!(report.kernel_features_hex.as_deref(), Some("0x1fe"));
        assert_eq!(
            report.in_use,
            ["USER_RECOVERY", "USER_RECOVERY_REISSUE", "CMD_IOCTL_ENCODE"]
        );
        assert_eq!(report.safe_stop, Some("open check"));
        let text = report.render();
        assert!(
            text.contains("CMD_IOCTL_ENCODE           6  yes      yes\n"),
            "{text}"
        );
        assert!(
            text.contains("SUPPORT_ZERO_COPY          0  -        -\n"),
            "{text}"
        );
        // 6.12 has no zero copy (bit 0 is not offered): copy mode, no error.
        assert_eq!(report.data_path, Some("copy"));
        assert!(text.contains("data path: copy for stacks"), "{text}");
        assert!(
            text.contains("file on tmpfs or ramfs alone (auto): user-copy\n"),
            "{text}"
        );
    }

    #[test]
    fn linux_7_3_adds_safe_stop_and_no_partition_scan() {
        let report = Report::from_kernel(Ok(0x1f_ffff));
        assert!(report.in_use.contains(&"SAFE_STOP_DEV"));
        assert!(report.in_use.contains(&"NO_AUTO_PART_SCAN"));
        // Zero copy by automatic registration, with the daemon's own
        // registration as the fallback.
        assert!(report.in_use.contains(&"AUTO_BUF_REG"));
        assert!(report.in_use.contains(&"SUPPORT_ZERO_COPY"));
        assert_eq!(report.data_path, Some("zero-copy"));
        assert!(report
            .render()
            .contains("data path: zero-copy for stacks of file and disk leaves"));
        assert!(report
            .render()
            .contains("alone (auto): zero-copy, with user copy for requests up to 8 KiB\n"));
        assert_eq!(report.unknown_bits, [20]);
        assert_eq!(report.safe_stop, Some("TRY_STOP_DEV"));
        assert!(report
            .render()
            .contains("(unknown to this build)   20  yes"));
    }
}
