"""The ctypes declarations in sae_engine/_lib.py against the committed C header
(ffi/include/sae_engine.h): every bound function exists in the header with the same
number of arguments and ctypes types that match its C types, and every function the
header exports is bound or listed in UNBOUND with the reason. Needs neither numpy nor
the built library. Run: python3 -m unittest discover -s ffi/python/tests"""

import ctypes
import importlib.util
import re
import unittest
from pathlib import Path

FFI = Path(__file__).resolve().parents[2]
HEADER = FFI / "include" / "sae_engine.h"
LIB_PY = FFI / "python" / "sae_engine" / "_lib.py"

# Header functions the Python binding deliberately does not declare: name -> why.
UNBOUND = {}

# C scalar types (after dropping `const`) and the ctypes type each must be bound as.
# Aliases compare equal where the platform makes them one type (c_size_t is c_ulong on
# 64-bit Linux), which is exactly when they are interchangeable in the ABI.
SCALARS = {
    "bool": ctypes.c_bool,
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "uint32_t": ctypes.c_uint32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    # A C enum is passed as an int.
    "enum SaeStatus": ctypes.c_int,
}


def load_signatures(path=LIB_PY):
    """`_SIGNATURES` of the binding, loaded from its file alone (its package __init__
    imports numpy; the module itself loads the library only on first use)."""
    spec = importlib.util.spec_from_file_location("sae_engine_lib_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._SIGNATURES


def parse_header(text):
    """{name: (return type, [argument types])} of every function prototype in a
    cbindgen-generated header, types with whitespace normalized and names dropped."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)
    # Type definitions hold no prototypes and their braces would confuse the scan.
    text = re.sub(r"typedef\s+(enum|struct)\s+\w+\s*\{.*?\}\s*\w+\s*;", " ", text, flags=re.S)
    protos = {}
    for m in re.finditer(r"([A-Za-z_][\w\s\*]*?)\b(\w+)\s*\(([^()]*)\)\s*;", text):
        ret, name, args = m.group(1), m.group(2), m.group(3)
        if ret.strip().startswith("typedef"):
            continue
        params = [] if args.strip() in ("", "void") else [drop_name(a) for a in args.split(",")]
        if name in protos:
            raise ValueError(f"{name} is declared twice in the header")
        protos[name] = (normalize(ret), params)
    return protos


def normalize(c_type):
    """`const struct SaeHandle *` -> `const struct SaeHandle *` with single spaces and
    the stars attached: one spelling per type."""
    t = re.sub(r"\s*\*\s*", " *", " ".join(c_type.split()))
    return t.replace("* *", "**").strip()


def drop_name(param):
    """The type of one parameter declaration (`const float *x` -> `const float *`)."""
    param = " ".join(param.split())
    m = re.match(r"(.*?[\s\*])(\w+)$", param)
    if not m or not m.group(1).strip():
        raise ValueError(f"cannot read the parameter {param!r}")
    return normalize(m.group(1))


def allowed(c_type):
    """The ctypes types that may stand for `c_type` (None for a void return)."""
    t = c_type.replace("const ", "").strip()
    if t == "void":
        return [None]
    stars = t.count("*")
    base = t.replace("*", "").strip()
    if stars == 0:
        if base not in SCALARS:
            raise ValueError(f"no ctypes mapping for the C type {c_type!r}")
        return [SCALARS[base]]
    if stars == 2:
        # An out-parameter for a handle (`struct SaeStats **`) or any pointer.
        return [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    # A data pointer may be passed untyped (numpy / torch data pointers) or typed.
    options = [ctypes.c_void_p]
    if base == "char":
        options.append(ctypes.c_char_p)
    elif base in SCALARS:
        options.append(ctypes.POINTER(SCALARS[base]))
    return options


def type_name(t):
    return "None" if t is None else getattr(t, "__name__", repr(t))


def mismatches(header, signatures, unbound=UNBOUND):
    """Every disagreement between the header's prototypes and the binding, one line each."""
    problems = []
    for name, (restype, argtypes) in sorted(signatures.items()):
        if name not in header:
            problems.append(f"{name}: bound in _lib.py but not in the header")
            continue
        c_ret, c_args = header[name]
        if restype not in allowed(c_ret):
            problems.append(f"{name}: returns {c_ret!r} in the header, bound as {type_name(restype)}")
        if len(argtypes) != len(c_args):
            problems.append(f"{name}: {len(c_args)} arguments in the header, {len(argtypes)} bound")
            continue
        for i, (bound, c_arg) in enumerate(zip(argtypes, c_args)):
            if bound not in allowed(c_arg):
                problems.append(f"{name}: argument {i} is {c_arg!r} in the header, bound as {type_name(bound)}")
    for name in sorted(set(header) - set(signatures)):
        if name not in unbound:
            problems.append(f"{name}: exported by the header but neither bound nor listed in UNBOUND")
    for name in sorted(set(unbound) & set(signatures)):
        problems.append(f"{name}: listed in UNBOUND but bound")
    return problems


class HeaderSignaturesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = HEADER.read_text()
        cls.header = parse_header(cls.text)
        cls.signatures = load_signatures()

    def test_the_binding_matches_the_header(self):
        self.assertEqual(mismatches(self.header, self.signatures), [])

    def test_the_parser_reads_every_prototype(self):
        # Each exported function appears as `name(` once in a prototype; the parser must
        # find all of them, or a function it missed would escape the check.
        names = set(re.findall(r"\b(sae_\w+)\s*\(", re.sub(r"/\*.*?\*/", " ", self.text, flags=re.S)))
        self.assertEqual(set(self.header), names)
        self.assertEqual(
            self.header["sae_stats_get"],
            ("enum SaeStatus", ["const struct SaeStats *", "size_t", "double *", "double *", "uint64_t *", "float *"]),
        )
        self.assertEqual(self.header["sae_version"], ("const char *", []))
        self.assertEqual(self.header["sae_stats_read"][1], ["const char *", "struct SaeStats **"])

    def mutated(self, old, new):
        self.assertEqual(self.text.count(old), 1, old)
        return parse_header(self.text.replace(old, new))

    def test_a_changed_argument_type_is_caught(self):
        header = self.mutated("size_t sae_stats_n_latents(const struct SaeStats *stats);",
                              "size_t sae_stats_n_latents(uint32_t stats);")
        self.assertEqual(
            mismatches(header, self.signatures),
            ["sae_stats_n_latents: argument 0 is 'uint32_t' in the header, bound as c_void_p"],
        )
        header = self.mutated("const char *sae_status_string(int32_t code);",
                              "const char *sae_status_string(double code);")
        self.assertEqual(len(mismatches(header, self.signatures)), 1)

    def test_an_added_or_removed_argument_is_caught(self):
        header = self.mutated("enum SaeStatus sae_stats_merge(struct SaeStats *dst, const struct SaeStats *src);",
                              "enum SaeStatus sae_stats_merge(struct SaeStats *dst, const struct SaeStats *src, size_t n);")
        self.assertEqual(
            mismatches(header, self.signatures),
            ["sae_stats_merge: 3 arguments in the header, 2 bound"],
        )
        sigs = dict(self.signatures)
        restype, argtypes = sigs["sae_free"]
        sigs["sae_free"] = (restype, argtypes + [ctypes.c_size_t])
        self.assertEqual(mismatches(self.header, sigs), ["sae_free: 1 arguments in the header, 2 bound"])

    def test_a_changed_return_type_is_caught(self):
        header = self.mutated("uint64_t sae_stats_n_tokens(const struct SaeStats *stats);",
                              "float sae_stats_n_tokens(const struct SaeStats *stats);")
        self.assertEqual(
            mismatches(header, self.signatures),
            [f"sae_stats_n_tokens: returns 'float' in the header, bound as {type_name(ctypes.c_uint64)}"],
        )

    def test_an_unbound_or_vanished_function_is_caught(self):
        header = dict(self.header)
        header["sae_new_thing"] = ("enum SaeStatus", ["const struct SaeHandle *"])
        self.assertEqual(
            mismatches(header, self.signatures),
            ["sae_new_thing: exported by the header but neither bound nor listed in UNBOUND"],
        )
        self.assertEqual(mismatches(header, self.signatures, {"sae_new_thing": "why"}), [])
        del header["sae_k"]
        self.assertIn("sae_k: bound in _lib.py but not in the header", mismatches(header, self.signatures))


if __name__ == "__main__":
    unittest.main()
