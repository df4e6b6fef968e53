#!/usr/bin/env bash
# Pipeline variants x seeds, every run its own process side by side (one torch thread each), then one
# `rlhf study seeds` table per variant (it reuses the finished seeds). For a many-core machine or a GPU.
#   scripts/study_variants.sh OUT "0,1,2" "base:" "sftptx1:--set sft.ptx_coef=1"
# Env: RLHF (the command, default `rlhf`), LIMIT (seconds per run, default 3000).
set -uo pipefail
out=$1; seeds=$2; shift 2
rlhf=${RLHF:-rlhf}
limit=${LIMIT:-3000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out/logs"
for variant in "$@"; do
  name=${variant%%:*}; sets=${variant#*:}
  mkdir -p "$out/$name"
  for s in ${seeds//,/ }; do
    # shellcheck disable=SC2086
    (timeout "$limit" $rlhf pipeline -q $sets --set seed=$s --set world.seed=$s -o "$out/$name/seed-$s" \
       > "$out/logs/$name-seed-$s.log" 2>&1; echo "$name seed $s exit $?") &
  done
done
wait
for variant in "$@"; do
  name=${variant%%:*}; sets=${variant#*:}
  # shellcheck disable=SC2086
  $rlhf study seeds -q --seeds "$seeds" $sets -o "$out/$name" > "$out/logs/$name-study.log" 2>&1 \
    && echo "== $name" && sed -n '1,200p' "$out/$name/summary.md" 2>/dev/null | head -60
done
