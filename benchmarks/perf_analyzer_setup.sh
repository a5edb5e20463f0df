#!/usr/bin/env bash
# Triton's perf_analyzer for benchmarks/serve_throughput.py (--load-generators ...,perf_analyzer): DIR/perf_analyzer,
# DIR defaulting to .perf-analyzer.
#   bash benchmarks/perf_analyzer_setup.sh [DIR]
# PyPI's perf-analyzer 2.60.0 ships its binary for glibc 2.38 and GCC 13's libstdc++ (manylinux_2_38), so pip refuses
# it on Debian 12 (glibc 2.36, GCC 12). This takes the wheel's binary as it is and, where it cannot run on the
# system's libraries, runs it on Debian 13's glibc and libstdc++, unpacked into DIR (nothing is installed system-wide)
# and loaded by that glibc's own loader.
set -euo pipefail
DIR=$(realpath -m "${1:-.perf-analyzer}")
VERSION=2.60.0
mkdir -p "$DIR/wheel"
python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 --python-version 3.11 \
  -d "$DIR/wheel" "perf-analyzer==$VERSION"
rm -rf "$DIR/wheel/x"
python3 -m zipfile -e "$DIR"/wheel/perf_analyzer-"$VERSION"-*.whl "$DIR/wheel/x"
BIN=$(find "$DIR/wheel/x" -path "*/bin/perf_analyzer" -type f)
chmod +x "$BIN"
if ! ldd "$BIN" 2>&1 | grep -q "not found"; then
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$BIN" > "$DIR/perf_analyzer"
else
  APT="$DIR/apt"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$APT/trixie.list"
  OPTS=(-o "Dir::Etc::SourceList=$APT/trixie.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Debug::NoLocking=1)
  apt-get "${OPTS[@]}" -qq update
  (cd "$APT" && apt-get "${OPTS[@]}" -qq download libc6 libstdc++6 libgcc-s1)
  rm -rf "$DIR/root"
  for deb in "$APT"/*.deb; do dpkg-deb -x "$deb" "$DIR/root"; done
  LIB="$DIR/root/usr/lib/x86_64-linux-gnu"
  printf '#!/bin/sh\nexec "%s" --library-path "%s:/lib/x86_64-linux-gnu" "%s" "$@"\n' \
    "$LIB/ld-linux-x86-64.so.2" "$LIB" "$BIN" > "$DIR/perf_analyzer"
fi
chmod +x "$DIR/perf_analyzer"
"$DIR/perf_analyzer" --version 2>&1 | head -1 || true
echo "$DIR/perf_analyzer"
