//! torch `.pt` reading: fixtures are written byte by byte here, the way `torch.save`
//! writes them (pickle protocol 2 with persistent ids for storages, inside a zip with
//! `archive/data.pkl`, `archive/data/N`, `archive/version`, members stored uncompressed).

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use sae_engine::formats::{dictionary_learning, openai, pickle};
use sae_engine::matrix::Layout;
use sae_engine::{Activation, Normalization};

/// A tensor to save: storage class, shape, values as little-endian bytes, and whether to
/// save it transposed (strides [1, rows]).
struct T {
    class: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
    transposed: bool,
}

fn f32s(shape: &[usize], v: &[f32]) -> T {
    T {
        class: "FloatStorage",
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        transposed: false,
    }
}

fn long_scalar(v: i64) -> T {
    T {
        class: "LongStorage",
        shape: vec![],
        data: v.to_le_bytes().to_vec(),
        transposed: false,
    }
}

/// Protocol-2 pickle writer: the opcodes CPython's pickler emits for these objects.
#[derive(Default)]
struct P {
    b: Vec<u8>,
    memo: u32,
}

impl P {
    fn put(&mut self) {
        self.b.push(b'q');
        self.b.push(self.memo as u8);
        self.memo += 1;
    }
    fn global(&mut self, module: &str, name: &str) {
        self.b.push(b'c');
        self.b.extend(format!("{module}\n{name}\n").as_bytes());
        self.put();
    }
    fn string(&mut self, s: &str) {
        self.b.push(b'X');
        self.b.extend((s.len() as u32).to_le_bytes());
        self.b.extend(s.as_bytes());
        self.put();
    }
    fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.b.push(b'K');
            self.b.push(v as u8);
        } else {
            self.b.push(b'J');
            self.b.extend((v as i32).to_le_bytes());
        }
    }
    fn tuple(&mut self, items: &[usize]) {
        match items.len() {
            0 => self.b.push(b')'),
            1..=3 => {
                for i in items {
                    self.int(*i as i64);
                }
                self.b.push(0x84 + items.len() as u8);
                self.put();
            }
            _ => {
                self.b.push(b'(');
                for i in items {
                    self.int(*i as i64);
                }
                self.b.push(b't');
                self.put();
            }
        }
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.b.push(b')');
        self.b.push(b'R');
        self.put();
    }
    /// `_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`
    fn tensor(&mut self, key: usize, t: &T) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.b.push(b'(');
        // persistent id ('storage', torch.XStorage, key, 'cpu', numel)
        self.b.push(b'(');
        self.string("storage");
        self.global("torch", t.class);
        self.string(&key.to_string());
        self.string("cpu");
        let es = match t.class {
            "FloatStorage" | "IntStorage" => 4,
            "LongStorage" | "DoubleStorage" => 8,
            "HalfStorage" | "BFloat16Storage" => 2,
            _ => 1,
        };
        self.int((t.data.len() / es) as i64);
        self.b.push(b't');
        self.put();
        self.b.push(b'Q');
        self.int(0);
        self.tuple(&t.shape);
        let stride: Vec<usize> = if t.transposed {
            vec![1, t.shape[0]]
        } else {
            let mut s = vec![1usize; t.shape.len()];
            for i in (0..t.shape.len().saturating_sub(1)).rev() {
                s[i] = s[i + 1] * t.shape[i + 1];
            }
            s
        };
        self.tuple(&stride);
        self.b.push(0x89);
        self.empty_ordered_dict();
        self.b.push(b't');
        self.put();
        self.b.push(b'R');
        self.put();
    }
}

enum Entry<'a> {
    Tensor(T),
    Str(&'a str),
    /// A plain dict of string -> int (OpenAI's activation_state_dict, simplified).
    Dict(Vec<(&'a str, Entry<'a>)>),
    Int(i64),
}

/// The pickle `torch.save(OrderedDict(entries))` writes, and the storages.
fn state_dict_pickle(entries: Vec<(&str, Entry)>) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut p = P::default();
    p.b.extend([0x80, 2]);
    p.empty_ordered_dict();
    p.b.push(b'(');
    let mut storages = Vec::new();
    fn emit(p: &mut P, e: &Entry, storages: &mut Vec<Vec<u8>>) {
        match e {
            Entry::Tensor(t) => {
                p.tensor(storages.len(), t);
                storages.push(t.data.clone());
            }
            Entry::Str(s) => p.string(s),
            Entry::Int(i) => p.int(*i),
            Entry::Dict(items) => {
                p.b.push(b'}');
                p.put();
                p.b.push(b'(');
                for (k, v) in items {
                    p.string(k);
                    emit(p, v, storages);
                }
                p.b.push(b'u');
            }
        }
    }
    for (k, e) in &entries {
        p.string(k);
        emit(&mut p, e, &mut storages);
    }
    p.b.push(b'u');
    // torch sets `_metadata` on state dicts: BUILD with a {'_metadata': OrderedDict()} state.
    p.b.push(b'}');
    p.put();
    p.string("_metadata");
    p.empty_ordered_dict();
    p.b.push(b's');
    p.b.push(b'b');
    p.b.push(b'.');
    (p.b, storages)
}

fn write_pt(path: &Path, pkl: &[u8], storages: &[Vec<u8>]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    z.start_file("archive/byteorder", opts).unwrap();
    z.write_all(b"little").unwrap();
    for (i, s) in storages.iter().enumerate() {
        z.start_file(format!("archive/data/{i}"), opts).unwrap();
        z.write_all(s).unwrap();
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
}

fn save(path: &Path, entries: Vec<(&str, Entry)>) {
    let (pkl, st) = state_dict_pickle(entries);
    write_pt(path, &pkl, &st);
}

fn seq(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 - n as f32 / 2.0) * scale)
        .collect()
}

#[test]
fn reads_tensors_mapped_with_shapes_and_transposes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pt");
    let a = seq(6, 0.5);
    let mut t = f32s(&[2, 3], &a);
    t.transposed = true; // stored column-major: logical [2,3] from 6 values
    save(
        &p,
        vec![
            ("a", Entry::Tensor(f32s(&[2, 3], &a))),
            ("at", Entry::Tensor(t)),
            ("k", Entry::Tensor(long_scalar(7))),
        ],
    );
    let f = pickle::load(&p).unwrap();
    let ta = f.tensor("a").unwrap();
    assert_eq!(ta.shape, vec![2, 3]);
    assert!(ta.bytes.is_mapped());
    assert_eq!(ta.to_f32(&p, "a").unwrap(), a);
    let tt = f.tensor("at").unwrap();
    assert!(tt.transposed);
    // element (i, j) of a transposed tensor is stored at j * rows + i
    let got = tt.to_f32(&p, "at").unwrap();
    assert_eq!(got[1], a[2]); // (0,1) -> storage 1*2+0
    let m = tt.matrix(&p, "at", true).unwrap();
    assert_eq!(m.layout(), Layout::Transposed);
    assert_eq!(m.to_f32_vec(), got);
    assert_eq!(f.tensor("k").unwrap().scalar(&p, "k").unwrap(), 7.0);
    let err = f.tensor("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("x.pt"), "{err}");
}

#[test]
fn malicious_pickles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // GLOBAL os.system + REDUCE: what a code-executing pickle looks like.
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
    ] {
        let mut p = P::default();
        p.b.extend([0x80, 2]);
        p.global(module, name);
        p.string("touch /tmp/pwned");
        p.b.push(0x85);
        p.b.push(b'R');
        p.b.push(b'.');
        let path = dir.path().join(format!("{name}.pt"));
        write_pt(&path, &p.b, &[]);
        let err = pickle::load(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("{module}.{name}")), "{err}");
        assert!(err.contains(&format!("{name}.pt")), "{err}");
    }
    // STACK_GLOBAL form (protocol 4) is checked the same way.
    let mut b = vec![0x80, 4, 0x8c, 8];
    b.extend(b"builtins");
    b.extend([0x8c, 4]);
    b.extend(b"exec");
    b.extend([0x93, b'.']);
    let path = dir.path().join("sg.pt");
    write_pt(&path, &b, &[]);
    assert!(pickle::load(&path)
        .unwrap_err()
        .to_string()
        .contains("builtins.exec"));
    // Object construction opcodes are refused even without a global.
    let path = dir.path().join("inst.pt");
    write_pt(&path, b"\x80\x02(ios\nsystem\nX\x01\x00\x00\x00xt.", &[]);
    assert!(pickle::load(&path).is_err());
}

#[test]
fn legacy_and_garbage_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("old.pt");
    std::fs::write(&p, b"\x80\x02\x8a\x0alp\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    assert!(pickle::load(&p).unwrap_err().to_string().contains("legacy"));
    let p = dir.path().join("junk.pt");
    std::fs::write(&p, b"hello").unwrap();
    assert!(pickle::load(&p).unwrap_err().to_string().contains("zip"));
}

#[test]
fn storage_too_small_for_the_tensor_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("short.pt");
    let (pkl, mut st) = state_dict_pickle(vec![(
        "a",
        Entry::Tensor(f32s(&[4], &[1.0, 2.0, 3.0, 4.0])),
    )]);
    st[0].truncate(8);
    write_pt(&p, &pkl, &st);
    let err = pickle::load(&p).unwrap_err().to_string();
    assert!(err.contains("storage"), "{err}");
}

fn write_config(dir: &Path, json: &str) {
    std::fs::write(dir.join("config.json"), json).unwrap();
}

#[test]
fn dictionary_learning_variants() {
    let (l, d) = (5usize, 3usize);
    let enc = seq(l * d, 0.1);
    let dec = seq(d * l, 0.2);
    let be = seq(l, 0.01);
    let bd = seq(d, 0.03);

    // BatchTopKSAE: global threshold -> JumpReLU, b_dec subtracted.
    let dir = tempfile::tempdir().unwrap();
    let save_batch_topk = |threshold: f32| {
        save(
            &dir.path().join("ae.pt"),
            vec![
                ("encoder.weight", Entry::Tensor(f32s(&[l, d], &enc))),
                ("encoder.bias", Entry::Tensor(f32s(&[l], &be))),
                ("decoder.weight", Entry::Tensor(f32s(&[d, l], &dec))),
                ("b_dec", Entry::Tensor(f32s(&[d], &bd))),
                ("k", Entry::Tensor(long_scalar(2))),
                ("threshold", Entry::Tensor(f32s(&[], &[threshold]))),
            ],
        )
    };
    save_batch_topk(0.25);
    write_config(
        dir.path(),
        r#"{"trainer": {"dict_class": "BatchTopKSAE", "k": 2, "dict_size": 5, "activation_dim": 3,
            "layer": 12, "lm_name": "Qwen/Qwen2.5-7B-Instruct", "submodule_name": "resid_post_layer_12"}}"#,
    );
    assert!(dictionary_learning::looks_like(dir.path()));
    let sae = dictionary_learning::load(dir.path()).unwrap();
    assert_eq!((sae.n_latents(), sae.d_in()), (l, d));
    assert_eq!(sae.activation, Activation::JumpRelu);
    assert_eq!(sae.threshold.as_deref(), Some(&[0.25f32; 5][..]));
    assert!(sae.subtract_b_dec);
    assert_eq!(sae.b_dec, bd);
    assert_eq!(sae.meta.hook_layer, Some(12));
    assert_eq!(sae.w_enc.to_f32_vec(), enc);
    // decoder.weight [d, L] -> logical W_dec [L, d]
    assert_eq!(sae.w_dec.layout(), Layout::Transposed);
    assert_eq!(sae.w_dec.get(1, 2), dec[2 * l + 1]);

    // Same tensors, AutoEncoderTopK -> TopK(k from the buffer).
    write_config(
        dir.path(),
        r#"{"trainer": {"dict_class": "AutoEncoderTopK", "k": 2}}"#,
    );
    let sae = dictionary_learning::load(dir.path()).unwrap();
    assert_eq!(sae.activation, Activation::TopK { k: 2 });
    assert!(sae.threshold.is_none());

    // Without the config the two cannot be told apart.
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = dictionary_learning::load(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("dict_class"), "{err}");

    // Config disagreeing with the tensors is refused.
    write_config(
        dir.path(),
        r#"{"trainer": {"dict_class": "BatchTopKSAE", "dict_size": 6}}"#,
    );
    assert!(dictionary_learning::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("dict_size"));

    // Unset BatchTopK threshold (-1) is refused.
    save_batch_topk(-1.0);
    write_config(dir.path(), r#"{"trainer": {"dict_class": "BatchTopKSAE"}}"#);
    assert!(dictionary_learning::load(dir.path())
        .unwrap_err()
        .to_string()
        .contains("threshold"));

    // AutoEncoder (ReLU, `bias` is b_dec).
    let dir = tempfile::tempdir().unwrap();
    save(
        &dir.path().join("ae.pt"),
        vec![
            ("bias", Entry::Tensor(f32s(&[d], &bd))),
            ("encoder.weight", Entry::Tensor(f32s(&[l, d], &enc))),
            ("encoder.bias", Entry::Tensor(f32s(&[l], &be))),
            ("decoder.weight", Entry::Tensor(f32s(&[d, l], &dec))),
        ],
    );
    write_config(dir.path(), r#"{"trainer": {"dict_class": "AutoEncoder"}}"#);
    let sae = dictionary_learning::load(&dir.path().join("ae.pt")).unwrap();
    assert_eq!(sae.activation, Activation::Relu);
    assert!(sae.subtract_b_dec);
    assert_eq!(sae.b_dec, bd);

    // JumpReluAutoEncoder: W_enc [d, L], no b_dec subtraction.
    let dir = tempfile::tempdir().unwrap();
    let th = seq(l, 0.0);
    save(
        &dir.path().join("ae.pt"),
        vec![
            ("W_enc", Entry::Tensor(f32s(&[d, l], &enc))),
            ("b_enc", Entry::Tensor(f32s(&[l], &be))),
            ("W_dec", Entry::Tensor(f32s(&[l, d], &dec))),
            ("b_dec", Entry::Tensor(f32s(&[d], &bd))),
            ("threshold", Entry::Tensor(f32s(&[l], &th))),
        ],
    );
    write_config(
        dir.path(),
        r#"{"trainer": {"dict_class": "JumpReluAutoEncoder"}}"#,
    );
    let sae = dictionary_learning::load(dir.path()).unwrap();
    assert_eq!(sae.activation, Activation::JumpRelu);
    assert!(!sae.subtract_b_dec);
    assert_eq!(sae.w_enc.layout(), Layout::Transposed);
    assert_eq!(sae.w_enc.get(4, 1), enc[l + 4]);
    assert_eq!(sae.w_dec.to_f32_vec(), dec);
}

#[test]
fn openai_topk_and_relu() {
    let (l, d) = (6usize, 4usize);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v5_32k_layer_8.pt");
    let entries = |act: &'static str| {
        vec![
            ("pre_bias", Entry::Tensor(f32s(&[d], &seq(d, 0.1)))),
            ("latent_bias", Entry::Tensor(f32s(&[l], &seq(l, 0.2)))),
            (
                "stats_last_nonzero",
                Entry::Tensor(T {
                    class: "LongStorage",
                    shape: vec![l],
                    data: vec![0u8; 8 * l],
                    transposed: false,
                }),
            ),
            (
                "encoder.weight",
                Entry::Tensor(f32s(&[l, d], &seq(l * d, 0.3))),
            ),
            (
                "decoder.weight",
                Entry::Tensor(f32s(&[d, l], &seq(l * d, 0.4))),
            ),
            ("activation", Entry::Str(act)),
            (
                "activation_state_dict",
                Entry::Dict(vec![
                    ("k", Entry::Int(3)),
                    ("postact_fn", Entry::Str("ReLU")),
                ]),
            ),
        ]
    };
    save(&p, entries("TopK"));
    assert!(openai::looks_like(&p));
    let sae = openai::load(&p).unwrap();
    assert_eq!(sae.activation, Activation::TopK { k: 3 });
    assert_eq!(sae.normalization, Normalization::LayerNorm { eps: 1e-5 });
    assert!(sae.subtract_b_dec);
    assert_eq!(sae.b_dec, seq(d, 0.1));
    assert_eq!(sae.b_enc, seq(l, 0.2));
    assert_eq!(sae.w_dec.layout(), Layout::Transposed);
    assert_eq!(sae.w_dec.get(5, 3), seq(l * d, 0.4)[3 * l + 5]);

    save(&p, entries("ReLU"));
    let sae = openai::load(&p).unwrap();
    assert_eq!(sae.activation, Activation::Relu);
    assert_eq!(sae.normalization, Normalization::None);
}

fn valid_pickle() -> Vec<u8> {
    state_dict_pickle(vec![
        ("w", Entry::Tensor(f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]))),
        ("name", Entry::Str("x")),
        ("d", Entry::Dict(vec![("k", Entry::Int(3))])),
    ])
    .0
}

#[test]
fn the_fuzz_entry_accepts_a_valid_pickle() {
    assert!(pickle::parse_for_fuzz(&valid_pickle(), 1 << 20).is_ok());
}

#[test]
fn memo_bomb_is_refused() {
    // t = (x,); repeat: memoize, then build (t, t) from two gets -> doubles each round.
    let mut b = vec![0x80, 2, b'K', 1, 0x85, b'q', 0];
    for i in 0..40u8 {
        b.extend([b'h', i, b'h', i, 0x86, b'q', i + 1]);
        b.extend([b'0', b'h', i + 1]);
    }
    b.push(b'.');
    assert!(pickle::parse_for_fuzz(&b, 1 << 20).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = pickle::parse_for_fuzz(&data, 1 << 16);
    }

    #[test]
    fn mutated_pickles_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut data = valid_pickle();
        for (i, v) in flips {
            let n = data.len();
            data[i % n] = v;
        }
        let _ = pickle::parse_for_fuzz(&data, 1 << 16);
    }
}

#[test]
fn sae_convert_writes_saelens_that_loads_back_the_same() {
    let (l, d) = (5usize, 3usize);
    let dir = tempfile::tempdir().unwrap();
    save(
        &dir.path().join("ae.pt"),
        vec![
            (
                "encoder.weight",
                Entry::Tensor(f32s(&[l, d], &seq(l * d, 0.1))),
            ),
            ("encoder.bias", Entry::Tensor(f32s(&[l], &seq(l, 0.01)))),
            (
                "decoder.weight",
                Entry::Tensor(f32s(&[d, l], &seq(l * d, 0.2))),
            ),
            ("b_dec", Entry::Tensor(f32s(&[d], &seq(d, 0.03)))),
            ("k", Entry::Tensor(long_scalar(2))),
            ("threshold", Entry::Tensor(f32s(&[], &[0.5]))),
        ],
    );
    write_config(
        dir.path(),
        r#"{"trainer": {"dict_class": "BatchTopKSAE", "layer": 3}}"#,
    );
    let src = sae_engine::formats::load(dir.path(), None).unwrap();
    assert_eq!(src.meta.format, sae_engine::Format::DictionaryLearning);
    // Beside the input, not inside it: an output inside an input folder is refused.
    let out_root = tempfile::tempdir().unwrap();
    let out = out_root.path().join("saelens");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_sae"))
        .args(["convert", "sae"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let back = sae_engine::formats::load(&out, None).unwrap();
    assert_eq!(back.activation, src.activation);
    assert_eq!(back.threshold, src.threshold);
    assert_eq!(back.subtract_b_dec, src.subtract_b_dec);
    assert_eq!(back.b_dec, src.b_dec);
    assert_eq!(back.w_enc.to_f32_vec(), src.w_enc.to_f32_vec());
    assert_eq!(back.w_dec.to_f32_vec(), src.w_dec.to_f32_vec());
}
