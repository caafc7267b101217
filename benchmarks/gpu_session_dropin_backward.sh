#!/usr/bin/env bash
# One device call: the emulator-speed comparison (benchmarks/emulator_speed_host.sh, in the
# background on cores 1,3,5,7), the backward GPU tests, the drop-in's probe and GPT-2 run,
# and the backward throughput benchmark (cores 8-15).  Usage, repo root, on the GPU machine:
#   PYTHONPATH=. benchmarks/gpu_session_dropin_backward.sh OUTDIR
set -u
out=${1:?usage: gpu_session_dropin_backward.sh OUTDIR}
mkdir -p "$out"
(timeout 540 bash benchmarks/emulator_speed_host.sh /tmp/speed > /tmp/speed.log 2>&1) &
on8() { taskset -c 8-15 "$@"; }
on8 timeout 150 python -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/gpu/test_backward_kernel.py \
  tests/gpu/test_crosscheck.py -k "backward" > "$out/pytest_backward.log" 2>&1; tail -15 "$out/pytest_backward.log"
on8 timeout 150 python -m flashbits.gpu.probes.sdpa_probe "$out/sdpa" > "$out/sdpa_probe.log" 2>&1; tail -25 "$out/sdpa_probe.log"
on8 timeout 90 python examples/train_gpt2_patch_sdpa.py --device cuda --steps 50 --json "$out/sdpa/gpt2.json" 2>&1 | grep -v "^\[transformers\]" | tail -4
on8 timeout 150 python -m flashbits.gpu.bench_backward --json "$out/bench_backward.json" > "$out/bench_backward.log" 2>&1; tail -30 "$out/bench_backward.log"
wait
tar -czf "$out/speed.tar.gz" -C /tmp speed speed.log 2>/dev/null
grep -h "ratio" /tmp/speed/*.log | tail -20
