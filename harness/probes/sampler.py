"""Background sampler: NVML GPU utilisation / memory / power / energy and psutil CPU / RSS.

Runs in a daemon thread at a fixed interval while the measured window runs. Without a GPU (or
without a working NVML) the GPU series stay empty and `nvml_status` says why, e.g.
"not available: no CUDA device". RSS is the sum over this process and its children (DataLoader
workers), whose peak the trainer reports.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

GIB = 1024**3


def _open_nvml(device_index: int) -> tuple[object | None, str]:
    try:
        import pynvml
    except ImportError as exc:
        return None, f"not available: nvidia-ml-py not importable ({exc})"
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device_index), "ok"
    except Exception as exc:  # NVML library or driver missing: report, never fail the run
        return None, f"not available: {exc}"


class ResourceSampler:
    """Samples resources every `interval_s` between `start()` and `stop()`."""

    def __init__(self, cuda_index: int | None, interval_s: float = 0.2, children: bool = True) -> None:
        self.interval_s = interval_s
        self.children = children
        """List child processes (DataLoader workers) each sample: walking /proc costs ~1 ms, so only when
        the run has workers."""
        self.process = psutil.Process(os.getpid())
        self.series: dict[str, list[float]] = {k: [] for k in (
            "t_s", "cpu_util_pct", "rss_gib", "gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w")}
        self.peak_rss_gib = 0.0
        self.energy_j: float | None = None
        if cuda_index is None:
            self._nvml, self.nvml_status = None, "not available: no CUDA device"
        else:
            self._nvml, self.nvml_status = _open_nvml(cuda_index)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trainbench-sampler", daemon=True)
        self._energy_start_mj: int | None = None
        self._t0 = 0.0

    def _tree(self) -> list[psutil.Process]:
        if not self.children:
            return [self.process]
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.Error:
            return [self.process]

    def _rss_gib(self) -> float:
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass  # a worker exited between listing and reading
        return total / GIB

    def _energy_mj(self) -> int | None:
        if self._nvml is None:
            return None
        try:
            import pynvml

            return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml))
        except Exception:  # older GPUs have no energy counter; power samples remain
            return None

    def sample_once(self) -> None:
        """Take one sample of every series."""
        self.series["t_s"].append(time.perf_counter() - self._t0)
        try:
            cpu = sum(p.cpu_percent(None) for p in self._tree())
        except psutil.Error:
            cpu = 0.0
        self.series["cpu_util_pct"].append(cpu)
        rss = self._rss_gib()
        self.peak_rss_gib = max(self.peak_rss_gib, rss)
        self.series["rss_gib"].append(rss)
        if self._nvml is not None:
            import pynvml

            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._nvml)
                mem = pynvml.nvmlDeviceGetMemoryInfo(self._nvml)
                power_mw = pynvml.nvmlDeviceGetPowerUsage(self._nvml)
                self.series["gpu_util_pct"].append(float(util.gpu))
                self.series["gpu_mem_used_gib"].append(mem.used / GIB)
                self.series["gpu_power_w"].append(power_mw / 1e3)
            except Exception as exc:  # keep sampling CPU; say why GPU series stopped
                self.nvml_status = f"sampling failed: {exc}"
                self._nvml = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample_once()

    def start(self) -> None:
        """Begin sampling: primes psutil's CPU counters; the first sample is taken one interval later
        (a CPU reading over the microseconds after priming is noise: 900-2,900% on 2 cores)."""
        self._t0 = time.perf_counter()
        for proc in self._tree():
            try:
                proc.cpu_percent(None)
            except psutil.Error:
                pass
        self._energy_start_mj = self._energy_mj()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; computes energy over the window when the GPU has a counter."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        if time.perf_counter() - self._t0 >= self.interval_s / 2 or not self.series["t_s"]:
            self.sample_once()  # the tail of the window (or its only sample, for a very short one)
        end = self._energy_mj()
        if self._energy_start_mj is not None and end is not None:
            self.energy_j = (end - self._energy_start_mj) / 1e3

    @staticmethod
    def mean(values: list[float]) -> float | None:
        """Mean of a series, None when empty."""
        return sum(values) / len(values) if values else None
