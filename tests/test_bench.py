import pytest
import torch

from borrowcore.deploy.bench import compile_rows, cpu_peak_memory_mb, flop_rows, format_markdown, targets


def test_fmb_frb_flops_match_the_analytic_count():
    rows = {r["model"]: r for r in flop_rows(num_classes=3, input_size=128, width=0.125)}
    for neck in ("borrow", "full"):
        assert rows[neck]["fmb_frb_gmacs_measured"] == rows[neck]["fmb_frb_gmacs_analytic"] > 0
    assert rows["ssd"]["gmacs"] < rows["context"]["gmacs"] < rows["full"]["gmacs"]
    assert rows["ssd"]["gmacs"] < rows["borrow"]["gmacs"] < rows["full"]["gmacs"]


def test_targets_pass_and_fail():
    rows = [{"model": m, "batch": 1, "precision": "fp32", "median_ms": v}
            for m, v in (("ssd", 100.0), ("full", 109.0), ("torchvision", 80.0), ("full+explain", 130.0))]
    result = {t["target"]: t for t in targets(rows)}
    assert result["full vs ssd latency"]["result"] == "PASS" and result["full vs ssd latency"]["ratio"] == 1.09
    assert result["full vs torchvision ssd300_vgg16"]["result"] == "FAIL"  # 109 / 80 = 1.36 > 1.25
    assert result["full explain vs plain"]["result"] == "FAIL"  # 130 / 109 = 1.19 > 1.15
    text = format_markdown({"machine": {"cpu": "x", "cores": 2, "threads": 2, "torch": "t"}, "command": "c",
                            "latency": [{**r, "device": "cpu", "p90_ms": 1, "images_per_s": 1} for r in rows],
                            "targets": list(result.values())})
    assert "| full vs ssd latency | 1 | fp32 | 1.09 | 1.1 | PASS |" in text


def test_peak_memory_grows_with_batch():
    # activations of 16 images at 128 px, width 0.25, take tens of MiB more than one image's
    one, sixteen = cpu_peak_memory_mb("ssd", 1, 128, 3, 0.25), cpu_peak_memory_mb("ssd", 16, 128, 3, 0.25)
    assert 0 < one < sixteen


@pytest.mark.slow
def test_compiled_network_matches_eager_and_is_reported():
    rows = compile_rows(num_classes=3, input_size=128, width=0.0625, device=torch.device("cpu"), batches=(1,),
                        repeats=2, warmup=1)
    assert [(r["model"], r["batch"]) for r in rows] == [("ssd", 1), ("full", 1)]
    for row in rows:
        assert row["max_abs_difference"] < 1e-3  # fp32 on the CPU: the same function, reordered sums
        # the speed-up comes from unrounded medians, the ms columns are rounded to 0.01
        assert row["compiled_ms"] > 0 and row["speedup"] == pytest.approx(row["eager_ms"] / row["compiled_ms"], abs=0.01)
    text = format_markdown({"machine": {"cpu": "x", "cores": 2, "threads": 2, "torch": "t"}, "command": "c", "compile": rows})
    assert "| torch.compile |" in text and "| full | 1 | cpu | fp32 | default |" in text


def test_scale_section_rows_targets_and_plot(tmp_path):
    """Two small inputs at width 0.0625: every model has a row per input with its ratios to ssd, the
    targets judge them, and the plot and the table are written."""
    from borrowcore.deploy.bench import plot_scale, scale_rows, scale_targets

    rows = scale_rows(sizes=(128, 192), widths=(0.0625,), key_budget=4, repeats=1, warmup=0)
    assert [(r["model"], r["input"]) for r in rows] == [(m, s) for s in (128, 192) for m in ("ssd", "full", "full+exact")]
    for row in rows:
        assert row["median_ms"] > 0 and row["peak_mb"] > 0
        ssd = next(r for r in rows if r["model"] == "ssd" and r["input"] == row["input"])
        assert row["time_vs_ssd"] == pytest.approx(row["median_ms"] / ssd["median_ms"], abs=1e-3)
    assert {r["key_budget"] for r in rows if r["model"] == "full"} == {4}
    assert {r["key_budget"] for r in rows if r["model"] == "full+exact"} == {0}
    made_up = [{**r, "memory_vs_ssd": 1.3 if r["model"] == "full+exact" else 1.0, "time_vs_ssd": 1.2} for r in rows]
    judged = {(t["target"], t["input"]): t["result"] for t in scale_targets(made_up)}
    assert judged[("full+exact peak memory vs ssd", 128)] == "FAIL" and judged[("full time vs ssd", 192)] == "PASS"
    assert len(judged) == 2 * 3  # full (the default): time and memory; full+exact: memory; at each input
    plot_scale(rows, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
    text = format_markdown({"machine": {"cpu": "x", "cores": 2, "threads": 2, "torch": "t"}, "command": "c",
                            "scale": rows, "scale_targets": scale_targets(rows)})
    assert "| full K=4 | 0.0625 | 192 |" in text and "| full+exact peak memory vs ssd | 0.0625 | 128 |" in text
