"""Shared test setup: run from the repository root with an isolated data cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TOY = "tests.toy:WORKLOAD"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Child processes import `tests.toy` and `models` from the working directory.
    monkeypatch.chdir(REPO)


# One intra-op thread for in-process tests: two threads spinning against other processes on a
# 2-core runner made tiny steps hundreds of times slower. Subprocess runs keep torch's default.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Generated datasets go to a per-session cache, so no test depends on a local cache.
    os.environ["TRAINBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
