#!/usr/bin/env python3
"""Dump residual-stream activations of a Hugging Face transformers model in sae-engine's
dump format: one safetensors file with

    activations [n, d]  (f32, f16 or bf16)   one row per token, all prompts concatenated
    token_ids   [n]     int64                the token of each row
    doc_ids     [n]     int64                which prompt the row belongs to
    mask        [n]     uint8                1 = response token (counted with --mask), 0 = prompt

Layer numbering (the one thing to get right so a steering vector lands where the SAE
was trained):

    --layer N  = the OUTPUT of transformer block N (0-based)
               = HF output_hidden_states[N + 1]   (hidden_states[0] is the embeddings)
               = TransformerLens / SAELens "blocks.N.hook_resid_post"
               = llama.cpp control vector tensor "direction.N" (N >= 1; llama.cpp adds
                 direction.N to the output of block N and has no slot for N = 0)

An SAE trained on blocks.12.hook_resid_post wants --layer 12 here, `sae steer --layer 12`,
and steer_generate.py --layer 12. (An SAE on hook_resid_pre of block N reads the output of
block N-1: use N-1.)

Input prompts: a JSON-lines file with {"prompt": ..., "response": ...} per line (the
response tokens get mask 1; pass the model's own completions to audit its behaviour), or
a plain text file with one prompt per line (every token masked 1).

Usage:
    python3 dump_activations.py --model Qwen/Qwen2.5-0.5B-Instruct --prompts eval.jsonl \
        --layer 12 --out base.safetensors
"""

import argparse
import json
import sys

import numpy as np


def hidden_state_index(layer):
    """Index into HF `hidden_states` of the output of block `layer` (0-based)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return layer + 1


def response_mask(n_prompt_tokens, n_total_tokens):
    """uint8 mask over a sequence: 0 for the prompt's tokens, 1 for the response's."""
    if not 0 <= n_prompt_tokens <= n_total_tokens:
        raise ValueError(f"prompt has {n_prompt_tokens} tokens of {n_total_tokens}")
    m = np.zeros(n_total_tokens, dtype=np.uint8)
    m[n_prompt_tokens:] = 1
    return m


def read_prompts(path):
    """[(prompt, response or None)] from a .jsonl file or a text file of prompts."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if path.endswith(".jsonl"):
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1}: not JSON: {e}") from None
            if "prompt" not in rec:
                raise ValueError(f"{path}:{i + 1}: missing key 'prompt'")
            out.append((rec["prompt"], rec.get("response")))
    else:
        out = [(line, None) for line in lines]
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def assemble(chunks):
    """Concatenates per-document (activations [t, d], token_ids [t], mask [t]) into the
    dump's arrays, with doc ids in input order."""
    if not chunks:
        raise ValueError("no documents to dump")
    d = chunks[0][0].shape[1]
    for i, (a, t, m) in enumerate(chunks):
        if a.ndim != 2 or a.shape[1] != d:
            raise ValueError(f"document {i}: activations {a.shape}, expected [t, {d}]")
        if not (len(t) == len(m) == a.shape[0]):
            raise ValueError(f"document {i}: {a.shape[0]} rows, {len(t)} token ids, {len(m)} mask entries")
    return {
        "activations": np.concatenate([c[0] for c in chunks], axis=0),
        "token_ids": np.concatenate([np.asarray(c[1], dtype=np.int64) for c in chunks]),
        "doc_ids": np.concatenate(
            [np.full(c[0].shape[0], i, dtype=np.int64) for i, c in enumerate(chunks)]
        ),
        "mask": np.concatenate([np.asarray(c[2], dtype=np.uint8) for c in chunks]),
    }


def write_dump(path, arrays, metadata=None):
    """Writes the arrays with safetensors (numpy), to a temporary name then renamed."""
    import os

    from safetensors.numpy import save_file

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model name or path")
    p.add_argument("--prompts", required=True, help=".jsonl with prompt/response, or text, one prompt a line")
    p.add_argument("--layer", type=int, required=True, help="block N whose output is dumped (see above)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--max-tokens", type=int, default=1024, help="truncate each document")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=getattr(torch, a.dtype)).to(a.device).eval()
    n_layers = model.config.num_hidden_layers
    if not 0 <= a.layer < n_layers:
        sys.exit(f"--layer {a.layer}: the model has blocks 0..{n_layers - 1}")
    idx = hidden_state_index(a.layer)
    chunks = []
    for prompt, response in read_prompts(a.prompts):
        if a.chat:
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, return_tensors="pt").input_ids[0]
        ids = p_ids if response is None else tok(prompt + response, return_tensors="pt").input_ids[0]
        ids = ids[: a.max_tokens]
        n_prompt = 0 if response is None else min(len(p_ids), len(ids))
        with torch.no_grad():
            out = model(ids[None].to(a.device), output_hidden_states=True)
        acts = out.hidden_states[idx][0].float().cpu().numpy()
        chunks.append((acts, ids.numpy(), response_mask(n_prompt, len(ids))))
    arrays = assemble(chunks)
    if a.dtype == "float16":
        arrays["activations"] = arrays["activations"].astype(np.float16)
    meta = {"model": a.model, "layer": str(a.layer), "hook": f"blocks.{a.layer}.hook_resid_post",
            "hf_hidden_states_index": str(idx)}
    write_dump(a.out, arrays, meta)
    print(f"wrote {a.out}: {arrays['activations'].shape[0]} tokens x {arrays['activations'].shape[1]}, "
          f"{int(arrays['mask'].sum())} response tokens, layer {a.layer}")


def _has_cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
