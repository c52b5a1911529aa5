use std::collections::HashSet;

use super::*;

fn options(pattern: Pattern, queues: u16, qd: u32) -> Options {
    Options {
        seconds: 1.0,
        pattern,
        bs: 4096,
        qd,
        queues,
        data: DataKind::Random,
        prefill: false,
        hot: None,
        scan: false,
    }
}

#[test]
fn sequential_workers_each_stream_their_own_blocks() {
    let span = 1 << 20; // 256 slots for 2 x 4 workers: 32 each
    let opts = options(Pattern::SeqRead, 2, 4);
    let mut seen = HashSet::new();
    for queue in 0..2 {
        for task in 0..4 {
            let mut offsets = Offsets::for_task(queue, task, span, &opts);
            let first = offsets.next();
            let mine: Vec<u64> = std::iter::once(first)
                .chain((1..32).map(|_| offsets.next()))
                .collect();
            // In order, one block after another, then round again.
            for pair in mine.windows(2) {
                assert_eq!(pair[1], pair[0] + 4096, "{queue}/{task}: {mine:?}");
            }
            assert_eq!(offsets.next(), first, "the stream wraps to its start");
            for offset in mine {
                assert!(offset < span);
                assert!(seen.insert(offset), "{offset} is in two streams");
            }
        }
    }
    assert_eq!(seen.len(), 256, "the streams cover the span");
}

#[test]
fn random_workers_differ_and_cover_the_span() {
    let span = 1 << 20;
    let opts = options(Pattern::RandWrite, 1, 2);
    let mut a = Offsets::for_task(0, 0, span, &opts);
    let mut b = Offsets::for_task(0, 1, span, &opts);
    let (a, b): (Vec<u64>, Vec<u64>) = (0..512).map(|_| (a.next(), b.next())).unzip();
    assert_ne!(a, b);
    assert!(a.iter().chain(&b).all(|&o| o < span && o % 4096 == 0));
    let distinct: HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 128, "{} distinct of 512", distinct.len());
}

#[test]
fn reads_need_prefill_and_writes_do_not() {
    for pattern in [Pattern::RandRead, Pattern::SeqRead] {
        let err = check_prefill(&options(pattern, 1, 1)).unwrap_err();
        assert!(err.contains("needs --prefill"), "{err}");
        let prefilled = Options {
            prefill: true,
            ..options(pattern, 1, 1)
        };
        assert_eq!(check_prefill(&prefilled), Ok(()));
    }
    for pattern in [Pattern::RandWrite, Pattern::SeqWrite] {
        assert_eq!(check_prefill(&options(pattern, 1, 1)), Ok(()));
    }
}

#[test]
fn the_baseline_takes_the_path_the_file_leaf_takes() {
    let params = |dir: &std::path::Path, direct| {
        let path = dir.join("leaf.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        FileParams {
            path,
            size_bytes: None,
            create: false,
            direct,
        }
    };
    // /dev/shm is tmpfs on every Linux this runs on; /tmp's folder may be
    // tmpfs too, so the io_uring case uses the build's target folder.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let disk = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    assert_eq!(
        baseline::Path::of(&params(shm.path(), false)),
        Ok(baseline::Path::Sync)
    );
    assert_eq!(
        baseline::Path::of(&params(shm.path(), true)),
        Ok(baseline::Path::UringDirect)
    );
    let on_disk = baseline::Path::of(&params(disk.path(), false)).unwrap();
    let leaf_on_disk =
        layers::os::is_memory_backed(&std::fs::File::open(disk.path().join("leaf.img")).unwrap());
    assert_eq!(on_disk == baseline::Path::Sync, leaf_on_disk);
}
