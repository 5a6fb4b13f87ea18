#!/usr/bin/env bash
# Installs the official `openai` npm package (version pinned in package.json) into DIR, once.
set -euo pipefail
dir="$1"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$dir"
want=$(node -e 'console.log(require(process.argv[1]).dependencies.openai)' "$here/package.json")
have=$(node -e 'try{console.log(require(process.argv[1]).version)}catch{console.log("none")}' \
  "$dir/node_modules/openai/package.json")
if [ "$have" = "$want" ]; then
  echo "openai $have already installed in $dir"
  exit 0
fi
cp "$here/package.json" "$dir/package.json"
cd "$dir"
timeout 110 npm install --no-audit --no-fund --loglevel=error
node -e 'console.log("installed openai", require("openai/package.json").version)'
