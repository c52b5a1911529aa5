//! `disk`: a block device holds the data.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::{path_value, shown, Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
pub use crate::params::DiskParams;

impl Kind for DiskParams {
    const NAME: &'static str = "disk";
    const KEYS: &'static [Key] = &[
        Key::required("path", "the block device"),
        Key::optional("direct", "true", "bypass the page cache (O_DIRECT)"),
    ];
    const SYNONYMS: &'static [&'static str] = &["block", "blockdev", "device", "dev", "raw"];

    fn read(keys: &mut dyn KeyReader) -> Option<DiskParams> {
        let path = keys
            .require("path", "the block device, like path = \"/dev/nvme0n1\"")
            .and_then(|item| keys.path(item));
        let direct = keys.optional("direct", true, |keys, item| keys.boolean(item));
        Some(DiskParams {
            path: path?,
            direct: direct?,
        })
    }

    fn values(&self, _: &dyn Fn(usize) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("path", Some(path_value(&self.path))),
            ("direct", Some(self.direct.to_string())),
        ]
    }

    fn summary(&self) -> String {
        let direct = if self.direct { "direct" } else { "buffered" };
        format!("{} ({direct})", shown(&self.path))
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let shown = shown(&self.path);
        let metadata = match fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                sizing.report(Some("path"), format!("block device {shown} does not exist"));
                return None;
            }
            Err(error) => {
                sizing.report(Some("path"), format!("cannot look at {shown}: {error}"));
                return None;
            }
        };
        if !metadata.file_type().is_block_device() {
            let what = if metadata.is_file() {
                "a regular file; use type = \"file\" for image files"
            } else {
                "not a block device"
            };
            sizing.report(Some("path"), format!("{shown} is {what}"));
            return None;
        }
        let bytes = match block_device_bytes(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                sizing.report(
                    Some("path"),
                    format!("cannot open {shown} read-only to measure it: {error}"),
                );
                return None;
            }
        };
        if bytes == 0 {
            sizing.report(
                Some("path"),
                format!(
                    "block device {shown} is empty (0 bytes); is its medium or backing file attached?"
                ),
            );
            return None;
        }
        // A partial last block cannot be addressed by the device above.
        let usable = bytes - bytes % sizing.block_size;
        if usable == 0 {
            sizing.report(
                Some("path"),
                format!("block device {shown} is smaller than one block ({bytes} bytes)"),
            );
            return None;
        }
        Some(usable)
    }

    fn leaf_path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn check_host(&self, host: &mut Host<'_>) {
        host.leaf_file(&self.path);
        if self.direct {
            check_alignment(&self.path, host);
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        Ok(Opened::of(crate::disk::open(self, opening.block_size)?))
    }
}

/// The size of a block device. Seeking to the end of a block device reports
/// its size (the same value BLKGETSIZE64 gives); the file is opened
/// read-only and nothing is read or written.
fn block_device_bytes(path: &Path) -> io::Result<u64> {
    let mut device = File::open(path)?;
    device.seek(SeekFrom::End(0))
}

/// An O_DIRECT disk needs requests of at least its logical sector size.
fn check_alignment(path: &Path, host: &mut Host<'_>) {
    // Read-only and without O_EXCL: validate must not disturb a disk in use.
    let Ok(file) = File::open(path) else { return };
    let Ok(sector) = crate::os::logical_sector_size(&file) else {
        return;
    };
    if u64::from(sector) > host.block_size {
        host.report(
            Some("direct"),
            format!(
                "{} has {sector}-byte logical sectors, more than device.block_size ({}); \
                 for O_DIRECT use block_size = 4096 or direct = false",
                shown(path),
                host.block_size
            ),
        );
    }
}
