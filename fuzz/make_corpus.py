#!/usr/bin/env python3
"""Writes the fuzz seed corpus (fuzz/corpus/<target>/): small valid inputs of every
format a target reads, so that coverage-guided fuzzing starts from real structure.
Standard library only; the output is deterministic. Run from anywhere:
    python3 fuzz/make_corpus.py
"""
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"


def npy(descr, shape, data, version=1):
    """An .npy file: magic, version, little-endian header length, padded dict, data."""
    dims = "".join(f"{s}," for s in shape) if len(shape) == 1 else ", ".join(map(str, shape))
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    prefix = 10 if version == 1 else 12
    text += " " * ((64 - (prefix + len(text) + 1) % 64) % 64) + "\n"
    size = struct.pack("<H" if version == 1 else "<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + size + text.encode("latin1") + data


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def f16(values):
    return struct.pack(f"<{len(values)}e", *values)


def bf16(values):
    # The upper half of each f32 (truncation is enough for seed data).
    return b"".join(struct.pack("<f", v)[2:] for v in values)


def safetensors(tensors, metadata=None):
    """A .safetensors file: u64 header length, JSON header, tensor bytes in order."""
    header, offset, body = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        body += data
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + body


def npz(members, method):
    """An .npz archive with fixed timestamps (deterministic bytes)."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            info = zipfile.ZipInfo(name + ".npy", date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = method
            z.writestr(info, data)
    return buf.getvalue()


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    acts = [0.5 * i - 3.0 for i in range(4 * 6)]

    write("npy", "f32_4x6.npy", npy("<f4", [4, 6], f32(acts)))
    write("npy", "f16_4x6.npy", npy("<f2", [4, 6], f16(acts)))
    write("npy", "bf16_4x6.npy", npy("<V2", [4, 6], bf16(acts)))
    write("npy", "f32_v2_header.npy", npy("<f4", [3, 2], f32(acts[:6]), version=2))
    write("npy", "empty_0x8.npy", npy("<f4", [0, 8], b""))

    members = [
        ("W_enc", npy("<f4", [6, 4], f32(acts))),
        ("b_enc", npy("<f4", [4], f32(acts[:4]))),
        ("threshold", npy("<f2", [4], f16(acts[:4]))),
        ("tokens", npy("<i8", [3], struct.pack("<3q", 1, 2, 3))),
    ]
    write("npz", "stored.npz", npz(members, zipfile.ZIP_STORED))
    write("npz", "deflated.npz", npz(members, zipfile.ZIP_DEFLATED))

    n = 4
    write(
        "safetensors",
        "acts_ids_mask.safetensors",
        safetensors(
            [
                ("activations", "F32", [n, 6], f32(acts)),
                ("token_ids", "I64", [n], struct.pack(f"<{n}q", 5, 6, 7, 8)),
                ("doc_ids", "I32", [n], struct.pack(f"<{n}i", 0, 0, 1, 1)),
                ("mask", "BOOL", [n], bytes([1, 0, 1, 1])),
            ],
            {"layer": "3", "hook": "resid_post", "model": "seed"},
        ),
    )
    write(
        "safetensors",
        "bf16_acts.safetensors",
        safetensors([("activations", "BF16", [n, 6], bf16(acts))]),
    )
    write(
        "safetensors",
        "f16_u8mask.safetensors",
        safetensors(
            [
                ("activations", "F16", [n, 6], f16(acts)),
                ("mask", "U8", [n], bytes([255, 0, 1, 0])),
            ]
        ),
    )

    # The arrow target reads column `blocks.0.hook_resid_post` (context 3, width 4):
    # the SAELens cache fixture the integration tests use.
    for f in sorted((ROOT / "tests/fixtures/saelens_cache").glob("*.arrow")):
        write("arrow", f.name, f.read_bytes())

    # The restricted unpickler: the containers and scalars a torch checkpoint's
    # data.pkl is built from, at the protocols torch writes.
    value = {"W_enc": [1.5, -2.0], "cfg": {"d_in": 4, "name": "seed", "on": True}, "t": (1, None)}
    for protocol in (2, 4):
        write("pickle", f"dict_p{protocol}.pkl", pickle.dumps(value, protocol=protocol))


if __name__ == "__main__":
    main()
