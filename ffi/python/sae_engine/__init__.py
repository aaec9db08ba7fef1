"""Python binding of sae-engine over its C ABI (ctypes + numpy).

numpy arrays that are already C-contiguous with the right dtype are used in place
(no copy); outputs can be preallocated and passed with ``out=``. torch tensors are
accepted too: CPU tensors through their data pointers, CUDA tensors through the
device-pointer entry points on torch's current stream (needs a CUDA backend).

    sae = Sae("path/to/sae", backend="cpu")
    codes = sae.encode(x)                 # x: float32 [rows, d_in]
    x_hat = sae.decode(codes)
    stats = Stats(sae); stats.accumulate(codes, mask); stats.write("shard.safetensors")

Statistics straight from a running transformers model, without a dump: `StatsHook` /
`attach` (sae_engine.hook).
"""

import ctypes
from collections import namedtuple

import numpy as np

from ._lib import SaeError, check, find_library, lib, read_string, BUFFER_TOO_SMALL

__all__ = ["Sae", "Stats", "StatsHook", "attach", "SaeError", "TopKCodes", "CsrCodes",
           "find_library", "version"]

TopKCodes = namedtuple("TopKCodes", "indices values scale shift")
TopKCodes.__doc__ = """Fixed-width codes: indices int32 / values float32 [rows, k], largest first,
padded with index -1 / value 0; scale, shift float32 [rows] undo input normalization
(None when the SAE does not normalize)."""
CsrCodes = namedtuple("CsrCodes", "row_ptr indices values scale shift")
CsrCodes.__doc__ = """CSR codes: row_ptr int64 [rows + 1], indices int32 (ascending per row),
values float32; scale, shift as in TopKCodes."""


def version():
    """The library's version string."""
    return lib().sae_version().decode()


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch"


def _ptr(a):
    """Address of a numpy array or torch tensor (None for None or an empty array)."""
    if a is None:
        return None
    if _is_torch(a):
        return a.data_ptr() or None
    return a.ctypes.data or None


def _host(a, dtype, name, shape=None):
    """A C-contiguous numpy array of `dtype`: `a` itself when it already is one."""
    if _is_torch(a):
        import torch

        if a.is_cuda:
            raise SaeError(2, f"`{name}` is a CUDA tensor where a host array is expected")
        want = {np.float32: torch.float32, np.int32: torch.int32, np.int64: torch.int64,
                np.uint8: torch.uint8}[dtype]
        a = a.detach().to(want).contiguous()
        # Share the tensor's memory: numpy() on a contiguous CPU tensor is a view.
        arr = a.numpy()
    else:
        arr = np.ascontiguousarray(a, dtype=dtype)
    if shape is not None and arr.shape != shape:
        raise SaeError(5, f"`{name}` has shape {arr.shape}, expected {shape}")
    return arr


def _out(out, shape, dtype, name):
    """A caller-given output (checked, used in place) or a fresh array."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if _is_torch(out):
        # Written in place through a numpy view, so no conversion is allowed here.
        if out.is_cuda or not out.is_contiguous() or tuple(out.shape) != shape:
            raise SaeError(2, f"`{name}` must be a contiguous CPU tensor of shape {shape}")
        out = out.detach().numpy()
    if out.dtype != dtype or out.shape != shape or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise SaeError(2, f"`{name}` must be a writeable C-contiguous {np.dtype(dtype).name} "
                          f"array of shape {shape}")
    return out


class Sae:
    """An SAE loaded on a backend ("cpu", "cuda", "cuda:N" or "auto")."""

    def __init__(self, path, format=None, backend="auto", device=0):
        handle = ctypes.c_void_p()
        check(lib().sae_open(str(path).encode(), format.encode() if format else None,
                             backend.encode() if backend else None, int(device),
                             ctypes.byref(handle)))
        self._h = handle
        self.path = str(path)
        L = lib()
        self.d_in = L.sae_d_in(handle)
        self.n_latents = L.sae_n_latents(handle)
        self.k = L.sae_k(handle) or None
        self.is_topk = bool(L.sae_is_topk(handle))
        self.normalizes_input = bool(L.sae_normalizes_input(handle))
        self.has_device_pointers = bool(L.sae_has_device_pointers(handle))
        self.backend = read_string(L.sae_backend_name, handle)
        self.fingerprint = read_string(L.sae_fingerprint, handle)

    def close(self):
        """Releases the SAE and its backend (weights, device memory)."""
        if getattr(self, "_h", None):
            lib().sae_free(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        kind = f"topk k={self.k}" if self.is_topk else "threshold"
        return f"Sae(d_in={self.d_in}, n_latents={self.n_latents}, {kind}, backend={self.backend!r})"

    def _handle(self):
        if not self._h:
            raise SaeError(1, "this Sae is closed")
        return self._h

    # -- encode ---------------------------------------------------------------------------

    def encode(self, x, out=None):
        """Encodes x ([rows, d_in] float32): TopKCodes for TopK SAEs, else CsrCodes.
        `out=(indices, values)` writes top-k codes into preallocated arrays."""
        if _is_torch(x) and x.is_cuda:
            return self._encode_cuda(x, out)
        if not self.is_topk:
            return self.encode_csr(x)
        x = _host(x, np.float32, "x")
        rows = self._rows(x)
        idx = _out(out[0] if out else None, (rows, self.k), np.int32, "out indices")
        val = _out(out[1] if out else None, (rows, self.k), np.float32, "out values")
        scale, shift = self._denorm_out(rows)
        check(lib().sae_encode_topk_host(self._handle(), _ptr(x), rows, self.d_in, _ptr(idx),
                                         _ptr(val), self.k, _ptr(scale), _ptr(shift)))
        if out is not None:
            idx, val = out
        return TopKCodes(idx, val, scale, shift)

    def encode_csr(self, x, capacity=None):
        """Encodes x into CSR codes (any SAE). `capacity` bounds the entries expected;
        when too small the library reports the exact count and x is encoded again."""
        x = _host(x, np.float32, "x")
        rows = self._rows(x)
        if capacity is None:
            capacity = rows * min(self.n_latents, self.k or 64)
        row_ptr = np.empty(rows + 1, dtype=np.int64)
        scale, shift = self._denorm_out(rows)
        nnz = ctypes.c_size_t(0)
        for _ in range(2):
            idx = np.empty(capacity, dtype=np.int32)
            val = np.empty(capacity, dtype=np.float32)
            st = lib().sae_encode_csr_host(self._handle(), _ptr(x), rows, self.d_in,
                                           _ptr(row_ptr), _ptr(idx), _ptr(val), capacity,
                                           ctypes.byref(nnz), _ptr(scale), _ptr(shift))
            if st == BUFFER_TOO_SMALL:
                capacity = nnz.value
                continue
            check(st)
            n = nnz.value
            return CsrCodes(row_ptr, idx[:n], val[:n], scale, shift)
        check(st)

    def _rows(self, x):
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise SaeError(5, f"x has shape {x.shape}, expected [rows, {self.d_in}]")
        return x.shape[0]

    def _denorm_out(self, rows):
        if not self.normalizes_input:
            return None, None
        return np.empty(rows, dtype=np.float32), np.empty(rows, dtype=np.float32)

    # -- decode ---------------------------------------------------------------------------

    def decode(self, codes, out=None):
        """Decodes TopKCodes or CsrCodes back to [rows, d_in] float32 (de-normalized
        with the codes' scale/shift when present)."""
        if isinstance(codes, CsrCodes):
            return self.decode_csr(codes.row_ptr, codes.indices, codes.values,
                                   codes.scale, codes.shift, out)
        return self.decode_topk(codes.indices, codes.values, codes.scale, codes.shift, out)

    def decode_topk(self, indices, values, scale=None, shift=None, out=None):
        """Decodes fixed-width codes ([rows, k], index -1 = padding)."""
        if _is_torch(indices) and indices.is_cuda:
            return self._decode_cuda(indices, values, scale, shift, out)
        indices = _host(indices, np.int32, "indices")
        if indices.ndim != 2:
            raise SaeError(5, f"indices have shape {indices.shape}, expected [rows, k]")
        rows, k = indices.shape
        values = _host(values, np.float32, "values", (rows, k))
        scale, shift = self._denorm_in(scale, shift, rows)
        x = _out(out, (rows, self.d_in), np.float32, "out")
        check(lib().sae_decode_topk_host(self._handle(), _ptr(indices), _ptr(values), rows, k,
                                         _ptr(scale), _ptr(shift), _ptr(x), self.d_in))
        return out if out is not None else x

    def decode_csr(self, row_ptr, indices, values, scale=None, shift=None, out=None):
        """Decodes CSR codes."""
        row_ptr = _host(row_ptr, np.int64, "row_ptr")
        rows = row_ptr.shape[0] - 1
        if row_ptr.ndim != 1 or rows < 0:
            raise SaeError(5, "row_ptr must be 1-D with rows + 1 entries")
        indices = _host(indices, np.int32, "indices")
        values = _host(values, np.float32, "values", indices.shape)
        if indices.shape != (int(row_ptr[-1]),):
            raise SaeError(5, f"indices have shape {indices.shape}, row_ptr says {row_ptr[-1]}")
        scale, shift = self._denorm_in(scale, shift, rows)
        x = _out(out, (rows, self.d_in), np.float32, "out")
        check(lib().sae_decode_csr_host(self._handle(), _ptr(row_ptr), _ptr(indices),
                                        _ptr(values), rows, _ptr(scale), _ptr(shift), _ptr(x),
                                        self.d_in))
        return out if out is not None else x

    @staticmethod
    def _denorm_in(scale, shift, rows):
        if (scale is None) != (shift is None):
            raise SaeError(2, "pass both scale and shift, or neither")
        if scale is None:
            return None, None
        return (_host(scale, np.float32, "scale", (rows,)),
                _host(shift, np.float32, "shift", (rows,)))

    # -- torch CUDA tensors (device pointers, torch's current stream) ----------------------

    def _encode_cuda(self, x, out):
        import torch

        if not self.is_topk:
            raise SaeError(11, "CUDA tensors are encoded by TopK SAEs only; use a host array")
        x = x.detach().to(torch.float32).contiguous()
        rows = self._rows(x)
        dev = x.device
        idx = out[0] if out else torch.empty((rows, self.k), dtype=torch.int32, device=dev)
        val = out[1] if out else torch.empty((rows, self.k), dtype=torch.float32, device=dev)
        for t, dt, name in ((idx, torch.int32, "indices"), (val, torch.float32, "values")):
            if t.dtype != dt or tuple(t.shape) != (rows, self.k) or not t.is_contiguous() \
                    or t.device != dev:
                raise SaeError(2, f"out {name} must be a contiguous {dt} tensor "
                                  f"[{rows}, {self.k}] on {dev}")
        scale = shift = None
        if self.normalizes_input:
            scale = torch.empty(rows, dtype=torch.float32, device=dev)
            shift = torch.empty(rows, dtype=torch.float32, device=dev)
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev).cuda_stream
            check(lib().sae_encode_topk_device(self._handle(), _ptr(x), rows, self.d_in,
                                               _ptr(idx), _ptr(val), self.k, _ptr(scale),
                                               _ptr(shift), stream or None))
        return TopKCodes(idx, val, scale, shift)

    def _decode_cuda(self, indices, values, scale, shift, out):
        import torch

        dev = indices.device
        indices = indices.to(torch.int32).contiguous()
        rows, k = indices.shape
        values = values.to(device=dev, dtype=torch.float32).contiguous()
        if (scale is None) != (shift is None):
            raise SaeError(2, "pass both scale and shift, or neither")
        if scale is not None:
            scale = scale.to(device=dev, dtype=torch.float32).contiguous()
            shift = shift.to(device=dev, dtype=torch.float32).contiguous()
        x = out if out is not None else torch.empty((rows, self.d_in), dtype=torch.float32,
                                                    device=dev)
        with torch.cuda.device(dev):
            stream = torch.cuda.current_stream(dev).cuda_stream
            check(lib().sae_decode_topk_device(self._handle(), _ptr(indices), _ptr(values),
                                               rows, k, _ptr(scale), _ptr(shift), _ptr(x),
                                               self.d_in, stream or None))
        return x


class Stats:
    """Per-latent statistics (n_tokens, sum, sum_sq, n_active, max) that merge exactly
    across shards; files interoperate with `sae stats` and `sae stats merge`."""

    def __init__(self, sae=None, _handle=None):
        if _handle is None:
            if sae is None:
                raise SaeError(1, "Stats needs an Sae (or use Stats.read)")
            _handle = ctypes.c_void_p()
            check(lib().sae_stats_new(sae._handle(), ctypes.byref(_handle)))
        self._s = _handle

    @classmethod
    def read(cls, path):
        """Reads a statistics file."""
        h = ctypes.c_void_p()
        check(lib().sae_stats_read(str(path).encode(), ctypes.byref(h)))
        return cls(_handle=h)

    def close(self):
        if getattr(self, "_s", None):
            lib().sae_stats_free(self._s)
            self._s = None

    def __del__(self):
        self.close()

    @property
    def n_latents(self):
        return lib().sae_stats_n_latents(self._s)

    @property
    def n_tokens(self):
        return lib().sae_stats_n_tokens(self._s)

    @property
    def fingerprint(self):
        return read_string(lib().sae_stats_fingerprint, self._s)

    def accumulate(self, codes, mask=None):
        """Adds host codes (TopKCodes or CsrCodes); `mask` uint8 [rows], 0 = skip the row."""
        if isinstance(codes, CsrCodes):
            row_ptr = _host(codes.row_ptr, np.int64, "row_ptr")
            rows = row_ptr.shape[0] - 1
            idx = _host(codes.indices, np.int32, "indices")
            val = _host(codes.values, np.float32, "values", idx.shape)
            mask = None if mask is None else _host(mask, np.uint8, "mask", (rows,))
            check(lib().sae_stats_accumulate_csr(self._s, _ptr(row_ptr), _ptr(idx), _ptr(val),
                                                 rows, _ptr(mask)))
            return
        idx = _host(codes.indices, np.int32, "indices")
        if idx.ndim != 2:
            raise SaeError(5, f"indices have shape {idx.shape}, expected [rows, k]")
        rows, k = idx.shape
        val = _host(codes.values, np.float32, "values", (rows, k))
        mask = None if mask is None else _host(mask, np.uint8, "mask", (rows,))
        check(lib().sae_stats_accumulate_topk(self._s, _ptr(idx), _ptr(val), rows, k,
                                              _ptr(mask)))

    def merge(self, other):
        """Adds another shard's statistics of the same SAE."""
        check(lib().sae_stats_merge(self._s, other._s))

    def arrays(self):
        """dict of numpy arrays: sum, sum_sq (float64), n_active (uint64), max (float32)."""
        n = self.n_latents
        out = {"sum": np.empty(n, np.float64), "sum_sq": np.empty(n, np.float64),
               "n_active": np.empty(n, np.uint64), "max": np.empty(n, np.float32)}
        check(lib().sae_stats_get(self._s, n, _ptr(out["sum"]), _ptr(out["sum_sq"]),
                                  _ptr(out["n_active"]), _ptr(out["max"])))
        return out

    def mean(self):
        return self.arrays()["sum"] / max(self.n_tokens, 1)

    def freq(self):
        return self.arrays()["n_active"] / max(self.n_tokens, 1)

    def write(self, path):
        """Writes the statistics file (atomically)."""
        check(lib().sae_stats_write(self._s, str(path).encode()))

    def accumulate_rows(self, sae, x, mask=None, token_ids=None, doc_ids=None):
        """Encodes activation rows x ([rows, d_in] float32, host) with `sae` and accumulates
        them as `sae stats` does a dump's batch: `mask` uint8 [rows] (0 = left out),
        `token_ids` / `doc_ids` int64 [rows] (token digest, per-document sums; a document
        may continue in the next call). Records the counted rows' norms too."""
        x = _host(x, np.float32, "x")
        rows = sae._rows(x)
        cols = [None if a is None else _host(a, dt, name, (rows,)) for a, dt, name in
                ((mask, np.uint8, "mask"), (token_ids, np.int64, "token_ids"),
                 (doc_ids, np.int64, "doc_ids"))]
        check(lib().sae_stats_accumulate_host(self._s, sae._handle(), _ptr(x), rows, sae.d_in,
                                              *(_ptr(c) for c in cols)))


# After Sae and Stats exist: the hook module builds on them.
from .hook import StatsHook, attach  # noqa: E402
