//! The ublk-stack daemon and command line: config language, front ends, control.
#![deny(unsafe_code)]

// First, so that its `print!` and `println!` are the ones every module uses.
#[macro_use]
pub mod stdout;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod keys;
pub mod nbd;
#[allow(unsafe_code)]
pub mod ublk;
