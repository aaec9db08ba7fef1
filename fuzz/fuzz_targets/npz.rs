//! The npz reader (zip directory, stored and deflated members, npy headers, size checks)
//! on arbitrary bytes: every member must be located or rejected, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(npz) = sae_engine::formats::npz::Npz::from_bytes("<fuzz>".as_ref(), data) {
        for name in npz.names() {
            let a = npz.get(name).expect("listed member");
            assert_eq!(Some(a.bytes.as_slice().len()), a.header.data_len());
        }
    }
});
