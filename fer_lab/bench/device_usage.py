"""What the machine is busy with while a command runs: GPU utilisation and memory from
`nvidia-smi` (each process's memory too) and the host's CPU busy share from /proc/stat,
sampled once a second in a background thread."""

import shutil
import statistics
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

GPU_QUERY = ["--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
APPS_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
PROC_STAT = Path("/proc/stat")


def csv_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line]


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores so far; None where /proc/stat is absent."""
    if not PROC_STAT.is_file():
        return None
    fields = [int(v) for v in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class UsageSampler:
    """`with UsageSampler() as usage: ...`, then `usage.summary()`. `nvidia_smi` is the
    command to query (found on PATH by default; None: no GPU sampling)."""

    def __init__(self, interval_s: float = 1.0, nvidia_smi: str | None = "") -> None:
        self.interval_s = interval_s
        self.nvidia_smi = shutil.which("nvidia-smi") if nvidia_smi == "" else nvidia_smi
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self.process_peak_mib: dict[str, float] = {}
        self.cpu_busy: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "UsageSampler":
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _query(self, nvidia_smi: str, arguments: list[str]) -> list[list[str]]:
        done = subprocess.run(
            [nvidia_smi, *arguments], capture_output=True, text=True, timeout=10, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"nvidia-smi exit {done.returncode}: {done.stderr.strip()[:200]}")
        return csv_rows(done.stdout)

    def sample_gpu(self, nvidia_smi: str) -> None:
        """One reading of every GPU (utilisation averaged, memory summed) and its processes."""
        gpus = [(float(u), float(m)) for u, m in self._query(nvidia_smi, GPU_QUERY)]
        if gpus:
            self.utilisation.append(statistics.mean(u for u, _ in gpus))
            self.memory_mib.append(sum(m for _, m in gpus))
        for pid, used in self._query(nvidia_smi, APPS_QUERY):
            if used.replace(".", "", 1).isdigit():  # "[N/A]" where the driver withholds it
                self.process_peak_mib[pid] = max(self.process_peak_mib.get(pid, 0.0), float(used))

    def _run(self) -> None:
        last = cpu_times()
        while not self._stop.wait(self.interval_s):
            now = cpu_times()
            if last and now and now[1] > last[1]:
                self.cpu_busy.append((now[0] - last[0]) / (now[1] - last[1]))
            last = now
            if self.nvidia_smi and len(self.errors) < 3:
                try:
                    self.sample_gpu(self.nvidia_smi)
                except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as error:
                    self.errors.append(str(error))

    def summary(self) -> dict[str, Any]:
        """Means and peaks of what was sampled; GPU figures None where none was read."""

        def mean(values: list[float]) -> float | None:
            return statistics.mean(values) if values else None

        return {
            "samples": max(len(self.cpu_busy), len(self.utilisation)),
            "gpu_utilisation_mean": mean(self.utilisation),
            "gpu_utilisation_peak": max(self.utilisation, default=None),
            "gpu_memory_peak_mib": max(self.memory_mib, default=None),
            "gpu_processes": len(self.process_peak_mib),
            "gpu_process_memory_peak_mib": max(self.process_peak_mib.values(), default=None),
            "cpu_busy_mean": mean(self.cpu_busy),
            "gpu_sampling": (
                "nvidia-smi not found" if not self.nvidia_smi else "; ".join(self.errors) or "ok"
            ),
        }
