python benchmarks/fvp_subsample.py
