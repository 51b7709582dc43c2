"""What every benchmark shares: the machine description, medians over timed repeats, peak memory, and
writing results as JSON + a Markdown table to bench/results/."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil
import torch

RESULTS = Path(__file__).parent / "results"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name fragment.
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.5,
    "H100 PCIe": 756.5,
    "H100": 756.5,  # unknown H100 form factor: the lowest, so a fraction of peak is not overstated
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10G": 70.0,
}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def bf16_peak_tflops(device: str) -> float | None:
    """The device's dense bf16 peak, or None where unknown (CPUs: no reliable figure)."""
    if not device.startswith("cuda"):
        return None
    name = device_name(device)
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS.items() if fragment in name), None)


def machine() -> dict[str, Any]:
    """Where the figures were measured (a figure means little without it)."""
    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of `run` over `repeats` timed calls after `warmup` untimed ones (CUDA work is
    synchronised before each clock read)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        run()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory while the block runs, in MiB: CUDA allocator peak on a GPU; on the CPU, resident set
    size above what it was at entry, sampled every 5 ms by a thread (short spikes can be missed)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.mib: float = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            process = psutil.Process()
            self._base = process.memory_info().rss
            self._peak = self._base
            self._thread = threading.Thread(target=self._watch, args=(process,), daemon=True)
            self._thread.start()
        return self

    def _watch(self, process: psutil.Process) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mib = (self._peak - self._base) / 2**20


def markdown_table(rows: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[str]:
    """rows as a Markdown table; `columns` maps row keys to headers (floats shown with 3 significant digits)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in rows]
    return lines


def write_results(name: str, results: dict[str, Any], table: Sequence[str], title: str,
                  out: Path | None = None) -> Path:
    """bench/results/<name>.json (results + machine) and <name>.md (title, machine, table); returns the JSON."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {"benchmark": name, **results, "machine": results.get("machine") or machine()}
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    where = results["machine"]
    header = [f"# {title}", "", f"Measured {where['measured_at']} on {where['gpu'] or where['cpu']} "
              f"({where['cpus']} CPUs, torch {where['torch']}, load {where['load_average_1min']}); "
              f"`python -m bench {name}` writes this file and {out.name}.", ""]
    out.with_suffix(".md").write_text("\n".join([*header, *table]) + "\n")
    return out
