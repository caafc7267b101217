#!/usr/bin/env bash
# One short device call (about 5 minutes): the backward kernels and the unbiased fix's
# forward kernel crosschecked at reduced case counts, forward throughput with the fixes,
# the drop-in's probe (record, host replay, accuracy).  Usage, repo root, GPU machine:
#   PYTHONPATH=. benchmarks/gpu_session_quick.sh OUTDIR
set -u
out=${1:?usage: gpu_session_quick.sh OUTDIR}
mkdir -p "$out/x" "$out/sdpa"
xc() { timeout "$1" python -m flashbits.crosscheck.cli crosscheck "${@:2}"; }
xc 90 --backward --recipes fa2 --fixes none --roundings rne,sr --cases 64 --out "$out/x/backward" > "$out/x/backward.log" 2>&1
tail -5 "$out/x/backward.log"
xc 90 --recipes fa2 --fixes unbiased --cases 128 --out "$out/x/unbiased" --record "$out/x/unbiased" --record-cases 3 \
  > "$out/x/unbiased.log" 2>&1
tail -5 "$out/x/unbiased.log"
timeout 90 python -m flashbits.gpu.bench --variants 128x64w8s3 --json "$out/x/bench_fwd.json" 2>&1 | tail -14
timeout 80 python -m flashbits.gpu.probes.sdpa_probe "$out/sdpa" --skip-timing > "$out/sdpa/probe.log" 2>&1
tail -8 "$out/sdpa/probe.log"
tar -czf "$out/x.tar.gz" -C "$out" x sdpa && rm -rf "$out/x" "$out/sdpa"
