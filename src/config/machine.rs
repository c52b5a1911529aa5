//! What a config asks of this machine, checked before anything is opened:
//! memory, keys, leaves that are distinct files, and O_DIRECT alignment. Each
//! is something `up` would refuse, so `validate` refuses it first, at the line
//! to fix. Reads metadata and keys only; never creates or writes anything.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use layers::plan::{KeySource, LayerPlan, LayerSpec};

use super::schema::LayerKey;
use super::shown;
use super::size::format_human;
use super::sizes::SizeProblem;

/// Every problem of this kind among `layers` (`None`: invalid on its own),
/// given each layer's measured size.
pub(crate) fn check(
    layers: &[Option<&LayerPlan>],
    sizes: &[Option<u64>],
    block_size: u64,
) -> Vec<SizeProblem> {
    let mut problems = Vec::new();
    let memory = layers::os::memory_total().ok();
    let mut files = Leaves::default();
    for (id, layer) in layers.iter().enumerate() {
        let Some(layer) = layer else { continue };
        let mut report = |key: Option<LayerKey>, message: String| {
            problems.push(SizeProblem {
                layer: id,
                key,
                message,
            });
        };
        if let Some(memory) = memory {
            check_memory(id, layer, sizes, block_size, memory, &mut report);
        }
        match &layer.spec {
            LayerSpec::Crypt(params) => check_key(&params.key, &mut report),
            LayerSpec::File(params) => {
                files.check(&layer.name, &params.path, &mut report);
                if params.direct {
                    check_file_alignment(&params.path, block_size, &mut report);
                }
            }
            LayerSpec::Disk(params) => {
                files.check(&layer.name, &params.path, &mut report);
                if params.direct {
                    check_disk_alignment(&params.path, block_size, &mut report);
                }
            }
            _ => {}
        }
    }
    problems
}

/// Memory the layer takes from this process, against the machine's.
fn check_memory(
    id: usize,
    layer: &LayerPlan,
    sizes: &[Option<u64>],
    block_size: u64,
    memory: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) {
    let machine = format!("this machine has {} of memory", format_human(memory));
    let size_of = |id: usize| sizes.get(id).copied().flatten();
    match &layer.spec {
        LayerSpec::Memory { size_bytes } if *size_bytes > memory => report(
            Some(LayerKey::Size),
            format!(
                "a memory device of {} does not fit in memory: {machine}",
                format_human(*size_bytes)
            ),
        ),
        LayerSpec::Cache(params) if params.capacity_bytes > memory => report(
            Some(LayerKey::Capacity),
            format!(
                "capacity {} is more than the memory a cache can have: {machine}",
                format_human(params.capacity_bytes)
            ),
        ),
        LayerSpec::Checksum(_) | LayerSpec::Crypt(_) => {
            let child = layer.spec.children()[0];
            let (Some(below), Some(exposed)) = (size_of(child), size_of(id)) else {
                return;
            };
            // The table takes two 4 KiB slots per page below and one page in
            // memory: about half of what the layer keeps below.
            let table = below.saturating_sub(exposed) / 2;
            if table > memory {
                report(
                    None,
                    format!(
                        "its table of about {} over this {} device is held in memory: {machine}",
                        format_human(table),
                        format_human(below)
                    ),
                );
            }
        }
        LayerSpec::Compress(params) => {
            let Some(below) = size_of(params.over) else {
                return;
            };
            match layers::compress::open_footprint(below, block_size as u32, params.size_bytes) {
                Ok(bytes) if bytes > memory => report(
                    Some(LayerKey::Size),
                    format!(
                        "its map of about {} is held in memory: {machine}",
                        format_human(bytes)
                    ),
                ),
                Ok(_) => {}
                // Reported by the size checks.
                Err(_) => {}
            }
        }
        _ => {}
    }
}

/// The key is read exactly as `up` reads it, so a key that `up` would refuse
/// (missing, unreadable, the wrong length, readable by others, owned by
/// another user, an unset variable) is refused here, and the key is dropped
/// (and wiped) at once.
fn check_key(source: &KeySource, report: &mut impl FnMut(Option<LayerKey>, String)) {
    let key = match source {
        KeySource::File(_) => LayerKey::KeyFile,
        KeySource::Env(_) => LayerKey::KeyEnv,
    };
    if let KeySource::File(path) = source {
        if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            report(
                Some(key),
                format!("key_file {} does not exist", shown(path)),
            );
            return;
        }
    }
    if let Err(message) = layers::crypt::load_key(source) {
        report(Some(key), message);
    }
}

/// Leaves met so far, by what identifies their file: two leaves on one file
/// would overwrite each other (a mirror of a file with itself, stripes that
/// are one disk).
#[derive(Default)]
struct Leaves {
    seen: HashMap<FileId, (String, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FileId {
    /// An existing file or device node: its device and inode (through
    /// symlinks and hard links alike).
    Inode(u64, u64),
    /// A block device, by its device number: two nodes of one disk.
    BlockDevice(u64),
    /// A file not created yet: its path with the existing folders resolved.
    Path(PathBuf),
}

impl Leaves {
    fn check(
        &mut self,
        name: &str,
        path: &Path,
        report: &mut impl FnMut(Option<LayerKey>, String),
    ) {
        let Some(id) = file_id(path) else { return };
        match self.seen.get(&id) {
            Some((other, other_path)) => report(
                Some(LayerKey::Path),
                format!(
                    "{} is the same file as {} of layer \"{other}\"; each leaf needs a file of its own",
                    shown(path),
                    shown(other_path)
                ),
            ),
            None => {
                self.seen.insert(id, (name.to_owned(), path.to_path_buf()));
            }
        }
    }
}

fn file_id(path: &Path) -> Option<FileId> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.file_type().is_block_device() => {
            Some(FileId::BlockDevice(metadata.rdev()))
        }
        Ok(metadata) => Some(FileId::Inode(metadata.dev(), metadata.ino())),
        Err(_) => resolved(path).map(FileId::Path),
    }
}

/// `path` with its longest existing ancestor resolved (symlinks, `..`), and
/// the rest appended as written.
fn resolved(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(real) = fs::canonicalize(base) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return Some(out);
        }
        rest.push(base.file_name()?.to_owned());
        base = base.parent()?;
    }
}

/// An O_DIRECT file needs every request aligned as its filesystem says.
fn check_file_alignment(
    path: &Path,
    block_size: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) {
    // A file not created yet is measured when it exists: its folder's
    // filesystem may differ from what a statx of the folder says.
    let Ok(Some(align)) = layers::os::dio_offset_align(path) else {
        return;
    };
    if align == 0 {
        report(
            Some(LayerKey::Direct),
            format!(
                "{} does not support O_DIRECT on its filesystem; set direct = false",
                shown(path)
            ),
        );
    } else if u64::from(align) > block_size {
        report(
            Some(LayerKey::Direct),
            format!(
                "O_DIRECT on {} needs I/O aligned to {align} bytes, more than device.block_size \
                 ({block_size}); use block_size = 4096 or direct = false",
                shown(path)
            ),
        );
    }
}

/// An O_DIRECT disk needs requests of at least its logical sector size.
fn check_disk_alignment(
    path: &Path,
    block_size: u64,
    report: &mut impl FnMut(Option<LayerKey>, String),
) {
    // Read-only and without O_EXCL: validate must not disturb a disk in use.
    let Ok(file) = File::open(path) else { return };
    let Ok(sector) = layers::os::logical_sector_size(&file) else {
        return;
    };
    if u64::from(sector) > block_size {
        report(
            Some(LayerKey::Direct),
            format!(
                "{} has {sector}-byte logical sectors, more than device.block_size ({block_size}); \
                 for O_DIRECT use block_size = 4096 or direct = false",
                shown(path)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_not_yet_created_resolve_through_existing_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let through_link = resolved(&dir.path().join("link/new/f.img")).unwrap();
        let direct = resolved(&dir.path().join("real/new/f.img")).unwrap();
        assert_eq!(through_link, direct);
        assert_ne!(
            direct,
            resolved(&dir.path().join("real/new/g.img")).unwrap()
        );
    }
}
