//! The fuzz targets' bodies (`fuzz/src/lib.rs`) replayed on every committed seed and every
//! saved finding (`fuzz/regressions/`), in the normal test run: an input that once failed a
//! target must keep passing after its fix.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

#[test]
fn every_seed_and_saved_finding_passes_its_fuzz_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions"] {
        for target in targets::TARGETS {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_file() {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                // A panic names the input: the test harness prints the path with it.
                eprintln!("replaying {}", path.display());
                assert!(targets::run(target, &bytes));
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 30, "only {replayed} inputs: the seeds are missing");
}
