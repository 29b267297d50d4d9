"""The benchmark's shapes, small, on real workers: eager is never slower than levels.

Both schedules run the same DAG on the same fleet, one after the other; the
margin is generous (half a second), so this compares schedules, not noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARGIN_S = 0.5


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_makespan", ROOT / "bench" / "makespan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_eager_is_never_slower_than_levels_on_the_benchmark_shapes(tmp_path: Path) -> None:
    bench = load_bench()
    shapes = {s: bench.make_dag(s, 8, seed=3) for s in bench.SHAPES}
    fleet, repo, queue = bench.prepared(tmp_path, shapes, 4)
    try:
        rows = bench.bench_shapes(fleet, repo, queue, shapes, 4)
    finally:
        fleet.stop()
        fleet.redis.stop(kill=True)
    for row in rows:
        assert row.eager <= row.levels + MARGIN_S, row
        assert row.eager >= row.bound * 0.95, row  # a measured makespan never beats the bound
        assert row.est_eager <= row.est_levels + 1e-9, row


@pytest.mark.parametrize("shape", ["wide", "deep", "layered-skewed"])
def test_the_benchmark_dags_are_seeded_and_acyclic(shape: str) -> None:
    bench = load_bench()
    dag = bench.make_dag(shape, 20, seed=5)
    assert [t.id for t in dag] == [t.id for t in bench.make_dag(shape, 20, seed=5)]
    seen: set[str] = set()
    for t in dag:
        assert set(t.deps) <= seen and 0.3 <= t.seconds <= 3.0
        seen.add(t.id)
