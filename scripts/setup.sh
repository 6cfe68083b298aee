#!/usr/bin/env bash
# Installs what building and testing Cairn needs on a fresh Debian machine. Idempotent.
# - libclang for the `rocksdb` crate's bindgen (RocksDB itself is built from C++ source by
#   cargo), g++ for RocksDB and gcc for aws-lc-sys (the crypto of the S3 client's rustls,
#   built by cargo with the cc crate: no cmake, no Go, no NASM on Linux x86_64).
# - python3 with venv for scripts/moto.sh (a local S3 API server for the S3 tests).
set -euo pipefail
need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if ! command -v python3 >/dev/null 2>&1; then
  need+=(python3 python3-venv)
elif ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
