"""The Markdown the bench and the GPU check print: what was measured, how, and the numbers."""

import statistics
from typing import Any


def report(result: dict[str, Any]) -> str:
    lines = [f"fer_lab bench on {result['hardware']} ({result['device']})"]
    if "loading" in result:
        load = result["loading"]
        cached = load["load_cached_s"]
        lines.append(
            f"dataset {load['dataset']}: first load {load['load_first_s']:.2f} s, cached "
            + (f"{cached:.2f} s" if cached is not None else "n/a (no cache for this dataset)")
        )
    if "pipelines" in result:
        lines.append("\n| data pipeline | augmentation | workers | img/s |\n|---|---|---|---|")
    for row in result.get("pipelines", []):
        lines.append(
            f"| {row['pipeline']} | {row['augmentation']} | {row['workers']} | "
            f"{row['images_per_s']:,.0f} |"
        )
    if result.get("training"):
        timing = result["training"][0]["timing"]
        lines.append(
            f"\ntraining, {timing} timing (fer_lab/bench/overhead.py)"
            "\n| model | steps | fer_lab img/s | plain img/s | plain/fer_lab | fer_lab peak MB* "
            "| plain peak MB* |\n|---|---|---|---|---|---|---|"
        )
        for row in result["training"]:
            lines.append(
                f"| {row['model']} | {row['fer_lab_timed_steps']} | "
                f"{row['fer_lab_images_per_s']:,.0f} | {row['plain_images_per_s']:,.0f} | "
                f"{row['ratio_plain_over_fer_lab']:.3f} | {row['fer_lab_peak_memory_mb']:,.0f} | "
                f"{row['plain_peak_memory_mb']:,.0f} |"
            )
        lines.append(memory_note(timing, result["device"]))
    if result.get("end_to_end"):
        lines.append(
            "\nend to end: whole processes, alternating (fer_lab/bench/end_to_end.py)"
            "\n| model | fer_lab layout | epochs | pairs | fer_lab s (median) "
            "| plain script s (median, NCHW) | fer_lab/plain per pair | median |"
            "\n|---|---|---|---|---|---|---|---|"
        )
        for row in result["end_to_end"]:
            pairs = ", ".join(f"{ratio:.3f}" for ratio in row["ratios"])
            layout = "NHWC" if row.get("fer_lab_channels_last") else "NCHW"
            lines.append(
                f"| {row['model']} | {layout} | {row['epochs']} | {row['pairs']} | "
                f"{statistics.median(row['fer_lab_s']):.1f} | "
                f"{statistics.median(row['plain_s']):.1f} | {pairs} | "
                f"{row['ratio_fer_lab_over_plain']:.3f} |"
            )
    if result.get("sweep"):
        lines.append(
            "\n| schedule | trials at once | trials | wall s | trials/hour |\n|---|---|---|---|---|"
        )
        for row in result["sweep"]:
            lines.append(
                f"| {row['schedule']} | {row['concurrent']} | {row['trials']} | "
                f"{row['wall_s']:.0f} | {row['trials_per_hour']:.1f} |"
            )
    return "\n".join(lines)


def memory_note(timing: str, device: str) -> str:
    """What the peak memory columns hold, which differs by timing and device."""
    what = (
        "peak GPU allocation"
        if device == "cuda"
        else "peak RSS of the process (VmHWM, Python and torch included; where its reset "
        "through /proc/self/clear_refs is refused, the process's peak so far)"
    )
    if timing == "lockstep":
        return (
            "*lockstep: both sides run in one fit at once, so both columns give the same "
            f"figure, their joint {what}, from the building of the plain loop to the end of "
            "the fit; highest over the model's fits."
        )
    freed = "" if device == "cuda" else " Heap the fer_lab side freed may still count for plain."
    return (
        f"*free: each side's own {what}, from the building of its data and model to its "
        f"last step; highest over the model's fits.{freed}"
    )


def gpu_check_summary(report: dict[str, Any], experiment: str) -> str:
    """The Markdown page: what ran, how long, and the numbers."""
    lines = [
        f"# fer_lab GPU check: {report['hardware']}",
        "",
        f"device {report['device']}, torch {report['torch']}, data {report['data']}, "
        f"budget {report['budget_s']:.0f} s, total {report['total_s']:.0f} s",
        "",
        "| step | exit | seconds |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {step['exit_code']} | {step['seconds']:.0f} |"
        for name, step in report["steps"].items()
    ]
    train = report.get("train", {})
    if train:
        lines += [
            "",
            f"Training `{experiment}`: {train['epochs']} epochs; epochs/s "
            f"{train['epochs_per_s_between_validations'] or float('nan'):.3f} between the first "
            f"and last validation, {train['epochs_per_s_whole_command']:.3f} for the whole "
            f"command (start-up and test included). Accuracy: PublicTest (val, best epoch) "
            f"{train['val_acc_best']:.4f}, PrivateTest (test) {train['test_acc']:.4f}, "
            f"PrivateTest ten-crop {train['eval_test_tencrop_acc'] or float('nan'):.4f}.",
        ]
    for row in report.get("bench", {}).get("training", []):
        lines.append(
            f"\nOverhead ({row['timing']}): fer_lab {row['fer_lab_images_per_s']:,.0f} img/s, "
            f"plain loop {row['plain_images_per_s']:,.0f} img/s, ratio "
            f"{row['ratio_plain_over_fer_lab']:.3f}; peak MB fer_lab "
            f"{row['fer_lab_peak_memory_mb']:,.0f}, plain {row['plain_peak_memory_mb']:,.0f}."
        )
    pipelines = report.get("bench", {}).get("pipelines", [])
    if pipelines:
        lines += ["", "| data pipeline | augmentation | img/s |", "|---|---|---|"]
        lines += [
            f"| {row['pipeline']} | {row['augmentation']} | {row['images_per_s']:,.0f} |"
            for row in pipelines
        ]
    for row in report.get("sweep", []):
        lines.append(
            f"\nSweep ({row['schedule']}): {row['trials']} trials of {row['model']} "
            f"({row['epochs']} epochs), {row['concurrent']} at once: "
            f"{row['trials_per_hour']:.1f} trials/hour."
        )
    for name in ("predict", "visualize"):
        if name in report:
            lines.append(f"\n{name}: {report[name]}")
    return "\n".join(lines) + "\n"
