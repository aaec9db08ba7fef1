//! SAEs by name (`hf:...`, `saelens:...`): a Hugging Face cache in the standard layout
//! built in a temporary folder (refs, snapshots linking into blobs), resolved offline;
//! the error cases; and the download path against a fake Hub on 127.0.0.1.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sae_engine::hub::{self, HubOptions};
use sae_engine::io::npy::{header_bytes, NpyDtype};
use sae_engine::{Format, Normalization, Sae};

const D: usize = 4;
const L: usize = 6;
const COMMIT_MAIN: &str = "1111111111111111111111111111111111111111";
const COMMIT_OLD: &str = "0000000000000000000000000000000000000000";
/// Where SAELens's table puts gemma-scope-2b-pt-res-canonical / layer_20/width_16k/canonical.
const GEMMA_REPO: &str = "google/gemma-scope-2b-pt-res";
const GEMMA_PATH: &str = "layer_20/width_16k/average_l0_71";
const GEMMA_NAME: &str = "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical";
/// A SAELens-native release (no conversion function).
const NATIVE_REPO: &str = "jbloom/GPT2-Small-SAEs-Reformatted";
const NATIVE_PATH: &str = "blocks.8.hook_resid_pre";
const NATIVE_NAME: &str = "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre";

fn npy(shape: &[usize], v: &[f32]) -> Vec<u8> {
    let mut b = header_bytes(NpyDtype::F32, shape);
    b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    b
}

/// A Gemma Scope `params.npz` (JumpReLU) whose threshold row is scaled by `scale`, so two
/// revisions can be told apart by their weights.
fn gemma_npz(scale: f32) -> Vec<u8> {
    let w_enc: Vec<f32> = (0..D * L).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
    let w_dec: Vec<f32> = (0..L * D).map(|i| (i % 3) as f32 * 0.5 - 0.25).collect();
    let members = [
        ("W_enc", npy(&[D, L], &w_enc)),
        ("W_dec", npy(&[L, D], &w_dec)),
        ("b_enc", npy(&[L], &[0.0, 0.1, -0.1, 0.2, 0.0, 0.05])),
        ("b_dec", npy(&[D], &[0.5, 0.0, -0.25, 1.0])),
        ("threshold", npy(&[L], &[0.1 * scale; L])),
    ];
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in members {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(&bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// The same SAE written in SAELens's native layout: file name -> bytes.
fn native_files(tmp: &Path) -> Vec<(String, Vec<u8>)> {
    let src = tmp.join("native-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("params.npz"), gemma_npz(1.0)).unwrap();
    let sae = sae_engine::formats::load(&src, None).unwrap();
    let out = tmp.join("native-out");
    sae_engine::formats::write_saelens(&sae, &out).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Writes one file the way the Hub cache does: the bytes in blobs/, a relative link in
/// snapshots/COMMIT/PATH.
fn cache_file(cache: &Path, repo: &str, commit: &str, path: &str, bytes: &[u8]) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let blob_name = format!("{commit}-{}", path.replace('/', "_"));
    let blob = repo_dir.join("blobs").join(&blob_name);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, bytes).unwrap();
    let link = repo_dir.join("snapshots").join(commit).join(path);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = path.split('/').count() + 1; // up to the repo dir from the link's folder
    let target = format!("{}blobs/{blob_name}", "../".repeat(depth));
    std::os::unix::fs::symlink(target, &link).unwrap();
    assert!(link.is_file(), "{} resolves", link.display());
}

fn cache_ref(cache: &Path, repo: &str, revision: &str, commit: &str) {
    let f = cache
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("refs")
        .join(revision);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, commit).unwrap();
}

/// A cache with the Gemma Scope SAE (main -> COMMIT_MAIN, tag v0 and pr/1 -> COMMIT_OLD
/// holding an older version) and the SAELens-native SAE.
fn build_cache(tmp: &Path) -> PathBuf {
    let cache = tmp.join("hub");
    let npz = format!("{GEMMA_PATH}/params.npz");
    cache_file(&cache, GEMMA_REPO, COMMIT_MAIN, &npz, &gemma_npz(1.0));
    cache_file(&cache, GEMMA_REPO, COMMIT_OLD, &npz, &gemma_npz(3.0));
    cache_ref(&cache, GEMMA_REPO, "main", COMMIT_MAIN);
    cache_ref(&cache, GEMMA_REPO, "v0", COMMIT_OLD);
    cache_ref(&cache, GEMMA_REPO, "refs/pr/1", COMMIT_OLD);
    for (name, bytes) in native_files(tmp) {
        cache_file(
            &cache,
            NATIVE_REPO,
            COMMIT_MAIN,
            &format!("{NATIVE_PATH}/{name}"),
            &bytes,
        );
    }
    cache_ref(&cache, NATIVE_REPO, "main", COMMIT_MAIN);
    cache
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        offline: true,
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        progress: false,
    }
}

fn load(spec: &str, o: &HubOptions) -> sae_engine::Result<(Sae, Option<hub::Resolved>)> {
    hub::load(Path::new(spec), None, o)
}

fn err(spec: &str, o: &HubOptions) -> String {
    match load(spec, o) {
        Ok((_, r)) => panic!("{spec} resolved: {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn threshold0(sae: &Sae) -> f32 {
    sae.threshold.as_ref().expect("JumpReLU threshold")[0]
}

#[test]
fn saelens_gemma_scope_release_resolves_offline_from_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let cache = build_cache(t.path());
    let (sae, r) = load(GEMMA_NAME, &offline(&cache)).unwrap();
    let r = r.expect("a name resolves");
    assert_eq!(r.repo, GEMMA_REPO);
    assert_eq!(r.revision, "main");
    assert_eq!(r.commit, COMMIT_MAIN);
    assert_eq!(r.path_in_repo, GEMMA_PATH);
    assert_eq!(
        r.local,
        cache
            .join("models--google--gemma-scope-2b-pt-res/snapshots")
            .join(COMMIT_MAIN)
            .join(GEMMA_PATH)
    );
    assert!(r.downloaded.is_empty());
    let rel = r.release.expect("release info");
    assert_eq!(rel.conversion, "gemma_2");
    assert!(!rel.table_version.is_empty());
    assert_eq!(sae.meta.format, Format::GemmaScope);
    assert_eq!((sae.d_in(), sae.n_latents()), (D, L));
    assert_eq!(threshold0(&sae), 0.1);
}

#[test]
fn saelens_native_release_resolves_offline_from_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let cache = build_cache(t.path());
    let (sae, r) = load(NATIVE_NAME, &offline(&cache)).unwrap();
    let r = r.unwrap();
    assert_eq!(
        (r.repo.as_str(), r.path_in_repo.as_str()),
        (NATIVE_REPO, NATIVE_PATH)
    );
    assert_eq!(r.release.unwrap().conversion, "sae_lens");
    assert_eq!(sae.meta.format, Format::SaeLens);
    assert_eq!((sae.d_in(), sae.n_latents()), (D, L));
}

#[test]
fn a_release_normalization_override_is_applied() {
    // SAELens overrides normalize_activations for mistral-7b-res-wg; the files say none.
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("hub");
    let repo = "JoshEngels/Mistral-7B-Residual-Stream-SAEs";
    for (name, bytes) in native_files(t.path()) {
        cache_file(
            &cache,
            repo,
            COMMIT_MAIN,
            &format!("mistral_7b_layer_8/{name}"),
            &bytes,
        );
    }
    cache_ref(&cache, repo, "main", COMMIT_MAIN);
    let o = offline(&cache);
    let (plain, _) = load(&format!("hf:{repo}/mistral_7b_layer_8"), &o).unwrap();
    assert_eq!(plain.normalization, Normalization::None);
    let (sae, r) = load("saelens:mistral-7b-res-wg/blocks.8.hook_resid_pre", &o).unwrap();
    assert_eq!(sae.normalization, Normalization::ConstantNormRescale);
    assert_eq!(
        r.unwrap().normalize_activations.as_deref(),
        Some("constant_norm_rescale")
    );
}

#[test]
fn hf_names_resolve_branches_tags_pull_requests_and_commits() {
    let t = tempfile::tempdir().unwrap();
    let cache = build_cache(t.path());
    let o = offline(&cache);
    let base = format!("hf:{GEMMA_REPO}/{GEMMA_PATH}");
    let at_old = format!("@{COMMIT_OLD}");
    for (rev, commit, thr) in [
        ("", COMMIT_MAIN, 0.1),
        ("@main", COMMIT_MAIN, 0.1),
        ("@v0", COMMIT_OLD, 0.3),
        ("@refs/pr/1", COMMIT_OLD, 0.3),
        (at_old.as_str(), COMMIT_OLD, 0.3),
    ] {
        let spec = format!("{base}{rev}");
        let (sae, r) = load(&spec, &o).unwrap();
        let r = r.unwrap();
        assert_eq!(r.commit, commit, "{spec}");
        assert!(r.release.is_none());
        assert!((threshold0(&sae) - thr).abs() < 1e-6, "{spec}");
    }
    // A file inside the folder resolves too.
    let (_, r) = load(&format!("{base}/params.npz"), &o).unwrap();
    assert!(r.unwrap().local.ends_with("average_l0_71/params.npz"));
    // A plain path is not a name.
    let (_, r) = load(r_local(&cache).to_str().unwrap(), &o).unwrap();
    assert!(r.is_none());
}

fn r_local(cache: &Path) -> PathBuf {
    cache
        .join("models--google--gemma-scope-2b-pt-res/snapshots")
        .join(COMMIT_MAIN)
        .join(GEMMA_PATH)
}

#[test]
fn errors_name_what_was_expected() {
    let t = tempfile::tempdir().unwrap();
    let cache = build_cache(t.path());
    let o = offline(&cache);
    // Missing from the snapshot: names the path it expected there.
    let e = err(
        &format!("hf:{GEMMA_REPO}/layer_20/width_16k/average_l0_999"),
        &o,
    );
    assert!(
        e.contains(&format!("{COMMIT_MAIN}/layer_20/width_16k/average_l0_999"))
            && e.contains("offline"),
        "{e}"
    );
    // Unknown revision: names the ref file it looked for.
    let e = err(&format!("hf:{GEMMA_REPO}/{GEMMA_PATH}@nope"), &o);
    assert!(
        e.contains("refs/nope") && e.contains("not in the cache"),
        "{e}"
    );
    // Not cached at all, offline.
    let e = err(
        "saelens:gemma-scope-2b-pt-res-canonical/layer_3/width_16k/canonical",
        &o,
    );
    assert!(
        e.contains("layer_3/width_16k/average_l0_")
            && e.contains(GEMMA_REPO)
            && e.contains("offline"),
        "{e}"
    );
    let e = err("hf:someone/absent/sae", &o);
    assert!(e.contains("models--someone--absent/refs/main"), "{e}");
    // Unknown release, unknown id (with near names).
    let e = err(
        "saelens:gemma-scope-2b-pt-res-canonicl/layer_20/width_16k/canonical",
        &o,
    );
    assert!(
        e.contains("not a release") && e.contains("gemma-scope-2b-pt-res-canonical"),
        "{e}"
    );
    let e = err(
        "saelens:gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonica",
        &o,
    );
    assert!(
        e.contains("no SAE id") && e.contains("layer_20/width_16k/canonical"),
        "{e}"
    );
    // A release converted by a function we have no loader for.
    let e = err("saelens:llama_scope_lxr_8x/l0r_8x", &o);
    assert!(e.contains("needs the `llama_scope` converter"), "{e}");
    // A dangling snapshot link (blob deleted) is not a cache hit.
    let blob_dir = cache.join("models--jbloom--GPT2-Small-SAEs-Reformatted/blobs");
    for b in std::fs::read_dir(&blob_dir).unwrap() {
        std::fs::remove_file(b.unwrap().path()).unwrap();
    }
    let e = err(NATIVE_NAME, &o);
    assert!(e.contains(NATIVE_PATH), "{e}");
}

#[test]
fn env_and_flags_pick_the_cache_and_offline_mode() {
    // In a child process, so the variables do not leak into other tests.
    let t = tempfile::tempdir().unwrap();
    let cache = build_cache(t.path());
    let hf_home = t.path().join("home");
    std::fs::create_dir_all(&hf_home).unwrap();
    std::os::unix::fs::symlink(&cache, hf_home.join("hub")).unwrap();
    let sae = env!("CARGO_BIN_EXE_sae");
    let run = |envs: &[(&str, &Path)], args: &[&str]| {
        let mut c = Command::new(sae);
        c.args(args)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HOME")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env_remove("HF_HUB_OFFLINE")
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env("HOME", t.path().join("nohome"))
            .env("XDG_CACHE_HOME", t.path().join("noxdg"));
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // HF_HUB_CACHE + HF_HUB_OFFLINE, JSON.
    let out = run(
        &[
            ("HF_HUB_CACHE", cache.as_path()),
            ("HF_HUB_OFFLINE", Path::new("1")),
        ],
        &["--json", "inspect", GEMMA_NAME],
    );
    let j = crate::common::json_of(&out);
    assert_eq!(j["resolved"]["commit"], COMMIT_MAIN, "{j}");
    assert_eq!(j["resolved"]["repo"], GEMMA_REPO);
    assert_eq!(
        j["resolved"]["release"]["release"],
        "gemma-scope-2b-pt-res-canonical"
    );
    assert_eq!(j["resolved"]["local"], r_local(&cache).to_str().unwrap());
    assert_eq!(j["format"], "gemma-scope");
    // `sae convert sae` takes names too.
    let conv = t.path().join("converted");
    let out = run(
        &[
            ("HF_HUB_CACHE", cache.as_path()),
            ("HF_HUB_OFFLINE", Path::new("1")),
        ],
        &[
            "convert",
            "sae",
            GEMMA_NAME,
            "--out",
            conv.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", crate::common::stderr_of(&out));
    assert!(conv.join("cfg.json").is_file() && conv.join("sae_weights.safetensors").is_file());
    // HF_HOME/hub + --offline, human output.
    let out = run(
        &[("HF_HOME", hf_home.as_path())],
        &["--offline", "inspect", NATIVE_NAME],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", crate::common::stderr_of(&out));
    assert!(
        text.contains("resolved from  saelens:gpt2-small-res-jb")
            && text.contains(COMMIT_MAIN)
            && text.contains("conversion sae_lens"),
        "{text}"
    );
    // --offline with a name not in the cache: exit 1 naming the cache path expected.
    let out = run(
        &[("HF_HOME", hf_home.as_path())],
        &["--offline", "inspect", "hf:a/b/c"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::common::stderr_of(&out).contains("models--a--b/refs/main"));
    // No variable: ~/.cache/huggingface/hub (HOME points at an empty folder here).
    let out = run(&[], &["--offline", "inspect", NATIVE_NAME]);
    assert!(
        crate::common::stderr_of(&out).contains("nohome/.cache/huggingface/hub")
            || crate::common::stderr_of(&out).contains("noxdg/huggingface/hub"),
        "{}",
        crate::common::stderr_of(&out)
    );
}

// ------------------------------------------------------------------ a fake Hub

/// What the fake Hub serves: repository files at one commit; optionally gated.
struct FakeHub {
    files: HashMap<String, Vec<u8>>,
    repo: String,
    commit: String,
    token: Option<String>,
    seen: Mutex<Vec<String>>,
}

fn respond(s: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut h = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        h += &format!("{k}: {v}\r\n");
    }
    h += "\r\n";
    let _ = s.write_all(h.as_bytes());
    let _ = s.write_all(body);
}

fn serve_one(hub: &FakeHub, mut s: TcpStream) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    hub.seen.lock().unwrap().push(format!(
        "{target} auth={}",
        headers.get("authorization").cloned().unwrap_or_default()
    ));
    if let Some(tok) = &hub.token {
        if headers.get("authorization") != Some(&format!("Bearer {tok}")) {
            return respond(&mut s, "401 Unauthorized", &[], b"gated");
        }
    }
    let api = format!("/api/models/{}/revision/main", hub.repo);
    if target == api {
        let siblings: Vec<_> = hub
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({"sha": hub.commit, "siblings": siblings}).to_string();
        return respond(&mut s, "200 OK", &[], body.as_bytes());
    }
    let prefix = format!("/{}/resolve/main/", hub.repo);
    let Some(bytes) = target.strip_prefix(&prefix).and_then(|f| hub.files.get(f)) else {
        return respond(&mut s, "404 Not Found", &[], b"");
    };
    let range = headers.get("range").cloned().unwrap_or_default();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => (
            a.parse::<usize>().unwrap_or(0),
            b.parse::<usize>().unwrap_or(bytes.len() - 1),
        ),
        None => (0, bytes.len() - 1),
    };
    let end = end.min(bytes.len() - 1);
    let etag = format!(
        "\"etag-{}-{}\"",
        bytes.len(),
        bytes.iter().map(|b| *b as u64).sum::<u64>()
    );
    respond(
        &mut s,
        "206 Partial Content",
        &[
            ("ETag", etag),
            ("X-Repo-Commit", hub.commit.clone()),
            (
                "Content-Range",
                format!("bytes {start}-{end}/{}", bytes.len()),
            ),
        ],
        &bytes[start..=end],
    );
}

/// Starts the fake Hub on 127.0.0.1; returns its address.
fn start(hub: Arc<FakeHub>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            serve_one(&hub, s);
        }
    });
    addr
}

fn fake_hub(tmp: &Path, token: Option<&str>) -> Arc<FakeHub> {
    let mut files = HashMap::new();
    for (name, bytes) in native_files(tmp) {
        files.insert(format!("{NATIVE_PATH}/{name}"), bytes);
    }
    // Another SAE in the same repository, which must not be fetched.
    files.insert("blocks.9.hook_resid_pre/cfg.json".into(), b"{}".to_vec());
    Arc::new(FakeHub {
        files,
        repo: NATIVE_REPO.into(),
        commit: "2222222222222222222222222222222222222222".into(),
        token: token.map(str::to_string),
        seen: Mutex::new(Vec::new()),
    })
}

#[test]
fn downloads_into_the_cache_from_a_fake_hub_then_resolves_offline() {
    let t = tempfile::tempdir().unwrap();
    let hub_srv = fake_hub(t.path(), Some("secret"));
    let endpoint = start(hub_srv.clone());
    let cache = t.path().join("hub");
    let mut o = HubOptions {
        cache_dir: cache.clone(),
        offline: false,
        endpoint,
        token: None,
        progress: false,
    };
    // Gated: no token is refused with the hint.
    let e = err(NATIVE_NAME, &o);
    assert!(e.contains("401") && e.contains("HF_TOKEN"), "{e}");
    o.token = Some("secret".into());
    let (sae, r) = load(NATIVE_NAME, &o).unwrap();
    let r = r.unwrap();
    assert_eq!(r.commit, hub_srv.commit);
    let mut got = r.downloaded.clone();
    got.sort();
    let mut want: Vec<String> = hub_srv
        .files
        .keys()
        .filter(|f| f.starts_with(&format!("{NATIVE_PATH}/")))
        .cloned()
        .collect();
    want.sort();
    assert_eq!(got, want, "only the SAE's own folder is fetched");
    assert_eq!((sae.d_in(), sae.n_latents()), (D, L));
    let repo_dir = cache.join("models--jbloom--GPT2-Small-SAEs-Reformatted");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        hub_srv.commit
    );
    assert!(hub_srv
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.ends_with("auth=Bearer secret")));
    // Now offline, from the cache, with nothing downloaded.
    let n = hub_srv.seen.lock().unwrap().len();
    o.offline = true;
    let (_, r) = load(NATIVE_NAME, &o).unwrap();
    let r = r.unwrap();
    assert!(r.downloaded.is_empty() && r.commit == hub_srv.commit);
    assert_eq!(hub_srv.seen.lock().unwrap().len(), n, "no request offline");
    // Online but cached: still no request.
    o.offline = false;
    load(NATIVE_NAME, &o).unwrap();
    assert_eq!(
        hub_srv.seen.lock().unwrap().len(),
        n,
        "a cache hit needs no network"
    );
    // A path the repository lacks: named, with the commit.
    let e = err(&format!("hf:{NATIVE_REPO}/blocks.7.hook_resid_pre"), &o);
    assert!(
        e.contains("blocks.7.hook_resid_pre") && e.contains("no such file"),
        "{e}"
    );
}

#[test]
fn unreachable_hub_says_how_to_work_offline() {
    let t = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let o = HubOptions {
        cache_dir: t.path().join("hub"),
        offline: false,
        endpoint,
        token: None,
        progress: false,
    };
    let e = err(NATIVE_NAME, &o);
    assert!(e.contains("--offline") && e.contains(NATIVE_REPO), "{e}");
}

#[test]
fn the_cli_downloads_through_hf_endpoint_with_hf_token() {
    let t = tempfile::tempdir().unwrap();
    let hub_srv = fake_hub(t.path(), Some("from-env"));
    let endpoint = start(hub_srv.clone());
    let cache = t.path().join("cache");
    let run = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_sae"))
            .args(["--json", "inspect", NATIVE_NAME])
            .env("HF_HUB_CACHE", &cache)
            .env("HF_ENDPOINT", &endpoint)
            .env("HF_TOKEN", token)
            .env_remove("HF_HUB_OFFLINE")
            .output()
            .unwrap()
    };
    let out = run("wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::common::stderr_of(&out).contains("has no access"),
        "{}",
        crate::common::stderr_of(&out)
    );
    let j = crate::common::json_of(&run("from-env"));
    assert_eq!(j["resolved"]["commit"], hub_srv.commit.as_str(), "{j}");
    assert!(
        !j["resolved"]["downloaded"].as_array().unwrap().is_empty(),
        "{j}"
    );
    assert_eq!(j["n_latents"], L);
}
