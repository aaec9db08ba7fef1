#!/usr/bin/env python3
"""Dump residual-stream activations of a Hugging Face transformers model in sae-engine's
dump format: one safetensors file with

    activations [n, d]  (f32 or f16)         one row per token, all prompts concatenated
    token_ids   [n]     int64                the token of each row
    doc_ids     [n]     int64                which prompt the row belongs to
    mask        [n]     uint8                1 = counted (response tokens), 0 = prompt or sink

and metadata `model`, `layer`, `hook`, `hf_hidden_states_index`, `n_layers` (the model's
block count) and `sink_positions` (the positions left out of the mask, e.g. "0").

Layer numbering (the one thing to get right so a steering vector lands where the SAE
was trained):

    --layer N  = the OUTPUT of transformer block N (0-based)
               = HF output_hidden_states[N + 1]   (hidden_states[0] is the embeddings)
               = TransformerLens / SAELens "blocks.N.hook_resid_post"
               = sparsify hookpoint "layers.N"
               = llama.cpp control vector tensor "direction.N" (N >= 1; llama.cpp adds
                 direction.N to the output of block N and has no slot for N = 0)

An SAE trained on blocks.12.hook_resid_post wants --layer 12 here, `sae steer --layer 12`,
and steer_generate.py --layer 12. (An SAE on hook_resid_pre of block N reads the output of
block N-1: use N-1.) The last block is refused: in Llama-family transformers models the last
`hidden_states` entry is taken after the final norm, so it is not that block's output and
"hidden_states index N + 1" would name a different tensor than the hook.

The activations are read by a forward hook on block N of the base model (no language-model
head, no later blocks run), which is what hidden_states[N + 1] holds for every other block.

Attention sinks: the first token of a sequence often has a norm 100x the others' (an
attention sink). `--sink-positions` (default 0) lists positions, counted from each
document's start, that get mask 0 whatever else they are.

Input prompts: a JSON-lines file with {"prompt": ..., "response": ...} per line (the
response tokens get mask 1; pass the model's own completions to audit its behaviour), or
a plain text file with one prompt per line (every token but the sinks masked 1).

Prompts run in batches (`--batch-size`, padded on the right with an attention mask and
explicit positions, so every document gets the same activations as alone, within float
tolerance). `--threads` sets torch's CPU threads (default 1: on a shared machine torch's
default of one thread per core can stall; raise it on an idle one).

Usage:
    python3 dump_activations.py --model Qwen/Qwen2.5-0.5B-Instruct --prompts eval.jsonl \
        --layer 12 --chat --out base.safetensors
"""

import argparse
import json
import os
import sys

import numpy as np


def hidden_state_index(layer):
    """Index into HF `hidden_states` of the output of block `layer` (0-based)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    return layer + 1


def check_layer(layer, n_layers):
    """Refuses a block the dump cannot label honestly: out of range, or the last block (whose
    `hidden_states` entry in Llama-family transformers models comes after the final norm)."""
    if not 0 <= layer < n_layers:
        raise ValueError(f"--layer {layer}: the model has blocks 0..{n_layers - 1}")
    if layer == n_layers - 1:
        raise ValueError(
            f"--layer {layer} is the last block: transformers' last hidden_states entry "
            f"(index {n_layers}) is taken after the model's final norm, not the block's output, "
            f"so a dump of it would not match blocks.{layer}.hook_resid_post; use a block 0..{n_layers - 2}"
        )


def parse_positions(text):
    """Sorted unique non-negative positions from "0", "0,1" or "" / "none" (no sinks)."""
    text = text.strip()
    if text in ("", "none"):
        return []
    out = set()
    for part in text.split(","):
        try:
            v = int(part)
        except ValueError:
            raise ValueError(f"--sink-positions: {part!r} is not a whole number") from None
        if v < 0:
            raise ValueError(f"--sink-positions: {v} is negative")
        out.add(v)
    return sorted(out)


def response_mask(n_prompt_tokens, n_total_tokens, sinks=()):
    """uint8 mask over a sequence: 0 for the prompt's tokens and the sink positions, 1 for the
    response's."""
    if not 0 <= n_prompt_tokens <= n_total_tokens:
        raise ValueError(f"prompt has {n_prompt_tokens} tokens of {n_total_tokens}")
    m = np.zeros(n_total_tokens, dtype=np.uint8)
    m[n_prompt_tokens:] = 1
    for s in sinks:
        if s < n_total_tokens:
            m[s] = 0
    return m


def common_prefix(a, b):
    """Length of the longest common prefix of two token id sequences (the prompt's tokens
    inside prompt + response: BPE may merge across the boundary)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


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


def plan_batches(lengths, batch_size):
    """Groups document indices into batches of at most `batch_size`, documents of similar
    length together (sorted by length, stable) so that little padding is computed."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_right(seqs, pad_id):
    """(ids [b, T] int64, attention_mask [b, T] int64, positions [b, T] int64) for token id
    sequences padded on the right. Positions count each row's real tokens from 0, so a
    document's positions do not depend on its batch."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every document needs at least one token")
    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), pad_id, dtype=np.int64)
    att = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        att[i, : len(s)] = 1
    pos = np.maximum(np.cumsum(att, axis=1) - 1, 0)
    return ids, att, pos


def assemble(chunks, first_doc_id=0):
    """Concatenates per-document (activations [t, d], token_ids [t], mask [t]) into the
    dump's arrays, with doc ids in input order starting at `first_doc_id`."""
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
            [np.full(c[0].shape[0], first_doc_id + i, dtype=np.int64) for i, c in enumerate(chunks)]
        ),
        "mask": np.concatenate([np.asarray(c[2], dtype=np.uint8) for c in chunks]),
    }


def dump_metadata(model, layer, n_layers, sinks):
    """The safetensors `__metadata__` the engine reads (all values are strings)."""
    return {
        "model": model,
        "layer": str(layer),
        "hook": f"blocks.{layer}.hook_resid_post",
        "hf_hidden_states_index": str(hidden_state_index(layer)),
        "n_layers": str(n_layers),
        "sink_positions": ",".join(str(s) for s in sinks),
    }


def write_dump(path, arrays, metadata=None):
    """Writes the arrays with safetensors (numpy), to a temporary name then renamed."""
    from safetensors.numpy import save_file

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path) + ".tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def decoder_blocks(base):
    """The list of transformer blocks of a transformers base model (Llama/Qwen/Mistral/Gemma
    `layers`, GPT-2 `h`)."""
    for name in ("layers", "h"):
        blocks = getattr(base, name, None)
        if blocks is not None:
            return name, blocks
    raise SystemExit(f"{type(base).__name__}: no `layers` or `h` block list; cannot hook a block")


def tokenize(tok, prompts, chat, max_tokens):
    """[(token ids, number of prompt tokens)] per document; the response follows the prompt."""
    out = []
    for prompt, response in prompts:
        if chat:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        p_ids = tok(prompt).input_ids
        ids = p_ids if response is None else tok(prompt + response).input_ids
        ids = list(ids[:max_tokens])
        n_prompt = 0 if response is None else common_prefix(p_ids, ids)
        out.append((ids, n_prompt))
    return out


class BlockOutput:
    """Forward hook keeping the last output hidden state of one block."""

    def __init__(self, block):
        self.value = None
        self.handle = block.register_forward_hook(self)

    def __call__(self, _module, _inputs, output):
        self.value = output[0] if isinstance(output, tuple) else output


def run_batches(base, capture, docs, batch_size, pad_id, device):
    """Activations [t, d] (float32 numpy) per document, in input order."""
    import torch

    acts = [None] * len(docs)
    for batch in plan_batches([len(d[0]) for d in docs], batch_size):
        ids, att, pos = pad_right([docs[i][0] for i in batch], pad_id)
        with torch.no_grad():
            base(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(att).to(device),
                position_ids=torch.from_numpy(pos).to(device),
                use_cache=False,
            )
        h = capture.value.float().cpu().numpy()
        for row, i in enumerate(batch):
            acts[i] = h[row, : len(docs[i][0])].copy()
    return acts


def load_base(model, dtype, layer, device):
    """The base model (no LM head) with blocks after `layer` dropped, and its block count."""
    import torch
    from transformers import AutoModel

    base = AutoModel.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
    name, blocks = decoder_blocks(base)
    n_layers = len(blocks)
    check_layer(layer, n_layers)
    # Later blocks never influence block `layer`'s output (causal, residual): skip them.
    setattr(base, name, blocks[: layer + 1])
    return base, n_layers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF model name or path")
    p.add_argument("--prompts", required=True, help=".jsonl with prompt/response, or text, one prompt a line")
    p.add_argument("--layer", type=int, required=True, help="block N whose output is dumped (see above)")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model dtype (stored as float32, or float16 for float16)")
    p.add_argument("--max-tokens", type=int, default=1024, help="truncate each document")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    p.add_argument("--sink-positions", default="0",
                   help="positions from each document's start left out of the mask (default 0; '' for none)")
    p.add_argument("--batch-size", type=int, default=8, help="documents per forward pass")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--first-doc-id", type=int, default=0,
                   help="doc id of the first prompt (keeps ids distinct across shard files of one dump)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    a = p.parse_args(argv)

    try:
        sinks = parse_positions(a.sink_positions)
        prompts = read_prompts(a.prompts)
        if a.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {a.threads}")
        if a.first_doc_id < 0:
            raise ValueError(f"--first-doc-id must be >= 0, got {a.first_doc_id}")
        plan_batches([], a.batch_size)
    except (OSError, ValueError) as e:
        sys.exit(f"dump_activations: {e}")

    # Before torch starts its thread pools.
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(a.model)
    try:
        base, n_layers = load_base(a.model, a.dtype, a.layer, device)
    except ValueError as e:
        sys.exit(f"dump_activations: {a.model}: {e}")
    capture = BlockOutput(decoder_blocks(base)[1][a.layer])
    docs = tokenize(tok, prompts, a.chat, a.max_tokens)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    acts = run_batches(base, capture, docs, a.batch_size, pad_id, device)
    chunks = [(h, np.asarray(ids), response_mask(n_prompt, len(ids), sinks)) for h, (ids, n_prompt) in zip(acts, docs)]
    arrays = assemble(chunks, a.first_doc_id)
    if a.dtype == "float16":
        arrays["activations"] = arrays["activations"].astype(np.float16)
    write_dump(a.out, arrays, dump_metadata(a.model, a.layer, n_layers, sinks))
    print(f"wrote {a.out}: {arrays['activations'].shape[0]} tokens x {arrays['activations'].shape[1]}, "
          f"{int(arrays['mask'].sum())} counted tokens, {len(docs)} documents, layer {a.layer} of {n_layers}")


if __name__ == "__main__":
    main()
