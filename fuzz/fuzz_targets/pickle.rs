//! The restricted unpickler and tensor resolution on arbitrary bytes: must return
//! an error or a value, never panic, hang or allocate without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sae_engine::formats::pickle::parse_for_fuzz(data, 1 << 20);
});
