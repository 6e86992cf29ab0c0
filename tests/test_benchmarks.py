"""The scaling benchmark's sections run at their smallest sizes and add up."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_SCRIPT = _ROOT / "benchmarks" / "bench_scale.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_scale", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while being defined.
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    return module


def test_memory_against_members_is_measured_and_summarised():
    bench = _load()
    settings = dataclasses.replace(bench.TINY, member_counts=(2, 6))
    record = bench.run(settings, sections=("members",), log=lambda message: None)

    rows = record["members"]
    assert [r["members"] for r in rows] == [2, 6]
    for row in rows:
        for program in ("memory_given", "memory_sampled"):
            memory = row[program]
            if memory is None:
                pytest.skip("this jaxlib gives no memory analysis")
            assert set(memory) == {"argument", "output", "temp", "alias"}
            assert memory["output"] > 0
        assert row["estimate_member_bytes"] > 0

    totals = [bench._total(r["memory_given"]) for r in rows]
    slope = record["member_slope"]["given"]
    assert slope["bytes_per_member"] == (totals[1] - totals[0]) / 4
    assert slope["bytes_per_member"] > 0
    assert slope["ratio"] == totals[1] / totals[0]
    assert slope["members_ratio"] == 3
    # Per-member histograms dominate: memory grows with members, at most
    # proportionally plus what does not depend on them.
    assert 1 < slope["ratio"] <= 3.05

    table = bench.markdown(record)
    assert "### b. XLA memory against members" in table
    assert "MiB per member" in table
    assert table.count("\n| 2 |") == 1 and table.count("\n| 6 |") == 1


@pytest.mark.slow
def test_tiny_command_line_run_prints_every_section(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run(
        [sys.executable, str(_SCRIPT), "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=_ROOT,
    )
    for title in ("### a.", "### b.", "### c.", "### d."):
        assert title in proc.stdout
    assert out.exists()
