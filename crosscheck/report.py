"""Crosscheck reports: JSON for machines, Markdown a person reads in a minute."""

from __future__ import annotations

import json


def to_json(report: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump({k: v for k, v in report.items() if not k.startswith("_")}, f, indent=1, default=str)


def to_markdown(report: dict) -> str:
    lines = ["# flashbits crosscheck", ""]
    prov = report.get("provenance", {})
    if prov:
        lines += [f"GPU: {prov.get('gpu', '?')}, driver {prov.get('nvidia_smi', '?').split(',')[1:2]}, "
                  f"torch {prov.get('torch')}, triton {prov.get('triton')}, commit {prov.get('git_commit')}", ""]
    verdict = "all bits equal" if report.get("mismatches", 0) == 0 else "MISMATCHES FOUND"
    lines += [f"**Verdict: {verdict}** — {report.get('cases_total', 0)} case runs, "
              f"{report.get('elements', 0):,} elements compared, {report.get('mismatches', 0):,} mismatching "
              "(raw bits; NaN payloads aside).", ""]
    lines += ["| configuration | launch | cases | elements | mismatching elements | cases with a mismatch |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    firsts = []
    for cfg in report.get("configs", []):
        for launch in ("production", "dump"):
            t = cfg.get(launch)
            if not t:
                continue
            lines.append(f"| {cfg['name']} | {launch} | {t['cases']} | {t['elements']:,} | {t['mismatches']:,} | "
                         f"{t['cases_mismatching']} |")
            if t.get("first_mismatch"):
                firsts.append((cfg["name"], launch, t["first_mismatch"]))
    lines.append("")
    if firsts:
        lines += ["## First mismatches", ""]
        for name, launch, fm in firsts:
            lines.append(f"- {name} [{launch}] case `{fm['case']}`: tensor `{fm['tensor']}` at {fm['index']} "
                         f"(stage {fm['stage']}): emulator {fm['emulator_bits']}, GPU {fm['gpu_bits']}, "
                         f"{fm['ulps']} ulp apart")
        lines.append("")
    kinds = {}
    for cfg in report.get("configs", []):
        for kind, (n, bad) in cfg.get("production", {}).get("by_kind", {}).items():
            kk = kinds.setdefault(kind, [0, 0])
            kk[0] += n
            kk[1] += bad
    if kinds:
        lines += ["## Cases by kind (production launches)", "", "| kind | cases | with a mismatch |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {k} | {n} | {b} |" for k, (n, b) in sorted(kinds.items())]
        lines.append("")
    if report.get("record"):
        lines += [f"Golden record written: `{report['record']}`", ""]
    return "\n".join(lines)
