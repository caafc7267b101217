"""Kernel experiments (not installed): python -m benchmarks.kernel_experiments.<name>; see LAB.md."""
