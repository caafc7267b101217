#!/usr/bin/env bash
# One device call: a quick GPU check of this session's work (backward and unbiased-fix
# crosschecks at reduced case counts, forward and backward throughput with the fixes, the
# drop-in probe and its GPT-2 run), with the emulator-speed comparison in the background
# (cores 1,3,5,7; everything else on cores 8-15).  Usage, repo root, on the GPU machine:
#   PYTHONPATH=. benchmarks/gpu_session_unbiased.sh OUTDIR
set -u
out=${1:?usage: gpu_session_unbiased.sh OUTDIR}
mkdir -p "$out/x"
(timeout 500 bash benchmarks/emulator_speed_host.sh /tmp/speed > /tmp/speed.log 2>&1) &
on8() { taskset -c 8-15 "$@"; }
xc() { on8 timeout "$1" python -m flashbits.crosscheck.cli crosscheck --workers 8 "${@:2}"; }
xc 100 --backward --recipes fa2 --fixes none --cases 96 --out /tmp/xb > "$out/x/backward.log" 2>&1
tail -6 "$out/x/backward.log"
xc 110 --recipes fa2 --fixes unbiased --cases 200 --out /tmp/xu --record "$out/x" --record-cases 3 > "$out/x/unbiased.log" 2>&1
tail -6 "$out/x/unbiased.log"; cp /tmp/xu/crosscheck.json "$out/x/unbiased.json" 2>/dev/null
on8 timeout 100 python -m flashbits.gpu.bench --variants 128x64w8s3 --json "$out/x/bench_fwd.json" 2>&1 | tail -16
mkdir -p "$out/sdpa"; on8 timeout 90 python -m flashbits.gpu.probes.sdpa_probe "$out/sdpa" --skip-timing > "$out/sdpa/probe.log" 2>&1
tail -12 "$out/sdpa/probe.log"
on8 timeout 60 python examples/train_gpt2_patch_sdpa.py --steps 50 --json "$out/sdpa/gpt2.json" 2>&1 | grep -v "^\[trans" | tail -3
on8 timeout 100 python -m flashbits.gpu.bench_backward --variants 32x128_128x32w8s2,64x128_128x64w8s2 \
  --json "$out/x/bench_bwd.json" 2>&1 | tail -14
wait
tar -czf "$out/speed.tar.gz" -C /tmp speed speed.log 2>/dev/null
tar -czf "$out/x.tar.gz" -C "$out" x && tar -czf "$out/sdpa.tar.gz" -C "$out" sdpa && rm -rf "$out/x" "$out/sdpa"
