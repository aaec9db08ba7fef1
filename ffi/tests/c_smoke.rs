//! Compiles ffi/tests/c/smoke.c with the system C compiler against the committed
//! header and the built shared library, runs it on a SAELens fixture, and checks its
//! output against a dense reference of the SAE's arithmetic.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn nums<T: std::str::FromStr>(out: &HashMap<String, String>, key: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    out.get(key)
        .unwrap_or_else(|| panic!("smoke output has no `{key}` line"))
        .split_whitespace()
        .map(|t| {
            t.parse()
                .unwrap_or_else(|e| panic!("{key}: bad number {t}: {e:?}"))
        })
        .collect()
}

#[test]
fn c_program_exercises_the_abi() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib_dir = common::lib_dir();
    let tmp = tempfile::tempdir().unwrap();
    let fx = common::Fixture::new();
    let sae_dir = tmp.path().join("sae");
    fx.write_saelens(&sae_dir);

    let exe = tmp.path().join("smoke");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join("tests/c/smoke.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lsae_engine_ffi", "-lm"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(status.success(), "smoke.c did not compile or link");

    // cargo test puts `<target>/<profile>` on LD_LIBRARY_PATH, which outranks the rpath
    // and may hold a stale copy of the library: point the loader at this run's build.
    let run = Command::new(&exe)
        .arg(&sae_dir)
        .env("LD_LIBRARY_PATH", &lib_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "smoke failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    let out: HashMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    assert_eq!(out["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(out["shape"], format!("{} {} {} 1", fx.d, fx.l, fx.k));
    assert_eq!(out["backend"].split_whitespace().next(), Some("cpu"));
    assert_eq!(out["device_pointers"], "0");

    // Codes and reconstructions against the dense reference (f32 rounding bound).
    let x: Vec<f32> = nums(&out, "x");
    let rows = x.len() / fx.d;
    let idx: Vec<i32> = nums(&out, "topk_indices");
    let val: Vec<f32> = nums(&out, "topk_values");
    let dec: Vec<f32> = nums(&out, "decoded");
    for r in 0..rows {
        let (ri, rv) = fx.encode_row(&x[r * fx.d..(r + 1) * fx.d]);
        let s = r * fx.k..(r + 1) * fx.k;
        assert_eq!(&idx[s.clone()], &ri[..], "row {r} indices");
        for (a, b) in val[s.clone()].iter().zip(&rv) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "row {r}: {a} vs {b}"
            );
        }
        let want = fx.decode_row(&ri, &rv);
        for (a, b) in dec[r * fx.d..(r + 1) * fx.d].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "decode row {r}: {a} vs {b}"
            );
        }
    }
    // CSR holds exactly the active top-k entries, ascending by latent.
    let row_ptr: Vec<usize> = nums(&out, "csr_row_ptr");
    let cidx: Vec<i32> = nums(&out, "csr_indices");
    for r in 0..rows {
        let mut active: Vec<i32> = idx[r * fx.k..(r + 1) * fx.k]
            .iter()
            .zip(&val[r * fx.k..(r + 1) * fx.k])
            .filter(|(i, v)| **i >= 0 && **v > 0.0)
            .map(|(i, _)| *i)
            .collect();
        active.sort();
        assert_eq!(
            &cidx[row_ptr[r]..row_ptr[r + 1]],
            &active[..],
            "csr row {r}"
        );
    }
    assert_eq!(out["csr_nnz"].parse::<usize>().unwrap(), row_ptr[rows]);
    assert_eq!(out["decode_csr_matches_topk"], "1");

    // Statistics: rows {0, 2} (masked) plus all rows (CSR) merged.
    assert_eq!(out["stats_tokens"], (2 + rows).to_string());
    let sum: Vec<f64> = nums(&out, "stats_sum");
    let act: Vec<u64> = nums(&out, "stats_n_active");
    let mx: Vec<f32> = nums(&out, "stats_max");
    let (mut wsum, mut wact, mut wmax) = (vec![0f64; fx.l], vec![0u64; fx.l], vec![0f32; fx.l]);
    for (r, weight) in [(0, 2), (1, 1), (2, 2)] {
        for s in r * fx.k..(r + 1) * fx.k {
            if idx[s] >= 0 && val[s] > 0.0 {
                let i = idx[s] as usize;
                wsum[i] += weight as f64 * val[s] as f64;
                wact[i] += weight;
                wmax[i] = wmax[i].max(val[s]);
            }
        }
    }
    assert_eq!(act, wact);
    assert_eq!(mx, wmax);
    for (a, b) in sum.iter().zip(&wsum) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }

    // Error paths: the right status, and a message that says what was wrong.
    let err = |k: &str| {
        out.get(k)
            .unwrap_or_else(|| panic!("no `{k}` line"))
            .clone()
    };
    assert!(
        err("err_null").starts_with("SAE_STATUS_NULL_ARGUMENT") && err("err_null").contains("`x`")
    );
    assert!(
        err("err_shape").starts_with("SAE_STATUS_SHAPE") && err("err_shape").contains("d_in = 4")
    );
    assert!(err("err_overflow").starts_with("SAE_STATUS_INVALID_ARGUMENT"));
    assert!(
        err("err_nonfinite").starts_with("SAE_STATUS_NON_FINITE")
            && err("err_nonfinite").contains("row 1")
    );
    assert!(err("err_device").starts_with("SAE_STATUS_UNSUPPORTED"));
    assert!(err("err_index").starts_with("SAE_STATUS_INVALID_ARGUMENT"));
    assert!(
        err("err_open").contains("/nonexistent/sae-dir"),
        "{}",
        err("err_open")
    );
    assert!(err("err_backend").contains("tpu"));
    assert_eq!(out["cleared"], "1");
    assert_eq!(out["status_name"], "SAE_STATUS_PANIC SAE_STATUS_UNKNOWN");
    assert_eq!(out["failures"], "0");
}
