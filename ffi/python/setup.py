"""Builds the wheel: the ctypes package plus libsae_engine_ffi compiled by cargo.

    pip install ./ffi/python                      # release build of ffi/ (a few minutes)
    SAE_ENGINE_WHEEL_PROFILE=debug pip wheel ./ffi/python -w dist   # CI: dev profile

Needs a Rust toolchain (cargo) and the repository around this folder: the crate is
../Cargo.toml, so build from a checkout (pip builds in place), not from an sdist.
"""

import os

from setuptools import setup
from setuptools_rust import Binding, RustExtension

_profile = os.environ.get("SAE_ENGINE_WHEEL_PROFILE", "release")
if _profile not in ("release", "debug"):
    raise SystemExit(f"SAE_ENGINE_WHEEL_PROFILE={_profile}: expected release or debug")

setup(
    rust_extensions=[
        RustExtension(
            # The cdylib lands as sae_engine/_native<EXT_SUFFIX>; it has no Python symbols
            # (NoBinding): _lib.py opens it with ctypes.
            "sae_engine._native",
            path=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Cargo.toml"),
            binding=Binding.NoBinding,
            debug=_profile == "debug",
        )
    ],
    zip_safe=False,
)
