//! The config file as `ublk-stack validate` checks it (TOML text in, a tree or
//! errors out). Relative leaf paths resolve under a folder that does not exist.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match ublk_stack::config::check(text, path, Path::new("/nonexistent/ublk-stack-fuzz")) {
        Ok(checked) => {
            let _ = ublk_stack::config::tree::render("fuzz.toml", &checked);
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
