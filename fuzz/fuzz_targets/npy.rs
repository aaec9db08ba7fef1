//! The `.npy` activation shard reader (header, shape and size checks, row conversion)
//! on arbitrary bytes mapped as a file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sae_engine::dump::parse_for_fuzz(data, false);
});
