#!/usr/bin/env bash
# Installs the Debian packages that building and testing elastic need, if any
# are missing. Safe to run again: it does nothing when all are present.
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  nlohmann-json3-dev libfmt-dev catch2 libcli11-dev libabsl-dev libasio-dev
  libssl-dev libcpp-httplib-dev etcd-server openssl
  python3 python3-torch
  util-linux
  clang-14 libclang-rt-14-dev clang-tidy-14 valgrind
  dpkg-dev file man-db groff-base
  libdw-dev
  libfaketime
  "$@"
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "installing: ${missing[*]}"
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
