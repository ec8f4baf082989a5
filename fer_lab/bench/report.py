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
    if result.get("host"):
        lines.append(
            "\nhost work per optimizer step, pooled linear network at batch 8 "
            "(fer_lab/bench/host_overhead.py; times are medians of alternating fits)"
            "\n| steps per call | fer_lab ms | plain ms | overhead ms | ops fer_lab / plain "
            "| Python calls fer_lab / plain |\n|---|---|---|---|---|---|"
        )
        for row in result["host"]:
            lines.append(
                f"| {row['steps_per_call']} | {statistics.median(row['fer_lab_step_ms']):.3f} | "
                f"{statistics.median(row['plain_step_ms']):.3f} | {row['overhead_ms']:.3f} | "
                f"{row['fer_lab_ops_per_step']:.0f} / {row['plain_ops_per_step']:.0f} | "
                f"{row['fer_lab_calls_per_step']:.0f} / {row['plain_calls_per_step']:.0f} |"
            )
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


def profile_lines(profile: dict[str, Any]) -> list[str]:
    """The torch.profiler summary: time per step, the GPU's idle share, the top ops."""
    device = profile["device_ms_per_step"]
    idle = profile["gpu_idle_share"]
    lines = [
        "",
        f"Profile of {profile['steps']} training steps (batch {profile['batch_size']}, after "
        f"{profile['warmup']} warm-up; {profile['optimizer_steps_per_step']:g} optimizer "
        f"steps each): host {profile['host_ms_per_step']:.2f} ms a step, wall "
        f"{profile['wall_ms_per_step']:.2f} ms, "
        + (
            f"device busy {device:.2f} ms: the GPU idles {idle:.1%} of each step."
            if device is not None
            else f"device n/a ({profile['note']})."
        ),
        f"Start-up to the first training batch {profile['startup_s']:.1f} s (imports "
        f"{profile['import_s']:.1f} s); trace: {profile['trace']}.",
        "",
        f"| op | calls/step | {profile['ranked_by']} ms/step | share |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{op['name'][:80]}` | {op['calls_per_step']:g} | {op['self_ms_per_step']:.3f} "
        f"| {op['share']:.1%} |"
        for op in profile["top_ops"]
    ]
    return lines


def _shown(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)


def sweep_lines(sweep: dict[str, Any]) -> list[str]:
    """Trials per hour with several workers on one device against one, and the device's use."""
    lines = [
        "",
        "| sweep workers | trials | epochs | wall s | trials/hour | GPU util % mean / peak "
        "| GPU MiB peak | per process MiB peak | CPU busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sweep["rows"]:
        usage = row["usage"]
        lines.append(
            f"| {row['concurrent']} | {row['trials']} | {row['epochs']} | {row['wall_s']:.0f} "
            f"| {row['trials_per_hour']:.1f} | {_shown(usage['gpu_utilisation_mean'], '.0f')} / "
            f"{_shown(usage['gpu_utilisation_peak'], '.0f')} "
            f"| {_shown(usage['gpu_memory_peak_mib'], ',.0f')} "
            f"| {_shown(usage['gpu_process_memory_peak_mib'], ',.0f')} "
            f"| {_shown(usage['cpu_busy_mean'], '.0%')} |"
        )
    if sweep["speedup"] is not None:
        lines.append(
            f"\n{sweep['rows'][-1]['concurrent']} at once: {sweep['speedup']:.2f}x the trials "
            "per hour of one at a time."
        )
    sampling = {row["usage"]["gpu_sampling"] for row in sweep["rows"]} - {"ok"}
    if sampling:
        lines.append(f"GPU sampling: {'; '.join(sorted(sampling))}.")
    return lines


def budget_lines(budget: dict[str, Any]) -> list[str]:
    """How the steps were sized, from what the profile and bench steps measured."""
    costs = budget.get("costs")
    if not costs:
        return []
    text = (
        f"Budget model (measured): {costs['fixed_s']:.1f} s fixed per command, "
        f"{costs['setup_s']:.1f} s of it data and job (paid again by each trial), "
        f"{costs['epoch_s']:.1f} s an epoch at {costs['images_per_s']:,.0f} img/s: training "
        f"{budget['train_epochs']} epochs"
    )
    sweep = budget.get("sweep")
    if sweep:
        text += f", the sweep's trials {sweep['epochs']} epochs"
        if sweep["fraction_of_each_epoch"]:
            text += f" of {sweep['fraction_of_each_epoch']:.0%} of an epoch each"
    return ["", text + "."]


def gpu_check_summary(report: dict[str, Any], experiment: str) -> str:
    """The Markdown page: what ran, how long, and the numbers."""
    lines = [
        f"# fer_lab GPU check: {report['hardware']}",
        "",
        f"device {report['device']}, torch {report['torch']}, data {report['data']}, "
        f"budget {report['budget_s']:.0f} s, total {report['total_s']:.0f} s",
        "",
        "| step | exit | seconds | note |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {step['exit_code']} | {step['seconds']:.0f} "
        f"| {step.get('skipped') or step.get('stopped') or ''} |"
        for name, step in report["steps"].items()
    ]
    lines += budget_lines(report.get("budget", {}))
    if "profile" in report:
        lines += profile_lines(report["profile"])
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
    if report.get("sweep", {}).get("rows"):
        lines += sweep_lines(report["sweep"])
    for name in ("predict", "visualize"):
        if name in report:
            lines.append(f"\n{name}: {report[name]}")
    return "\n".join(lines) + "\n"
