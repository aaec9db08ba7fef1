//! Test inputs written the way users' files are: an SAE in the SAELens layout and
//! activation dumps as safetensors files (`activations` [n, d] f32 plus side tensors).

use std::path::{Path, PathBuf};

use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
use sae_engine::workflow::rng::Rng;
use sae_engine::Sae;

/// Writes `sae` in the SAELens layout (`sae_weights.safetensors` + `cfg.json`) into `dir`
/// (created); returns `dir`.
pub fn write_sae(dir: &Path, sae: &Sae) -> PathBuf {
    sae_engine::formats::writer::write_saelens(sae, dir).unwrap();
    dir.to_path_buf()
}

/// Writes a dump file: `acts` as `activations` [n, d] f32, `token_ids` [n] i64 when given,
/// and `meta` as the safetensors metadata; returns `path`.
pub fn write_dump(
    path: &Path,
    acts: &[f32],
    d: usize,
    token_ids: Option<Vec<i64>>,
    meta: &[(&str, &str)],
) -> PathBuf {
    let n = acts.len() / d;
    let side = match token_ids {
        Some(ids) => vec![("token_ids", OwnedTensor::i64(vec![n], &ids))],
        None => Vec::new(),
    };
    write_dump_with(path, acts, d, side, meta)
}

/// [`write_dump`] with any side tensors (a `mask`, i32 `token_ids`, ...) after `activations`.
pub fn write_dump_with(
    path: &Path,
    acts: &[f32],
    d: usize,
    side: Vec<(&str, OwnedTensor)>,
    meta: &[(&str, &str)],
) -> PathBuf {
    assert_eq!(acts.len() % d, 0, "activations are not [n, {d}]");
    let mut tensors = vec![(
        "activations",
        OwnedTensor::f32(vec![acts.len() / d, d], acts),
    )];
    tensors.extend(side);
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    write_safetensors(path, &tensors, meta).unwrap();
    path.to_path_buf()
}

/// `n` rows that are each a sum of 4 decoder rows of `sae` with weights in [1, 2): sparse
/// in the SAE's own basis, as real activations are.
pub fn random_acts(sae: &Sae, n: usize, seed: u64) -> Vec<f32> {
    let (d, l) = (sae.d_in(), sae.n_latents());
    let mut r = Rng::new(seed);
    let mut x = vec![0f32; n * d];
    for row in x.chunks_exact_mut(d) {
        for _ in 0..4 {
            let w = sae.w_dec.row_f32(r.below(l));
            let a = 1.0 + r.uniform() as f32;
            row.iter_mut().zip(&w).for_each(|(v, w)| *v += a * w);
        }
    }
    x
}

/// The steering tests' world: a tied TopK SAE (d = 64, 256 latents, k = 8), a CPU engine on
/// it, and a dump of `rows` [`random_acts`] rows (from `seed`) in the returned directory.
pub struct SteerWorld {
    /// The SAE the engine runs.
    pub sae: std::sync::Arc<Sae>,
    /// A CPU engine on `sae`.
    pub engine: Box<dyn sae_engine::Engine>,
    /// The dump, opened.
    pub dump: sae_engine::Dump,
    /// Holds the dump file; removed with the world.
    _dir: tempfile::TempDir,
}

impl SteerWorld {
    /// The world with `rows` activation rows drawn from `seed`.
    pub fn new(rows: usize, seed: u64) -> SteerWorld {
        let sae = std::sync::Arc::new(super::tied_sae(64, 256, 8, 3, None));
        let opts = sae_engine::EngineOptions::default();
        let engine = sae_engine::engine(sae_engine::BackendKind::Cpu, sae.clone(), &opts).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acts.safetensors");
        write_dump(&p, &random_acts(&sae, rows, seed), 64, None, &[]);
        let dump = sae_engine::Dump::open(&p).unwrap();
        SteerWorld {
            sae,
            engine,
            dump,
            _dir: dir,
        }
    }
}
