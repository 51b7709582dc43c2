"""Benchmarks: each module measures one thing and writes bench/results/<name>.json (figures + machine)
and <name>.md (a table).

    python -m bench                      phantom, storage, sampling, filtering (about 10 minutes on 2 cores)
    python -m bench orchestration demo   by name: the 2,000-sample build, 2 x 2 runs (~6 min), the demo (~6 min)
    python -m bench quality              trains both generators, then measures mask and image quality
    python -m bench samplers             speed and quality per sampler and step count (needs `aurad demo` first)
    python -m bench realism              C2ST of the image generator per sampler, images from real masks (idem)
    python -m bench drr_anatomy          the anatomy segmenter on radiographs rendered from a real CT (needs the drr extra)
    python -m bench.<name> --help        a benchmark's own options (device, grid, repeats)
    bash bench/gpu.sh run                the GPU figures in one run (production UNets, bf16, compile, CUDA graphs)
"""
