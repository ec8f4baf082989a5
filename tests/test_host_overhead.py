"""The lean training step, counted: what fer_lab runs per optimizer step beyond a plain loop.

Counts of dispatched torch ops and Python calls do not drift with the machine's load, so these
bounds hold on any CPU; the times themselves are measured by `make bench` (section host)."""

from pathlib import Path

import pytest

from fer_lab.bench.host_overhead import measure_host_overhead

SYNTHETIC = ["dataset=synthetic", "dataset.train_per_class=60", "trainer=cpu", "logger=csv"]


@pytest.mark.slow
def test_fer_lab_adds_a_few_ops_per_step_and_steps_per_call_amortise_the_loop(
    tmp_path: Path,
) -> None:
    rows = {
        per_call: measure_host_overhead(
            SYNTHETIC, tmp_path, per_call, steps=8, warmup=8, counted=8, repeats=1
        )
        for per_call in (1, 8)
    }
    one, eight = rows[1], rows[8]
    # The tally: 14 kernels a step (Lightning's automatic loop adds a few), no metric objects,
    # no per-step self.log.
    assert one["fer_lab_kernels_per_step"] - one["plain_kernels_per_step"] <= 20
    # Lightning's loop and the callbacks' hooks, per step: several thousand Python calls
    # at one step per call, spread over eight steps at eight.
    extra_one = one["fer_lab_calls_per_step"] - one["plain_calls_per_step"]
    extra_eight = eight["fer_lab_calls_per_step"] - eight["plain_calls_per_step"]
    assert extra_eight < extra_one / 4
