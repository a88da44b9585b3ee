#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rmm_userspace::fuzzing::toml_text(data));
