//! The committed header must be exactly what cbindgen generates from the sources,
//! so C callers never compile against a stale ABI. `SAE_FFI_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn header_matches_sources() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let generated = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    generated.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("header is UTF-8");

    let path = crate_dir.join("include/sae_engine.h");
    if std::env::var_os("SAE_FFI_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/sae_engine.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first_diff = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "ffi/include/sae_engine.h is out of date (first difference at line {}); \
             regenerate it with `SAE_FFI_BLESS=1 cargo test -p sae-engine-ffi --test header` \
             and commit it",
            first_diff + 1
        );
    }
}
