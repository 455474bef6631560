#![no_main]

// Body and input format: flagguard_fuzz::alerts (fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagguard_fuzz::alerts(data));
