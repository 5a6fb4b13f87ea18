#!/usr/bin/env bash
# Installs the Debian packages the build needs, if any are missing (as root, apt reachable).
set -euo pipefail
PKGS="build-essential cmake ninja-build pkg-config libgtest-dev libgmock-dev nlohmann-json3-dev
libspdlog-dev libfmt-dev libpcre2-dev libcli11-dev libcpp-httplib-dev prometheus-cpp-dev
curl jq tmux"
missing=()
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
