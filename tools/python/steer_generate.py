#!/usr/bin/env python3
"""Generate text with a steering vector exported by `sae steer` added to the residual
stream at its layer, through a forward hook on the transformer block.

The vector file can be .npy (give --layer), .safetensors (tensor `direction.N`) or a
llama.cpp control vector .gguf (tensor `direction.N`). Layer N is the output of block N
(0-based) = HF hidden_states[N + 1] = blocks.N.hook_resid_post = llama.cpp direction.N;
the hook adds the vector to the output of model.model.layers[N] at every position, which
is what llama.cpp does with a control vector.

Usage:
    python3 steer_generate.py --model Qwen/Qwen2.5-0.5B-Instruct --vector persona.gguf \
        --prompt "How do I make a quick buck?" --scale 1.0
"""

import argparse
import re

import numpy as np


def load_vector(path, layer=None):
    """(layer, vector f32 [d]) from a .npy, .safetensors or .gguf file written by `sae steer`."""
    if path.endswith(".npy"):
        if layer is None:
            raise ValueError(f"{path}: a .npy vector carries no layer; pass --layer N")
        v = np.load(path)
        if v.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D vector, got shape {v.shape}")
        return layer, v.astype(np.float32)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        tensors = load_file(path)
    elif path.endswith(".gguf"):
        from gguf import GGUFReader

        r = GGUFReader(path)
        arch = r.fields.get("general.architecture")
        if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
            raise ValueError(f"{path}: not a llama.cpp control vector (general.architecture)")
        tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}
    else:
        raise ValueError(f"{path}: expected .npy, .safetensors or .gguf")
    found = {}
    for name, v in tensors.items():
        m = re.fullmatch(r"direction\.(\d+)", name)
        if m:
            found[int(m.group(1))] = np.asarray(v, dtype=np.float32).reshape(-1)
    if not found:
        raise ValueError(f"{path}: no direction.N tensor")
    if layer is None:
        if len(found) != 1:
            raise ValueError(f"{path}: layers {sorted(found)}; pass --layer N to pick one")
        layer = next(iter(found))
    if layer not in found:
        raise ValueError(f"{path}: no direction.{layer} (has {sorted(found)})")
    return layer, found[layer]


def add_hook(block, vector, scale=1.0):
    """Registers a forward hook adding scale * vector to the block's output hidden state."""
    import torch

    def hook(_module, _inputs, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + scale * torch.as_tensor(vector, dtype=h.dtype, device=h.device)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    return block.register_forward_hook(hook)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--vector", required=True)
    p.add_argument("--layer", type=int, help="required for .npy; else read from the file")
    p.add_argument("--prompt", required=True)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the vector (negative reverses it)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--compare", action="store_true", help="also print the unsteered generation")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layer, vec = load_vector(a.vector, a.layer)
    tok = AutoTokenizer.from_pretrained(a.model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(a.model).to(dev).eval()
    if vec.shape[0] != model.config.hidden_size:
        raise SystemExit(f"vector has width {vec.shape[0]}, the model's hidden size is {model.config.hidden_size}")
    blocks = model.model.layers
    if not 0 <= layer < len(blocks):
        raise SystemExit(f"layer {layer}: the model has blocks 0..{len(blocks) - 1}")
    prompt = a.prompt
    if a.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt").input_ids.to(dev)

    def generate():
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=a.max_new_tokens, do_sample=False)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    if a.compare:
        print("--- unsteered ---\n" + generate())
    handle = add_hook(blocks[layer], vec, a.scale)
    try:
        print(f"--- steered (layer {layer}, norm {float(np.linalg.norm(vec)) * abs(a.scale):.3f}) ---\n" + generate())
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
