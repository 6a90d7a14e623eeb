"""The README's results table is generated from data/results.jsonl."""

import json

import pytest

from course_lib import config
from course_lib.results import BEGIN, END, main, read_results, results_table


def _record(model, fid, guidance=None, sha="a" * 64):
    return {"checkpoint": f"data/checkpoints/{model}.safetensors", "checkpoint_sha256": sha, "model": model,
            "step": 100, "training_minutes": 30.0,
            "settings": {"num_samples": 2000, "steps": 25, "sampler": "ddim", "guidance": guidance, "seed": 0},
            "metrics": {"fid": fid, "kid_mean": 0.0123, "kid_std": 0.0004, "precision": 0.61, "recall": 0.42},
            "reference": {"split": "train", "fid_n": 50000, "real_n": 2000, "source": "image folder cifar10-jpg"},
            "seconds": {"sampling": 300, "inception_total": 240}, "hardware": "CPU Intel(R) Xeon(R) (AVX512)"}


def test_later_measurements_replace_earlier_ones_with_the_same_settings(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [_record("ddpm-small", 50.0), _record("cond-small", 40.0, 3.0, "b" * 64), _record("ddpm-small", 45.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    records = read_results(path)
    assert [(r["model"], r["metrics"]["fid"]) for r in records] == [("cond-small", 40.0), ("ddpm-small", 45.0)]
    table = results_table(records)
    assert "FID-2k **45.00**" in table and "50.00" not in table
    assert "12.30 ± 0.40" in table and "0.61 / 0.42" in table and "ddim 25 steps, w = 3" in table
    assert table.splitlines()[2].startswith("| `cond-small` (step 100, 30 min training)")
    path.write_text("{broken\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        read_results(path)


def test_the_readme_table_is_rewritten_between_its_markers_and_checked(tmp_path, capsys):
    results, readme = tmp_path / "results.jsonl", tmp_path / "README.md"
    results.write_text(json.dumps(_record("ddpm-small", 50.0)) + "\n")
    readme.write_text(f"# Course\n\n{BEGIN}\nold table\n{END}\n\nmore text\n")
    assert main(["--results", str(results), "--readme", str(readme), "--check"]) == 1
    assert main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "FID-2k **50.00**" in text and text.endswith(f"{END}\n\nmore text\n")
    assert main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        main(["--results", str(results), "--readme", str(readme)])


def test_the_committed_readme_shows_the_committed_results():
    path = config.REPO_ROOT / "data" / "results.jsonl"
    assert path.is_file(), "data/results.jsonl is the source of the README's results table"
    assert main(["--results", str(path), "--readme", str(config.REPO_ROOT / "README.md"), "--check"]) == 0, \
        "README.md's results table is stale: run python -m course_lib.results"
