"""Loading libsae_engine_ffi and declaring the C signatures (see ffi/include/sae_engine.h)."""

import ctypes
import os
import sys
from pathlib import Path

_LIB_NAMES = {
    "linux": "libsae_engine_ffi.so",
    "darwin": "libsae_engine_ffi.dylib",
    "win32": "sae_engine_ffi.dll",
}

# Status codes, numbered as in the header (SaeStatus). Never renumbered.
STATUS_NAMES = [
    "OK",
    "NULL_ARGUMENT",
    "INVALID_ARGUMENT",
    "IO",
    "FORMAT",
    "SHAPE",
    "NON_FINITE",
    "INCOMPATIBLE",
    "BACKEND_UNAVAILABLE",
    "CUDA",
    "PANIC",
    "UNSUPPORTED",
    "BUFFER_TOO_SMALL",
]
OK = 0
BUFFER_TOO_SMALL = STATUS_NAMES.index("BUFFER_TOO_SMALL")


def _packaged():
    """The library a wheel carries: sae_engine/_native<EXT_SUFFIX> (setuptools-rust)."""
    here = Path(__file__).resolve().parent
    return sorted(p for p in here.glob("_native*") if p.suffix in (".so", ".dylib", ".pyd", ".dll"))


def _candidates():
    """Where a cargo build leaves the library: $CARGO_TARGET_DIR, then <repo>/target."""
    name = _LIB_NAMES.get(sys.platform, _LIB_NAMES["linux"])
    roots = []
    if os.environ.get("CARGO_TARGET_DIR"):
        roots.append(Path(os.environ["CARGO_TARGET_DIR"]))
    # ffi/python/sae_engine/_lib.py -> repository root is three levels up (in a checkout).
    parents = Path(__file__).resolve().parents
    if len(parents) > 3:
        roots.append(parents[3] / "target")
    for root in roots:
        for profile in ("release", "debug"):
            yield root / profile / name


def find_library():
    """Path of the shared library: the one inside the installed package (a wheel), else
    $SAE_ENGINE_LIB, else the newest cargo build found in the checkout."""
    packaged = _packaged()
    if packaged:
        return str(packaged[0])
    env = os.environ.get("SAE_ENGINE_LIB")
    if env:
        if not Path(env).is_file():
            raise OSError(f"SAE_ENGINE_LIB={env} is not a file")
        return env
    found = [p for p in _candidates() if p.is_file()]
    if not found:
        tried = ", ".join(str(p) for p in _candidates())
        raise OSError(
            "libsae_engine_ffi not found: install the package with `pip install ./ffi/python`, "
            "build it with `cargo build -p sae-engine-ffi`, or set SAE_ENGINE_LIB "
            f"(looked in the package, then: {tried})"
        )
    # Several profiles may be built; the newest is the one the user just rebuilt.
    return str(max(found, key=lambda p: p.stat().st_mtime))


_sz = ctypes.c_size_t
_p = ctypes.c_void_p
_cs = ctypes.c_char_p
_st = ctypes.c_int

# name: (restype, argtypes)
_SIGNATURES = {
    "sae_version": (_cs, []),
    "sae_status_string": (_cs, [ctypes.c_int32]),
    "sae_last_error_message": (_sz, [_p, _sz]),
    "sae_open": (_st, [_cs, _cs, _cs, _sz, ctypes.POINTER(_p)]),
    "sae_free": (None, [_p]),
    "sae_d_in": (_sz, [_p]),
    "sae_n_latents": (_sz, [_p]),
    "sae_k": (_sz, [_p]),
    "sae_is_topk": (ctypes.c_bool, [_p]),
    "sae_normalizes_input": (ctypes.c_bool, [_p]),
    "sae_has_device_pointers": (ctypes.c_bool, [_p]),
    "sae_backend_name": (_sz, [_p, _p, _sz]),
    "sae_fingerprint": (_sz, [_p, _p, _sz]),
    "sae_encode_topk_host": (_st, [_p, _p, _sz, _sz, _p, _p, _sz, _p, _p]),
    "sae_encode_csr_host": (_st, [_p, _p, _sz, _sz, _p, _p, _p, _sz, ctypes.POINTER(_sz), _p, _p]),
    "sae_decode_topk_host": (_st, [_p, _p, _p, _sz, _sz, _p, _p, _p, _sz]),
    "sae_decode_csr_host": (_st, [_p, _p, _p, _p, _sz, _p, _p, _p, _sz]),
    "sae_encode_topk_device": (_st, [_p, _p, _sz, _sz, _p, _p, _sz, _p, _p, _p]),
    "sae_decode_topk_device": (_st, [_p, _p, _p, _sz, _sz, _p, _p, _p, _sz, _p]),
    "sae_stats_new": (_st, [_p, ctypes.POINTER(_p)]),
    "sae_stats_free": (None, [_p]),
    "sae_stats_accumulate_topk": (_st, [_p, _p, _p, _sz, _sz, _p]),
    "sae_stats_accumulate_csr": (_st, [_p, _p, _p, _p, _sz, _p]),
    "sae_stats_merge": (_st, [_p, _p]),
    "sae_stats_n_latents": (_sz, [_p]),
    "sae_stats_n_tokens": (ctypes.c_uint64, [_p]),
    "sae_stats_get": (_st, [_p, _sz, _p, _p, _p, _p]),
    "sae_stats_fingerprint": (_sz, [_p, _p, _sz]),
    "sae_stats_write": (_st, [_p, _cs]),
    "sae_stats_read": (_st, [_cs, ctypes.POINTER(_p)]),
    "sae_stats_accumulate_host": (_st, [_p, _p, _p, _sz, _sz, _p, _p, _p]),
    "sae_stats_accumulate_topk_rows": (_st, [_p, _p, _p, _sz, _sz, _p, _sz, _p, _p, _p]),
    "sae_stats_set_outlier_factor": (_st, [_p, ctypes.c_double]),
    "sae_stats_write_with_provenance": (_st, [_p, _cs, _cs, _cs]),
}

_lib = None


def lib():
    """The loaded library with every signature declared (loaded on first use)."""
    global _lib
    if _lib is None:
        handle = ctypes.CDLL(find_library())
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = handle
    return _lib


def read_string(fn, *args):
    """Calls a two-call string getter `fn(*args, buf, len) -> size needed`."""
    need = fn(*args, None, 0)
    if need == 0:
        return ""
    buf = ctypes.create_string_buffer(need)
    fn(*args, buf, need)
    return buf.value.decode("utf-8", "replace")


class SaeError(Exception):
    """A non-OK status from the library, with its name and the library's message."""

    def __init__(self, status, message):
        self.status = status
        self.name = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else "UNKNOWN"
        self.message = message
        super().__init__(f"SAE_STATUS_{self.name}: {message}")


def check(status):
    """Raises SaeError for a non-OK status, with the thread's last error message."""
    if status != OK:
        raise SaeError(status, read_string(lib().sae_last_error_message))
