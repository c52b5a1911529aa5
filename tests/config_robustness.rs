//! Config text is untrusted input: mangled versions of the example configs must
//! never panic, and must either validate or be refused with at least one error.

use std::path::Path;

use ublk_stack::config;

/// xorshift64: a fixed, dependency-free stream so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

/// Pieces a user might type, so mutations reach validation and not only the
/// TOML parser.
const FRAGMENTS: &[&str] = &[
    "\"",
    "[",
    "]",
    "=",
    "\n",
    ",",
    " ",
    "-",
    "0",
    "1",
    "4096",
    "\"1GiB\"",
    "\"a\"",
    "over",
    "legs",
    "type",
    "\"mirror\"",
    "[layers.x]",
    "size",
    "é",
    "\u{1F600}",
    "#",
    "true",
    "1.5",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 if at < chars.len() => {
                let end = (at + rng.below(8) + 1).min(chars.len());
                chars.drain(at..end);
            }
            1 if at < chars.len() => {
                let other = rng.below(chars.len());
                chars.swap(at, other);
            }
            _ => {
                let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
                let tail = chars.split_off(at.min(chars.len()));
                chars.extend(fragment.chars());
                chars.extend(tail);
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mangled_configs_never_panic_and_refusals_always_say_why() {
    let seed = std::env::var("UBLK_STACK_CONFIG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x5eed_c0f1_u64);
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut originals: Vec<String> = std::fs::read_dir(&configs)
        .expect("configs/")
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "toml"))
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .collect();
    originals.sort();
    assert!(!originals.is_empty());
    let base = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(seed);
    for round in 0..3000 {
        let original = &originals[round % originals.len()];
        let text = mutate(original, &mut rng);
        let result = std::panic::catch_unwind(|| {
            config::check(&text, Path::new("m.toml"), base.path()).map(|_| ())
        });
        match result {
            Ok(Ok(())) => {}
            Ok(Err(errors)) => {
                assert!(
                    !errors.is_empty(),
                    "refused without an error (seed {seed}, round {round}):\n{text}"
                );
                assert!(
                    errors.iter().all(|error| error.position.is_some()),
                    "error without a position (seed {seed}, round {round}):\n{errors}\n{text}"
                );
            }
            Err(_) => panic!("panicked (seed {seed}, round {round}) on:\n{text}"),
        }
    }
}
