#!/usr/bin/env bash
# Installs the C library into a prefix the way cargo-c's `cargo cinstall` lays it out:
#
#   PREFIX/lib/libsae_engine.so.0.1.0      shared library, soname libsae_engine.so.0.1
#   PREFIX/lib/libsae_engine.so.0.1 -> libsae_engine.so.0.1.0
#   PREFIX/lib/libsae_engine.so     -> libsae_engine.so.0.1.0
#   PREFIX/lib/libsae_engine.a             static library
#   PREFIX/lib/pkgconfig/sae-engine.pc     Libs, Libs.private (the static library's system
#                                          libraries, as rustc reports them), Cflags
#   PREFIX/include/sae-engine/sae_engine.h the committed, cbindgen-generated header
#
#   bash tools/install-c.sh --prefix DIR [--release] [--libdir DIR]
#
# Then: PKG_CONFIG_PATH=DIR/lib/pkgconfig pkg-config --cflags --libs sae-engine
# The soname follows cargo-c's rule: 0.MINOR while the major version is 0, else MAJOR.
# Nothing is written to the prefix until both libraries are built; files are copied under
# temporary names and renamed, so an interrupted install leaves the previous files or none.
# Environment: CARGO_TARGET_DIR (the build folder, default target/), CARGO (default cargo).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

prefix=""
libdir=""
profile=debug
release=()
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || usage; prefix="$2"; shift 2 ;;
        --prefix=*) prefix="${1#--prefix=}"; shift ;;
        --libdir) [ $# -ge 2 ] || usage; libdir="$2"; shift 2 ;;
        --libdir=*) libdir="${1#--libdir=}"; shift ;;
        --release) release=(--release); profile=release; shift ;;
        -h | --help) usage ;;
        *) echo "install-c.sh: unknown argument \`$1\`" >&2; usage ;;
    esac
done
[ -n "$prefix" ] || { echo "install-c.sh: --prefix DIR is required" >&2; usage; }
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
libdir="${libdir:-$prefix/lib}"
cargo="${CARGO:-cargo}"
target="${CARGO_TARGET_DIR:-$root/target}"

manifest="$root/ffi/Cargo.toml"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$manifest" | head -n 1)"
[[ "$version" =~ ^([0-9]+)\.([0-9]+)\.([0-9]+) ]] || {
    echo "install-c.sh: cannot read the version of $manifest (got \`$version\`)" >&2
    exit 1
}
major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
if [ "$major" = 0 ]; then soversion="0.$minor"; else soversion="$major"; fi
name=sae_engine
soname="lib$name.so.$soversion"
real="lib$name.so.$version"

cd "$root"
# The shared library with its soname (only the ffi crate is relinked for the flag).
"$cargo" rustc -p sae-engine-ffi --lib --crate-type cdylib "${release[@]}" -- \
    -C "link-arg=-Wl,-soname,$soname"
cp "$target/$profile/libsae_engine_ffi.so" "$target/$profile/$real.staged"
# The static library, and the system libraries it needs (rustc's native-static-libs note;
# cargo replays it when the build is fresh).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$cargo" rustc -p sae-engine-ffi --lib --crate-type staticlib "${release[@]}" -- \
    --print native-static-libs 2> "$log" || { cat "$log" >&2; exit 1; }
private="$(sed -n 's/.*native-static-libs: //p' "$log" | tail -n 1)"
[ -n "$private" ] || {
    echo "install-c.sh: rustc did not report the static library's native libraries:" >&2
    cat "$log" >&2
    exit 1
}

# put SRC DEST: copies under a temporary name, then renames.
put() {
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
}
put "$target/$profile/$real.staged" "$libdir/$real"
rm -f "$target/$profile/$real.staged"
ln -sfn "$real" "$libdir/$soname"
ln -sfn "$real" "$libdir/lib$name.so"
put "$target/$profile/libsae_engine_ffi.a" "$libdir/lib$name.a"
put "$root/ffi/include/sae_engine.h" "$prefix/include/sae-engine/sae_engine.h"

pc="$(mktemp)"
cat > "$pc" <<EOF
prefix=$prefix
exec_prefix=\${prefix}
libdir=$libdir
includedir=\${prefix}/include

Name: sae-engine
Description: Sparse autoencoder engine (encode, decode, statistics) over a C ABI
Version: $version
Libs: -L\${libdir} -l$name
Libs.private: $private
Cflags: -I\${includedir}/sae-engine
EOF
put "$pc" "$libdir/pkgconfig/sae-engine.pc"
rm -f "$pc"
echo "installed sae-engine $version into $prefix (lib: $libdir, soname $soname)"
