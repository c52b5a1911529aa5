//! `file`: a regular file holds the data.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::{path_value, shown, Host, Key, KeyReader, Kind, Opened, Opening, Sizing};
pub use crate::params::FileParams;
use crate::units::size::{format_exact, format_human};

impl Kind for FileParams {
    const NAME: &'static str = "file";
    const KEYS: &'static [Key] = &[
        Key::required("path", "the image file"),
        Key::optional(
            "size",
            "required with create",
            "the file's size; an existing file must have it",
        ),
        Key::optional(
            "create",
            "false",
            "create the file, sparse, at up if it is missing",
        ),
        Key::optional("direct", "false", "bypass the page cache (O_DIRECT)"),
    ];
    const SYNONYMS: &'static [&'static str] = &["image", "img", "loop", "regular"];
    const GROWS: bool = true;

    fn read(keys: &mut dyn KeyReader) -> Option<FileParams> {
        let path = keys
            .require("path", "the image file, like path = \"data/disk0.img\"")
            .and_then(|item| keys.path(item));
        let create_item = keys.get("create");
        let create = match create_item {
            Some(item) => keys.boolean(item),
            None => Some(false),
        };
        let direct = keys.optional("direct", false, |keys, item| keys.boolean(item));
        let size_bytes = match keys.get("size") {
            Some(item) => keys.size(item).map(Some),
            None => {
                if let (Some(true), Some(item)) = (create, create_item) {
                    keys.report(
                        item,
                        "create = true needs a size for the file it creates, like size = \"1GiB\""
                            .into(),
                    );
                    None
                } else {
                    Some(None)
                }
            }
        };
        Some(FileParams {
            path: path?,
            size_bytes: size_bytes?,
            create: create?,
            direct: direct?,
        })
    }

    fn values(&self, _: &dyn Fn(usize) -> String) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("path", Some(path_value(&self.path))),
            ("size", self.size_bytes.map(format_exact)),
            ("create", Some(self.create.to_string())),
            ("direct", Some(self.direct.to_string())),
        ]
    }

    fn summary(&self) -> String {
        let state = if self.path.exists() {
            "exists"
        } else {
            "created on up"
        };
        let direct = if self.direct { ", direct" } else { "" };
        format!("{} ({state}{direct})", shown(&self.path))
    }

    fn size(&self, sizing: &mut Sizing<'_>) -> Option<u64> {
        let path = shown(&self.path);
        let metadata = match fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                if self.create {
                    // Created at `up`; validate itself never creates it.
                    return self.size_bytes;
                }
                sizing.report(
                    Some("path"),
                    format!(
                        "file {path} does not exist; to have it created at up, set create = true and a size"
                    ),
                );
                return None;
            }
            Err(error) => {
                sizing.report(Some("path"), format!("cannot look at file {path}: {error}"));
                return None;
            }
        };
        let file_type = metadata.file_type();
        if file_type.is_block_device() {
            sizing.report(
                Some("path"),
                format!("{path} is a block device; use type = \"disk\" for block devices"),
            );
            return None;
        }
        if !file_type.is_file() {
            sizing.report(Some("path"), format!("{path} is not a regular file"));
            return None;
        }
        let actual = metadata.len();
        if let Some(wanted) = self.size_bytes {
            if self.create && wanted > actual && wanted % sizing.block_size == 0 {
                // Grown at `up` or by a reload, as it was created.
                return Some(wanted);
            }
            if self.create && wanted < actual {
                sizing.report(
                    Some("size"),
                    format!(
                        "shrinking file {path} from {} ({actual} bytes) to {} is not supported: \
                         a file only grows; restore size = \"{}\"",
                        format_human(actual),
                        format_exact(wanted),
                        format_exact(actual)
                    ),
                );
                return None;
            }
            if wanted != actual {
                sizing.report(
                    Some("size"),
                    format!(
                        "size is {} but the existing file {path} is {} ({actual} bytes); \
                         fix size, or move the file away to have a new one created",
                        format_exact(wanted),
                        format_human(actual)
                    ),
                );
                return None;
            }
        }
        if actual == 0 {
            sizing.report(
                Some("path"),
                format!("file {path} is empty; give it a size (with create = true for a new file)"),
            );
            return None;
        }
        let block_size = sizing.block_size;
        if actual % block_size != 0 {
            sizing.report(
                Some("path"),
                format!(
                    "file {path} is {actual} bytes, not a multiple of the block size ({block_size} bytes)"
                ),
            );
            return None;
        }
        Some(actual)
    }

    fn leaf_path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn check_host(&self, host: &mut Host<'_>) {
        host.leaf_file(&self.path);
        if self.direct {
            check_alignment(self, host);
        }
    }

    fn open(&self, opening: &mut Opening<'_>) -> Result<Opened, String> {
        Ok(Opened::of(crate::file::open(self, opening.block_size)?))
    }
}

/// An O_DIRECT file needs every request aligned as its filesystem says.
fn check_alignment(params: &FileParams, host: &mut Host<'_>) {
    // A file not created yet is measured when it exists: its folder's
    // filesystem may differ from what a statx of the folder says.
    let Ok(Some(align)) = crate::os::dio_offset_align(&params.path) else {
        return;
    };
    let path = shown(&params.path);
    if align == 0 {
        host.report(
            Some("direct"),
            format!("{path} does not support O_DIRECT on its filesystem; set direct = false"),
        );
    } else if u64::from(align) > host.block_size {
        host.report(
            Some("direct"),
            format!(
                "O_DIRECT on {path} needs I/O aligned to {align} bytes, more than device.block_size \
                 ({}); use block_size = 4096 or direct = false",
                host.block_size
            ),
        );
    }
}
