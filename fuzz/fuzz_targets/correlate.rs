#![no_main]

// Body and input format: flagguard_fuzz::correlate (fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| flagguard_fuzz::correlate(data));
