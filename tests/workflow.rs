//! The audit workflow on planted scenarios with known answers, GGUF layout, and bad inputs.

use std::path::Path;
use std::sync::Arc;

use crate::common::{random_acts, tied_sae, write_dump, write_dump_with, SteerWorld};

use sae_engine::io::mapped::OwnedTensor;
use sae_engine::workflow::{
    self, demo, diff, gguf::ControlVector, monitor, rng::Rng, steer, top_examples, PairingRequest,
    StatsOptions,
};
use sae_engine::{engine, BackendKind, Dump, EngineOptions, Sae};

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
    let w = SteerWorld::new(300, 9);
    let (sae, eng, dump) = (&w.sae, &w.engine, &w.dump);
    let so = StatsOptions::default();
    let v = steer::steering_vector(
        eng.as_ref(),
        &[steer::SteerTerm {
            latent: 17,
            strength: 2.0,
        }],
        steer::SteerUnit::MaxAct,
        Some(dump),
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
    let r = steer::dry_run(eng.as_ref(), dump, &v, &steer::DryRunOptions::default()).unwrap();
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
    let sae = Arc::new(tied_sae(48, 64, 4, 5, None));
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
    let sae = Arc::new(tied_sae(32, 64, 4, 11, None));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let so = StatsOptions::default();

    // statistics of another SAE
    let other = tied_sae(32, 64, 4, 12, None);
    let mut st = sae_engine::LatentStats::new(other.fingerprint(), 64);
    st.n_tokens = 10;
    let sp = dir.path().join("other_stats.safetensors");
    sae_engine::io::stats_file::write(&sp, &st).unwrap();
    let e = workflow::measure(eng.as_ref(), &fp, &sp, &so)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another SAE") && e.contains("other_stats"),
        "{e}"
    );

    // dumps of different lengths are not paired: refused under --pairing paired
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_dump(
        &a,
        &random_acts(&sae, 20, 1),
        32,
        Some((0..20).collect()),
        &[],
    );
    write_dump(&b, &random_acts(&sae, 25, 2), 32, None, &[]);
    let ma = workflow::measure(eng.as_ref(), &fp, &a, &so).unwrap();
    let mb = workflow::measure(eng.as_ref(), &fp, &b, &so).unwrap();
    let e = workflow::pair(&ma, std::slice::from_ref(&mb), PairingRequest::Paired)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--pairing paired") && e.contains("20") && e.contains("25"),
        "{e}"
    );
    // same length, different token ids: not the same prompts
    let c = dir.path().join("c.safetensors");
    write_dump(
        &c,
        &random_acts(&sae, 20, 3),
        32,
        Some((1..21).collect()),
        &[],
    );
    let mc = workflow::measure(eng.as_ref(), &fp, &c, &so).unwrap();
    assert!(
        workflow::pair(&ma, std::slice::from_ref(&mc), PairingRequest::Paired)
            .unwrap_err()
            .to_string()
            .contains("token ids differ")
    );
    // the diff itself refuses another SAE's statistics
    let unpaired = workflow::pair(&ma, std::slice::from_ref(&mb), PairingRequest::Auto).unwrap();
    let e = diff::diff(
        "a",
        &ma.stats,
        &[("x".into(), &st)],
        &unpaired,
        &Default::default(),
    )
    .unwrap_err();
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
        &[monitor::Alarm::DEFAULT],
        &unpaired
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
    // the mask is honoured by default, and a dump without one counts every token
    assert!(so.rule.use_mask);
    assert_eq!(mb.stats.n_tokens, 25);
}

#[test]
fn top_examples_finds_planted_tokens_with_context() {
    let sae = Arc::new(tied_sae(32, 64, 4, 21, None));
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
    write_dump(&p, &x, 32, Some((0..100).map(|i| 1000 + i).collect()), &[]);
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

/// A dump with every per-token tensor the token rule reads.
fn write_full_dump(path: &Path, acts: &[f32], d: usize, ids: &[i64], docs: &[i64], mask: &[u8]) {
    let n = acts.len() / d;
    let side = vec![
        ("token_ids", OwnedTensor::i64(vec![n], ids)),
        ("doc_ids", OwnedTensor::i64(vec![n], docs)),
        ("mask", OwnedTensor::u8(vec![n], mask)),
    ];
    write_dump_with(path, acts, d, side, &[]);
}

/// Adds `amp` x W_dec[latent] to the given rows.
fn plant(sae: &Sae, x: &mut [f32], rows: impl Iterator<Item = usize>, latent: usize, amp: f32) {
    let d = sae.d_in();
    let w = sae.w_dec.row_f32(latent);
    for r in rows {
        x[r * d..(r + 1) * d]
            .iter_mut()
            .zip(&w)
            .for_each(|(v, w)| *v += amp * w);
    }
}

#[test]
fn unpaired_prompt_sets_of_different_lengths_rank_the_planted_latent_first() {
    let sae = Arc::new(tied_sae(32, 64, 4, 31, None));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let so = StatsOptions::default();
    // Two prompt sets: 300 and 420 tokens, other token ids; latent 7 is what they differ in.
    let (a, b) = (
        dir.path().join("neutral.safetensors"),
        dir.path().join("persona.safetensors"),
    );
    let xa = random_acts(&sae, 300, 1);
    let mut xb = random_acts(&sae, 420, 2);
    plant(&sae, &mut xb, (0..420).step_by(3), 7, 3.0);
    write_dump(&a, &xa, 32, Some((0..300).collect()), &[]);
    write_dump(&b, &xb, 32, Some((1000..1420).collect()), &[]);
    let ma = workflow::measure(eng.as_ref(), &fp, &a, &so).unwrap();
    let mb = workflow::measure(eng.as_ref(), &fp, &b, &so).unwrap();
    let p = workflow::pair(&ma, std::slice::from_ref(&mb), PairingRequest::Auto).unwrap();
    assert_eq!(p.mode, workflow::PairingMode::Unpaired);
    assert!(
        p.reason.contains("300") && p.reason.contains("420"),
        "{}",
        p.reason
    );
    let r = diff::diff(
        &ma.name,
        &ma.stats,
        &workflow::named_stats(std::slice::from_ref(&mb)),
        &p,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.latents[0].latent, 7, "{:?}", r.latents[0]);
    assert!(r.latents[0].delta > 0.5, "{:?}", r.latents[0]);
    assert_eq!(r.pairing.mode, workflow::PairingMode::Unpaired);
    assert_eq!(r.inputs[1].n_tokens, 420);
    // --pairing unpaired on matching inputs says so; --pairing paired refuses these
    let forced = workflow::pair(&ma, std::slice::from_ref(&ma), PairingRequest::Unpaired).unwrap();
    assert_eq!(forced.mode, workflow::PairingMode::Unpaired);
    assert!(
        forced.reason.contains("--pairing unpaired"),
        "{}",
        forced.reason
    );
    assert!(workflow::pair(&ma, &[mb], PairingRequest::Paired).is_err());
}

#[test]
fn pairing_looks_at_counted_tokens_alike_for_dumps_and_statistics_files() {
    let sae = Arc::new(tied_sae(32, 64, 4, 41, None));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Five documents with the same 6 response tokens but system prompts of 4 and 7 tokens:
    // 50 and 65 rows, the same 30 counted tokens.
    let dump = |name: &str, prompt: usize, seed: u64| {
        let (mut ids, mut docs, mut mask) = (vec![], vec![], vec![]);
        for doc in 0..5i64 {
            for t in 0..prompt {
                ids.push(900 + t as i64 + seed as i64);
                docs.push(doc);
                mask.push(0u8);
            }
            for t in 0..6 {
                ids.push(10 * doc + t);
                docs.push(doc);
                mask.push(1u8);
            }
        }
        let p = dir.path().join(name);
        let x = random_acts(&sae, ids.len(), seed);
        write_full_dump(&p, &x, 32, &ids, &docs, &mask);
        p
    };
    let (a, b) = (
        dump("base.safetensors", 4, 1),
        dump("tuned.safetensors", 7, 2),
    );
    let so = StatsOptions::default();
    let ma = workflow::measure(eng.as_ref(), &fp, &a, &so).unwrap();
    let mb = workflow::measure(eng.as_ref(), &fp, &b, &so).unwrap();
    assert_eq!((ma.stats.n_tokens, mb.stats.n_tokens), (30, 30));
    let p = workflow::pair(&ma, std::slice::from_ref(&mb), PairingRequest::Auto).unwrap();
    assert_eq!(p.mode, workflow::PairingMode::Paired, "{}", p.reason);
    assert!(
        p.reason.contains("token-id hash (with doc ids)"),
        "{}",
        p.reason
    );

    // The statistics file of the base gives the same numbers and the same pairing.
    let st = dir.path().join("base.stats.safetensors");
    let whole = sae_engine::pipeline::stats_of_dump(
        eng.as_ref(),
        &Dump::open(&a).unwrap(),
        so.batch_rows,
        true,
        &|_| {},
    )
    .unwrap();
    sae_engine::io::stats_file::write(&st, &whole).unwrap();
    let ms = workflow::measure(eng.as_ref(), &fp, &st, &so).unwrap();
    assert_eq!(ms.stats, ma.stats);
    let ps = workflow::pair(&ms, std::slice::from_ref(&mb), PairingRequest::Paired).unwrap();
    assert_eq!(ps.mode, workflow::PairingMode::Paired);

    // Counting every token: 50 and 65 rows, unpaired.
    let all = StatsOptions {
        rule: sae_engine::stats::TokenRule {
            use_mask: false,
            ..Default::default()
        },
        ..so
    };
    let ua = workflow::measure(eng.as_ref(), &fp, &a, &all).unwrap();
    let ub = workflow::measure(eng.as_ref(), &fp, &b, &all).unwrap();
    let pu = workflow::pair(&ua, &[ub], PairingRequest::Auto).unwrap();
    assert_eq!(pu.mode, workflow::PairingMode::Unpaired);
    assert!(
        pu.reason.contains("50") && pu.reason.contains("65"),
        "{}",
        pu.reason
    );

    // A statistics file from before token hashes pairs by count only, and says so.
    let mut old = whole.clone();
    old.tokens = None;
    old.norms = None;
    let old_path = dir.path().join("old.stats.safetensors");
    sae_engine::io::stats_file::write(&old_path, &old).unwrap();
    let mo = workflow::measure(eng.as_ref(), &fp, &old_path, &so).unwrap();
    assert_eq!(mo.stats.tokens, None);
    let po = workflow::pair(&mo, std::slice::from_ref(&mb), PairingRequest::Auto).unwrap();
    assert_eq!(po.mode, workflow::PairingMode::Paired);
    assert!(
        po.reason.contains("count only") && po.reason.contains("old"),
        "{}",
        po.reason
    );
}

#[test]
fn token_hash_and_outliers_survive_shards_merge_and_fan_out() {
    let sae = Arc::new(tied_sae(32, 64, 4, 51, None));
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dump_dir = dir.path().join("dump");
    std::fs::create_dir_all(&dump_dir).unwrap();
    // Three shards; document 3 straddles shards 0 and 1; two sinks, both in shard 2.
    let sizes = [40usize, 30, 50];
    let mut row = 0i64;
    for (s, n) in sizes.iter().enumerate() {
        let mut x = random_acts(&sae, *n, 60 + s as u64);
        if s == 2 {
            for r in [0usize, 25] {
                x[r * 32..(r + 1) * 32].iter_mut().for_each(|v| *v *= 400.0);
            }
        }
        let ids: Vec<i64> = (0..*n as i64).map(|i| (row + i) * 7 % 101).collect();
        let docs: Vec<i64> = (0..*n as i64).map(|i| (row + i) / 12).collect();
        let mask: Vec<u8> = (0..*n as i64)
            .map(|i| ((row + i) % 12 >= 2) as u8)
            .collect();
        write_full_dump(
            &dump_dir.join(format!("part-{s}.safetensors")),
            &x,
            32,
            &ids,
            &docs,
            &mask,
        );
        row += *n as i64;
    }
    let one = |dump: &Dump| {
        sae_engine::pipeline::stats_of_dump(eng.as_ref(), dump, 16, true, &|_| {}).unwrap()
    };
    let whole = one(&Dump::open(&dump_dir).unwrap());
    assert!(whole.token_hash().is_some());
    assert_eq!(whole.n_outliers(), Some(2));
    // --shard 0/2 and 1/2 (shards 0, 2 and shard 1), merged in either order
    let parts: Vec<_> = (0..2)
        .map(|i| one(&Dump::open(&dump_dir).unwrap().select_shards(i, 2).unwrap()))
        .collect();
    for (x, y) in [(0, 1), (1, 0)] {
        let mut m = parts[x].clone();
        m.merge(&parts[y]).unwrap();
        assert_eq!(m.tokens, whole.tokens);
        assert_eq!(m.norms, whole.norms);
        assert_eq!(m.n_outliers(), Some(2));
        assert_eq!(m.median_norm(), whole.median_norm());
        // documents 3 and 5 straddle shard boundaries: each counts as two clusters
        let (md, wd) = (m.docs.as_ref().unwrap(), whole.docs.as_ref().unwrap());
        assert_eq!((md.n_docs, md.n_tokens), (wd.n_docs + 2, wd.n_tokens));
    }
    // through files (what `sae stats merge` reads)
    let files: Vec<_> = parts
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let p = dir.path().join(format!("s{i}.safetensors"));
            sae_engine::io::stats_file::write(&p, s).unwrap();
            p
        })
        .collect();
    let merged = sae_engine::pipeline::merge_stats_files(&files).unwrap();
    assert_eq!(merged.token_hash(), whole.token_hash());
    assert_eq!(merged.n_outliers(), whole.n_outliers());
    // --devices: per-shard units on two workers, merged in shard order
    let units = sae_engine::scaleout::shard_units(&dump_dir, None).unwrap();
    let opts = sae_engine::scaleout::FanOutOptions::new(
        dir.path().join("work"),
        vec!["a".into(), "b".into()],
    );
    let job = sae_engine::scaleout::StatsJob::plan(&sae, units, opts).unwrap();
    let report = job.run(
        &|_| engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()),
        &|_| {},
    );
    assert!(report.ok(), "{:?}", report.failure_lines());
    let fanned = job.merge().unwrap();
    assert_eq!(fanned.tokens, whole.tokens);
    assert_eq!(fanned.norms, whole.norms);
}

#[test]
fn outlier_tokens_are_counted_and_left_out_of_units_and_decode_metrics() {
    let sae = Arc::new(tied_sae(32, 64, 4, 61, None));
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = 200;
    let mut x = random_acts(&sae, n, 5);
    // Sinks at rows 0 and 50: latent 3 at 300x a normal activation, plus an off-dictionary
    // direction the SAE cannot reconstruct. Row 100 is as large but masked out.
    let off = Rng::new(77).direction(32, 600.0);
    for r in [0usize, 50, 100] {
        x[r * 32..(r + 1) * 32]
            .iter_mut()
            .zip(&off)
            .for_each(|(v, o)| *v += o);
    }
    plant(&sae, &mut x, [0usize, 50, 100].into_iter(), 3, 450.0);
    plant(&sae, &mut x, (1..n).step_by(4), 3, 1.5);
    let mask: Vec<u8> = (0..n).map(|r| (r != 100) as u8).collect();
    let p = dir.path().join("sinks.safetensors");
    let ids: Vec<i64> = (0..n as i64).collect();
    write_full_dump(&p, &x, 32, &ids, &vec![0; n], &mask);
    let dump = Dump::open(&p).unwrap();

    // statistics count them (and record how many); the masked row is not counted
    let st = sae_engine::pipeline::stats_of_dump(eng.as_ref(), &dump, 64, true, &|_| {}).unwrap();
    assert_eq!(st.n_tokens, 199);
    assert_eq!(st.n_outliers(), Some(2));
    let sp = dir.path().join("sinks.stats.safetensors");
    sae_engine::io::stats_file::write(&sp, &st).unwrap();
    let back = sae_engine::io::stats_file::read(&sp).unwrap();
    assert_eq!(back.n_outliers(), Some(2));
    assert_eq!(back.median_norm(), st.median_norm());
    let meta = sae_engine::io::mapped::MappedSafetensors::open(&sp).unwrap();
    assert_eq!(
        meta.metadata().get("n_outliers").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        meta.metadata().get("outlier_factor").map(String::as_str),
        Some("10")
    );

    // --unit max-act leaves them out by default; --keep-outliers keeps them
    let term = [steer::SteerTerm {
        latent: 3,
        strength: 1.0,
    }];
    let so = StatsOptions::default();
    let keep = StatsOptions {
        rule: sae_engine::stats::TokenRule {
            keep_outliers: true,
            ..Default::default()
        },
        ..so
    };
    let unit = |o: &StatsOptions, u| {
        steer::steering_vector(eng.as_ref(), &term, u, Some(&dump), o).unwrap()
    };
    let (v, vk) = (
        unit(&so, steer::SteerUnit::MaxAct),
        unit(&keep, steer::SteerUnit::MaxAct),
    );
    assert!(vk.norm > 50.0 * v.norm, "{} vs {}", vk.norm, v.norm);
    let o = v.outliers.unwrap();
    assert_eq!((o.n_outliers, o.left_out), (2, true));
    assert!(!vk.outliers.unwrap().left_out);
    // median-norm: the outliers are left out of the median too
    let m = unit(&so, steer::SteerUnit::MedianNorm);
    assert_eq!(m.outliers.unwrap().n_outliers, 2);

    // decode metrics: scored over the 197 kept tokens by default
    let codes_path = dir.path().join("codes.safetensors");
    let enc = sae_engine::pipeline::encode_dump_to_file(
        eng.as_ref(),
        &dump,
        64,
        &Default::default(),
        &codes_path,
        &|_| {},
    )
    .unwrap();
    // encode reports them (every row is encoded)
    assert_eq!((enc.n_rows, enc.outliers.n_outliers), (200, 2));
    let codes = sae_engine::io::codes_file::CodesReader::open(&codes_path).unwrap();
    let metrics = |o: &StatsOptions| {
        let f = o.filter(&dump).unwrap();
        let out = dir.path().join("recon.npy");
        sae_engine::pipeline::decode_to_npy(
            eng.as_ref(),
            &codes,
            Some((&dump, &f)),
            64,
            &out,
            &|_| {},
        )
        .unwrap()
    };
    let (d, dk) = (metrics(&so), metrics(&keep));
    let (m, mk) = (d.metrics.unwrap(), dk.metrics.unwrap());
    assert_eq!((m.n_rows, mk.n_rows), (197, 199));
    assert!(
        mk.mse > 100.0 * m.mse,
        "mse {} with outliers, {} without",
        mk.mse,
        m.mse
    );
    assert_eq!(d.outliers.unwrap().n_outliers, 2);
    assert_eq!(d.n_rows, 200);
}

#[test]
fn clustered_z_discounts_tokens_correlated_within_documents() {
    // Latent 5 takes one level per document, the same on all 25 tokens of it: the
    // per-token z sees 1000 independent tokens, the honest count is 40 documents.
    let sae = Arc::new(tied_sae(32, 64, 4, 71, None));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (g, n) = (40usize, 25usize);
    let w = sae.w_dec.row_f32(5);
    let side = |name: &str, shift: f64, seed: u64| {
        let mut r = Rng::new(seed);
        let levels: Vec<f64> = (0..g).map(|_| shift + r.uniform()).collect();
        let mut x = vec![0f32; g * n * 32];
        for (row, v) in x.chunks_exact_mut(32).enumerate() {
            let c = levels[row / n] as f32;
            v.iter_mut().zip(&w).for_each(|(a, w)| *a = c * w);
        }
        let docs: Vec<i64> = (0..g * n).map(|r| (r / n) as i64).collect();
        let ids: Vec<i64> = (0..g * n).map(|r| (r % n) as i64).collect();
        let p = dir.path().join(name);
        write_full_dump(&p, &x, 32, &ids, &docs, &vec![1; g * n]);
        (p, levels)
    };
    let ((pa, la), (pb, lb)) = (
        side("a.safetensors", 1.0, 1),
        side("b.safetensors", 1.15, 2),
    );
    let top64 = diff::DiffOptions {
        top: 64,
        ..Default::default()
    };
    let (ma, r) = diff_two(eng.as_ref(), &fp, (&pa, &pb), top64);
    let l5 = r.latents.iter().find(|l| l.latent == 5).unwrap();
    // analytic: the cluster-robust SE of a mean of document levels is s / sqrt(G)
    let var = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let want = (mean(&lb) - mean(&la)) / (var(&la) / g as f64 + var(&lb) / g as f64).sqrt();
    assert!(
        (l5.z_clustered - want).abs() < 1e-3 * want.abs(),
        "clustered z {} vs analytic {want}",
        l5.z_clustered
    );
    // the per-token z is about sqrt(25) = 5 times larger
    assert!(
        l5.z > 4.5 * l5.z_clustered,
        "z {} vs clustered {}",
        l5.z,
        l5.z_clustered
    );
    assert!(r.clustering.contains("40 documents"), "{}", r.clustering);
    assert!(l5.q_value >= crate_p(l5.z_clustered));
    // the statistics file carries the document sums: the same clustered z from files
    let st = dir.path().join("a.stats.safetensors");
    sae_engine::io::stats_file::write(&st, &ma.stats).unwrap();
    let back = workflow::measure(eng.as_ref(), &fp, &st, &StatsOptions::default()).unwrap();
    assert_eq!(back.stats.docs, ma.stats.docs);
}

/// Measures `a` and `b` with the default token rule and diffs `b` against `a`.
fn diff_two(
    eng: &dyn sae_engine::Engine,
    fp: &str,
    (a, b): (&Path, &Path),
    opts: diff::DiffOptions,
) -> (workflow::Measured, diff::DiffReport) {
    let so = StatsOptions::default();
    let ma = workflow::measure(eng, fp, a, &so).unwrap();
    let mb = workflow::measure(eng, fp, b, &so).unwrap();
    let pairing = workflow::pair(&ma, std::slice::from_ref(&mb), PairingRequest::Auto).unwrap();
    let tuned = workflow::named_stats(std::slice::from_ref(&mb));
    let r = diff::diff(&ma.name, &ma.stats, &tuned, &pairing, &opts).unwrap();
    (ma, r)
}

/// Two-sided normal p-value (the q-value is never below it).
fn crate_p(z: f64) -> f64 {
    sae_engine::stats::clustered::p_two_sided(z)
}

#[test]
fn q_values_control_false_discoveries_over_all_latents() {
    // 64 latents, no real difference: every q-value is large; plant one strong change and
    // only it gets a small q-value.
    let sae = Arc::new(tied_sae(32, 64, 4, 81, None));
    let fp = sae.fingerprint();
    let eng = engine(BackendKind::Cpu, sae.clone(), &EngineOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_dump(&a, &random_acts(&sae, 400, 1), 32, None, &[]);
    let mut xb = random_acts(&sae, 400, 2);
    plant(&sae, &mut xb, (0..400).step_by(2), 9, 2.0);
    write_dump(&b, &xb, 32, None, &[]);
    let top64 = diff::DiffOptions {
        top: 64,
        ..Default::default()
    };
    let (_, r) = diff_two(eng.as_ref(), &fp, (&a, &b), top64);
    // no doc ids: the clustered z is the per-token z
    for l in &r.latents {
        assert!(
            (l.z - l.z_clustered).abs() <= 1e-9 * l.z.abs().max(1.0),
            "{l:?}"
        );
        assert!(l.q_value >= crate_p(l.z_clustered) - 1e-15 && l.q_value <= 1.0);
    }
    assert_eq!(r.latents[0].latent, 9);
    assert!(r.latents[0].q_value < 1e-6, "{:?}", r.latents[0]);
    assert!(r.multiple_testing.contains("Benjamini-Hochberg"));
    let by_zc = diff::DiffOptions {
        order: diff::DiffOrder::parse("z-clustered").unwrap(),
        ..Default::default()
    };
    let (_, by_zc) = diff_two(eng.as_ref(), &fp, (&a, &b), by_zc);
    assert_eq!(by_zc.latents[0].latent, 9);
    let zs: Vec<f64> = by_zc.latents.iter().map(|l| l.z_clustered).collect();
    assert!(zs.windows(2).all(|w| w[0] >= w[1]), "{zs:?}");
}
