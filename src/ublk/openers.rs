//! Who has a block device open: what `down` checks on kernels without
//! TRY_STOP_DEV, and what it names when a device is in use.
//!
//! Three looks, each seeing what the others miss. An exclusive open (O_EXCL)
//! fails with EBUSY while the kernel holds the device for a mount, swap or a
//! device built on it (dm, md); /proc/self/mountinfo and
//! /sys/block/NAME/holders say which. Plain openers (a shell's `exec 3<DEV`,
//! dd, fio) do not stop an exclusive open, so every process's /proc/PID/fd is
//! looked at too. Processes in another PID namespace stay unseen, and a check
//! cannot stop a process opening the device right after it: only the kernel's
//! TRY_STOP_DEV is both exact and atomic.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// One line per user of the block device at `path`: `mounted on /mnt`,
/// `open in pid 42 (bash)`; empty when none is seen.
pub fn users(path: &Path) -> io::Result<Vec<String>> {
    let meta = fs::metadata(path)?;
    if !meta.file_type().is_block_device() {
        return Err(io::Error::other(format!(
            "{} is not a block device",
            path.display()
        )));
    }
    let rdev = meta.rdev();
    let mut users: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .map(|text| mount_points(&text, dev_numbers(rdev)))
        .unwrap_or_default()
        .into_iter()
        .map(|point| format!("mounted on {point}"))
        .collect();
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        users.extend(holders(name).into_iter().map(|h| format!("held by {h}")));
    }
    let claimed = matches!(
        OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(path),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY)
    );
    if claimed && users.is_empty() {
        users.push("claimed by the kernel (swap, or part of another device)".into());
    }
    let is_device = |m: &fs::Metadata| m.file_type().is_block_device() && m.rdev() == rdev;
    users.extend(
        processes_with_open(is_device)
            .into_iter()
            .map(|(pid, comm)| format!("open in pid {pid} ({comm})")),
    );
    Ok(users)
}

/// (major, minor) of a `dev_t` as glibc encodes it.
fn dev_numbers(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff);
    let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff);
    (major, minor)
}

/// Mount points of the device `major:minor` in a mountinfo text (field 3 is
/// `MAJOR:MINOR`, field 5 the mount point).
fn mount_points(mountinfo: &str, (major, minor): (u64, u64)) -> Vec<String> {
    let wanted = format!("{major}:{minor}");
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(2) == Some(&wanted.as_str()))
                .then(|| fields.get(4).map(|point| point.to_string()))
                .flatten()
        })
        .collect()
}

/// Devices built on `name` (dm, md, bcache), from sysfs.
fn holders(name: &str) -> Vec<String> {
    let mut found: Vec<String> = fs::read_dir(format!("/sys/block/{name}/holders"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().map(String::from))
        .collect();
    found.sort();
    found
}

/// Processes with a file descriptor on a file that `is_it` recognises by
/// its metadata, with their command names; processes that vanish or hide
/// their fds are skipped.
fn processes_with_open(is_it: impl Fn(&fs::Metadata) -> bool) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            // The fd's link leads to the file: its metadata is the file's.
            fs::metadata(fd.path()).is_ok_and(|m| is_it(&m))
        });
        if holds {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            found.push((pid, comm.trim().to_string()));
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc's makedev().
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    }

    #[test]
    fn dev_t_splits_like_glibc() {
        assert_eq!(dev_numbers(makedev(259, 3)), (259, 3));
        assert_eq!(
            dev_numbers(makedev(0x1_2345, 0x12_3456)),
            (0x1_2345, 0x12_3456)
        );
        // What stat() gives for a real node agrees: /dev/null is 1:3.
        assert_eq!(
            dev_numbers(fs::metadata("/dev/null").unwrap().rdev()),
            (1, 3)
        );
    }

    #[test]
    fn mountinfo_names_the_mount_points_of_one_device() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 22 259:0 / /mnt/fs rw,relatime - ext4 /dev/ublkb0 rw\n\
                    41 22 259:1 / /mnt/other rw - ext4 /dev/ublkb1 rw\n\
                    42 22 259:0 /sub /srv rw - ext4 /dev/ublkb0 rw\n";
        assert_eq!(mount_points(text, (259, 0)), ["/mnt/fs", "/srv"]);
        assert!(mount_points(text, (259, 7)).is_empty());
    }

    #[test]
    fn a_file_is_not_a_block_device() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let error = users(file.path()).unwrap_err();
        assert!(error.to_string().contains("not a block device"), "{error}");
    }

    #[test]
    fn this_process_is_seen_holding_a_file_it_opened() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let is_it = |m: &fs::Metadata| m.dev() == meta.dev() && m.ino() == meta.ino();
        let me = std::process::id();
        let holders = processes_with_open(is_it);
        assert!(holders.iter().any(|(pid, _)| *pid == me), "{holders:?}");
        let path = file.path().to_path_buf();
        drop(file);
        // Closed and removed: nobody holds it any more.
        let gone =
            processes_with_open(|m: &fs::Metadata| m.ino() == meta.ino() && m.dev() == meta.dev());
        assert!(
            !gone.iter().any(|(pid, _)| *pid == me),
            "{gone:?} {}",
            path.display()
        );
    }
}
