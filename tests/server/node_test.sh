#!/usr/bin/env bash
# Runs openai_client.mjs (the official openai npm package) against a fresh kimi-serve.
# Usage: KIMI_SERVE=... KIMI_NPM_DIR=... node_test.sh
source "$(dirname "$0")/lib.sh"
: "${KIMI_NPM_DIR:?set KIMI_NPM_DIR to the folder setup_npm.sh installed openai into}"
start_server n --api-key node-key --max-model-len 1024 --max-num-seqs 8
KIMI_URL="http://127.0.0.1:$n_PORT" KIMI_API_KEY=node-key timeout 150 node "$(dirname "$0")/openai_client.mjs"
