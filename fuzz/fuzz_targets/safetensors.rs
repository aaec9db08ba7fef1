//! The `.safetensors` activation shard reader (header, tensor ranges, side tensors,
//! row conversion) on arbitrary bytes mapped as a file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sae_engine::dump::parse_for_fuzz(data, true);
});
