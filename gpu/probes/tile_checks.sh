#!/usr/bin/env bash
# Crosscheck the kernels against the emulator for every tile gpu.flash_attention
# accepts, not only the recipes' own (docs/hardware.md, "The attention kernels",
# "Every tile the kernels accept").
#
#   FLASHBITS_COMMIT=$(git rev-parse --short HEAD) OUT=DIR bash gpu/probes/tile_checks.sh RECIPE
#
# For RECIPE (fa2 or paper): crosscheck.sides.other_tiles, i.e. block_m in
# {64, 128} x block_n in {32, 64, 128} x num_warps in {4, 8} at 3 stages (all but
# the recipe's own), and the recipe's own tile at 2 and 4 stages;
# two configurations, no fix with rne and the paper fix with sr, run side by side
# (each compiles its own kernels); CASES (default 48) cases each, production and
# dump launches.  Writes DIR/<recipe>_nofix and DIR/<recipe>_fix: crosscheck.json,
# crosscheck.md and a record attention_golden.npz (one case per tile).
set -u
: "${OUT:?set OUT to the output directory}"
recipe=${1:?name a recipe: fa2 or paper}
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
tiles=$(python -c "import sys; from crosscheck.sides import other_tiles; print(','.join(other_tiles(sys.argv[1])))" \
  "$recipe") || { echo "unknown recipe $recipe (fa2, paper)"; exit 2; }
half=$(( $(nproc) / 2 ))
run() {  # run NAME FIX ROUNDING
  mkdir -p "$OUT/$1"
  timeout "${CAP:-540}" python -m flashbits.crosscheck.cli crosscheck --recipes "$recipe" --fixes "$2" --roundings "$3" \
    --tiles "$tiles" --cases "${CASES:-48}" --workers "$half" --out "$OUT/$1" --record "$OUT/$1" \
    --record-cases 1 > "$OUT/$1/log.txt" 2>&1
  echo "== $1: exit $? (0: every bit equal)"
  grep -E "^\S+ \[(production|dump)\]" "$OUT/$1/log.txt" | grep -v " 0 mismatching" || true
}
t0=$(date +%s)
run "${recipe}_nofix" none rne &
run "${recipe}_fix" paper sr &
wait
echo "== $recipe tiles: $(( $(date +%s) - t0 )) s"
