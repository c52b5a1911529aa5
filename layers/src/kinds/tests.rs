//! The registry against itself and against the README's configuration
//! reference: a kind that is registered is documented, key by key.

use std::path::PathBuf;

use super::*;
use crate::plan::*;

/// One layer of every kind, with every optional key set.
fn samples() -> Vec<LayerSpec> {
    vec![
        FileParams {
            path: PathBuf::from("/x.img"),
            size_bytes: Some(4096),
            create: true,
            direct: false,
        }
        .into(),
        DiskParams {
            path: PathBuf::from("/dev/x"),
            direct: true,
        }
        .into(),
        MemoryParams { size_bytes: 4096 }.into(),
        NullParams { size_bytes: 4096 }.into(),
        Raid0Params {
            stripes: vec![0, 1],
            chunk_bytes: 65536,
        }
        .into(),
        MirrorParams {
            legs: vec![0, 1],
            read_policy: ReadPolicy::First,
        }
        .into(),
        CacheParams {
            over: 0,
            capacity_bytes: 4096,
            mode: CacheMode::WriteBack,
        }
        .into(),
        CompressParams {
            over: 0,
            algorithm: "lz4".into(),
            size_bytes: Some(4096),
        }
        .into(),
        CryptParams {
            over: 0,
            cipher: "aes-256-gcm".into(),
            key: KeySource::Env("K".into()),
        }
        .into(),
        ChecksumParams {
            over: 0,
            algorithm: "crc32".into(),
        }
        .into(),
        FaultParams {
            over: 0,
            knobs: FaultKnobs::default(),
        }
        .into(),
        NbdParams {
            uri: crate::nbd::uri::NbdUri::parse("nbd://h/e").unwrap(),
            size_bytes: Some(4096),
            connections: 2,
            timeout_us: 1_000_000,
            tls_ca: Some(PathBuf::from("/ca.pem")),
            tls_cert: Some(PathBuf::from("/cert.pem")),
            tls_key: Some(PathBuf::from("/key.pem")),
        }
        .into(),
    ]
}

#[test]
fn every_kind_has_a_sample_and_names_its_keys_once_with_docs() {
    let samples = samples();
    let names: Vec<_> = samples.iter().map(LayerSpec::type_name).collect();
    let registered: Vec<_> = KINDS.iter().map(|kind| kind.name).collect();
    assert_eq!(
        names, registered,
        "samples() lacks a kind, or is out of order"
    );
    for kind in KINDS {
        for (i, key) in kind.keys.iter().enumerate() {
            assert_ne!(key.name, "type", "{}: type is not a kind's key", kind.name);
            assert!(!key.doc.is_empty(), "{}.{} has no doc", kind.name, key.name);
            assert!(
                !key.default.is_empty(),
                "{}.{} has no default (or \"required\")",
                kind.name,
                key.name
            );
            assert!(
                kind.keys[..i].iter().all(|other| other.name != key.name),
                "{}.{} is listed twice",
                kind.name,
                key.name
            );
        }
    }
}

/// The reload diff and the tree find keys by the names `values` gives.
#[test]
fn values_name_every_key_in_order() {
    for spec in samples() {
        let keys: Vec<_> = spec.info().keys.iter().map(|key| key.name).collect();
        let values: Vec<_> = spec
            .values(&|id| format!("l{id}"))
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(values, keys, "{}", spec.type_name());
    }
}

#[test]
fn a_kind_and_its_synonyms_name_one_type() {
    for kind in KINDS {
        for word in kind.synonyms {
            assert!(super::kind(word).is_none(), "{word} is a type name");
            let owners = KINDS.iter().filter(|k| k.synonyms.contains(word)).count();
            assert_eq!(owners, 1, "{word} is a synonym of {owners} kinds");
        }
    }
}

/// Each type has a row `| `NAME` | keys | notes |` in the README's
/// configuration reference naming every key, and saying "live" exactly when
/// the type has live keys.
#[test]
fn the_readme_reference_documents_every_kind_and_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md next to the workspace");
    let reference = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("a configuration reference section");
    for kind in KINDS {
        let start = format!("| `{}` |", kind.name);
        let row = reference
            .lines()
            .find(|line| line.starts_with(&start))
            .unwrap_or_else(|| panic!("README has no reference row for {}", kind.name));
        let keys = row.split(" | ").nth(1).unwrap_or_default();
        for key in kind.keys {
            let quoted = format!("`{}`", key.name);
            assert!(
                keys.contains(&quoted),
                "README's {} row lacks {quoted}",
                kind.name
            );
        }
        let live = kind.keys.iter().any(|key| key.live);
        assert_eq!(
            keys.contains("live"),
            live,
            "README's {} row and its kind disagree on live keys",
            kind.name
        );
    }
}
