"""docs/results.md and the README's headline table are generated from data/results.jsonl; lines keep their settings."""

import json

import pytest
import torch

from course_lib import config
from course_lib.results import (BEGIN, BENCHMARK_KINDS, CURVE_KINDS, DELIVERY_KINDS, END, HEADLINES, KINDS,
                                add_results, append_result, headline_table, main, points, read_results, results_page)


def _record(model, fid, guidance=None, sha="a" * 64, seed=1, **settings):
    return {"kind": "samples", "checkpoint": f"data/checkpoints/{model}.safetensors", "checkpoint_sha256": sha,
            "model": model, "step": 100, "training_minutes": 30.0, "nfe": 25.0 if guidance in (None, 1.0) else 50.0,
            "settings": {"num_samples": 2000, "steps": 25, "sampler": "ddim", "guidance": guidance, "seed": seed,
                         "spacing": "linspace", "shift": None, "decoder": None, "decoder_sha256": None, **settings},
            "metrics": {"fid": fid, "kid_mean": 0.0123, "kid_std": 0.0004, "precision": 0.61, "recall": 0.42,
                        "fd_clf": fid / 10, "precision_clf": 0.8, "recall_clf": 0.5},
            "reference": {"split": "train", "fid_n": 50000, "real_n": 2000, "source": "image folder cifar10-jpg"},
            "seconds": {"sampling": 300, "inception_total": 240}, "hardware": "CPU Intel(R) Xeon(R) (AVX512), 1 thread"}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def no_shipped_files(tmp_path, monkeypatch):
    """An empty checkpoint folder: the headline table has no shipped file whose SHA-256 a made-up line must match."""
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path / "no-checkpoints"))


def test_later_measurements_replace_earlier_ones_with_the_same_settings(tmp_path):
    path = _write(tmp_path / "results.jsonl", [_record("ddpm-small", 50.0), _record("cond-small", 40.0, 3.0, "b" * 64),
                                               _record("ddpm-small", 45.0)])
    records = read_results(path)
    assert [(r["model"], r["metrics"]["fid"]) for r in records] == [("cond-small", 40.0), ("ddpm-small", 45.0)]
    page = results_page(records)
    assert "FID-2k 45.00" in page and "50.00" not in page
    assert "12.30" in page and "0.61 / 0.42" in page and "ddim 25 steps, w = 3 (NFE 50)" in page
    path.write_text("{broken\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        read_results(path)
    assert read_results(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("changed", [dict(decoder="vae-small-ft", decoder_sha256="d" * 64), dict(spacing="trailing"),
                                     dict(seed=2), dict(shift=3.0)])
def test_two_lines_that_differ_only_in_decoder_spacing_shift_or_seed_both_survive(tmp_path, changed):
    base = _record("ldm-small", 60.0, 3.0, decoder="vae-small", decoder_sha256="c" * 64)
    other = _record("ldm-small", 40.0, 3.0, decoder="vae-small", decoder_sha256="c" * 64)
    other["settings"].update(changed)
    records = read_results(_write(tmp_path / "results.jsonl", [base, other]))
    assert sorted(r["metrics"]["fid"] for r in records) == [40.0, 60.0]


def test_points_merge_the_seeds_into_mean_and_spread(tmp_path):
    lines = [_record("ldm-small", fid, 3.0, seed=seed) for seed, fid in ((1, 64.0), (2, 66.0), (3, 65.0))]
    lines.append(_record("ldm-small", 90.0, 3.0, seed=1, steps=4))  # another point: 4 steps
    records = read_results(_write(tmp_path / "results.jsonl", lines))
    found = points("ldm-small", records=records, steps=25)
    assert len(found) == 1
    p = found[0]
    assert p.seeds == [1, 2, 3] and p.mean("fid") == pytest.approx(65.0) and p.std("fid") == pytest.approx(1.0)
    assert p.text("fid") == "65.00 ± 1.00 (3 seeds)" and p.nfe == 50.0 and "seed" not in p.settings
    assert [q.settings["steps"] for q in points("ldm-small", records=records)] == [4, 25]
    single = points("ldm-small", records=records, steps=4)[0]
    assert single.text("fid") == "90.00" and single.std("fid") is None and single.text("missing") == ""
    assert "65.00 ± 1.00 (3 seeds)" in results_page(records)


def test_prompt_accuracy_lines_and_the_headline_table(tmp_path, no_shipped_files):
    accuracy = {**_record("ldm-small", 0, 3.0), "kind": "prompt_accuracy", "metrics": {"prompt_accuracy": 0.66,
                                                                                         "prompt_accuracy_stderr": 0.03}}
    accuracy["settings"].update(num_samples=None, per_class=20, prompts="class")
    records = [_record("ldm-small", 65.0, 3.0), accuracy]
    table = headline_table(records)
    assert table.splitlines()[0].startswith("| model | sampling (NFE) |")
    assert "| ldm-small | ddim 25 steps, w = 3 (NFE 50) |" in table and "| 65.00 | 12.3 | 6.50 | 66.0 |" in table
    page = results_page(records)
    assert "| ldm-small | ddim 25 steps, w = 3 (NFE 50) |  | class | 200 | 1 | 66.0 |" in page
    with pytest.raises(ValueError, match="needs a kind"):
        append_result({"settings": {}}, tmp_path / "r.jsonl")
    append_result(accuracy, tmp_path / "r.jsonl")
    assert read_results(tmp_path / "r.jsonl") == [accuracy]


def test_the_page_and_the_readme_table_are_rewritten_and_checked(tmp_path, no_shipped_files, capsys):
    results, readme, page = tmp_path / "results.jsonl", tmp_path / "README.md", tmp_path / "docs" / "results.md"
    _write(results, [_record("ddpm-small", 50.0)])
    readme.write_text(f"# Course\n\n{BEGIN}\nold table\n{END}\n\nmore text\n")
    args = ["--results", str(results), "--readme", str(readme), "--page", str(page)]
    assert main(args + ["--check"]) == 1
    assert main(args) == 0
    text = readme.read_text()
    assert "old table" not in text and "| ddpm-small | ddim 25 steps (NFE 25) |" in text
    assert text.endswith(f"{END}\n\nmore text\n") and "FID-2k 50.00" in page.read_text()
    assert main(args + ["--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        main(args)


def test_the_committed_page_and_readme_show_the_committed_results():
    path = config.REPO_ROOT / "data" / "results.jsonl"
    assert path.is_file(), "data/results.jsonl is the source of docs/results.md and the README's table"
    assert main(["--results", str(path), "--check"]) == 0, \
        "docs/results.md or README.md's headline table is stale: run python -m course_lib.results"


def test_every_committed_line_keeps_its_settings_and_counts_its_nfe():
    for r in read_results(config.REPO_ROOT / "data" / "results.jsonl"):
        assert r["kind"] in KINDS, r
        if r["kind"] in DELIVERY_KINDS:
            assert {"chapter", "mode"} <= set(r["settings"]) and r["settings"]["mode"] in ("fast", "full"), r
            continue
        if r["kind"] in CURVE_KINDS:
            m = r["metrics"]
            assert len(m["step"]) == len(m["loss"]) == len(m["max_logit"]) == len(m["entropy"]) > 0, r["model"]
            continue
        if r["kind"] in BENCHMARK_KINDS:
            assert {"length", "batch", "heads", "dim", "pass"} <= set(r["settings"]), r
            assert set(r["metrics"]["ms"]) == set(r["metrics"]["peak_mb"]) == {"einsum", "sdpa", "chunked"}, r
            continue
        if r["kind"] in ("samples", "prompt_accuracy"):
            s = r["settings"]
            assert {"sampler", "steps", "guidance", "seed", "spacing", "shift", "decoder", "decoder_sha256"} <= set(s)
            assert r["nfe"] >= s["steps"], r  # at least one denoiser pass a step
            assert (s["decoder"] is None) == (r["model"] in ("ddpm-small", "cond-small", "cond-small-minilm")), r


def test_the_headline_shows_only_lines_measured_on_the_shipped_file():
    from course_lib.features import sha256_file

    shipped = sha256_file(config.checkpoint_dir() / "ldm-small.safetensors")
    records = [_record("ldm-small", 65.0, 3.0, sha=shipped), _record("ldm-small", 40.0, 3.0, sha="b" * 64, seed=2)]
    table = headline_table(records)
    assert "| 65.00 |" in table and "| 40.00 |" not in table  # an earlier file's line: on the full page only
    assert "FID-2k 40.00" in results_page(records)


def test_headlines_name_models_that_ship():
    for model, wanted in HEADLINES:
        assert wanted["kind"] in ("samples", "reconstructions", "real")
        if wanted["kind"] != "real":
            assert (config.REPO_ROOT / "data" / "checkpoints" / f"{model}.safetensors").is_file(), model


def test_a_reflowed_model_costs_its_pairs_and_its_teacher_too(tmp_path, monkeypatch):
    from course_lib.checkpoint import read_card
    from course_lib.results import training_cost

    assert training_cost({"training": {"wall_seconds_total": 600}}) == "10"
    card = read_card(config.checkpoint_dir() / "rf2-small.safetensors")
    own = card["training"]["wall_seconds_total"] / 60
    pairs = card["training"]["reflow"]["pairs"]["generation_seconds"] / 60
    teacher = read_card(config.checkpoint_dir() / "rf-small.safetensors")["training"]["wall_seconds_total"] / 60
    assert training_cost(card) == f"{own + pairs + teacher:.0f} ({own:.0f} + {pairs:.0f} pairs + {teacher:.0f} teacher)"
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path))  # the teacher's card missing: counted as 0
    assert training_cost(card).endswith(" + 0 teacher)")
    # a fine-tuned decoder costs its autoencoder's training too
    decoder = {"training": {"task": "decoder fine-tune (encoder frozen)", "wall_seconds_total": 1800,
                            "source": "data/checkpoints/vae-small.safetensors"}}
    assert training_cost(decoder) == "30 decoder fine-tune"  # the autoencoder's card missing: said so
    monkeypatch.undo()
    base = read_card(config.checkpoint_dir() / "vae-small.safetensors")["training"]["wall_seconds_total"] / 60
    assert training_cost(decoder) == f"{base + 30:.0f} ({base:.0f} + 30 decoder fine-tune)"


def _delivery(kind, chapter, **metrics):
    extra = {"explorer": "TrajectoryExplorer", "index": 0} if kind == "explorer_latency" else {}
    return {"date": "2026-12-07", "kind": kind, "settings": {"chapter": chapter, "mode": "fast", **extra},
            "metrics": metrics, "hardware": "CPU Test, 2 cores", "load_average": [1.25, 1.0, 1.0]}


def test_latency_memory_and_site_size_lines_are_added_from_a_file_and_shown(tmp_path):
    results = _write(tmp_path / "results.jsonl", [_record("ddpm-small", 50.0)])
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps([_delivery("explorer_latency", "05_rectified_flow", median_seconds=0.31,
                                             target_seconds=1.0, moves=[{"control": "t", "seconds": 0.31},
                                                                        {"control": "t", "seconds": 0.52}])]))
    memory = _write(tmp_path / "memory.jsonl", [_delivery("notebook_memory", "04_latent_diffusion", peak_gb=1.73,
                                                          end_gb=1.5, seconds=40.0, peak_where="cell 12 (Training)"),
                                                _delivery("notebook_memory", "06_mmdit", peak_gb=2.4, end_gb=2.0,
                                                          seconds=50.0, peak_where="cell 3 (setup)")])
    assert add_results(latency, results) == 1 and add_results(memory, results) == 2
    append_result(_delivery("site_size", "05_rectified_flow", bytes=12_600_000, explorers=2, views=320), results)
    page = results_page(read_results(results))
    assert "| 05_rectified_flow | TrajectoryExplorer #0 | 2 | 0.31 | 0.52 | 1 | CPU Test, 2 cores | 1.2 |" in page
    assert "| 04_latent_diffusion | fast | 1.73 | yes | cell 12 (Training) |" in page
    assert "| 06_mmdit | fast | 2.40 | NO |" in page  # over the 2 GB of a Binder server, said so
    assert "| 05_rectified_flow | fast | 12.6 | 2 | 320 |" in page
    assert "FID-2k 50.00" in page  # the sample tables are unchanged by the new kinds


def test_attention_cost_lines_and_other_grids_are_shown_apart(tmp_path, no_shipped_files):
    cost = {"date": "2026-12-07", "kind": "attention_cost", "hardware": "CPU Test, 1 thread",
            "settings": {"length": 23, "batch": 1, "heads": 4, "dim": 64, "pass": "forward", "repeats": 3},
            "metrics": {"ms": {"einsum": 0.05, "sdpa": 0.03, "chunked": 0.07},
                        "peak_mb": {"einsum": 0.04, "sdpa": 0.02, "chunked": 0.05}}}
    native = {**_record("ldm-small", 0, 3.0), "kind": "prompt_accuracy",
              "metrics": {"prompt_accuracy": 0.78, "prompt_accuracy_stderr": 0.03}}
    native["settings"].update(num_samples=None, per_class=20, prompts="class")
    wide = json.loads(json.dumps(native))
    wide["settings"]["size"], wide["metrics"]["prompt_accuracy"] = [16, 16], 0.5
    records = [_record("ldm-small", 65.0, 3.0), native, wide, cost]
    append_result(cost, tmp_path / "r.jsonl")  # a known kind: accepted
    page = results_page(records)
    assert "| 23 | 1 x 4 x 64 | forward | 0.050 | 0.030 | 0.070 | 0.04 | 0.02 | 0.05 | CPU Test, 1 thread |" in page
    assert "ddim 25 steps, w = 3, grid 16x16 (NFE 50) |  | class | 200 | 1 | 50.0 |" in page
    assert "| 65.00 | 12.3 | 6.50 | 78.0 |" in headline_table(records)  # the headline reads the trained grid's accuracy


def test_adding_a_bad_file_adds_nothing_and_says_why(tmp_path):
    results = _write(tmp_path / "results.jsonl", [_record("ddpm-small", 50.0)])
    before = results.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([_delivery("site_size", "01_ddpm_unet", bytes=1), {"kind": "speed", "settings": {}}]))
    with pytest.raises(ValueError, match=r"line\(s\) \[1\] lack a kind .* nothing added"):
        add_results(bad, results)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="neither a JSON list"):
        add_results(bad, results)
    assert results.read_text() == before
    page = tmp_path / "results.md"
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    with pytest.raises(SystemExit):  # the command line names the file and adds nothing
        main(["--results", str(results), "--readme", str(readme), "--page", str(page), "--add", str(bad)])
    assert results.read_text() == before


def test_the_same_images_scored_again_keep_the_metrics_of_both_lines(tmp_path):
    first = _record("ldm-small", 60.0)
    first["metrics"] = {"fd_clf": 9.1, "precision_clf": 0.8}
    later = _record("ldm-small", 61.0)
    later["metrics"] = {"fid": 87.1, "kid_mean": 0.05, "precision_clf": 0.7}
    (merged,) = read_results(_write(tmp_path / "results.jsonl", [first, later]))
    assert merged["metrics"] == {"fd_clf": 9.1, "precision_clf": 0.7, "fid": 87.1, "kid_mean": 0.05}


def test_a_monitored_run_becomes_a_curve_line_and_a_row(tmp_path):
    from course_lib.checkpoint import save_checkpoint

    monitor = [{"step": 25 * i, "loss": 1.0 - 0.1 * i, "max_logit": 2.0 + i, "entropy": 2.5 - 0.2 * i,
                "max_entropy": 2.89} for i in (1, 2, 3)]
    path = tmp_path / "state.safetensors"
    save_checkpoint(path, torch.nn.Linear(2, 2), step=75,
                    training={"recipe": "mmdit-noqknorm-hot", "monitor": monitor, "wall_seconds_total": 600,
                              "precision": "bf16 autocast", "hardware": "CPU Test, 1 thread",
                              "train_config": {"lr": 3e-3, "warmup_steps": 100, "batch_size": 64, "monitor_every": 25}})
    results, readme = tmp_path / "results.jsonl", tmp_path / "README.md"
    readme.write_text(f"# Course\n\n{BEGIN}\n{END}\n")
    assert main(["--results", str(results), "--page", str(tmp_path / "page.md"), "--readme", str(readme),
                 "--add-monitor", str(path)]) == 0
    (line,) = read_results(results)
    assert line["kind"] == "training_monitor" and line["metrics"]["max_logit"] == [3.0, 4.0, 5.0]
    page = (tmp_path / "page.md").read_text()
    assert "| mmdit-noqknorm-hot | no | 0.003 | bf16 autocast | 75 | 3.0 / 5.0 / 5.0 | 2.30 / 1.90 / 1.90 (2.89) |" in page
    save_checkpoint(path, torch.nn.Linear(2, 2), step=75, training={"recipe": "plain"})
    with pytest.raises(SystemExit):
        main(["--results", str(results), "--add-monitor", str(path)])  # no monitor history: a clear error
    assert len(read_results(results)) == 1
