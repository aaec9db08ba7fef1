//! The audit workflow on planted scenarios with known answers, GGUF layout, and bad inputs.

use std::path::Path;
use std::sync::Arc;

use sae_engine::io::mapped::{write_safetensors, OwnedTensor};
use sae_engine::matrix::Matrix;
use sae_engine::sae::SaeMeta;
use sae_engine::workflow::{
    self, demo, diff, gguf::ControlVector, monitor, rng::Rng, steer, top_examples, StatsOptions,
};
use sae_engine::{
    engine, Activation, BackendKind, DType, Dump, EngineOptions, Format, Normalization, Sae,
};

fn tied_sae(d: usize, l: usize, k: usize, seed: u64) -> Sae {
    let mut r = Rng::new(seed);
    let w: Vec<f32> = (0..l).flat_map(|_| r.direction(d, 1.0)).collect();
    Sae {
        meta: SaeMeta {
            format: Format::SaeLens,
            source: "test-sae".into(),
            architecture: "topk".into(),
            hook_name: None,
            hook_layer: None,
            model_name: None,
            dtype: DType::F32,
            conventions: Vec::new(),
            warnings: Vec::new(),
        },
        w_enc: Matrix::from_f32(&w, l, d, DType::F32).unwrap(),
        w_dec: Matrix::from_f32(&w, l, d, DType::F32).unwrap(),
        b_enc: vec![0.0; l],
        b_dec: vec![0.0; d],
        threshold: None,
        activation: Activation::TopK { k },
        subtract_b_dec: true,
        normalization: Normalization::None,
        rescale_acts_by_decoder_norm: false,
        scales: Default::default(),
    }
}

fn write_dump(path: &Path, acts: &[f32], d: usize, token_ids: Option<Vec<i64>>) {
    let n = acts.len() / d;
    let mut t = vec![("activations", OwnedTensor::f32(vec![n, d], acts))];
    if let Some(ids) = token_ids {
        t.push(("token_ids", OwnedTensor::i64(vec![n], &ids)));
    }
    write_safetensors(path, &t, Default::default()).unwrap();
}

/// Random sparse activations: each row a sum of 4 decoder rows of `sae`.
fn random_acts(sae: &Sae, n: usize, seed: u64) -> Vec<f32> {
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

#[test]
fn demo_recovers_every_planted_effect() {
    // A smaller world than `sae demo` (debug build), same scenario and checks: the planted
    // persona ranks first only after averaging, detection separates out of sample,
    // steering raises the persona while the random control does not, and the monitor
    // fires at the planted checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let r = demo::run(&demo::DemoOptions {
        out_dir: Some(dir.path().join("demo")),
        backend: BackendKind::Cpu,
        n_tokens: 1024,
        d: 128,
        n_latents: 1024,
        ..Default::default()
    })
    .unwrap();
    for c in &r.checks {
        assert!(c.ok, "{}: {}", c.name, c.detail);
    }
    assert!(r.checks.len() >= 6);
    assert_eq!(r.diff.latents[0].latent, r.planted.persona);
    // the persona is not the top latent of any single fine-tune
    assert!(r
        .diff
        .per_model_top
        .iter()
        .all(|t| t.latent != r.planted.persona));
    assert_eq!(r.detect.pipeline_loo_accuracy, Some(1.0));
    for f in [
        "REPORT.md",
        "reports/diff/diff.csv",
        "reports/diff/top_deltas.svg",
        "reports/diff/delta_vs_freq.svg",
        "reports/monitor/trajectories.svg",
        "reports/steer/persona.gguf",
    ] {
        assert!(dir.path().join("demo").join(f).is_file(), "{f} missing");
    }
}

#[test]
fn steering_the_planted_direction_raises_it_and_the_control_does_not() {
    let sae = Arc::new(tied_sae(64, 256, 8, 3));
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("acts.safetensors");
    write_dump(&p, &random_acts(&sae, 300, 9), 64, None);
    let dump = Dump::open(&p).unwrap();
    let so = StatsOptions::default();
    let v = steer::steering_vector(
        eng.as_ref(),
        &[steer::SteerTerm {
            latent: 17,
            strength: 2.0,
        }],
        steer::SteerUnit::MaxAct,
        Some(&dump),
        &so,
    );
    // latent 17 may never fire in random data; max-act must then refuse, raw must work
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            assert!(e.to_string().contains("never fires"), "{e}");
            steer::steering_vector(
                eng.as_ref(),
                &[steer::SteerTerm {
                    latent: 17,
                    strength: 3.0,
                }],
                steer::SteerUnit::Raw,
                None,
                &so,
            )
            .unwrap()
        }
    };
    let r = steer::dry_run(eng.as_ref(), &dump, &v, &steer::DryRunOptions::default()).unwrap();
    let t = &r.targets[0];
    assert!(t.delta > 0.5 * v.norm, "{t:?}");
    assert!(t.steered_freq > 0.9);
    assert!(t.control_delta.abs() < 0.1 * t.delta, "{t:?}");
    // two latents add up
    let two = steer::steering_vector(
        eng.as_ref(),
        &[
            steer::SteerTerm {
                latent: 1,
                strength: 1.0,
            },
            steer::SteerTerm {
                latent: 2,
                strength: -2.0,
            },
        ],
        steer::SteerUnit::Raw,
        None,
        &so,
    )
    .unwrap();
    let (r1, r2) = (sae.w_dec.row_f32(1), sae.w_dec.row_f32(2));
    for j in 0..64 {
        assert!((two.values[j] - (r1[j] - 2.0 * r2[j])).abs() < 1e-5);
    }
}

#[test]
fn gguf_export_layout() {
    let sae = Arc::new(tied_sae(48, 64, 4, 5));
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let v = steer::steering_vector(
        eng.as_ref(),
        &[steer::SteerTerm {
            latent: 5,
            strength: 4.0,
        }],
        steer::SteerUnit::Raw,
        None,
        &StatsOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.gguf");
    steer::export(&v, steer::VectorFormat::Gguf, 7, "qwen2", &p).unwrap();
    let b = std::fs::read(&p).unwrap();
    assert_eq!(&b[0..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 3);
    assert_eq!(
        u64::from_le_bytes(b[8..16].try_into().unwrap()),
        1,
        "one tensor"
    );
    assert_eq!(
        u64::from_le_bytes(b[16..24].try_into().unwrap()),
        3,
        "three metadata keys"
    );
    let text = String::from_utf8_lossy(&b);
    for key in [
        "general.architecture",
        "controlvector",
        "controlvector.model_hint",
        "qwen2",
        "controlvector.layer_count",
        "direction.7",
    ] {
        assert!(text.contains(key), "{key}");
    }
    // the data section starts at a multiple of 32 and holds exactly the vector
    // 48 f32 = 192 bytes, a multiple of 32: the data is the file's last 192 bytes.
    let data = b.len() - 48 * 4;
    assert_eq!(data % 32, 0);
    let vals: Vec<f32> = b[data..data + 48 * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, v.values);
    let cv = ControlVector::read(&p).unwrap();
    assert_eq!(cv.layers, vec![(7, v.values.clone())]);
    assert!((v.norm - 4.0).abs() < 1e-5);
    // layer 0 has no slot in llama.cpp
    assert!(steer::export(
        &v,
        steer::VectorFormat::Gguf,
        0,
        "m",
        &dir.path().join("z.gguf")
    )
    .is_err());
    // npy and safetensors exports
    steer::export(
        &v,
        steer::VectorFormat::Npy,
        7,
        "m",
        &dir.path().join("v.npy"),
    )
    .unwrap();
    steer::export(
        &v,
        steer::VectorFormat::Safetensors,
        7,
        "m",
        &dir.path().join("v.safetensors"),
    )
    .unwrap();
    let st =
        sae_engine::io::mapped::MappedSafetensors::open(&dir.path().join("v.safetensors")).unwrap();
    assert_eq!(
        st.tensor("direction.7")
            .unwrap()
            .to_f32(Path::new("v"))
            .unwrap(),
        v.values
    );
    assert_eq!(st.metadata().get("layer").map(String::as_str), Some("7"));
}

#[test]
fn bad_inputs_are_refused_with_messages() {
    let sae = Arc::new(tied_sae(32, 64, 4, 11));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let so = StatsOptions::default();

    // statistics of another SAE
    let other = tied_sae(32, 64, 4, 12);
    let mut st = sae_engine::LatentStats::new(other.fingerprint(), 64);
    st.n_tokens = 10;
    let sp = dir.path().join("other_stats.safetensors");
    sae_engine::io::stats::write(&sp, &st).unwrap();
    let e = workflow::measure(eng.as_ref(), &fp, &sp, &so)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another SAE") && e.contains("other_stats"),
        "{e}"
    );

    // dumps of different lengths cannot be paired
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_dump(&a, &random_acts(&sae, 20, 1), 32, Some((0..20).collect()));
    write_dump(&b, &random_acts(&sae, 25, 2), 32, None);
    let ma = workflow::measure(eng.as_ref(), &fp, &a, &so).unwrap();
    let mb = workflow::measure(eng.as_ref(), &fp, &b, &so).unwrap();
    let e = workflow::check_pairing(&ma, &[mb]).unwrap_err().to_string();
    assert!(
        e.contains("a.safetensors")
            && e.contains("b.safetensors")
            && e.contains("20")
            && e.contains("25"),
        "{e}"
    );
    // same length, different token ids: not the same prompts
    let c = dir.path().join("c.safetensors");
    write_dump(&c, &random_acts(&sae, 20, 3), 32, Some((1..21).collect()));
    let mc = workflow::measure(eng.as_ref(), &fp, &c, &so).unwrap();
    assert!(workflow::check_pairing(&ma, std::slice::from_ref(&mc))
        .unwrap_err()
        .to_string()
        .contains("token_ids"));
    // the diff itself refuses another SAE's statistics
    let e = diff::diff("a", &ma.stats, &[("x".into(), &st)], &Default::default()).unwrap_err();
    assert!(e.to_string().contains("different SAE"), "{e}");

    // unknown latent ids
    let e = steer::steering_vector(
        eng.as_ref(),
        &[steer::SteerTerm {
            latent: 64,
            strength: 1.0,
        }],
        steer::SteerUnit::Raw,
        None,
        &so,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown latent 64"), "{e}");
    assert!(monitor::monitor(
        "a",
        &ma.stats,
        &[("c".into(), &mc.stats)],
        &[99],
        &[monitor::Alarm::DEFAULT]
    )
    .is_err());
    // units that need a dump
    let e = steer::steering_vector(
        eng.as_ref(),
        &[steer::SteerTerm {
            latent: 1,
            strength: 1.0,
        }],
        steer::SteerUnit::MedianNorm,
        None,
        &so,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--acts"), "{e}");

    // top-examples needs token ids
    let db = Dump::open(&b).unwrap();
    let e = top_examples::top_examples(eng.as_ref(), &db, 1, None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token_ids") && e.contains("b.safetensors"),
        "{e}"
    );
    // --mask on a dump without a mask
    let masked = StatsOptions {
        use_mask: true,
        ..so
    };
    let e = workflow::measure(eng.as_ref(), &fp, &b, &masked)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask"), "{e}");
}

#[test]
fn top_examples_finds_planted_tokens_with_context() {
    let sae = Arc::new(tied_sae(32, 64, 4, 21));
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let mut x = random_acts(&sae, 100, 4);
    // plant latent 9 strongly at rows 40 (strongest) and 70
    for (row, amp) in [(40usize, 9.0f32), (70, 6.0)] {
        let w = sae.w_dec.row_f32(9);
        x[row * 32..(row + 1) * 32]
            .iter_mut()
            .zip(&w)
            .for_each(|(v, w)| *v += amp * w);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    write_dump(&p, &x, 32, Some((0..100).map(|i| 1000 + i).collect()));
    let r = top_examples::top_examples(
        eng.as_ref(),
        &Dump::open(&p).unwrap(),
        9,
        None,
        &top_examples::TopExamplesOptions {
            top: 2,
            context: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.examples[0].row, 40);
    assert_eq!(r.examples[1].row, 70);
    assert_eq!(r.examples[0].token_id, 1040);
    assert_eq!(r.examples[0].before, vec![1037, 1038, 1039]);
    assert_eq!(r.examples[0].after, vec![1041, 1042, 1043]);
    assert_eq!(r.histogram.counts.iter().sum::<u64>(), r.n_active);
    assert_eq!(r.n_tokens, 100);
}
