#!/usr/bin/env python3
"""Generate text with a steering vector exported by `sae steer` added to the residual
stream at its layer, through a forward hook on the transformer block; or, with --sweep,
measure how far each strength (and ablation) moves the model's next-token distributions
on neutral text.

The vector file can be .npy (give --layer), .safetensors (tensor `direction.N`) or a
llama.cpp control vector .gguf (tensor `direction.N`). Layer N is the output of block N
(0-based) = HF hidden_states[N + 1] = blocks.N.hook_resid_post = llama.cpp direction.N;
the hook adds the vector to the output of model.model.layers[N] at every position, which
is what llama.cpp does with a control vector. Layer 0 works here (llama.cpp has no slot
for it).

Sweep (--sweep 0.5,1,2,4): for each scale s the vector times s is added, and the KL
divergence KL(unsteered || steered) of the next-token distribution is averaged over every
token position of the neutral texts (--neutral FILE, one text a line; a few built-in
sentences otherwise). --ablate adds a row where the vector's direction is projected out
of the block's output instead. Export the vector at strength 1 in your unit and the
scales equal `sae steer --strengths`. Output: JSON on stdout.

Usage:
    python3 steer_generate.py --model Qwen/Qwen2.5-0.5B-Instruct --vector persona.gguf \
        --prompt "How do I make a quick buck?" --scale 1.0 --threads 2
    python3 steer_generate.py --model DIR --vector persona.safetensors --sweep 0.5,1,2,4 --ablate
"""

import argparse
import json
import re

import numpy as np

NEUTRAL = [
    "The weather today is mild, with a light breeze from the west.",
    "To boil an egg, place it in water and heat it for about nine minutes.",
    "The library opens at nine in the morning and closes at six in the evening.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "The train to the city leaves from platform two every half hour.",
    "She wrote a short letter to her grandmother about the garden.",
]


def load_vector(path, layer=None):
    """(layer, vector f32 [d]) from a .npy, .safetensors or .gguf file written by `sae steer`.
    The vector is a fresh writable copy (GGUF and safetensors readers hand out read-only
    memory maps, which torch.from_numpy warns about)."""
    if path.endswith(".npy"):
        if layer is None:
            raise ValueError(f"{path}: a .npy vector carries no layer; pass --layer N")
        v = np.load(path)
        if v.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D vector, got shape {v.shape}")
        return layer, np.array(v, dtype=np.float32, copy=True)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
    elif path.endswith(".gguf"):
        from gguf import GGUFReader

        r = GGUFReader(path)
        arch = r.fields.get("general.architecture")
        if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
            raise ValueError(f"{path}: not a llama.cpp control vector (general.architecture)")
        tensors = {t.name: t.data for t in r.tensors}
    else:
        raise ValueError(f"{path}: expected .npy, .safetensors or .gguf")
    found = {}
    for name, v in tensors.items():
        m = re.fullmatch(r"direction\.(\d+)", name)
        if m:
            found[int(m.group(1))] = np.array(v, dtype=np.float32, copy=True).reshape(-1)
    if not found:
        raise ValueError(f"{path}: no direction.N tensor")
    if layer is None:
        if len(found) != 1:
            raise ValueError(f"{path}: layers {sorted(found)}; pass --layer N to pick one")
        layer = next(iter(found))
    if layer not in found:
        raise ValueError(f"{path}: no direction.{layer} (has {sorted(found)})")
    return layer, found[layer]


class Edit:
    """What the hook does to a block's output h [..., d]: add scale * vector, or project
    the vector's direction out. Works on numpy arrays and torch tensors alike; `v` is the
    vector already converted to h's type."""

    def __init__(self, kind, vector, scale=1.0):
        if kind not in ("add", "ablate"):
            raise ValueError(f"unknown edit {kind!r}")
        vector = np.array(vector, dtype=np.float32, copy=True)
        if kind == "ablate":
            n = float(np.linalg.norm(vector))
            if n == 0.0:
                raise ValueError("cannot ablate a zero vector: it has no direction")
            vector = vector / n
        self.kind, self.vector, self.scale = kind, vector, scale

    def apply(self, h, v):
        if self.kind == "add":
            return h + self.scale * v
        return h - (h @ v)[..., None] * v


def add_hook(block, vector, scale=1.0, kind="add"):
    """Registers a forward hook on `block` that edits its output hidden state (adds
    scale * vector, or with kind="ablate" projects the vector's direction out)."""
    import torch

    edit = Edit(kind, vector, scale)
    cache = {}

    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        key = (h.dtype, h.device)
        if key not in cache:
            cache[key] = torch.from_numpy(edit.vector).to(dtype=h.dtype, device=h.device)
        h = edit.apply(h, cache[key])
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    return block.register_forward_hook(hook)


def log_softmax(x):
    """Row-wise log-softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_rows(p_logits, q_logits):
    """KL(P || Q) per row, from logits [n, vocab]."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def sweep(next_token_logits, n_batches, vector, scales, ablate=False):
    """The sweep's rows. `next_token_logits(edit, i)` returns the logits [n_positions, vocab]
    of every counted position of batch i of the neutral texts with `edit` applied (None:
    unsteered); one batch is held at a time, whatever the vocabulary."""
    norm = float(np.linalg.norm(vector))
    conditions = [("add", s) for s in scales] + ([("ablate", None)] if ablate else [])
    edits = [Edit(kind, vector, 1.0 if s is None else s) for kind, s in conditions]
    kls = [[] for _ in conditions]
    n_positions = 0
    for i in range(n_batches):
        base = next_token_logits(None, i)
        n_positions += base.shape[0]
        for out, edit in zip(kls, edits):
            out.append(kl_rows(base, next_token_logits(edit, i)))
    rows = []
    for (kind, s), parts in zip(conditions, kls):
        kl = np.concatenate(parts) if parts else np.zeros(0)
        if kl.size == 0:
            raise ValueError("no token positions to measure")
        rows.append({
            "kind": kind,
            "scale": s,
            "norm": norm * abs(s) if s is not None else None,
            "kl_mean": float(kl.mean()),
            "kl_median": float(np.median(kl)),
            "kl_max": float(kl.max()),
        })
    return {"n_positions": int(n_positions), "vector_norm": norm, "rows": rows}


def parse_scales(text):
    """'0.5,1,2,4' -> [0.5, 1.0, 2.0, 4.0]."""
    try:
        out = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--sweep {text!r}: expected comma-separated numbers") from None
    if not out:
        raise ValueError("--sweep needs at least one scale")
    return out


def read_lines(path):
    """Non-empty lines of a text file."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no lines")
    return lines


def batches(items, size):
    """Consecutive chunks of at most `size` items."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--vector", required=True)
    p.add_argument("--layer", type=int, help="required for .npy; else read from the file")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompts", help="text file, one prompt a line")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the vector (negative reverses it)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--compare", action="store_true", help="also print the unsteered generation")
    p.add_argument("--sweep", help="comma-separated scales: report next-token KL on neutral text (JSON)")
    p.add_argument("--ablate", action="store_true", help="with --sweep: also project the direction out")
    p.add_argument("--neutral", help="with --sweep: text file of neutral texts, one a line")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = p.parse_args(argv)
    scales = parse_scales(a.sweep) if a.sweep else None
    if a.ablate and scales is None:
        p.error("--ablate needs --sweep")
    prompts = list(a.prompt) + (read_lines(a.prompts) if a.prompts else [])
    if scales is None and not prompts:
        p.error("give --prompt TEXT (or --prompts FILE), or --sweep")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if a.threads:
        torch.set_num_threads(a.threads)
    layer, vec = load_vector(a.vector, a.layer)
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation continues every row from its last real token
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).to(dev).eval()
    if vec.shape[0] != model.config.hidden_size:
        raise SystemExit(f"vector has width {vec.shape[0]}, the model's hidden size is {model.config.hidden_size}")
    blocks = model.model.layers
    if not 0 <= layer < len(blocks):
        raise SystemExit(f"layer {layer}: the model has blocks 0..{len(blocks) - 1}")

    if scales is not None:
        texts = read_lines(a.neutral) if a.neutral else NEUTRAL

        chunks = batches(texts, a.batch_size)

        def next_token_logits(edit, i):
            handle = None if edit is None else add_hook(blocks[layer], edit.vector, edit.scale, edit.kind)
            try:
                enc = tok(chunks[i], return_tensors="pt", padding=True).to(dev)
                with torch.no_grad():
                    logits = model(**enc).logits
            finally:
                if handle is not None:
                    handle.remove()
            # every real position predicts the next token; padding is left out
            return logits[enc.attention_mask.bool()].float().cpu().numpy()

        r = sweep(next_token_logits, len(chunks), vec, scales, a.ablate)
        r.update({"model": a.model, "vector": a.vector, "layer": layer, "n_texts": len(texts)})
        print(json.dumps(r, indent=2))
        return

    if a.chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                   for q in prompts]

    def generate():
        texts = []
        for chunk in batches(prompts, a.batch_size):
            enc = tok(chunk, return_tensors="pt", padding=True).to(dev)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=a.max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            texts += tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        return texts

    if a.compare:
        for q, t in zip(prompts, generate()):
            print(f"--- unsteered: {q!r} ---\n{t}")
    handle = add_hook(blocks[layer], vec, a.scale)
    try:
        norm = float(np.linalg.norm(vec)) * abs(a.scale)
        for q, t in zip(prompts, generate()):
            print(f"--- steered (layer {layer}, norm {norm:.3f}): {q!r} ---\n{t}")
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
