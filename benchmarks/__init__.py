"""The workloads of BENCHMARKS.md; ``python -m benchmarks`` runs them all."""
