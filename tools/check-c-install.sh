#!/usr/bin/env bash
# CI check of the C install: tools/install-c.sh into a temporary prefix, then the C++ example
# (examples/cpp) built against ONLY that prefix through pkg-config, once with the shared and
# once with the static library, run on the committed fixture SAE; its output must equal
# examples/cpp/expected.txt (written by examples/cpp/make_fixture.py from a numpy reference).
#
#   bash tools/check-c-install.sh [--release]
#
# Prints `ok ...` lines; exits non-zero on the first failure. The prefix and the build are
# removed at the end. Environment: CARGO_TARGET_DIR, CXX (default c++).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d /tmp/sae-c-install.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "FAIL $*" >&2
    exit 1
}

bash "$root/tools/install-c.sh" --prefix "$tmp/prefix" "$@"
prefix="$tmp/prefix"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/ffi/Cargo.toml" | head -n 1)"
for f in lib/libsae_engine.so lib/libsae_engine.a lib/pkgconfig/sae-engine.pc include/sae-engine/sae_engine.h; do
    [ -e "$prefix/$f" ] || fail "the prefix has no $f"
done
soname="$(readelf -d "$prefix/lib/libsae_engine.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')"
[ -n "$soname" ] && [ -L "$prefix/lib/$soname" ] || fail "soname \`$soname\` has no link in $prefix/lib"
echo "ok installed: shared (soname $soname), static, header, pkg-config"

# Only the prefix: no system or inherited pkg-config path.
export PKG_CONFIG_LIBDIR="$prefix/lib/pkgconfig" PKG_CONFIG_PATH=""
[ "$(pkg-config --modversion sae-engine)" = "$version" ] || fail "pkg-config --modversion is not $version"
pkg-config --static --libs sae-engine | grep -q -- '-lpthread\|-lc' || fail "Libs.private lacks the system libraries"
mkdir -p "$tmp/build"
cp "$root/examples/cpp/encode.cpp" "$root/examples/cpp/Makefile" "$tmp/build/"
make -s -C "$tmp/build" all static
echo "ok built examples/cpp against the prefix (shared and static)"

ldd "$tmp/build/encode" | grep -q "$soname => $prefix/lib/" || fail "encode does not load $soname from the prefix: $(ldd "$tmp/build/encode")"
if ldd "$tmp/build/encode-static" | grep -q libsae_engine; then
    fail "encode-static still loads the shared library"
fi
for exe in encode encode-static; do
    out="$tmp/$exe.out"
    env -u LD_LIBRARY_PATH "$tmp/build/$exe" "$root/examples/cpp/fixture-sae" > "$out" ||
        fail "$exe exited with $?"
    head -n 1 "$out" | grep -q "^sae-engine $version: d_in=8 n_latents=32 k=4 backend=cpu" ||
        fail "$exe's first line: $(head -n 1 "$out")"
    tail -n +2 "$out" | diff -u "$root/examples/cpp/expected.txt" - || fail "$exe's codes differ from examples/cpp/expected.txt"
    echo "ok $exe: codes and reconstructions equal the numpy reference"
done
