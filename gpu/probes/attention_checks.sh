#!/usr/bin/env bash
# The attention kernels' GPU evidence (docs/hardware.md, "The attention kernels").
#
#   FLASHBITS_COMMIT=$(git rev-parse --short HEAD) OUT=DIR bash gpu/probes/attention_checks.sh STEP...
#
# Steps (each writes DIR/<step>/: crosscheck.json, crosscheck.md and the record
# attention_golden.npz; bench.json; the bias files.  Each prints its summary and has
# a time cap (CAP seconds) so one slow step cannot eat the call):
#   bench      gpu.bench: fa2 (with/without fix) vs FlexAttention, SDPA flash/cuDNN
#   fa2        crosscheck fa2 × {no fix, paper fix} × {rne, sr}, production + dump
#   fa2nofix, fa2fix   the same, one fix each.  At 1000 cases a configuration takes
#              80-110 s on 16 cores, so a 10-minute device call holds about five
#              configurations: split the steps over calls as the README shows
#   paperfix   crosscheck paper × paper fix × {rne, sr}, production + dump
#   papernofix crosscheck paper × no fix × {rne, sr}, production + dump
#   bias       gpu.probes.bias_confirm: every kernel cell of the bias study
# CASES (default 1000) cases per configuration; WORKERS (default: all cores).
set -u
: "${OUT:?set OUT to the output directory}"
CASES=${CASES:-1000}
WORKERS=${WORKERS:-$(nproc)}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
cc() {  # crosscheck into $OUT/$1 with the remaining arguments
  local d=$OUT/$1; shift
  mkdir -p "$d"
  timeout "${CAP:-420}" python -m flashbits.crosscheck.cli crosscheck --cases "$CASES" --workers "$WORKERS" \
    --out "$d" --record "$d" --record-cases 3 "$@" 2>&1 | tee "/tmp/$(basename "$d").log" | tail -n 25
}
for step in "$@"; do
  t0=$(date +%s)
  case $step in
    bench) mkdir -p "$OUT/bench"
           timeout "${CAP:-300}" python -m flashbits.gpu.bench --json "$OUT/bench/bench.json" ${BENCH_ARGS:-} 2>&1 \
             | tail -n 30 ;;
    fa2) cc fa2 --recipes fa2 ;;
    fa2nofix) cc fa2nofix --recipes fa2 --fixes none ;;
    fa2fix) cc fa2fix --recipes fa2 --fixes paper ;;
    paperfix) cc paperfix --recipes paper --fixes paper ;;
    papernofix) cc papernofix --recipes paper --fixes none ;;
    bias) mkdir -p "$OUT/bias"
          timeout "${CAP:-300}" python -m flashbits.gpu.probes.bias_confirm "$OUT/bias/bias_gpu_confirmation.json" \
            "$OUT/bias/attention_bias_golden.npz" 2>&1 ;;
    *) echo "unknown step $step (bench, fa2, fa2nofix, fa2fix, paperfix, papernofix, bias)"; exit 2 ;;
  esac
  echo "== $step: $(( $(date +%s) - t0 )) s"
done
