"""The benchmark harness's own arithmetic: tables, peak memory, FLOP counts, results files."""

from __future__ import annotations

import json

import numpy as np

from bench.record import PeakMemory, markdown_table, median_seconds


def test_markdown_table_formats_rows():
    lines = markdown_table([{"a": 1, "b": 0.123456, "c": None}, {"a": 2, "b": 12345.6}], {"a": "A", "b": "B", "c": "C"})
    assert lines == ["| A | B | C |", "|---|---|---|", "| 1 | 0.123 | - |", "| 2 | 12346 | - |"]


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as memory:
        block = np.ones(64 * 2**20, dtype=np.float32)  # 256 MiB, touched
        block.sum()
    assert 200 < memory.mib < 2000


def test_median_seconds_skips_warmup_and_counts_repeats():
    calls = []
    median, runs = median_seconds(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(runs) == 3 and median == sorted(runs)[1]


def test_sampling_bench_rows_and_flops_scale_with_steps(tmp_path):
    from bench import sampling

    out = tmp_path / "sampling.json"
    sampling.main(["--architectures", "demo", "--models", "image", "--batches", "2", "--steps", "1", "2",
                   "--repeats", "1", "--channels-last", "no", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["batch"], r["steps"]) for r in rows] == [("image", 2, 1), ("image", 2, 2)]
    one, two = rows[0]["gflop_per_image"], rows[1]["gflop_per_image"]
    assert one > 0.1 and abs(two / one - 2) < 0.02  # FLOPs are per UNet pass: linear in steps
    assert abs(rows[0]["gflop_per_forward"] - one) < 0.01 and abs(rows[1]["gflop_per_forward"] - one) < 0.01
    assert rows[0]["attention"] == "none"  # the demo UNets have no attention layers
    assert all(r["images_per_s"] > 0 and r["fraction_of_peak"] is None for r in rows)  # no bf16 peak for a CPU
    table = out.with_suffix(".md").read_text().splitlines()
    assert sum(line.startswith("| demo | image | 64 | 2 |") for line in table) == 2


def test_attention_layers_run_torch_sdpa():
    """The UNets with attention (quality, production) run torch's fused scaled_dot_product_attention,
    which picks flash / memory-efficient kernels on a GPU."""
    from aurad_models.image_generator import ImageGenerator, ImageGeneratorConfig
    from bench.sampling import attention_kernel

    generator = ImageGenerator(ImageGeneratorConfig(image_size=32, block_out_channels=(8, 16), attention=True, norm_num_groups=4))
    assert attention_kernel(generator) == "sdpa"


def test_samplers_bench_scores_each_sampler_against_the_reference(tmp_path):
    """On a tiny trained world: the reference row matches itself exactly, another sampler does not, and a
    root without models is a clear error."""
    import pytest

    from bench import samplers
    from bench.world import make_build_world

    world = make_build_world(tmp_path / "world")
    out = tmp_path / "samplers.json"
    samplers.main(["--root", str(world), "--n", "6", "--grid", "ddim:4", "dpm-solver++:2", "--out", str(out)])
    reference, other = json.loads(out.read_text())["rows"]
    assert reference["reference"] and reference["mask_dice_to_reference"] == 1.0 and reference["image_mad_to_reference"] == 0.0
    assert not other["reference"] and other["image_mad_to_reference"] > 0
    assert all(np.isfinite(r["image_fd_to_real"]) and r["image_images_per_s"] > 0 for r in (reference, other))
    with pytest.raises(SystemExit, match="aurad demo"):
        samplers.main(["--root", str(tmp_path / "empty"), "--out", str(out)])


def test_visibility_bench_tells_a_visible_lesion_from_a_hidden_one(tmp_path):
    """The contrast measure: a bright disc on noise stands out, the same disc at the noise's mean does not;
    and the bench's rows cover every finding at each size, the same area growing with the size."""
    import numpy as np

    from bench import visibility
    from aurad_models.vocabulary import PATHOLOGIES

    rng = np.random.default_rng(0)
    image = rng.normal(0.5, 0.05, (32, 32))
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 <= 9
    assert visibility.contrast_to_surround(np.where(disc, 0.8, image), disc) > 3
    assert abs(visibility.contrast_to_surround(image, disc)) < 1
    result = visibility.main(["--per-finding", "3", "--sizes", "64", "128", "--out", str(tmp_path / "v.json")])
    rows = {(r["size"], r["finding"]): r for r in result["rows"]}
    assert set(rows) == {(s, f) for s in (64, 128) for f in PATHOLOGIES}
    assert rows[(128, "cardiomegaly")]["area_px"] > 3 * rows[(64, "cardiomegaly")]["area_px"]
    assert (tmp_path / "v.md").is_file()


def test_drr_framing_puts_the_lung_field_on_the_phantoms_box_and_windows_to_unit_range():
    from bench.drr_anatomy import TOTALSEG_STRUCTURES, frame
    from tasks.grounding import box_of
    from aurad_models.vocabulary import ANATOMY_STRUCTURES

    assert set(TOTALSEG_STRUCTURES) <= set(ANATOMY_STRUCTURES)
    image = np.zeros((256, 256), np.float32)
    image[20:240, 10:250] = np.linspace(1.0, 50.0, 240)[None, :]  # a body with a gradient
    lungs = np.zeros((256, 256), bool)
    lungs[60:180, 40:200] = True
    target = np.array([0.1, 0.15, 0.9, 0.8])
    framed, masks = frame(image, {"Left Lung": lungs}, lungs, target, 64)
    assert framed.shape == (64, 64) and framed.min() >= 0.0 and framed.max() <= 1.0
    assert np.allclose(box_of(masks["Left Lung"]), target, atol=1.5 / 64)


def test_experts_bench_interval_brackets_the_auroc_and_narrows_with_more_positives(tmp_path):
    import pytest

    from aurad_models.experts.metrics import auroc
    from bench import experts

    rng = np.random.default_rng(0)

    def width(n: int) -> tuple[float, float, float]:
        labels = np.arange(n) < n // 10
        scores = rng.normal(size=n) + 1.0 * labels
        low, high = experts.auroc_interval(scores, labels, draws=400)
        return low, auroc(scores, labels), high

    small, large = width(90), width(2000)
    assert small[0] < small[1] < small[2] and large[0] < large[1] < large[2]
    assert large[2] - large[0] < 0.5 * (small[2] - small[0])
    assert experts.auroc_interval(np.arange(20.0), np.arange(20) >= 10, draws=50) == (1.0, 1.0)
    with pytest.raises(SystemExit):
        experts.main(["--root", str(tmp_path / "empty"), "--out", str(tmp_path / "e.json")])


def test_realism_bench_maps_intensities_onto_the_reference_and_tops_up_fine_noise():
    from bench.realism import fine_noise, quantile_mapped, with_fine_noise

    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(0.5, 0.1, (4, 1, 1)) + np.linspace(0, 0.2, 32)[None, None, :] * np.ones((4, 32, 32)), 0, 1)
    reference = np.clip(rng.normal(0.3, 0.15, (4, 32, 32)), 0, 1)
    reference[:, :4] = 0.0  # air: exactly 0, as the phantom's
    mapped = quantile_mapped(smooth.astype(np.float32), reference)
    assert abs(mapped.mean() - reference.mean()) < 0.01 and abs((mapped == 0).mean() - (reference == 0).mean()) < 0.02
    assert np.all(np.diff(mapped[0, 0]) >= 0)  # monotone: the order of intensities is kept
    target = fine_noise(reference)
    assert fine_noise(mapped) < 0.5 * target
    noisy = with_fine_noise(mapped, target)
    assert abs(fine_noise(noisy) - target) < 0.2 * target
    assert np.all(noisy[mapped == 0] == 0)  # air stays air
