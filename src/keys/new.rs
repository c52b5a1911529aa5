//! `key new PATH`: a random key of the length the crypt layer takes, in a
//! file only its owner may read, never over an existing file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use layers::crypt::KEY_BYTES;
use serde_json::json;
use zeroize::Zeroizing;

pub fn command(path: &Path, as_json: bool) -> Result<(), String> {
    let key = Zeroizing::new(layers::superblock::random_bytes::<KEY_BYTES>());
    write_new_secret(path, &key[..])?;
    if as_json {
        println!(
            "{}",
            json!({"path": path.display().to_string(), "bytes": KEY_BYTES, "mode": "0600"})
        );
    } else {
        println!("{}: a new {KEY_BYTES}-byte key (mode 0600)", path.display());
    }
    Ok(())
}

/// Create `path` (mode 0600) holding `bytes`, synced with its folder: a key
/// lost to a power cut after a device was formatted with it loses the device.
/// An existing file is never replaced, whatever it holds.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let shown = path.display();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| create_error(path, &e))?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_folder(path));
    if let Err(e) = written {
        drop(fs::remove_file(path));
        return Err(format!("{shown}: {e} (nothing was kept)"));
    }
    Ok(())
}

pub fn create_error(path: &Path, e: &io::Error) -> String {
    let shown = path.display();
    let folder = folder_of(path);
    match e.kind() {
        io::ErrorKind::AlreadyExists => {
            format!("{shown} already exists; refusing to overwrite it (remove it first if it is really unused)")
        }
        io::ErrorKind::NotFound => {
            format!("{shown}: the folder {} does not exist", folder.display())
        }
        io::ErrorKind::PermissionDenied => format!(
            "{shown}: permission denied: this user may not create files in {}",
            folder.display()
        ),
        _ => format!("{shown}: {e}"),
    }
}

pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

pub fn sync_folder(path: &Path) -> io::Result<()> {
    fs::File::open(folder_of(path))?.sync_all()
}
