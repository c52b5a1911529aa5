//! The key-slot commands: `init` (a new data key in a new file), `migrate`
//! (an existing raw key into a new file), `add`, `remove` and `list`. None of
//! them touches a device: the data key stays the same, only its wrappings
//! change.

use std::path::Path;

use layers::crypt::key::OwnedSecret;
use layers::key_slots::{Argon2Cost, KeySlots, Protector, Secret, KEY_BYTES};
use layers::units::size::{format_human, parse_size};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::secret::{FromArgs, NewArgs, OpenArgs};
use super::slot_file;

/// The argon2id cost of a new passphrase slot.
#[derive(clap::Args, Debug)]
pub struct CostArgs {
    /// Memory argon2id fills for a new passphrase slot (the more, the slower a guess).
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    argon2_memory: String,
    /// Passes argon2id makes over that memory.
    #[arg(long, value_name = "N", default_value_t = 3)]
    argon2_iterations: u32,
}

impl CostArgs {
    fn cost(&self) -> Result<Argon2Cost, String> {
        let bytes = parse_size(&self.argon2_memory)
            .map_err(|e| format!("--argon2-memory {}: {e}", self.argon2_memory))?;
        let memory_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        let cost = Argon2Cost {
            memory_kib,
            iterations: self.argon2_iterations,
            ..Argon2Cost::default()
        };
        if bytes % 1024 != 0 {
            return Err(format!(
                "--argon2-memory {}: a whole number of KiB",
                self.argon2_memory
            ));
        }
        cost.check()
            .map_err(|e| format!("--argon2-memory / --argon2-iterations: {e}"))?;
        Ok(cost)
    }
}

/// What printed a slot change: text, or one JSON object.
fn print(as_json: bool, text: String, value: Value) {
    if as_json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

pub fn init(path: &Path, new: &NewArgs, cost: &CostArgs, as_json: bool) -> Result<(), String> {
    let key = Zeroizing::new(layers::superblock::random_bytes::<KEY_BYTES>());
    create_with(path, &key, new, cost, as_json, None)
}

/// `migrate`: the raw key a crypt layer used (`from`, read as the config
/// would) wrapped in a new slot file, so the device keeps its data key.
pub fn migrate(
    path: &Path,
    from: &FromArgs,
    new: &NewArgs,
    cost: &CostArgs,
    as_json: bool,
) -> Result<(), String> {
    let (key, shown) = from.read()?;
    create_with(path, &key, new, cost, as_json, Some(shown))
}

fn create_with(
    path: &Path,
    key: &[u8; KEY_BYTES],
    new: &NewArgs,
    cost: &CostArgs,
    as_json: bool,
    from: Option<String>,
) -> Result<(), String> {
    if path.exists() || path.is_symlink() {
        return Err(format!(
            "{} already exists; refusing to overwrite it (add a slot with `key add`)",
            path.display()
        ));
    }
    let cost = cost.cost()?;
    let secret = new.read(path)?;
    let mut slots = KeySlots::new();
    let slot = slots.add(key, secret.as_secret(), cost)?;
    slot_file::create(path, &slots)?;
    let kind = kind_of(&secret);
    let text = match &from {
        Some(from) => format!(
            "{}: the key of {from} in slot {slot} ({kind}); the config names it with key_slots now",
            path.display()
        ),
        None => format!("{}: a new data key in slot {slot} ({kind})", path.display()),
    };
    let value = json!({
        "path": path.display().to_string(),
        "slot": slot,
        "kind": kind,
        "slots_used": 1,
        "from": from,
    });
    print(as_json, text, value);
    Ok(())
}

pub fn add(
    path: &Path,
    open: &OpenArgs,
    new: &NewArgs,
    cost: &CostArgs,
    as_json: bool,
) -> Result<(), String> {
    let cost = cost.cost()?;
    let opening = open.read(path)?;
    let added = new.read(path)?;
    let (opened, slot, used) = slot_file::update(path, |slots| {
        let (opened, key) = slots.open(opening.as_secret())?;
        let slot = slots.add(&key, added.as_secret(), cost)?;
        Ok((opened, slot, slots.used()))
    })?;
    let kind = kind_of(&added);
    print(
        as_json,
        format!(
            "{}: slot {slot} added ({kind}), opened with slot {opened}; {used} slots used",
            path.display()
        ),
        json!({
            "path": path.display().to_string(),
            "slot": slot,
            "kind": kind,
            "opened_with": opened,
            "slots_used": used,
        }),
    );
    Ok(())
}

/// `remove`: the secret given must open a slot that stays, so whoever
/// removes a slot shows that the device can still be opened.
pub fn remove(path: &Path, slot: usize, open: &OpenArgs, as_json: bool) -> Result<(), String> {
    // A slot that cannot go is refused before a secret is asked for.
    slot_file::read(path)?.remove(slot)?;
    let opening = open.read(path)?;
    let (opened, used) = slot_file::update(path, |slots| {
        let mut staying = slots.clone();
        staying.remove(slot)?;
        let (opened, _) = staying.open(opening.as_secret()).map_err(|e| {
            format!("{e} once slot {slot} is gone: give the secret of a slot that stays")
        })?;
        *slots = staying;
        Ok((opened, slots.used()))
    })?;
    print(
        as_json,
        format!(
            "{}: slot {slot} removed (checked with slot {opened}); {used} slots used",
            path.display()
        ),
        json!({
            "path": path.display().to_string(),
            "removed": slot,
            "opened_with": opened,
            "slots_used": used,
        }),
    );
    Ok(())
}

pub fn list(path: &Path, as_json: bool) -> Result<(), String> {
    let slots = slot_file::read(path)?;
    if as_json {
        let used: Vec<Value> = slots
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let slot = slot.as_ref()?;
                let argon2 = match slot.protector {
                    Protector::Passphrase(cost) => json!({
                        "memory": u64::from(cost.memory_kib) * 1024,
                        "iterations": cost.iterations,
                        "lanes": cost.lanes,
                    }),
                    Protector::Key => Value::Null,
                };
                Some(json!({"slot": index, "kind": slot.protector.name(), "argon2": argon2}))
            })
            .collect();
        let value = json!({
            "path": path.display().to_string(),
            "version": layers::key_slots::FORMAT_VERSION,
            "slots": used,
        });
        println!("{value}");
        return Ok(());
    }
    println!("{:<5} {:<11} ARGON2ID", "SLOT", "KIND");
    for (index, slot) in slots.slots.iter().enumerate() {
        let Some(slot) = slot else { continue };
        let argon2 = match slot.protector {
            Protector::Passphrase(cost) => format!(
                "{}, {} iterations, {} lanes",
                format_human(u64::from(cost.memory_kib) * 1024),
                cost.iterations,
                cost.lanes
            ),
            Protector::Key => "-".into(),
        };
        println!("{index:<5} {:<11} {argon2}", slot.protector.name());
    }
    Ok(())
}

fn kind_of(secret: &OwnedSecret) -> &'static str {
    match secret.as_secret() {
        Secret::Passphrase(_) => "passphrase",
        Secret::Key(_) => "key",
    }
}
