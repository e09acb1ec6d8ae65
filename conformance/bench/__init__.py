"""Benchmarks: `iommufd-conformance bench ioas|pagetable`. Each reports ratios against baselines
measured in the same run (these machines are noisy)."""
