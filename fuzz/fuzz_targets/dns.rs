#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rmm_userspace::fuzzing::dns_payload(data));
