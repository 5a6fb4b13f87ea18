#!/usr/bin/env bash
# Run here (the machine with network), in the project root, before sending the tree to the GPU
# machine (which has none; ../shared/docs/gpu-machine.md): unpacks the Debian -dev packages into
# ./.gpu-deps and copies ../shared/golden into ./.golden; with KIMI_FLA_REPO, exports FLA's fla/
# into ./.fla; with KIMI_AB_BASE=REV, exports this repository's tree at REV into ./.base (the base
# of scripts/gpu-ab.sh). All four folders are git-ignored; pass them in the device tool's carry.
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
# The peer for the KDA benchmark (benchmarks/fla_kda_peer.py): flash-linear-attention's fla/
# package, from a clone named by KIMI_FLA_REPO (a git checkout), into the ignored ./.fla.
if [[ -n ${KIMI_FLA_REPO:-} ]]; then
  rm -rf .fla && mkdir -p .fla
  git -C "$KIMI_FLA_REPO" archive HEAD fla | tar -x -C .fla
  echo "gpu-prepare: .fla from $(git -C "$KIMI_FLA_REPO" log -1 --format='%h %s' | cut -c1-60)"
fi
# The base tree of a same-call comparison (scripts/gpu-ab.sh): the device gets no .git.
if [[ -n ${KIMI_AB_BASE:-} ]]; then
  rm -rf .base && mkdir -p .base
  git archive "$KIMI_AB_BASE" | tar -x -C .base
  git log -1 --format='%h %s' "$KIMI_AB_BASE" | cut -c1-72 >.base/.base-rev
  echo "gpu-prepare: .base from $(cat .base/.base-rev)"
fi
for d in .gpu-deps .golden .fla .base; do
  [[ -e $d ]] || continue
  git check-ignore -q "$d" || echo "gpu-prepare: warning: $d is not git-ignored"
done
