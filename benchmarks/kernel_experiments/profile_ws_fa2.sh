#!/usr/bin/env bash
# Nsight Compute's view of the warp-specialised probe kernel (benchmarks/kernel_experiments/ws_fa2.py)
# without and with the paper fix: pipe utilisation, issue and warp stall reasons.
# On the GPU machine, from the repository root:
#     OUT=dir bash benchmarks/kernel_experiments/profile_ws_fa2.sh [SCHEDULE ...]
# Clocks are left as found (--clock-control none); the second of two launches
# on the benchmark shape (B=8, H=16, N=4096, D=128) is profiled.
set -euo pipefail
OUT=${OUT:?set OUT to a directory}
mkdir -p "$OUT"
PYTHONPATH=. python -c "import json; from flashbits.gpu.provenance import provenance; print(json.dumps(provenance(), indent=1))" \
  > "$OUT/provenance.json"
schedules=${*:-pingpong-early-max pingpong3-early-max}
for sch in $schedules; do
  for fix in "" "--fix"; do
    name="ncu_${sch}${fix:+_fix}"
    PYTHONPATH=. ncu --clock-control none --kernel-name regex:_ws_fa2_fwd --launch-skip 1 --launch-count 1 \
      --section ComputeWorkloadAnalysis --section InstructionStats --section SchedulerStats \
      --section WarpStateStats --section SpeedOfLight \
      --section SourceCounters \
      --metrics smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_misc_per_issue_active.ratio,smsp__inst_executed_pipe_alu.sum,smsp__inst_executed_pipe_fma.sum,smsp__inst_executed_pipe_xu.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_xu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg \
      python -m benchmarks.kernel_experiments.ws_fa2 --once "$sch" $fix > "$OUT/$name.txt" 2>&1 || echo "ncu failed for $name (see $OUT/$name.txt)"
    echo "== $name"; grep -E "pipe_|stalled|Issue Slots|Issued Warp|No Eligible|Stall|Warp Cycles Per Issued|Duration|SM Busy|Compute \(SM\)" "$OUT/$name.txt" | head -60 || true
  done
done
