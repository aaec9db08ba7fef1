//! End-to-end tests of the `sae` binary: SAEs written in the SAELens layout by hand,
//! small dumps, every command, --json, and the error contract (exit 1 and one line
//! naming the file; exit 2 for usage).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{acts_cmd, arg, decode_cmd, run_sae, sae_exits, sae_json, write_dump_with};
use sae_engine::codes::Codes;
use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
use sae_engine::io::npy::NpyHeader;
use serde_json::Value;

const D: usize = 4;
const L: usize = 6;

/// Runs `sae --json ARGS` (with `--backend cpu` on the commands that run an SAE),
/// which must succeed; returns its JSON.
#[track_caller]
fn ok_json(args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let runs_sae = matches!(args.first(), Some(&("encode" | "decode" | "stats")));
    if runs_sae && args.get(1) != Some(&"merge") {
        a.extend(["--backend", "cpu"]);
    }
    sae_json(&a)
}

/// Runs a command that must fail with exit status 1 and one `sae: error:` line; returns it.
#[track_caller]
fn fails(args: &[&str]) -> String {
    let err = sae_exits(1, args).trim().to_string();
    assert!(err.starts_with("sae: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// Encoder rows (logical [L, d]); decoder = encoder scaled by 0.5.
fn w_enc() -> Vec<f32> {
    let mut w = vec![0f32; L * D];
    for i in 0..D {
        w[i * D + i] = 1.0;
    }
    // latent 4 = x0 + x1, latent 5 = x2 - x3
    w[4 * D] = 1.0;
    w[4 * D + 1] = 1.0;
    w[5 * D + 2] = 1.0;
    w[5 * D + 3] = -1.0;
    w
}

fn b_enc() -> Vec<f32> {
    vec![0.0, -0.5, 0.25, 0.0, -1.0, 0.125]
}

fn b_dec() -> Vec<f32> {
    vec![0.5, 0.0, -0.25, 1.0]
}

/// Writes the test SAE in SAELens v6 layout (TopK k=2, or JumpReLU with `threshold`) into `dir`.
fn cli_sae(dir: &Path, jumprelu: bool) -> PathBuf {
    saelens_by_hand(dir, jumprelu, w_enc(), b_enc())
}

/// [`cli_sae`] with the given encoder rows (logical [L, d]) and encoder bias, written by
/// hand rather than by the library's writer: it must also hold what that writer refuses
/// to write (NaN weights), and it checks the reader against a layout we did not produce.
fn saelens_by_hand(dir: &Path, jumprelu: bool, enc: Vec<f32>, be: Vec<f32>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    // SAELens stores W_enc as [d, L]
    let mut enc_t = vec![0f32; D * L];
    for l in 0..L {
        for d in 0..D {
            enc_t[d * L + l] = enc[l * D + d];
        }
    }
    let dec: Vec<f32> = enc.iter().map(|v| v * 0.5).collect();
    let mut tensors = vec![
        ("W_enc", OwnedTensor::f32(vec![D, L], &enc_t)),
        ("W_dec", OwnedTensor::f32(vec![L, D], &dec)),
        ("b_enc", OwnedTensor::f32(vec![L], &be)),
        ("b_dec", OwnedTensor::f32(vec![D], &b_dec())),
    ];
    let arch = if jumprelu {
        tensors.push(("threshold", OwnedTensor::f32(vec![L], &[1.0; L])));
        "jumprelu"
    } else {
        "topk"
    };
    write_safetensors(
        &dir.join("sae_weights.safetensors"),
        &tensors,
        HashMap::new(),
    )
    .unwrap();
    let cfg = serde_json::json!({
        "architecture": arch,
        "d_in": D,
        "d_sae": L,
        "k": 2,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "metadata": {
            "hook_name": "blocks.3.hook_resid_post",
            "model_name": "tiny",
            "sae_lens_version": "6.5.0"
        }
    });
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
    dir.to_path_buf()
}

/// Three shards of 4, 3 and 5 rows with a mask.
fn masked_shards(dir: &Path, width: usize) -> (PathBuf, Vec<f32>, Vec<u8>) {
    let n = 12;
    let all: Vec<f32> = (0..n * width)
        .map(|i| ((i * 7919 % 23) as f32) * 0.25 - 1.5)
        .collect();
    let mask: Vec<u8> = (0..n).map(|i| (i % 3 != 1) as u8).collect();
    write_shards(dir, width, &all, &mask);
    (dir.to_path_buf(), all, mask)
}

/// `all` (12 rows) as shards of 4, 3 and 5 rows with `mask`.
fn write_shards(dir: &Path, width: usize, all: &[f32], mask: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let sizes = [4usize, 3, 5];
    let mut start = 0;
    for (s, &rows) in sizes.iter().enumerate() {
        let side = vec![
            (
                "mask",
                OwnedTensor::u8(vec![rows], &mask[start..start + rows]),
            ),
            ("token_ids", OwnedTensor::i32(vec![rows], &vec![7; rows])),
        ];
        write_dump_with(
            &dir.join(format!("shard_{s:02}.safetensors")),
            &all[start * width..(start + rows) * width],
            width,
            side,
            &[],
        );
        start += rows;
    }
}

/// Pre-activations by the SAELens formula: (x - b_dec) . W_enc^T + b_enc.
fn preact(x: &[f32]) -> Vec<f32> {
    let (w, be, bd) = (w_enc(), b_enc(), b_dec());
    (0..L)
        .map(|l| (0..D).map(|d| (x[d] - bd[d]) * w[l * D + d]).sum::<f32>() + be[l])
        .collect()
}

/// Active (latent, value) pairs of one row, by hand: TopK-2 then ReLU, or JumpReLU (h > 1).
fn expected_row(x: &[f32], jumprelu: bool) -> Vec<(usize, f32)> {
    let h = preact(x);
    if jumprelu {
        return (0..L).filter(|l| h[*l] > 1.0).map(|l| (l, h[l])).collect();
    }
    let mut order: Vec<usize> = (0..L).collect();
    order.sort_by(|a, b| h[*b].total_cmp(&h[*a]).then(a.cmp(b)));
    order[..2]
        .iter()
        .filter(|l| h[**l] > 0.0)
        .map(|l| (*l, h[*l]))
        .collect()
}

fn decode_row(active: &[(usize, f32)]) -> Vec<f32> {
    let w = w_enc();
    let mut out = b_dec();
    for (l, v) in active {
        for d in 0..D {
            out[d] += v * w[l * D + d] * 0.5;
        }
    }
    out
}

fn read_npy_f32(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(p).unwrap();
    let h = NpyHeader::parse(p, &bytes).unwrap();
    let vals = bytes[h.data_offset..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (h.shape, vals)
}

/// A temporary directory with an SAE in `sae/` and a dump of width D in `dump/`.
struct Fixture {
    dir: tempfile::TempDir,
    sae: PathBuf,
    dump: PathBuf,
    /// The dump's rows, flattened.
    x: Vec<f32>,
    mask: Vec<u8>,
}

impl Fixture {
    fn new(jumprelu: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sae = cli_sae(&dir.path().join("sae"), jumprelu);
        let (dump, x, mask) = masked_shards(&dir.path().join("dump"), D);
        Fixture {
            dir,
            sae,
            dump,
            x,
            mask,
        }
    }

    /// A path in the fixture's directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn inspect_reports_the_sae() {
    let dir = tempfile::tempdir().unwrap();
    let sae = cli_sae(&dir.path().join("sae"), false);
    let j = ok_json(&["inspect", arg(&sae)]);
    assert_eq!(j["format"], "saelens");
    assert_eq!(j["d_in"], D);
    assert_eq!(j["n_latents"], L);
    assert_eq!(j["activation"], "topk");
    assert_eq!(j["k"], 2);
    assert_eq!(j["dtype"], "f32");
    assert_eq!(j["hook_name"], "blocks.3.hook_resid_post");
    assert_eq!(j["normalization"], "none");
    assert_eq!(j["sizes"]["w_enc"], L * D * 4);
    assert_eq!(j["sizes"]["w_dec"], L * D * 4);
    assert_eq!(j["fingerprint"].as_str().unwrap().len(), 16);
    // human output names the same things
    let out = run_sae(&["inspect", arg(&sae)]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("blocks.3.hook_resid_post") && text.contains("k = 2"),
        "{text}"
    );
    // forcing the wrong format fails, naming the path
    let e = fails(&["inspect", "--format", "gemma-scope", arg(&sae)]);
    assert!(e.contains("sae"), "{e}");
}

fn check_codes(codes: &Codes, x: &[f32], jumprelu: bool) {
    assert_eq!(codes.n_rows() * D, x.len());
    for r in 0..codes.n_rows() {
        let want = expected_row(&x[r * D..(r + 1) * D], jumprelu);
        let got: Vec<(usize, f32)> = codes.active(r).collect();
        assert_eq!(got.len(), want.len(), "row {r}: {got:?} vs {want:?}");
        for ((gi, gv), (wi, wv)) in got.iter().zip(&want) {
            assert_eq!(gi, wi, "row {r}");
            assert!((gv - wv).abs() < 1e-5, "row {r}: {gv} vs {wv}");
        }
    }
}

#[test]
fn encode_decode_round_trip_topk_and_jumprelu() {
    for jumprelu in [false, true] {
        let fx = Fixture::new(jumprelu);
        let (sae, dump, x) = (&fx.sae, &fx.dump, &fx.x);
        let codes_path = fx.path("codes.safetensors");
        let batch_3 = ["--batch-size", "3"];
        let j = ok_json(&acts_cmd("encode", sae, dump, &codes_path, &batch_3));
        assert_eq!(j["n_rows"], 12);
        assert_eq!(j["kind"], if jumprelu { "csr" } else { "topk" });
        let (enc, fp) = sae_engine::io::codes_file::read(&codes_path).unwrap();
        assert_eq!(matches!(enc.codes, Codes::Csr { .. }), jumprelu);
        check_codes(&enc.codes, x, jumprelu);
        let info = ok_json(&["inspect", arg(sae)]);
        assert_eq!(fp.as_deref(), info["fingerprint"].as_str());

        let recon = fx.path("recon.npy");
        let metrics_args = ["--acts", arg(dump), "--batch-size", "5"];
        let j = ok_json(&decode_cmd(sae, &codes_path, &recon, &metrics_args));
        let (shape, got) = read_npy_f32(&recon);
        assert_eq!(shape, vec![12, D]);
        // every row is decoded; the metrics score the tokens the dump's mask keeps
        let mut sq_err = 0f64;
        let mut l0 = 0usize;
        let counted = fx.mask.iter().filter(|m| **m != 0).count();
        for r in 0..12 {
            let row = &x[r * D..(r + 1) * D];
            let active = expected_row(row, jumprelu);
            let want = decode_row(&active);
            for d in 0..D {
                assert!((got[r * D + d] - want[d]).abs() < 1e-5, "row {r}");
            }
            if fx.mask[r] != 0 {
                l0 += active.len();
                sq_err += (0..D)
                    .map(|d| ((row[d] - want[d]) as f64).powi(2))
                    .sum::<f64>();
            }
        }
        let m = &j["metrics"];
        assert_eq!(m["n_rows"], counted);
        assert_eq!(j["outliers"]["n_outliers"], 0, "{j}");
        let all = ok_json(&decode_cmd(
            sae,
            &codes_path,
            &recon,
            &[&metrics_args[..], &["--no-mask"]].concat(),
        ));
        assert_eq!(all["metrics"]["n_rows"], 12);
        let mse = sq_err / (counted * D) as f64;
        assert!(
            (m["mse"].as_f64().unwrap() - mse).abs() < 1e-5 * mse.max(1.0),
            "{m}"
        );
        assert!(
            (m["l0"].as_f64().unwrap() - l0 as f64 / counted as f64).abs() < 1e-9,
            "{m}"
        );
        assert!(m["fvu"].as_f64().unwrap() > 0.0 && m["cosine"].as_f64().is_some());

        // without --acts: no metrics, same reconstruction
        let recon2 = fx.path("recon2.npy");
        let j = ok_json(&decode_cmd(sae, &codes_path, &recon2, &[]));
        assert!(j["metrics"].is_null());
        assert_eq!(read_npy_f32(&recon2).1, got);
    }
}

#[test]
fn stats_shards_and_merge_equal_the_whole() {
    let fx = Fixture::new(false);
    let (sae, dump, x, mask) = (&fx.sae, &fx.dump, &fx.x, &fx.mask);
    let whole = fx.path("whole.safetensors");
    let batch_2 = ["--batch-size", "2"];
    let j = ok_json(&acts_cmd("stats", sae, dump, &whole, &batch_2));
    let counted = mask.iter().filter(|m| **m != 0).count();
    assert_eq!(j["n_tokens"], counted);
    assert_eq!(j["n_rows"], 12);
    let st = sae_engine::io::stats_file::read(&whole).unwrap();
    assert_eq!(st.n_tokens, counted as u64);
    // hand-computed sums over counted rows
    let mut sum = [0f64; L];
    let mut n_active = [0u64; L];
    for r in (0..12).filter(|r| mask[*r] != 0) {
        for (l, v) in expected_row(&x[r * D..(r + 1) * D], false) {
            sum[l] += v as f64;
            n_active[l] += 1;
        }
    }
    for l in 0..L {
        assert!((st.sum[l] - sum[l]).abs() < 1e-4, "latent {l}");
        assert_eq!(st.n_active[l], n_active[l], "latent {l}");
    }
    // --no-mask counts every token
    let all = fx.path("all.safetensors");
    let j = ok_json(&acts_cmd("stats", sae, dump, &all, &["--no-mask"]));
    assert_eq!(j["n_tokens"], 12);

    // job-array slices, then merge
    let mut parts = vec![];
    for i in 0..2 {
        let p = fx.path(&format!("part{i}.safetensors"));
        let shard = format!("{i}/2");
        ok_json(&acts_cmd("stats", sae, dump, &p, &["--shard", &shard]));
        parts.push(p);
    }
    let merged = fx.path("merged.safetensors");
    let (p0, p1) = (arg(&parts[0]), arg(&parts[1]));
    let j = ok_json(&["stats", "merge", p0, p1, "--out", arg(&merged)]);
    assert_eq!(j["n_tokens"], counted);
    let m = sae_engine::io::stats_file::read(&merged).unwrap();
    assert_eq!(m.n_tokens, st.n_tokens);
    assert_eq!(m.n_active, st.n_active);
    assert_eq!(m.max, st.max);
    for l in 0..L {
        assert!((m.sum[l] - st.sum[l]).abs() < 1e-9);
        assert!((m.sum_sq[l] - st.sum_sq[l]).abs() < 1e-9);
    }
}

#[test]
fn stats_merge_and_decode_report_outlier_tokens() {
    let fx = Fixture::new(false);
    let sae = &fx.sae;
    // the fixture's dump with row 8 (counted, in the last shard) 1000x too large
    let mut x = fx.x.clone();
    x[8 * D..9 * D].iter_mut().for_each(|v| *v *= 1000.0);
    let dump = fx.path("sinks");
    write_shards(&dump, D, &x, &fx.mask);
    let whole = fx.path("sinks.stats.safetensors");
    let j = ok_json(&acts_cmd(
        "stats",
        sae,
        &dump,
        &whole,
        &["--outlier-factor", "5"],
    ));
    assert_eq!(
        (j["n_outliers"].as_u64(), j["outlier_factor"].as_f64()),
        (Some(1), Some(5.0))
    );
    // job-array slices see the sink in one slice only; the merge has the whole input's count
    let mut parts = vec![];
    for i in 0..2 {
        let p = fx.path(&format!("sinks{i}.safetensors"));
        let shard = format!("{i}/2");
        ok_json(&acts_cmd(
            "stats",
            sae,
            &dump,
            &p,
            &["--shard", &shard, "--outlier-factor", "5"],
        ));
        parts.push(p);
    }
    let merged = fx.path("sinks.merged.safetensors");
    let m = ok_json(&[
        "stats",
        "merge",
        arg(&parts[0]),
        arg(&parts[1]),
        "--out",
        arg(&merged),
    ]);
    for k in ["n_outliers", "median_norm", "token_hash", "outlier_factor"] {
        assert_eq!(m[k], j[k], "{k}: {m} vs {j}");
    }
    // decode metrics leave it out unless --keep-outliers
    let codes = fx.path("sinks.codes.safetensors");
    ok_json(&acts_cmd("encode", sae, &dump, &codes, &[]));
    let recon = fx.path("sinks.npy");
    let counted = fx.mask.iter().filter(|m| **m != 0).count();
    let acts = ["--acts", arg(&dump), "--outlier-factor", "5"];
    let d = ok_json(&decode_cmd(sae, &codes, &recon, &acts));
    assert_eq!(d["metrics"]["n_rows"], counted - 1, "{d}");
    assert_eq!(d["outliers"]["n_outliers"], 1, "{d}");
    let keep = ok_json(&decode_cmd(
        sae,
        &codes,
        &recon,
        &[&acts[..], &["--keep-outliers"]].concat(),
    ));
    assert_eq!(keep["metrics"]["n_rows"], counted, "{keep}");
}

#[test]
fn errors_name_the_file_and_exit_1() {
    let fx = Fixture::new(false);
    let (sae, dump) = (&fx.sae, &fx.dump);
    let other = cli_sae(&fx.path("jump"), true);
    let (wide, _, _) = masked_shards(&fx.path("wide"), D + 1);
    let out = fx.path("o.safetensors");

    let missing = fx.path("missing_sae");
    let e = fails(&["inspect", arg(&missing)]);
    assert!(e.contains("missing_sae"), "{e}");
    let nope = fx.path("nope.npy");
    let e = fails(&acts_cmd("encode", sae, &nope, &out, &[]));
    assert!(e.contains("nope.npy"), "{e}");
    // width mismatch names the dump and both widths
    let e = fails(&acts_cmd("encode", sae, &wide, &out, &[]));
    assert!(
        e.contains("wide") && e.contains("width 5") && e.contains("d_in = 4"),
        "{e}"
    );
    assert!(!out.exists());

    // statistics of different SAEs refuse to merge
    let (a, b) = (fx.path("a.safetensors"), fx.path("b.safetensors"));
    ok_json(&acts_cmd("stats", sae, dump, &a, &[]));
    ok_json(&acts_cmd("stats", &other, dump, &b, &[]));
    let m = fx.path("m.safetensors");
    let e = fails(&["stats", "merge", arg(&a), arg(&b), "--out", arg(&m)]);
    assert!(
        e.contains("a.safetensors") && e.contains("b.safetensors") && e.contains("different SAEs"),
        "{e}"
    );
    assert!(!m.exists());

    // codes of one SAE do not decode with another
    let codes = fx.path("codes.safetensors");
    ok_json(&acts_cmd("encode", sae, dump, &codes, &[]));
    let r = fx.path("r.npy");
    let e = fails(&decode_cmd(&other, &codes, &r, &[]));
    assert!(
        e.contains("codes.safetensors") && e.contains("different SAE"),
        "{e}"
    );
    assert!(!r.exists());
    // a statistics file is not a codes file
    let e = fails(&decode_cmd(sae, &a, &r, &[]));
    assert!(e.contains("a.safetensors"), "{e}");

    // usage errors exit 2
    sae_exits(2, &["stats", "--sae", arg(sae)]);
    sae_exits(2, &["encode"]);
    sae_exits(
        2,
        &acts_cmd("encode", sae, dump, &out, &["--batch-size", "0"]),
    );
    let bad = sae_exits(
        2,
        &acts_cmd("encode", sae, dump, &out, &["--backend", "tpu"]),
    );
    assert!(bad.contains("tpu"));
}

#[test]
fn corrupt_inputs_are_refused_naming_the_file() {
    let fx = Fixture::new(false);
    let (sae, dump) = (&fx.sae, &fx.dump);
    let out = fx.path("o.safetensors");

    // A NaN in W_enc (not scanned at load) is the SAE's fault: the headline names the
    // SAE and the latent, and the (clean) dump only as where the row came from.
    let mut enc = w_enc();
    enc[4 * D + 2] = f32::NAN;
    let bad_w = saelens_by_hand(&fx.path("nan_w"), false, enc, b_enc());
    let e = fails(&acts_cmd("encode", &bad_w, dump, &out, &["-q"]));
    assert!(
        e.starts_with(&format!("sae: error: {}: latent 4 ", bad_w.display()))
            && e.contains("finite input row 0 of")
            && e.contains("shard_00.safetensors"),
        "{e}"
    );
    assert!(!out.exists());
    // A NaN in b_enc is refused at load, naming the file, tensor and index.
    let mut be = b_enc();
    be[3] = f32::NAN;
    let bad_b = saelens_by_hand(&fx.path("nan_b"), false, w_enc(), be);
    let e = fails(&["inspect", arg(&bad_b)]);
    assert!(
        e.contains("sae_weights.safetensors") && e.contains("`b_enc` holds NaN at index 3"),
        "{e}"
    );

    // A NaN in a statistics file's `sum` is refused by diff, naming the file.
    let (base, tuned) = (fx.path("base.safetensors"), fx.path("tuned.safetensors"));
    ok_json(&acts_cmd("stats", sae, dump, &base, &[]));
    let mut st = sae_engine::io::stats_file::read(&base).unwrap();
    st.sum[2] = f64::NAN;
    sae_engine::io::stats_file::write(&tuned, &st).unwrap();
    let e = fails(&[
        "-q",
        "diff",
        "--sae",
        arg(sae),
        "--base",
        arg(&base),
        "--tuned",
        arg(&tuned),
    ]);
    assert!(
        e.contains("tuned.safetensors") && e.contains("`sum` of latent 2 is NaN"),
        "{e}"
    );

    // Codes without a fingerprint: refused unless --allow-unfingerprinted.
    let codes = fx.path("codes.safetensors");
    ok_json(&acts_cmd("encode", sae, dump, &codes, &[]));
    let (enc, _) = sae_engine::io::codes_file::read(&codes).unwrap();
    let Codes::TopK {
        n,
        k,
        indices,
        values,
    } = &enc.codes
    else {
        panic!("expected top-k codes")
    };
    let bare = fx.path("bare.safetensors");
    let meta: HashMap<String, String> = [("kind".to_string(), "topk".to_string())].into();
    write_safetensors(
        &bare,
        &[
            ("indices", OwnedTensor::i32(vec![*n, *k], indices)),
            ("values", OwnedTensor::f32(vec![*n, *k], values)),
        ],
        meta.clone(),
    )
    .unwrap();
    let r = fx.path("r.npy");
    let e = fails(&decode_cmd(sae, &bare, &r, &[]));
    assert!(
        e.contains("bare.safetensors") && e.contains("--allow-unfingerprinted"),
        "{e}"
    );
    assert!(!r.exists());
    ok_json(&decode_cmd(sae, &bare, &r, &["--allow-unfingerprinted"]));
    assert!(r.exists());
    // A NaN code value is refused naming the file and row.
    let mut vals = values.clone();
    vals[5 * k] = f32::NAN;
    write_safetensors(
        &bare,
        &[
            ("indices", OwnedTensor::i32(vec![*n, *k], indices)),
            ("values", OwnedTensor::f32(vec![*n, *k], &vals)),
        ],
        meta,
    )
    .unwrap();
    let r2 = fx.path("r2.npy");
    let e = fails(&decode_cmd(
        sae,
        &bare,
        &r2,
        &["--allow-unfingerprinted", "-q"],
    ));
    assert!(e.contains("bare.safetensors") && e.contains("row 5"), "{e}");
    assert!(!r2.exists());
}

#[test]
fn inspect_says_which_library_convention_applies() {
    let fx = |p: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(p)
    };
    let dl = fx("dictionary_learning/autoencoder");
    let j = ok_json(&["inspect", arg(&dl)]);
    let conv = j["conventions"][0].as_str().unwrap();
    assert!(
        conv.contains("from_pretrained") && conv.contains("folded"),
        "{conv}"
    );
    let raw = ok_json(&["inspect", arg(&dl), "--dl-convention", "raw"]);
    assert!(
        raw["conventions"][0].as_str().unwrap().contains("raw"),
        "{raw}"
    );
    // The two readings encode differently, so their codes must not mix.
    assert_ne!(j["fingerprint"], raw["fingerprint"]);
    let out = run_sae(&["inspect", arg(&dl)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("convention") && text.contains("from_pretrained"),
        "{text}"
    );

    // A normalization whose constant is missing: a warning on stderr and in the JSON.
    let ea = fx("saelens6/expected_average");
    let out = run_sae(&["inspect", arg(&ea)]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sae: warning: ") && err.contains("--norm-scale"),
        "{err}"
    );
    // with --json too (stdout is the JSON), not with --quiet
    let out = run_sae(&["--json", "inspect", arg(&ea)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sae: warning: "));
    let out = run_sae(&["-q", "inspect", arg(&ea)]);
    assert!(out.stderr.is_empty());
    let j = ok_json(&["inspect", arg(&ea)]);
    assert_eq!(j["normalization"], "none");
    assert_eq!(j["warnings"].as_array().unwrap().len(), 1);
    let j = ok_json(&["inspect", arg(&ea), "--norm-scale", "0.37"]);
    assert!(
        j["normalization"]
            .as_str()
            .unwrap()
            .starts_with("scale by 0.37"),
        "{j}"
    );
    assert!(j["warnings"].as_array().unwrap().is_empty());
    // The flag on an SAE without that normalization is an error, not ignored.
    let e = fails(&["inspect", arg(&dl), "--norm-scale", "0.37"]);
    assert!(e.contains("--norm-scale"), "{e}");
}

#[test]
fn latent_shards_give_the_unsharded_codes_statistics_and_reconstruction() {
    for jumprelu in [false, true] {
        let fx = Fixture::new(jumprelu);
        let (sae, dump) = (&fx.sae, &fx.dump);
        let run = |name: &str, extra: &[&str]| {
            let codes = fx.path(&format!("{name}.codes.safetensors"));
            let stats = fx.path(&format!("{name}.stats.safetensors"));
            let recon = fx.path(&format!("{name}.npy"));
            let j = ok_json(&acts_cmd("encode", sae, dump, &codes, extra));
            ok_json(&acts_cmd("stats", sae, dump, &stats, extra));
            ok_json(&decode_cmd(sae, &codes, &recon, extra));
            (
                j,
                sae_engine::io::codes_file::read(&codes).unwrap().0,
                sae_engine::io::stats_file::read(&stats).unwrap(),
                read_npy_f32(&recon).1,
            )
        };
        let (_, codes, stats, recon) = run("whole", &[]);
        // The fixture's values are multiples of 1/8 and its weights 0 or +-1: every sum is
        // exact, so even the reconstruction compares bit for bit.
        for spec in ["cpu,cpu,cpu", "2", "6"] {
            let (j, c, s, r) = run(spec, &["--latent-shards", spec, "--batch-size", "5"]);
            assert_eq!(c, codes, "codes, --latent-shards {spec}");
            assert_eq!(s, stats, "statistics, --latent-shards {spec}");
            assert_eq!(r, recon, "reconstruction, --latent-shards {spec}");
            let prov = j["provenance"].to_string();
            assert!(prov.contains("latent shards ["), "{prov}");
        }
    }
    let fx = Fixture::new(false);
    let out = fx.path("s.safetensors");
    let err = fails(&acts_cmd(
        "encode",
        &fx.sae,
        &fx.dump,
        &out,
        &["--backend", "cpu", "--latent-shards", "7"],
    ));
    assert!(
        err.contains("cannot split 6 latents into 7 shards"),
        "{err}"
    );
    for bad in [
        &["--latent-shards", "0"][..],
        &["--latent-shards", "cpu,tpu"],
        &["--latent-shards", "2", "--devices", "cpu:2"],
    ] {
        sae_exits(2, &acts_cmd("stats", &fx.sae, &fx.dump, &out, bad));
    }
    assert!(!out.exists());
}

#[test]
fn device_memory_limit_is_a_size_recorded_in_the_provenance() {
    let fx = Fixture::new(false);
    let out = fx.path("c.safetensors");
    // The CPU engine has no device memory to limit; the flag is parsed and recorded.
    let j = ok_json(&acts_cmd(
        "encode",
        &fx.sae,
        &fx.dump,
        &out,
        &["--device-memory-limit", "24G"],
    ));
    assert!(
        j["provenance"].to_string().contains("25769803776"),
        "{}",
        j["provenance"]
    );
    for bad in ["24X", "0", "-1G", "G"] {
        let err = sae_exits(
            2,
            &acts_cmd(
                "encode",
                &fx.sae,
                &fx.dump,
                &out,
                &["--device-memory-limit", bad],
            ),
        );
        assert!(err.contains("memory size"), "{bad}: {err}");
    }
}
