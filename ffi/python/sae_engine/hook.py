"""Statistics straight from a running model: a forward hook on a transformers model's block
hands each batch's residual-stream output to the engine, which accumulates what `sae stats`
computes from a dump of the same tokens, and writes the same statistics file (so `sae diff`
takes it) without writing a dump.

    sae = Sae("path/to/sae", backend="cpu")
    with StatsHook(model, layer=12, sae=sae) as hook:
        for prompt in prompts:                       # in the order a dump would hold them
            ids = tok(prompt, return_tensors="pt")
            hook.next_batch(counted=response_mask)   # optional: which tokens count
            model(**ids)
        hook.write("stats.safetensors")

The token rule is the dump tool's (tools/python/dump_activations.py) and `sae stats`'s:

- the rows are the output of block `layer` (HF `hidden_states[layer + 1]`, SAELens
  `blocks.{layer}.hook_resid_post`), one per real token (the attention mask's padding is
  never a row);
- a row counts when its `counted` entry is 1 (default: every token) and its position from
  the document's start is not a sink position (default 0, as the dump tool's
  `--sink-positions`);
- every counted row's norm goes into the norm histogram, so the file reports the median
  norm and the outliers above `outlier_factor` x the median of the whole input, exactly as
  `sae stats` does: statistics count outliers in, so nothing needs the median up front;
- token ids (from the model's `input_ids`) and document ids (one per sequence, counted from
  `first_doc_id` in the order sequences arrive, or given per batch) are recorded for the
  token digest and the document-clustered standard errors.

Fed the same documents in the same order as a dump, the file equals `sae stats` on that
dump (every tensor and metadata entry except the provenance, which names the hook) when the
model computes the same activations: one document per forward pass on both sides, as the
real-model stage checks; padded batches change a model's activations in the last bits, for
the dump tool as for the hook. Float sums are added in row order, so another document order
changes them in the last bits only.

CPU tensors go to the engine as numpy views when they are float32 and contiguous with no
padding (otherwise the real rows are gathered once). CUDA tensors are encoded on the
device through the device-pointer path (TopK SAEs on a CUDA backend); only the codes of
the counted rows and the row norms (float64, computed by torch on the device) come back
to the host.
"""

import json

import numpy as np

from . import SaeError, Stats, _host, _is_torch, _ptr
from ._lib import check, lib

__all__ = ["StatsHook", "attach", "decoder_blocks", "DEFAULT_OUTLIER_FACTOR"]

#: `sae stats --outlier-factor`'s default.
DEFAULT_OUTLIER_FACTOR = 10.0


def decoder_blocks(model):
    """The transformer blocks of a transformers model (a causal-LM wrapper or its base
    model): Llama/Qwen/Mistral/Gemma `layers`, GPT-2 `h`; the dump tool's lookup."""
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "model", None), model):
        for name in ("layers", "h"):
            blocks = getattr(holder, name, None) if holder is not None else None
            if blocks is not None:
                return blocks
    raise SaeError(2, f"{type(model).__name__}: no `layers` or `h` block list; cannot hook a block")


class StatsHook:
    """Accumulates `sae stats`'s statistics of block `layer`'s output while `model` runs.

    `sae` is an open `Sae`. Call `next_batch` before a forward pass to say which tokens count
    (`counted`, [batch, seq] of 0/1) or to give the sequences' document ids; without it every
    real token counts (but the sink positions) and documents are numbered in arrival order.
    `write` writes the statistics file; `remove` (or leaving the `with` block) unhooks.
    """

    def __init__(self, model, layer, sae, sink_positions=(0,),
                 outlier_factor=DEFAULT_OUTLIER_FACTOR, first_doc_id=0):
        self.sae = sae
        self.layer = int(layer)
        self.sinks = sorted({int(s) for s in sink_positions})
        if any(s < 0 for s in self.sinks):
            raise SaeError(2, f"sink positions must be >= 0, got {self.sinks}")
        self.outlier_factor = float(outlier_factor)
        self.stats = Stats(sae)
        check(lib().sae_stats_set_outlier_factor(self.stats._s, self.outlier_factor))
        self.next_doc_id = int(first_doc_id)
        self.n_rows = 0
        self.model_name = None
        self._pending = {}
        self._inputs = None
        self._handles = []
        if model is not None:
            blocks = decoder_blocks(model)
            if not 0 <= self.layer < len(blocks):
                raise SaeError(2, f"layer {layer}: the model has blocks 0..{len(blocks) - 1}")
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", None)
            self._handles = [
                model.register_forward_pre_hook(self._on_inputs, with_kwargs=True),
                blocks[self.layer].register_forward_hook(self._on_output),
            ]

    # -- the hooks ---------------------------------------------------------------------------

    def _on_inputs(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._inputs = (ids, kwargs.get("attention_mask"))

    def _on_output(self, _module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        ids, att = self._inputs if self._inputs is not None else (None, None)
        self._inputs = None
        self.feed(hidden, input_ids=ids, attention_mask=att, **self._take_pending())

    def _take_pending(self):
        p, self._pending = self._pending, {}
        return p

    def next_batch(self, counted=None, doc_ids=None):
        """Sets what the next forward pass's sequences carry: `counted` [batch, seq] (1 = the
        token counts, e.g. response tokens; the sinks are left out besides) and `doc_ids`
        [batch] (default: numbered on from the last)."""
        self._pending = {"counted": counted, "doc_ids": doc_ids}

    # -- the work ----------------------------------------------------------------------------

    def feed(self, hidden, input_ids=None, attention_mask=None, counted=None, doc_ids=None):
        """Accumulates one batch: `hidden` [batch, seq, d] (or [seq, d]) activations (numpy or
        torch, CPU or CUDA), `input_ids` [batch, seq] token ids, `attention_mask`
        [batch, seq] (0 = padding), `counted` and `doc_ids` as in `next_batch`."""
        if hidden.ndim == 2:
            hidden = hidden[None]
        if hidden.ndim != 3 or hidden.shape[2] != self.sae.d_in:
            raise SaeError(5, f"activations have shape {tuple(hidden.shape)}, "
                              f"expected [batch, seq, {self.sae.d_in}]")
        b, t, d = (int(n) for n in hidden.shape)
        valid = np.ones((b, t), bool) if attention_mask is None \
            else _small(attention_mask, (b, t), "attention_mask").astype(bool)
        keep = valid.copy()
        if counted is not None:
            keep &= _small(counted, (b, t), "counted").astype(bool)
        # Position from the document's start, counting real tokens (padding may be left).
        pos = np.cumsum(valid, axis=1) - 1
        for s in self.sinks:
            keep &= pos != s
        if doc_ids is None:
            docs = np.arange(self.next_doc_id, self.next_doc_id + b, dtype=np.int64)
        else:
            docs = _small(doc_ids, (b,), "doc_ids").astype(np.int64)
        self.next_doc_id = int(docs.max()) + 1 if b else self.next_doc_id
        rows_doc = np.broadcast_to(docs[:, None], (b, t))
        tok = None if input_ids is None else _small(input_ids, (b, t), "input_ids").astype(np.int64)
        padded = not valid.all()
        sel = valid.reshape(-1)

        def rows(a):
            a = np.ascontiguousarray(a).reshape(-1)
            return np.ascontiguousarray(a[sel]) if padded else a

        mask = rows(keep).astype(np.uint8)
        tok = None if tok is None else rows(tok)
        rdoc = rows(rows_doc)
        if _is_torch(hidden) and hidden.is_cuda:
            self._feed_cuda(hidden, sel, padded, mask, tok, rdoc)
        else:
            x = self._host_rows(hidden, sel, padded, d)
            check(lib().sae_stats_accumulate_host(self.stats._s, self.sae._handle(), _ptr(x),
                                                  x.shape[0], d, _ptr(mask), _ptr(tok),
                                                  _ptr(rdoc)))
        self.n_rows += int(mask.shape[0])

    @staticmethod
    def _host_rows(hidden, sel, padded, d):
        """float32 [rows, d] numpy of the real tokens: a view when nothing is padded and the
        tensor is float32 and contiguous, else one gathered copy."""
        if _is_torch(hidden):
            import torch

            flat = hidden.detach().reshape(-1, d)
            if padded:
                flat = flat[torch.from_numpy(sel).to(flat.device)]
            return _host(flat, np.float32, "activations")
        flat = np.asarray(hidden).reshape(-1, d)
        return _host(flat[sel] if padded else flat, np.float32, "activations")

    def _feed_cuda(self, hidden, sel, padded, mask, tok, rdoc):
        import torch

        d = hidden.shape[2]
        x = hidden.detach().reshape(-1, d)
        if padded:
            x = x[torch.from_numpy(sel).to(x.device)]
        x = x.to(torch.float32)
        if not (self.sae.has_device_pointers and self.sae.is_topk):
            # A CPU engine (or a threshold SAE, which has no device entry point) with a CUDA
            # tensor: one copy to the host, then the host path.
            xh = _host(x.cpu(), np.float32, "activations")
            check(lib().sae_stats_accumulate_host(self.stats._s, self.sae._handle(), _ptr(xh),
                                                  xh.shape[0], d, _ptr(mask), _ptr(tok),
                                                  _ptr(rdoc)))
            return
        norms = torch.linalg.vector_norm(x.to(torch.float64), dim=1)
        if not torch.isfinite(norms).all():
            row = int((~torch.isfinite(norms)).nonzero()[0])
            raise SaeError(6, f"activations: non-finite value (NaN or inf) in input row {row}")
        kept = x[torch.from_numpy(mask.astype(bool)).to(x.device)].contiguous()
        if kept.shape[0]:
            codes = self.sae.encode(kept)
            # .cpu() waits for the encode, which runs on torch's current stream.
            idx = np.ascontiguousarray(codes.indices.cpu().numpy())
            val = np.ascontiguousarray(codes.values.cpu().numpy())
        else:
            idx = np.empty((0, self.sae.k), np.int32)
            val = np.empty((0, self.sae.k), np.float32)
        norms = np.ascontiguousarray(norms.cpu().numpy())
        check(lib().sae_stats_accumulate_topk_rows(self.stats._s, _ptr(idx), _ptr(val),
                                                   idx.shape[0], idx.shape[1], _ptr(norms),
                                                   mask.shape[0], _ptr(mask), _ptr(tok),
                                                   _ptr(rdoc)))

    # -- results -----------------------------------------------------------------------------

    @property
    def n_tokens(self):
        """Tokens counted so far."""
        return self.stats.n_tokens

    def provenance_options(self):
        """What the file's provenance records about where its rows came from."""
        return {
            "source": "transformers forward hook",
            "model": self.model_name,
            "layer": self.layer,
            "hook": f"blocks.{self.layer}.hook_resid_post",
            "hf_hidden_states_index": self.layer + 1,
            "sink_positions": ",".join(str(s) for s in self.sinks),
            "mask": True,
            "outlier_factor": self.outlier_factor,
            "sae": getattr(self.sae, "path", None),
            "sae_fingerprint": self.sae.fingerprint,
            "backend": self.sae.backend,
        }

    def write(self, path, **extra):
        """Writes the statistics file `sae stats` writes (atomically), with a provenance
        record naming the hook (command "stats hook"); `extra` adds options to it."""
        opts = dict(self.provenance_options(), **extra)
        check(lib().sae_stats_write_with_provenance(self.stats._s, str(path).encode(),
                                                    b"stats hook", json.dumps(opts).encode()))

    def remove(self):
        """Unhooks the model (the statistics stay readable and writable)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def attach(model, layer, sae, **kwargs):
    """A `StatsHook` on block `layer` of `model` (see `StatsHook`)."""
    return StatsHook(model, layer, sae, **kwargs)


def _small(a, shape, name):
    """A small per-token array (mask, ids) as numpy with the expected shape."""
    if _is_torch(a):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.shape != shape:
        raise SaeError(5, f"`{name}` has shape {a.shape}, expected {shape}")
    return a
