#!/usr/bin/env bash
# Checks the Debian package as a user gets it: builds the .deb, unpacks it into a
# scratch root (dpkg-deb -x), then builds and runs a consumer worker against that
# root through find_package (CMAKE_PREFIX_PATH) and through pkg-config (the
# relocatable elastic.pc), checks what the consumer loads, runs the packaged
# elastic-run, renders its man page with `man -l`, and compares the package with
# the tree `cmake --install --strip` gives.
#   scripts/package-check.sh              configures and builds build-package (prefix /usr)
#   scripts/package-check.sh BUILD WORK    uses the existing build directory BUILD
#                                          (elastic-run built), scratch files in WORK
set -euo pipefail
ulimit -c 0  # the consumer crashes on purpose: no core files
source_dir=$(cd "$(dirname "$0")/.." && pwd)

if [[ $# -eq 0 ]]; then
  "$source_dir/scripts/install-deps.sh"
  build_dir=$source_dir/build-package
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cmake -S "$source_dir" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
    -DELASTIC_BUILD_TESTS=OFF -DELASTIC_BUILD_EXAMPLES=OFF -DELASTIC_BUILD_TOOLS=ON -DELASTIC_INSTALL=ON
  cmake --build "$build_dir" -j"$(nproc)"
else
  build_dir=$(cd "${1:?}" && pwd)
  work=${2:?usage: scripts/package-check.sh [BUILD_DIR WORK_DIR]}
  # WORK_DIR is emptied first: only a directory this script made (marked) or a new one.
  if [[ -e "$work" && ! -e "$work/.package-check" ]]; then
    echo "package-check: $work exists and was not made by this script; not deleting it" >&2
    exit 1
  fi
  rm -rf "$work"
  mkdir -p "$work"
  touch "$work/.package-check"
  work=$(cd "$work" && pwd)
fi

fail() {
  echo "package-check: $*" >&2
  exit 1
}

version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build_dir/CMakeCache.txt")
[[ -n "$version" ]] || fail "no project version in $build_dir/CMakeCache.txt"

echo "-- the package"
(cd "$build_dir" && cpack -G DEB -B "$work/cpack" >"$work/cpack.log") || { cat "$work/cpack.log"; fail "cpack failed"; }
deb=$(ls "$work"/cpack/*.deb)
[[ $(basename "$deb") == libelastic-dev_${version}_*.deb ]] || fail "unexpected package file $(basename "$deb")"
[[ $(dpkg-deb -f "$deb" Package) == libelastic-dev ]] || fail "package name"
[[ $(dpkg-deb -f "$deb" Version) == "$version" ]] || fail "package version $(dpkg-deb -f "$deb" Version), project $version"
depends=$(dpkg-deb -f "$deb" Depends)
for needed in libc6 libstdc++6 libfmt-dev nlohmann-json3-dev libabsl-dev libdw1; do
  [[ ", $depends," == *", $needed "* || ", $depends," == *", $needed,"* ]] || fail "Depends lacks $needed: $depends"
done
root=$work/root
dpkg-deb -x "$deb" "$root"
usr=$root/usr
for file in bin/elastic-run libexec/elastic/elastic-symbolize include/elastic/errors.hpp include/elastic/version.hpp \
  share/man/man1/elastic-run.1 share/doc/libelastic-dev/copyright; do
  [[ -f "$usr/$file" ]] || fail "the package lacks /usr/$file"
done
cmp -s "$usr/share/doc/libelastic-dev/copyright" "$source_dir/LICENSE" || fail "copyright is not LICENSE"
config=$(find "$usr" -name elasticConfig.cmake)
pc=$(find "$usr" -name elastic.pc)
[[ -n "$config" && -n "$pc" ]] || fail "the package lacks elasticConfig.cmake or elastic.pc"
echo "   $(basename "$deb"): Depends: $depends"

echo "-- cmake --install gives the same tree"
DESTDIR=$work/installed cmake --install "$build_dir" --prefix /usr --strip >/dev/null
diff -r "$root" "$work/installed" ||
  fail "the package and cmake --install differ"

echo "-- the packaged elastic-run"
[[ $("$usr/bin/elastic-run" --version) == "elastic-run $version" ]] || fail "--version"
render=()
command -v man >/dev/null && render=(--render)
python3 "$source_dir/tests/package/check_cli_docs.py" --elastic-run "$usr/bin/elastic-run" \
  --man-page "$usr/share/man/man1/elastic-run.1" --version "$version" "${render[@]}"
if command -v man >/dev/null; then
  MANWIDTH=80 man -l "$usr/share/man/man1/elastic-run.1" | grep -q -- "--nproc-per-node" || fail "man -l"
fi

# A worker loads nothing beyond the C and C++ runtime (README: "What a worker links").
check_footprint() {
  local binary=$1 extra
  extra=$(ldd "$binary" | awk '{print $1}' |
    grep -Ev '^(linux-vdso\.so\.1|/lib.*/ld-linux.*|libc\.so\.6|libm\.so\.6|libstdc\+\+\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$' || true)
  [[ -z "$extra" ]] || fail "$binary loads more than the C/C++ runtime: ${extra//$'\n'/ }"
}

# The consumer fails on purpose: exit 1 and an error file naming the exception; then it
# succeeds; then it crashes, and its error file names the crashing function.
run_consumer() {
  local binary=$1 error_file=$work/error-$2.json
  local rc=0
  TORCHELASTIC_ERROR_FILE=$error_file "$binary" fail 2>/dev/null || rc=$?
  [[ $rc -eq 1 ]] || fail "$2 consumer exited $rc, expected 1"
  grep -q "consumer failed on purpose" "$error_file" || fail "$2 consumer's error file: $(cat "$error_file")"
  "$binary" || fail "$2 consumer failed without being asked to"
  # A crash: the error file holds the stack, symbolized by the statically linked abseil.
  rc=0
  TORCHELASTIC_ERROR_FILE=$error_file "$binary" crash 2>/dev/null || rc=$?
  [[ $rc -eq 139 ]] || fail "$2 consumer's crash exited $rc, expected 139 (SIGSEGV)"
  grep -q "#0 0x[0-9a-f]* in (anonymous namespace)::crash_here_on_purpose()" "$error_file" || fail "$2 consumer's crash stack: $(cat "$error_file")"
  check_footprint "$binary"
}

echo "-- a consumer through find_package (CMAKE_PREFIX_PATH)"
cmake -S "$source_dir/tests/package/consumer" -B "$work/consumer-cmake" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$usr" >"$work/consumer-cmake.log" || { cat "$work/consumer-cmake.log"; fail "configuring"; }
cmake --build "$work/consumer-cmake" >>"$work/consumer-cmake.log" || { cat "$work/consumer-cmake.log"; fail "building"; }
run_consumer "$work/consumer-cmake/consumer" find_package
# Built with -g against the package: the packaged elastic-symbolize adds file:line.
grep -q 'main\.cpp:[0-9]' "$work/error-find_package.json" ||
  fail "find_package consumer's crash record has no file:line: $(cat "$work/error-find_package.json")"

echo "-- a consumer through pkg-config (PKG_CONFIG_PATH, relocated prefix)"
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs elastic)
includedir=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=includedir elastic)
[[ $(realpath "$includedir") == "$usr/include" ]] || fail "pkg-config's includedir is not the unpacked tree's: $includedir"
# shellcheck disable=SC2086 # the flags are words
c++ -std=c++17 -O1 -o "$work/consumer-pkg-config" "$source_dir/tests/package/consumer/main.cpp" $flags
run_consumer "$work/consumer-pkg-config" pkg-config

echo "package-check: $(basename "$deb") passed"
