//! Activation dumps (npy / safetensors shards, directories), codes and statistics files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sae_engine::codes::{Codes, Denorm, Encoded};
use sae_engine::dtype::{convert_from_f32, DType};
use sae_engine::dump::Dump;
use sae_engine::io::codes_file::{self, CodesKind, CodesReader, CodesWriter};
use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
use sae_engine::io::npy::{self, NpyDtype};
use sae_engine::io::stats_file;
use sae_engine::stats::LatentStats;

/// Named tensors of a test file.
type Tensors = Vec<(&'static str, OwnedTensor)>;

fn ramp(rows: usize, d: usize, base: f32) -> Vec<f32> {
    (0..rows * d).map(|i| base + i as f32 * 0.25).collect()
}

fn write_npy(path: &Path, dt: NpyDtype, rows: usize, d: usize, vals: &[f32]) {
    let bytes = match dt.float() {
        Some(f) => convert_from_f32(f, vals),
        None => panic!("float dtype expected"),
    };
    npy::write(path, dt, &[rows, d], &bytes).unwrap();
}

fn float_tensor(dt: DType, shape: Vec<usize>, vals: &[f32]) -> OwnedTensor {
    OwnedTensor {
        dtype: dt.to_safetensors(),
        shape,
        data: convert_from_f32(dt, vals),
    }
}

fn all_rows(dump: &Dump, batch: usize) -> Vec<f32> {
    dump.batches(batch)
        .flat_map(|b| b.unwrap().acts)
        .collect::<Vec<f32>>()
}

#[test]
fn npy_shards_each_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let vals = ramp(5, 3, -1.0);
    for dt in [NpyDtype::F32, NpyDtype::F16, NpyDtype::BF16] {
        let p = dir.path().join(format!("{dt:?}.npy"));
        write_npy(&p, dt, 5, 3, &vals);
        let dump = Dump::open(&p).unwrap();
        assert_eq!((dump.n_rows(), dump.width()), (5, 3));
        assert_eq!(dump.shards()[0].dtype(), dt.float().unwrap());
        // ramp values are exact in every dtype (multiples of 1/4, small)
        assert_eq!(all_rows(&dump, 2), vals, "{dt:?}");
        let b = dump.batches(10).next().unwrap().unwrap();
        assert!(b.mask.is_none() && b.token_ids.is_none() && b.doc_ids.is_none());
    }
}

#[test]
fn safetensors_shard_with_side_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let vals = ramp(4, 2, 0.5);
    let tok: Vec<i32> = vec![11, 12, 13, 14];
    let docs: Vec<i64> = vec![0, 0, 1, 1];
    write_safetensors(
        &p,
        &[
            ("activations", float_tensor(DType::BF16, vec![4, 2], &vals)),
            ("token_ids", OwnedTensor::i32(vec![4], &tok)),
            ("doc_ids", OwnedTensor::i64(vec![4], &docs)),
            ("mask", OwnedTensor::u8(vec![4], &[1, 0, 255, 0])),
        ],
        HashMap::new(),
    )
    .unwrap();
    let dump = Dump::open(&p).unwrap();
    assert_eq!(dump.shards()[0].dtype(), DType::BF16);
    let bs: Vec<_> = dump.batches(3).map(|b| b.unwrap()).collect();
    assert_eq!(bs.len(), 2);
    assert_eq!(bs[0].token_ids.as_deref(), Some(&[11i64, 12, 13][..]));
    assert_eq!(bs[1].doc_ids.as_deref(), Some(&[1i64][..]));
    assert_eq!(bs[0].mask.as_deref(), Some(&[1u8, 0, 1][..]));
    assert_eq!(bs[1].mask.as_deref(), Some(&[0u8][..]));
    assert_eq!(all_rows(&dump, 3), vals);
}

#[test]
fn directory_in_name_order_and_batches_span_shards() {
    let dir = tempfile::tempdir().unwrap();
    let a = ramp(4, 3, 0.0);
    let b = ramp(5, 3, 100.0);
    // name order: a.safetensors before b.npy; other files are ignored
    write_safetensors(
        &dir.path().join("a.safetensors"),
        &[("activations", float_tensor(DType::F32, vec![4, 3], &a))],
        HashMap::new(),
    )
    .unwrap();
    write_npy(&dir.path().join("b.npy"), NpyDtype::F16, 5, 3, &b);
    std::fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
    let dump = Dump::open(dir.path()).unwrap();
    assert_eq!(dump.n_rows(), 9);
    let bs: Vec<_> = dump.batches(3).map(|b| b.unwrap()).collect();
    let shape: Vec<_> = bs.iter().map(|b| (b.shard, b.start, b.rows)).collect();
    assert_eq!(shape, vec![(0, 0, 3), (0, 3, 1), (1, 4, 3), (1, 7, 2)]);
    let mut want = a.clone();
    want.extend(&b);
    assert_eq!(all_rows(&dump, 3), want);
    assert_eq!(all_rows(&dump, 100), want);
    // job-array slices
    let second = Dump::open(dir.path()).unwrap().select_shards(1, 2).unwrap();
    assert_eq!(all_rows(&second, 2), b);
    assert!(Dump::open(dir.path()).unwrap().select_shards(2, 3).is_err());
}

#[test]
fn width_mismatch_between_shards_and_sae() {
    let dir = tempfile::tempdir().unwrap();
    write_npy(
        &dir.path().join("0.npy"),
        NpyDtype::F32,
        2,
        3,
        &ramp(2, 3, 0.0),
    );
    let one = Dump::open(dir.path().join("0.npy")).unwrap();
    let e = one.check_width(4).unwrap_err().to_string();
    assert!(
        e.contains("0.npy") && e.contains("width 3") && e.contains("d_in = 4"),
        "{e}"
    );
    one.check_width(3).unwrap();
    write_npy(
        &dir.path().join("1.npy"),
        NpyDtype::F32,
        2,
        4,
        &ramp(2, 4, 0.0),
    );
    let e = Dump::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("1.npy") && e.contains("width 4"), "{e}");
}

#[test]
fn bad_shards_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1-D and 3-D arrays
    npy::write_f32(&d.join("one.npy"), &[6], &[0.0; 6]).unwrap();
    npy::write_f32(&d.join("three.npy"), &[1, 2, 3], &[0.0; 6]).unwrap();
    for name in ["one.npy", "three.npy"] {
        let e = Dump::open(d.join(name)).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("2-D"), "{e}");
    }
    // integer activations
    npy::write(&d.join("int.npy"), NpyDtype::I32, &[2, 2], &[0u8; 16]).unwrap();
    let e = Dump::open(d.join("int.npy")).unwrap_err().to_string();
    assert!(
        e.contains("int.npy") && e.contains("f32, f16 or bf16"),
        "{e}"
    );
    // truncated npy
    write_npy(&d.join("t.npy"), NpyDtype::F32, 10, 4, &ramp(10, 4, 0.0));
    let full = std::fs::read(d.join("t.npy")).unwrap();
    std::fs::write(d.join("t.npy"), &full[..full.len() - 5]).unwrap();
    let e = Dump::open(d.join("t.npy")).unwrap_err().to_string();
    assert!(e.contains("t.npy") && e.contains("truncated"), "{e}");
    // truncated safetensors
    let st = d.join("t.safetensors");
    write_safetensors(
        &st,
        &[(
            "activations",
            float_tensor(DType::F32, vec![10, 4], &ramp(10, 4, 0.0)),
        )],
        HashMap::new(),
    )
    .unwrap();
    let full = std::fs::read(&st).unwrap();
    std::fs::write(&st, &full[..full.len() - 5]).unwrap();
    let e = Dump::open(&st).unwrap_err().to_string();
    assert!(e.contains("t.safetensors"), "{e}");
    // missing activations, side tensor of the wrong length, float mask
    let cases: Vec<(&str, Tensors, &str)> = vec![
        (
            "noact.safetensors",
            vec![("acts", float_tensor(DType::F32, vec![2, 2], &[0.0; 4]))],
            "missing tensor `activations`",
        ),
        (
            "len.safetensors",
            vec![
                (
                    "activations",
                    float_tensor(DType::F32, vec![2, 2], &[0.0; 4]),
                ),
                ("token_ids", OwnedTensor::i64(vec![3], &[1, 2, 3])),
            ],
            "token_ids",
        ),
        (
            "mask.safetensors",
            vec![
                (
                    "activations",
                    float_tensor(DType::F32, vec![2, 2], &[0.0; 4]),
                ),
                ("mask", OwnedTensor::f32(vec![2], &[1.0, 0.0])),
            ],
            "U8 or BOOL",
        ),
    ];
    for (name, tensors, want) in cases {
        write_safetensors(&d.join(name), &tensors, HashMap::new()).unwrap();
        let e = Dump::open(d.join(name)).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(want), "{e}");
    }
    // not a shard at all; empty directory
    let e = Dump::open(d.join("nope.bin")).unwrap_err().to_string();
    assert!(e.contains("nope.bin"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert!(Dump::open(empty.path()).is_err());
}

fn valid_npy_bytes() -> Vec<u8> {
    let mut b = npy::header_bytes(NpyDtype::F16, &[3, 2]);
    b.extend(convert_from_f32(DType::F16, &ramp(3, 2, 0.0)));
    b
}

fn valid_safetensors_bytes(dir: &Path) -> Vec<u8> {
    let p = dir.join("v.safetensors");
    write_safetensors(
        &p,
        &[
            (
                "activations",
                float_tensor(DType::F32, vec![3, 2], &ramp(3, 2, 0.0)),
            ),
            ("mask", OwnedTensor::u8(vec![3], &[1, 0, 1])),
        ],
        HashMap::new(),
    )
    .unwrap();
    std::fs::read(p).unwrap()
}

/// Opens `bytes` as a shard and reads everything; must never panic.
fn try_dump(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    if let Ok(d) = Dump::open(path) {
        for b in d.batches(2) {
            if b.is_err() {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        try_dump(&dir.path().join("r.npy"), &bytes);
        try_dump(&dir.path().join("r.safetensors"), &bytes);
        let mut st = (bytes.len() as u64).min(64).to_le_bytes().to_vec();
        st.extend(&bytes);
        try_dump(&dir.path().join("h.safetensors"), &st);
    }

    #[test]
    fn corrupted_valid_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (name, mut b) in [
            ("c.npy", valid_npy_bytes()),
            ("c.safetensors", valid_safetensors_bytes(dir.path())),
        ] {
            for (i, v) in &edits {
                let i = i.index(b.len());
                b[i] = *v;
            }
            if truncate {
                b.truncate(cut.index(b.len()));
            }
            try_dump(&dir.path().join(name), &b);
        }
    }
}

// ---------------------------------------------------------------------------------
// Codes and statistics files.

fn topk_codes() -> Encoded {
    Encoded {
        codes: Codes::TopK {
            n: 3,
            k: 2,
            indices: vec![4, 1, 0, -1, 7, 2],
            values: vec![3.0, 1.5, 0.25, 0.0, 9.0, 8.5],
        },
        denorm: Some(Denorm {
            scale: vec![1.0, 2.0, 0.5],
            shift: vec![0.0, -1.0, 3.0],
        }),
    }
}

fn csr_codes() -> Encoded {
    Encoded {
        codes: Codes::Csr {
            n: 4,
            row_ptr: vec![0, 2, 2, 5, 6],
            indices: vec![1, 3, 0, 2, 9, 4],
            values: vec![0.5, 1.0, 2.0, 0.1, 0.2, 7.0],
        },
        denorm: None,
    }
}

fn rows_of(enc: &Encoded, a: usize, b: usize) -> Encoded {
    let codes = match &enc.codes {
        Codes::TopK {
            k, indices, values, ..
        } => Codes::TopK {
            n: b - a,
            k: *k,
            indices: indices[a * k..b * k].to_vec(),
            values: values[a * k..b * k].to_vec(),
        },
        Codes::Csr {
            row_ptr,
            indices,
            values,
            ..
        } => {
            let (lo, hi) = (row_ptr[a] as usize, row_ptr[b] as usize);
            Codes::Csr {
                n: b - a,
                row_ptr: row_ptr[a..=b].iter().map(|p| p - lo as i64).collect(),
                indices: indices[lo..hi].to_vec(),
                values: values[lo..hi].to_vec(),
            }
        }
    };
    let denorm = enc.denorm.as_ref().map(|d| Denorm {
        scale: d.scale[a..b].to_vec(),
        shift: d.shift[a..b].to_vec(),
    });
    Encoded { codes, denorm }
}

#[test]
fn codes_round_trip_both_kinds_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        topk_codes(),
        csr_codes(),
        Encoded {
            codes: Codes::empty(Some(5)),
            denorm: None,
        },
        Encoded {
            codes: Codes::empty(None),
            denorm: None,
        },
    ];
    for (i, enc) in cases.iter().enumerate() {
        let p = dir.path().join(format!("c{i}.safetensors"));
        codes_file::write(&p, enc, "abc123").unwrap();
        // a standard reader accepts the file
        let bytes = std::fs::read(&p).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (back, fp) = codes_file::read(&p).unwrap();
        assert_eq!(&back, enc);
        assert_eq!(fp.as_deref(), Some("abc123"));
        let r = CodesReader::open(&p).unwrap();
        assert_eq!(r.kind(), CodesKind::of(&enc.codes));
        assert!(r.check_fingerprint("abc123").is_ok());
        let e = r.check_fingerprint("other").unwrap_err().to_string();
        assert!(e.contains(&format!("c{i}.safetensors")), "{e}");
        if enc.codes.n_rows() >= 3 {
            assert_eq!(r.read_rows(1, 2).unwrap(), rows_of(enc, 1, 3));
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), cases.len());
}

#[test]
fn streaming_writer_equals_one_shot_write() {
    let dir = tempfile::tempdir().unwrap();
    for (name, enc, splits) in [
        ("t", topk_codes(), vec![0, 1, 1, 3]),
        ("c", csr_codes(), vec![0, 2, 3, 3, 4]),
    ] {
        let one = dir.path().join(format!("{name}1.safetensors"));
        let streamed = dir.path().join(format!("{name}2.safetensors"));
        codes_file::write(&one, &enc, "fp").unwrap();
        let mut w = CodesWriter::create(&streamed, CodesKind::of(&enc.codes), "fp").unwrap();
        for s in splits.windows(2) {
            w.push(&rows_of(&enc, s[0], s[1])).unwrap();
        }
        assert_eq!(w.finish().unwrap(), enc.codes.n_rows());
        let a = std::fs::read(&one).unwrap();
        let b = std::fs::read(&streamed).unwrap();
        assert!(
            a == b,
            "{name}: streamed file differs from the one-shot file"
        );
    }
    // no spill or temporary files remain
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn streaming_writer_rejects_mixed_batches_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    let mut w = CodesWriter::create(&p, CodesKind::TopK { k: 2 }, "fp").unwrap();
    w.push(&rows_of(&topk_codes(), 0, 1)).unwrap();
    assert!(w.push(&csr_codes()).is_err());
    let mut no_denorm = rows_of(&topk_codes(), 1, 2);
    no_denorm.denorm = None;
    assert!(w.push(&no_denorm).is_err());
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert!(CodesWriter::create(
        &dir.path().join("no/such/dir.safetensors"),
        CodesKind::Csr,
        "f"
    )
    .is_err());
}

#[test]
fn bad_codes_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    let meta: HashMap<String, String> = [("kind".to_string(), "topk".to_string())].into();
    write_safetensors(
        &p,
        &[
            ("indices", OwnedTensor::i64(vec![1, 2], &[0, 1])),
            ("values", OwnedTensor::f32(vec![1, 2], &[1.0, 0.5])),
        ],
        meta.clone(),
    )
    .unwrap();
    let e = codes_file::read(&p).err().unwrap().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("indices") && e.contains("I32"),
        "{e}"
    );
    write_safetensors(
        &p,
        &[
            ("indices", OwnedTensor::i32(vec![1, 2], &[0, 1])),
            ("values", OwnedTensor::f32(vec![2, 1], &[1.0, 0.5])),
        ],
        meta,
    )
    .unwrap();
    let e = codes_file::read(&p).err().unwrap().to_string();
    assert!(e.contains("bad.safetensors") && e.contains("values"), "{e}");
    let meta: HashMap<String, String> = [("kind".to_string(), "csr".to_string())].into();
    write_safetensors(
        &p,
        &[
            ("row_ptr", OwnedTensor::i64(vec![3], &[0, 2, 1])),
            ("indices", OwnedTensor::i32(vec![1], &[0])),
            ("values", OwnedTensor::f32(vec![1], &[1.0])),
        ],
        meta,
    )
    .unwrap();
    let e = codes_file::read(&p).err().unwrap().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("row_ptr"),
        "{e}"
    );
}

#[test]
fn codes_without_or_with_another_fingerprint_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nofp.safetensors");
    let meta: HashMap<String, String> = [("kind".to_string(), "topk".to_string())].into();
    write_safetensors(
        &p,
        &[
            ("indices", OwnedTensor::i32(vec![1, 2], &[0, 1])),
            ("values", OwnedTensor::f32(vec![1, 2], &[1.0, 0.5])),
        ],
        meta,
    )
    .unwrap();
    let r = CodesReader::open(&p).unwrap();
    let e = r.check_fingerprint("abc").unwrap_err().to_string();
    assert!(
        e.contains("nofp.safetensors")
            && e.contains("fingerprint")
            && e.contains("--allow-unfingerprinted"),
        "{e}"
    );
    assert!(r
        .allow_unfingerprinted(true)
        .check_fingerprint("abc")
        .is_ok());
    // an explicit allowance never lets a wrong fingerprint through
    let q = dir.path().join("fp.safetensors");
    codes_file::write(&q, &topk_codes(), "abc").unwrap();
    let r = CodesReader::open(&q).unwrap().allow_unfingerprinted(true);
    assert!(r.check_fingerprint("other").is_err());
}

#[test]
fn non_finite_code_values_are_refused_naming_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    // TopK: row 2 holds a NaN in its second slot.
    let mut enc = topk_codes();
    let Codes::TopK {
        k, values, indices, ..
    } = &mut enc.codes
    else {
        unreachable!()
    };
    let k = *k;
    values[2 * k + 1] = f32::NAN;
    let latent = indices[2 * k + 1];
    let p = dir.path().join("t.safetensors");
    codes_file::write(&p, &enc, "fp").unwrap();
    let e = codes_file::read(&p).err().unwrap().to_string();
    assert!(
        e.contains("t.safetensors")
            && e.contains("row 2")
            && e.contains(&format!("latent {latent}"))
            && e.contains("NaN"),
        "{e}"
    );
    // rows read in a range report the row counted from the file's start
    let r = CodesReader::open(&p).unwrap();
    assert!(r.read_rows(0, 2).is_ok());
    let e = r.read_rows(1, 2).err().unwrap().to_string();
    assert!(e.contains("row 2"), "{e}");
    // CSR: an infinity in the last stored code of the last row.
    let mut enc = csr_codes();
    let n = enc.codes.n_rows();
    let Codes::Csr { values, .. } = &mut enc.codes else {
        unreachable!()
    };
    *values.last_mut().unwrap() = f32::INFINITY;
    let p = dir.path().join("c.safetensors");
    codes_file::write(&p, &enc, "fp").unwrap();
    let e = codes_file::read(&p).err().unwrap().to_string();
    assert!(
        e.contains("c.safetensors") && e.contains(&format!("row {}", n - 1)) && e.contains("inf"),
        "{e}"
    );
}

#[test]
fn stats_round_trip_and_validation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.safetensors");
    let mut s = LatentStats::new("fp1", 10);
    s.accumulate(&topk_codes().codes, None).unwrap();
    s.accumulate(&csr_codes().codes, Some(&[1, 1, 0, 1]))
        .unwrap();
    stats_file::write(&p, &s).unwrap();
    assert_eq!(stats_file::read(&p).unwrap(), s);
    let empty = LatentStats::new("fp0", 0);
    stats_file::write(&dir.path().join("e.safetensors"), &empty).unwrap();
    assert_eq!(
        stats_file::read(&dir.path().join("e.safetensors")).unwrap(),
        empty
    );

    let meta: HashMap<String, String> = [
        ("n_tokens".to_string(), "3".to_string()),
        ("fingerprint".to_string(), "f".to_string()),
    ]
    .into();
    let bad = dir.path().join("bad.safetensors");
    write_safetensors(
        &bad,
        &[
            ("sum", OwnedTensor::f64(vec![2], &[1.0, 2.0])),
            ("sum_sq", OwnedTensor::f32(vec![2], &[1.0, 2.0])),
            ("n_active", OwnedTensor::i64(vec![2], &[1, 2])),
            ("max", OwnedTensor::f32(vec![2], &[1.0, 2.0])),
        ],
        meta.clone(),
    )
    .unwrap();
    let e = stats_file::read(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.safetensors") && e.contains("sum_sq") && e.contains("F64"),
        "{e}"
    );
    write_safetensors(
        &bad,
        &[
            ("sum", OwnedTensor::f64(vec![2], &[1.0, 2.0])),
            ("sum_sq", OwnedTensor::f64(vec![2], &[1.0, 2.0])),
            ("n_active", OwnedTensor::i64(vec![3], &[1, 2, 0])),
            ("max", OwnedTensor::f32(vec![2], &[1.0, 2.0])),
        ],
        meta,
    )
    .unwrap();
    let e = stats_file::read(&bad).unwrap_err().to_string();
    assert!(e.contains("n_active") && e.contains("[2]"), "{e}");
    write_safetensors(
        &bad,
        &[
            ("sum", OwnedTensor::f64(vec![1], &[1.0])),
            ("sum_sq", OwnedTensor::f64(vec![1], &[1.0])),
            ("n_active", OwnedTensor::i64(vec![1], &[1])),
            ("max", OwnedTensor::f32(vec![1], &[1.0])),
        ],
        HashMap::new(),
    )
    .unwrap();
    let e = stats_file::read(&bad).unwrap_err().to_string();
    assert!(e.contains("n_tokens"), "{e}");
}

// ---------------------------------------------------------------------------------
// Bounded memory.

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes an f16 npy of `rows x d` chunk by chunk (never the whole array in memory).
fn write_big_npy(path: &Path, rows: usize, d: usize) -> PathBuf {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&npy::header_bytes(NpyDtype::F16, &[rows, d]))
        .unwrap();
    let chunk: Vec<f32> = (0..1024 * d).map(|i| (i % 97) as f32 * 0.125).collect();
    let bytes = convert_from_f32(DType::F16, &chunk);
    let mut left = rows;
    while left > 0 {
        let r = left.min(1024);
        f.write_all(&bytes[..r * d * 2]).unwrap();
        left -= r;
    }
    f.flush().unwrap();
    path.to_path_buf()
}

#[test]
#[cfg(target_os = "linux")]
fn streaming_a_large_dump_keeps_resident_memory_bounded() {
    // The whole integration suite is one process: other tests running beside this one would
    // count in its resident size. So it measures in a child process of the same binary
    // running only this test (SAE_TEST_RSS_CHILD marks the child).
    if std::env::var_os("SAE_TEST_RSS_CHILD").is_none() {
        let name = "dumps::streaming_a_large_dump_keeps_resident_memory_bounded";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env("SAE_TEST_RSS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child run failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // 320 MiB of f16 activations: 40960 rows x 4096.
    let (rows, d) = (40960usize, 4096usize);
    let dir = tempfile::tempdir().unwrap();
    let path = write_big_npy(&dir.path().join("big.npy"), rows, d);
    let dump_bytes = (rows * d * 2) as u64;
    let dump = Dump::open(&path).unwrap();
    let before = status_kb("VmRSS:").unwrap() * 1024;
    let mut peak = before;
    let mut checksum = 0f64;
    let mut seen = 0u64;
    for b in dump.batches(1024) {
        let b = b.unwrap();
        checksum += b.acts.iter().step_by(d + 1).map(|v| *v as f64).sum::<f64>();
        seen += b.rows as u64;
        peak = peak.max(status_kb("VmRSS:").unwrap() * 1024);
    }
    assert_eq!(seen, rows as u64);
    assert!(checksum > 0.0);
    let growth = peak.saturating_sub(before);
    // One batch is 1024 x 4096 f32 = 16 MiB plus the mapped pages of the batch in flight.
    assert!(
        growth < 96 << 20,
        "resident memory grew by {} MiB while streaming a {} MiB dump",
        growth >> 20,
        dump_bytes >> 20
    );
}
