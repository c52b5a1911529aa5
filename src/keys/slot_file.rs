//! Reading and writing a key-slot file. A new file is created only where none
//! is; a changed file is written beside the old one (`NAME.new`, created
//! exclusively, which also keeps a second key command off the same file) and
//! renamed over it once synced, so the old file or the new one is there
//! whatever happens, never a mix.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use layers::key_slots::KeySlots;

use super::new::{create_error, folder_of, sync_folder, write_new_secret};

pub fn read(path: &Path) -> Result<KeySlots, String> {
    if !path.exists() {
        return Err(format!(
            "{} does not exist (`ublk-stack key init` or `key migrate` makes one)",
            path.display()
        ));
    }
    layers::crypt::key::read_slots("key slots", path)
}

/// Create `path` for `slots`; an existing file is never replaced.
pub fn create(path: &Path, slots: &KeySlots) -> Result<(), String> {
    write_new_secret(path, &slots.encode())
}

/// Change the file at `path` with `change`, which gets its slots as they are
/// once this command holds the file, and returns what to print.
pub fn update<T>(
    path: &Path,
    change: impl FnOnce(&mut KeySlots) -> Result<T, String>,
) -> Result<T, String> {
    read(path)?;
    let staged = staged_path(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: another key command is changing {}, or one was interrupted \
                 (then remove {} and try again)",
                staged.display(),
                path.display(),
                staged.display()
            ),
            _ => create_error(&staged, &e),
        })?;
    let result = (|| {
        // Read again now that no other key command can change it.
        let mut slots = read(path)?;
        let out = change(&mut slots)?;
        let io = |e: std::io::Error| format!("{}: {e}", staged.display());
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(&slots.encode()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&staged, path).map_err(|e| format!("{}: {e}", path.display()))?;
        sync_folder(path).map_err(|e| format!("{}: {e}", folder_of(path).display()))?;
        Ok(out)
    })();
    if result.is_err() {
        drop(fs::remove_file(&staged));
    }
    result
}

fn staged_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}
