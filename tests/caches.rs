//! Activation caches as dumps: SAELens (Arrow) and crosscoder_learning (memmap).
#![allow(clippy::needless_range_loop)] // row-indexed checks read clearer with explicit indices

use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sae_engine::dump::arrow;
use sae_engine::Dump;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/saelens_cache")
}

/// The values tools/fixtures/make_saelens_cache.py wrote.
fn expected_row(global_row: usize) -> (Vec<f32>, i64) {
    let (c, r) = (global_row / 3, global_row % 3);
    let acts = (0..4)
        .map(|j| c as f32 * 1000.0 + r as f32 * 10.0 + j as f32 * 0.5)
        .collect();
    (acts, (c * 100 + r) as i64)
}

#[test]
fn saelens_cache_streams_rows_and_tokens() {
    let dump = Dump::open(fixture()).unwrap();
    assert_eq!(dump.width(), 4);
    assert_eq!(dump.n_rows(), 15); // 5 contexts x context_size 3
    assert_eq!(dump.shards().len(), 2);
    let mut seen = 0usize;
    // Batches of 4 rows cross record-batch and context boundaries.
    for b in dump.batches(4) {
        let b = b.unwrap();
        let toks = b.token_ids.clone().unwrap();
        for i in 0..b.rows {
            let (acts, tok) = expected_row(b.start as usize + i);
            assert_eq!(
                &b.acts[i * 4..i * 4 + 4],
                &acts[..],
                "row {}",
                b.start as usize + i
            );
            assert_eq!(toks[i], tok);
        }
        seen += b.rows;
    }
    assert_eq!(seen, 15);
}

#[test]
fn saelens_cache_column_choice_and_errors() {
    let info = arrow::column_info(&fixture(), None).unwrap();
    assert_eq!((info.context_size, info.d_in), (3, 4));
    assert!(arrow::column_info(&fixture(), Some("nope")).is_err());
    // A cache whose declared shape disagrees with the lists is an error on read, not garbage.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let info = std::fs::read_to_string(dir.path().join("dataset_info.json")).unwrap();
    std::fs::write(
        dir.path().join("dataset_info.json"),
        info.replace("[\n        3,\n        4\n      ]", "[3, 5]")
            .replace("[3, 4]", "[3, 5]"),
    )
    .unwrap();
    let dump = Dump::open(dir.path()).unwrap();
    assert_eq!(dump.width(), 5);
    let err = dump.batches(2).next().unwrap().unwrap_err().to_string();
    assert!(err.contains(".arrow"), "{err}");
}

fn arrow_bytes() -> Vec<u8> {
    std::fs::read(fixture().join("data-00000-of-00002.arrow")).unwrap()
}

#[test]
fn the_fuzz_entry_reads_the_fixture() {
    let n = arrow::parse_for_fuzz(&arrow_bytes(), "blocks.0.hook_resid_post", 3, 4).unwrap();
    assert_eq!(n, 9);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_arrow_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut data = arrow_bytes();
        for (i, v) in flips {
            let n = data.len();
            data[i % n] = v;
        }
        let _ = arrow::parse_for_fuzz(&data, "blocks.0.hook_resid_post", 3, 4);
    }

    #[test]
    fn random_arrow_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = arrow::parse_for_fuzz(&data, "blocks.0.hook_resid_post", 3, 4);
    }

    #[test]
    fn truncated_arrow_never_panics(cut in 0usize..1344) {
        let data = arrow_bytes();
        let _ = arrow::parse_for_fuzz(&data[..cut.min(data.len())], "blocks.0.hook_resid_post", 3, 4);
    }
}

/// `torch.save(tensor)` of a 1-D int64 tensor, as torch writes it.
fn write_tokens_pt(path: &Path, tokens: &[i64]) {
    let mut p: Vec<u8> = vec![0x80, 2];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x00(");
    p.extend(b"(X\x07\x00\x00\x00storageq\x01ctorch\nLongStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04");
    p.push(b'J');
    p.extend((tokens.len() as i32).to_le_bytes());
    p.extend(b"tq\x05QK\x00");
    p.push(b'J');
    p.extend((tokens.len() as i32).to_le_bytes());
    p.extend(b"\x85q\x06K\x01\x85q\x07\x89ccollections\nOrderedDict\nq\x08)Rq\x09tq\x0aRq\x0b.");
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let o =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("tokens/data.pkl", o).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("tokens/data/0", o).unwrap();
    z.write_all(
        &tokens
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    z.start_file("tokens/version", o).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

#[test]
fn crosscoder_cache_bf16_as_int16_with_tokens() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("layer_13_out");
    std::fs::create_dir(&dir).unwrap();
    let d = 3usize;
    let rows = [4usize, 2];
    let val = |i: usize, j: usize| (i as f32) * 0.5 - j as f32; // exact in bf16
    let mut g = 0;
    for (s, n) in rows.iter().enumerate() {
        let mut bytes = Vec::new();
        for _ in 0..*n {
            for j in 0..d {
                // bf16 bits written as int16 (numpy has no bfloat16)
                bytes.extend(half::bf16::from_f32(val(g, j)).to_bits().to_le_bytes());
            }
            g += 1;
        }
        std::fs::write(dir.join(format!("shard_{s}.memmap")), bytes).unwrap();
        std::fs::write(
            dir.join(format!("shard_{s}.meta")),
            format!(r#"{{"shape": [{n}, {d}], "dtype": "torch.bfloat16"}}"#),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("config.json"),
        r#"{"batch_size": 2, "context_len": 8, "shard_size": 4, "d_model": 3, "shuffle_shards": false,
           "io": "out", "total_size": 6, "shard_count": 2, "store_tokens": true, "store_sequence_ranges": true}"#,
    )
    .unwrap();
    let tokens: Vec<i64> = (0..6).map(|i| 50_000 + i).collect();
    write_tokens_pt(&root.path().join("tokens.pt"), &tokens);

    let dump = Dump::open(&dir).unwrap();
    assert_eq!((dump.width(), dump.n_rows()), (3, 6));
    let mut g = 0usize;
    for b in dump.batches(3) {
        let b = b.unwrap();
        let t = b.token_ids.clone().unwrap();
        for i in 0..b.rows {
            for j in 0..d {
                assert_eq!(b.acts[i * d + j], val(g, j));
            }
            assert_eq!(t[i], tokens[g]);
            g += 1;
        }
    }
    assert_eq!(g, 6);

    // A shard shorter than its meta says is refused, naming the file.
    std::fs::write(dir.join("shard_1.memmap"), [0u8; 4]).unwrap();
    let err = Dump::open(&dir).unwrap_err().to_string();
    assert!(err.contains("shard_1.memmap"), "{err}");
}

#[test]
fn convert_dump_writes_bounded_safetensors_shards() {
    use sae_engine::convert::{convert_dump, DumpConvertOptions};
    use sae_engine::io::mapped::{tensor_to_i64, MappedSafetensors};
    let dump = Dump::open(fixture()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts = DumpConvertOptions {
        rows_per_shard: 4,
        batch_rows: 3,
        ..Default::default()
    };
    let files = convert_dump(&dump, out.path(), opts).unwrap();
    assert_eq!(files.len(), 4); // 15 rows -> 4 + 4 + 4 + 3
    let mut g = 0usize;
    for f in &files {
        let st = MappedSafetensors::open(f).unwrap();
        let acts = st.tensor("activations").unwrap();
        let toks = tensor_to_i64(&st.tensor("token_ids").unwrap(), f).unwrap();
        let v = acts.to_f32(f).unwrap();
        assert_eq!(acts.shape[1], 4);
        for i in 0..acts.shape[0] {
            let (want, tok) = expected_row(g);
            assert_eq!(&v[i * 4..i * 4 + 4], &want[..]);
            assert_eq!(toks[i], tok);
            g += 1;
        }
    }
    assert_eq!(g, 15);
}
