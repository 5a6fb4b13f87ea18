#!/usr/bin/env bash
# Run here (the machine with network), in the project root, before sending the tree to the GPU
# machine (which has none; ../shared/docs/gpu-machine.md): unpacks the Debian -dev packages into
# ./.gpu-deps and copies ../shared/golden into ./.golden. Both folders are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d .gpu-deps/usr ]]; then
  ../shared/tools/gpu-deps.sh .gpu-deps
  # cpp-httplib's header needs the headers of the TLS/compression libraries Debian built it with.
  PKGS="libssl-dev libbrotli-dev zlib1g-dev" ../shared/tools/gpu-deps.sh .gpu-deps
else
  echo "gpu-prepare: .gpu-deps exists ($(du -sh .gpu-deps | cut -f1)); remove it to refresh"
fi
rm -rf .golden
cp -r ../shared/golden .golden
echo "gpu-prepare: .golden $(du -sh .golden | cut -f1)"
for d in .gpu-deps .golden; do
  git check-ignore -q "$d" || echo "gpu-prepare: warning: $d is not git-ignored"
done
