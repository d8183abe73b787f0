"""Benchmarks: throughput and latency figures, reported as ratios against same-run baselines."""
