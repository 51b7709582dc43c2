"""Benchmarks: each module measures one thing and writes its figures to bench/results/<name>.json.

    python -m bench                      phantom, storage, orchestration (about 10 minutes on 2 cores)
    python -m bench quality              one by name (quality trains both generators: tens of minutes)
    python -m bench.<name> --help        a benchmark's own options
"""
