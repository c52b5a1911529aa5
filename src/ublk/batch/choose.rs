//! Whether a new device uses the batch protocol: `UBLK_STACK_BATCH_IO`
//! (`auto`, `off`, `on`) and what the kernel offers.
//!
//! `auto` keeps the per-tag protocol: the batch protocol is not yet shown
//! faster on the 7.3 test VM (benches/vm/README.md, "Batch I/O"), so it is
//! used only when asked for (`on`). The kernel accepts BATCH_IO with copy
//! mode, AUTO_BUF_REG and SUPPORT_ZERO_COPY alike, so `on` never changes the
//! data path; it does take PER_IO_DAEMON off a batch device, which is then
//! served by one thread per queue (`queue_threads`).

use crate::ublk::sys;

pub const ENV: &str = "UBLK_STACK_BATCH_IO";
/// The first kernel whose ublk driver has UBLK_F_BATCH_IO.
pub const SINCE: &str = "Linux 7.0";

/// What `UBLK_STACK_BATCH_IO` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Unset or `auto`: the per-tag protocol (see the module comment).
    Auto,
    /// `off`: the per-tag protocol.
    Off,
    /// `on`: batch, or an error naming the kernel it needs.
    On,
}

impl Wanted {
    pub fn parse(value: Option<&str>) -> Result<Wanted, String> {
        match value {
            None | Some("") | Some("auto") => Ok(Wanted::Auto),
            Some("off") => Ok(Wanted::Off),
            Some("on") => Ok(Wanted::On),
            Some(other) => Err(format!("{ENV}={other:?}: expected auto, off or on")),
        }
    }

    pub fn from_env() -> Result<Wanted, String> {
        Wanted::parse(std::env::var(ENV).ok().as_deref())
    }
}

/// Whether a new device on a kernel offering `offered` uses the batch protocol.
pub fn choose(offered: u64, wanted: Wanted) -> Result<bool, String> {
    let has = offered & sys::UBLK_F_BATCH_IO != 0;
    match wanted {
        Wanted::Off => Ok(false),
        Wanted::Auto => Ok(false),
        Wanted::On if has => Ok(true),
        Wanted::On => Err(format!(
            "{ENV}=on: this kernel's ublk driver has no batch I/O (it needs UBLK_F_BATCH_IO, {SINCE} or later; it offers {offered:#x})"
        )),
    }
}

/// The ADD_DEV flag for `batch`.
pub fn flag(batch: bool) -> u64 {
    if batch {
        sys::UBLK_F_BATCH_IO
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_6_12: u64 = 0x1fe;
    const LINUX_7_3: u64 = 0x1f_ffff;

    #[test]
    fn auto_follows_the_kernel_and_on_names_the_version() {
        assert_eq!(choose(LINUX_7_3, Wanted::Auto), Ok(false));
        assert_eq!(choose(LINUX_6_12, Wanted::Auto), Ok(false));
        assert_eq!(choose(LINUX_7_3, Wanted::Off), Ok(false));
        assert_eq!(choose(LINUX_7_3, Wanted::On), Ok(true));
        let err = choose(LINUX_6_12, Wanted::On).unwrap_err();
        assert!(err.contains("Linux 7.0") && err.contains("0x1fe"), "{err}");
        assert_eq!(flag(true), 1 << 15);
        assert_eq!(flag(false), 0);
    }

    #[test]
    fn the_knob_parses_three_words() {
        assert_eq!(Wanted::parse(None), Ok(Wanted::Auto));
        assert_eq!(Wanted::parse(Some("on")), Ok(Wanted::On));
        assert_eq!(Wanted::parse(Some("off")), Ok(Wanted::Off));
        assert_eq!(
            Wanted::parse(Some("yes")).unwrap_err(),
            "UBLK_STACK_BATCH_IO=\"yes\": expected auto, off or on"
        );
    }
}
