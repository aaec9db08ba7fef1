//! The Arrow IPC stream reader on arbitrary bytes: index every batch, read every row.
//! Seed the corpus with tests/fixtures/saelens_cache/*.arrow.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sae_engine::dump::arrow::parse_for_fuzz(data, "blocks.0.hook_resid_post", 3, 4);
});
