#!/usr/bin/env python3
"""Checks of tools/python/dump_activations.py that need torch and the real model (the pure
parts are unit-tested in tools/python/tests without torch):

- batched prompts (right padding, attention mask, explicit positions) give the activations of
  one-at-a-time runs, within float tolerance;
- the block hook on the truncated base model (no LM head, no later blocks) gives exactly what
  the full causal-LM model returns as hidden_states[N + 1];
- the last block is refused, and the reason holds: the full model's last hidden_states entry
  is the final norm of the last block's output, not the output itself;
- the chat prompt's tokens are a prefix of prompt + response, so the response mask starts at
  the first response token.

Usage: check_dump_tool.py --model DIR --prompts FILE.jsonl [--layer 15] [--docs 6]
Prints one line per check, `ok NAME` or `FAIL NAME: why`; exits 1 on any failure.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import dump_activations as da  # noqa: E402


def rel_err(a, b):
    """max |a - b| over max |b|."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--docs", type=int, default=6)
    a = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    failures = []

    def check(name, ok, detail=""):
        print(f"{'ok' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""), flush=True)
        if not ok:
            failures.append(name)

    tok = AutoTokenizer.from_pretrained(a.model)
    prompts = da.read_prompts(a.prompts)[: a.docs]
    docs = da.tokenize(tok, prompts, True, 1024)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    prefix_ok = all(
        n == len(da.tokenize(tok, [(pr, None)], True, 1024)[0][0]) for (pr, _), (_, n) in zip(prompts, docs)
    )
    check("chat prompt tokens are a prefix of prompt + response", prefix_ok,
          "" if prefix_ok else "BPE merged a prompt token with the response's first token")

    base, n_layers = da.load_base(a.model, "float32", a.layer, "cpu")
    capture = da.BlockOutput(da.decoder_blocks(base)[1][a.layer])
    batched = da.run_batches(base, capture, docs, 4, pad_id, "cpu")
    single = da.run_batches(base, capture, docs, 1, pad_id, "cpu")
    err = max(rel_err(b, s) for b, s in zip(batched, single))
    check("batched == one at a time", err < 1e-5, f"relative error {err:.2e}")
    lengths = sorted({len(d[0]) for d in docs})
    check("the batch mixes lengths (padding exercised)", len(lengths) > 1, f"lengths {lengths}")

    full = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    ids = torch.tensor([docs[0][0]])
    with torch.no_grad():
        hs = full(ids, output_hidden_states=True).hidden_states
    idx = da.hidden_state_index(a.layer)
    err = rel_err(single[0], hs[idx][0].numpy())
    check(f"hook on block {a.layer} == hidden_states[{idx}] of the full model", err < 1e-6, f"relative error {err:.2e}")

    try:
        da.check_layer(n_layers - 1, n_layers)
        check("the last block is refused", False, f"--layer {n_layers - 1} accepted")
    except ValueError as e:
        check("the last block is refused", "final norm" in str(e), str(e))
    last = {}
    handle = full.model.layers[n_layers - 1].register_forward_hook(
        lambda _m, _i, out: last.update(h=(out[0] if isinstance(out, tuple) else out).detach())
    )
    with torch.no_grad():
        hs = full(ids, output_hidden_states=True).hidden_states
    handle.remove()
    block_out = last["h"][0].numpy()
    normed = full.model.norm(last["h"])[0].detach().numpy()
    check("hidden_states[-1] is the final norm of the last block's output",
          rel_err(hs[-1][0].numpy(), normed) < 1e-6 and rel_err(hs[-1][0].numpy(), block_out) > 1e-2,
          f"vs norm(block): {rel_err(hs[-1][0].numpy(), normed):.1e}, vs block: {rel_err(hs[-1][0].numpy(), block_out):.1e}")

    print(f"{len(failures)} of the dump tool's torch checks failed" if failures else "dump tool: all torch checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
