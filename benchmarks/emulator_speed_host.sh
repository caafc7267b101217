#!/usr/bin/env bash
# The emulator-speed comparison of benchmarks/bench_emulator_build.py, run four ways at
# once on a many-core host (each on its own core, one numba thread each), so one call
# answers whether the order of measurement or the CPU-specific code generation explains
# a ratio:
#   order_base_first   baseline tree measured first (the default)
#   order_this_first   this tree first (--this-first)
#   generic_cpu        NUMBA_CPU_NAME=generic (no host-specific instruction selection)
#   n1024_fa2          fa2 only at N=1024 (does the ratio grow with the work per call?)
# Usage (repo root, a baseline tree in .baseline/):
#   mkdir -p .baseline && git archive 3672b4c emulator | tar -x -C .baseline
#   PYTHONPATH=. benchmarks/emulator_speed_host.sh OUTDIR
set -u
out=${1:?usage: emulator_speed_host.sh OUTDIR}
mkdir -p "$out"
pin() { if command -v taskset >/dev/null; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi; }
bench="python3 benchmarks/bench_emulator_build.py --baseline .baseline --reps 3"
{ lscpu | head -20; python3 -c 'import sys, numba; print(sys.version); print("numba", numba.__version__)'; } >"$out/machine.txt" 2>&1
pin 1 $bench --N 512 --json "$out/order_base_first.json" >"$out/order_base_first.log" 2>&1 &
pin 3 $bench --N 512 --this-first --json "$out/order_this_first.json" >"$out/order_this_first.log" 2>&1 &
NUMBA_CPU_NAME=generic pin 5 $bench --N 512 --json "$out/generic_cpu.json" >"$out/generic_cpu.log" 2>&1 &
pin 7 $bench --N 1024 --recipes fa2 --json "$out/n1024_fa2.json" >"$out/n1024_fa2.log" 2>&1 &
wait
for f in "$out"/*.log; do echo "== $f"; tail -25 "$f"; done
