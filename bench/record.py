"""What every benchmark shares: the machine description, medians over timed repeats, peak memory, and
writing results as JSON + a Markdown table to bench/results/."""

from __future__ import annotations

import ctypes
import json
import logging
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


def bf16_matmul_tflops(device: str, n: int = 8192, repeats: int = 10) -> float | None:
    """The rate a large bf16 matrix product reaches on this GPU (TFLOP/s): the practical ceiling a UNet's
    fraction of peak is read against (an H200 reached 769-798 of its 989 data-sheet TFLOP/s). None on CPUs."""
    if not device.startswith("cuda"):
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds, _ = median_seconds(lambda: a @ a, repeats=repeats, warmup=3)
    return 2 * n**3 / seconds / 1e12


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
    """Peak memory the block allocates, in MiB: the CUDA allocator's peak on a GPU; on the CPU, heap bytes
    in use (glibc `mallinfo2`, where torch's CPU tensors live; else resident set size) above what was in
    use at entry, sampled every 5 ms by a thread (allocations shorter than that can be missed)."""

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
            self._base = self._peak = _cpu_bytes_in_use()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _cpu_bytes_in_use())

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mib = (self._peak - self._base) / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _load_mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _load_mallinfo2()


def _cpu_bytes_in_use() -> int:
    """Heap bytes allocated and not yet freed (small blocks + mmapped large ones), or the RSS."""
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        return info.uordblks + info.hblkhd
    return psutil.Process().memory_info().rss


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


def progress_logging() -> None:
    """Progress lines of the `bench.*` loggers on stderr (Prefect configures the root logger on import,
    which makes `logging.basicConfig` a no-op)."""
    bench = logging.getLogger("bench")
    if not bench.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        bench.addHandler(handler)
    bench.setLevel(logging.INFO)
    bench.propagate = False
