//! What a kind checks against this machine before anything is opened:
//! memory, leaves that are distinct files, keys, O_DIRECT alignment, the
//! superblock a layer finds on an existing leaf below it. Each is something
//! `up` would refuse, so `validate` refuses it first. Reads metadata, keys
//! and those superblocks only; never creates or writes anything.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::sizing::Problem;
use super::text::shown;
use crate::compress;
use crate::superblock::{self, Superblock, SUPERBLOCK_BYTES};
use crate::units::size::format_human;

/// One layer being checked.
pub struct Host<'a> {
    pub block_size: u64,
    /// The machine's memory (MemTotal), if it could be read.
    pub memory: Option<u64>,
    /// The size this layer exposes, if it could be measured.
    pub size: Option<u64>,
    /// The children's sizes, in [`super::Kind::children`] order.
    pub child_sizes: &'a [Option<u64>],
    name: &'a str,
    leaves: &'a mut Leaves,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Host<'a> {
    pub fn new(
        name: &'a str,
        block_size: u64,
        memory: Option<u64>,
        size: Option<u64>,
        child_sizes: &'a [Option<u64>],
        leaves: &'a mut Leaves,
        problems: &'a mut Vec<Problem>,
    ) -> Host<'a> {
        Host {
            block_size,
            memory,
            size,
            child_sizes,
            name,
            leaves,
            problems,
        }
    }

    pub fn report(&mut self, key: Option<&'static str>, message: impl Into<String>) {
        self.problems.push(Problem {
            key,
            message: message.into(),
        });
    }

    /// "this machine has … of memory", for messages about memory.
    pub fn machine(memory: u64) -> String {
        format!("this machine has {} of memory", format_human(memory))
    }

    /// A layer with a metadata table (checksum, crypt) holds the table in
    /// memory: the table takes two 4 KiB slots per page below and one page
    /// in memory, about half of what the layer keeps below.
    pub fn table_memory(&mut self) {
        let Some(memory) = self.memory else { return };
        let (Some(Some(below)), Some(exposed)) = (self.child_sizes.first().copied(), self.size)
        else {
            return;
        };
        let table = below.saturating_sub(exposed) / 2;
        if table > memory {
            self.report(
                None,
                format!(
                    "its table of about {} over this {} device is held in memory: {}",
                    format_human(table),
                    format_human(below),
                    Host::machine(memory)
                ),
            );
        }
    }

    /// This layer keeps its data in the file `path` (at its `path` key): two
    /// leaves on one file would overwrite each other.
    pub fn leaf_file(&mut self, path: &Path) {
        let Some(id) = file_id(path) else { return };
        match self.leaves.seen.get(&id) {
            Some((other, other_path)) => {
                let message = format!(
                    "{} is the same file as {} of layer \"{other}\"; each leaf needs a file of its own",
                    shown(path),
                    shown(other_path)
                );
                self.report(Some("path"), message);
            }
            None => {
                self.leaves
                    .seen
                    .insert(id, (self.name.to_owned(), path.to_path_buf()));
            }
        }
    }
}

impl Host<'_> {
    /// What `up` would find at byte 0 of `path`, the `file` or `disk` leaf
    /// `child` directly below this layer of type `layer_type`, which keeps
    /// its superblock there: another layer's superblock (layers stacked in
    /// another order), another block size, data but no superblock, or an
    /// exposed size recorded at format above the one the config gives now
    /// (every such layer only grows). Reads that one block; a file not
    /// created yet, or one that cannot be read, is left to `up`, and so is a
    /// damaged superblock (`compress` repairs one torn by a version switch).
    pub fn superblock_below(&mut self, layer_type: &str, child: &str, path: &Path) {
        // Unreadable: the leaf's own checks say why.
        let Ok(head) = superblock::read_head(path, compress::HEAD_BYTES) else {
            return;
        };
        let block = &head[..SUPERBLOCK_BYTES as usize];
        let below = format!("{} (layer \"{child}\")", shown(path));
        let sb = match Superblock::decode(block) {
            Ok(Some(sb)) => sb,
            Ok(None) => return,
            Err(why) if !superblock::has_magic(block) => {
                return self.report(None, format!("{below}: {why}"));
            }
            Err(_) => return,
        };
        // The version is `up`'s to judge: a kind may read more than one.
        if let Err(why) = sb.expect(layer_type, sb.version, self.block_size as u32) {
            return self.report(None, format!("{below}: {why}"));
        }
        // A compress layer's raised size is in its map header.
        let (recorded, how) = if layer_type == "compress" {
            let recorded = compress::recorded_size(&sb, &head);
            let how = if recorded == sb.size {
                "formatted to expose"
            } else {
                "raised to expose"
            };
            (recorded, how)
        } else {
            (sb.size, "formatted to expose")
        };
        if let Some(size) = self.size.filter(|&size| size < recorded) {
            self.report(
                None,
                format!(
                    "{below} holds this layer {how} {} ({recorded} bytes), but the \
                     config gives it {} ({size} bytes): a {layer_type} layer does not shrink",
                    format_human(recorded),
                    format_human(size),
                ),
            );
        }
    }
}

/// Leaves met so far, by what identifies their file (a mirror of a file with
/// itself, stripes that are one disk).
#[derive(Default)]
pub struct Leaves {
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
