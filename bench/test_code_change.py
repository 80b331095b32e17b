"""Gates that see the code change itself, not two settings of the same code.

- `test_reference`: each workload's tiny preset at a fixed seed reaches the stored training loss after
  each of 10 optimizer steps, the stored quality, FLOPs, forward passes and parameter count
  (`bench/references/`, refreshed only by `trainbench reference --update`). Catches changes that move
  every setting alike: gradients accumulated across steps, a changed initialisation, extra compute.
- `test_against_base` (with `--trainbench-against REF`, as `.ci/run` passes it): the working tree's
  code measured against REF's, same config, fresh processes alternating old/new until the interval is
  tight; fails on a resolved slowdown beyond 3% on wall time and says in which phase the time went.
  Without a code change against REF it skips, saying so.
"""

from __future__ import annotations

import pytest

WORKLOADS = ("doctrans", "gpcm", "lm", "sudoku")


@pytest.mark.gate
@pytest.mark.parametrize("workload", WORKLOADS)
def test_reference(train_bench, workload: str) -> None:
    train_bench.reference(workload)


@pytest.mark.gate
@pytest.mark.parametrize("workload", WORKLOADS)
def test_against_base(train_bench, workload: str) -> None:
    train_bench.against(workload, preset="tiny")
