//! `ublk-stack key …`: the keys of `crypt` layers. `new` writes a random key
//! file; the others manage a key-slot file (`layers::key_slots`), where the
//! data key is kept wrapped by passphrases and key-encryption keys, so adding
//! or changing a passphrase never touches the device.

use std::path::PathBuf;

use clap::Subcommand;

mod new;
mod secret;
mod slot_file;
mod slots;

use secret::{FromArgs, NewArgs, OpenArgs};
use slots::CostArgs;

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new random key (32 bytes, mode 0600) to PATH, which must not exist.
    New {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make a key-slot file SLOTS: a new random data key, wrapped in slot 0 by
    /// the --new-… secret (for a crypt layer not formatted yet).
    Init {
        slots: PathBuf,
        #[command(flatten)]
        new: NewArgs,
        #[command(flatten)]
        cost: CostArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make a key-slot file SLOTS holding the raw key a crypt layer uses now
    /// (its key_file or key_env), so the device keeps its data key.
    Migrate {
        slots: PathBuf,
        #[command(flatten)]
        from: FromArgs,
        #[command(flatten)]
        new: NewArgs,
        #[command(flatten)]
        cost: CostArgs,
        #[arg(long)]
        json: bool,
    },
    /// Add a slot: the data key, opened with an existing secret, wrapped by a new one.
    Add {
        slots: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
        #[command(flatten)]
        new: NewArgs,
        #[command(flatten)]
        cost: CostArgs,
        #[arg(long)]
        json: bool,
    },
    /// Empty slot SLOT; the secret given must open a slot that stays.
    Remove {
        slots: PathBuf,
        slot: usize,
        #[command(flatten)]
        open: OpenArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show the slots in use: their kind and argon2id cost (no secret needed).
    List {
        slots: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: KeyCommand) -> u8 {
    let (name, result) = match command {
        KeyCommand::New { path, json } => ("new", new::command(&path, json)),
        KeyCommand::Init {
            slots,
            new,
            cost,
            json,
        } => ("init", slots::init(&slots, &new, &cost, json)),
        KeyCommand::Migrate {
            slots,
            from,
            new,
            cost,
            json,
        } => ("migrate", slots::migrate(&slots, &from, &new, &cost, json)),
        KeyCommand::Add {
            slots,
            open,
            new,
            cost,
            json,
        } => ("add", slots::add(&slots, &open, &new, &cost, json)),
        KeyCommand::Remove {
            slots,
            slot,
            open,
            json,
        } => ("remove", slots::remove(&slots, slot, &open, json)),
        KeyCommand::List { slots, json } => ("list", slots::list(&slots, json)),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("ublk-stack key {name}: {message}");
            1
        }
    }
}
