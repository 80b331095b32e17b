"""Planted regressions: which CI gate catches which.

Each regression is a small text patch of one file, the kind of mistake a well-meaning engineer makes.
For the unchanged tree and for each regression the script clones the committed HEAD into a temporary
directory, applies the patch there without committing it (so the old-against-new gate compares HEAD
with the patched tree), runs the CI gate command in the clone, and tabulates which gates failed.

    python bench/regressions.py [--only NAME ...] [--check] [--gate-cmd "..."] [--out FILE]

`--check` only applies every patch and byte-compiles the patched file (seconds; no test runs). Without
it each tree costs one full gate run. Exit code 0 when the unchanged tree passes and every regression
fails at least one gate; 1 otherwise, with a line naming the regressions no gate caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE_CMD = "python -m pytest bench -m gate -q -p no:cacheprovider -rf --trainbench-against HEAD"
GATE_KINDS = ("counter", "ratio", "equivalence", "against", "reference")
WATCHED = ("harness", "models", "bench")  # uncommitted changes here are not in the clones
UNCHANGED = "unchanged"
MESSAGE_CHARS = 160
FAILED_LINE = re.compile(r"^FAILED (?P<node>.+?)(?: - (?P<message>.*))?$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Regression:
    """One planted regression: `old` replaced by `new` in `file`, where `old` occurs exactly `count` times."""

    name: str
    what: str
    """One line: what the patch breaks."""
    expected: str
    """The gate kind(s) that should catch it, comma-separated, from `GATE_KINDS`."""
    file: str
    """Path relative to the repository root."""
    old: str
    new: str
    count: int = 1

    def __post_init__(self) -> None:
        unknown = [k for k in self.expected.split(", ") if k not in GATE_KINDS]
        if unknown:
            raise ValueError(f"regression {self.name!r}: expected gate {unknown[0]!r}; allowed: "
                             f"{' | '.join(GATE_KINDS)}")
        if self.old == self.new or self.count < 1:
            raise ValueError(f"regression {self.name!r}: the patch changes nothing (count={self.count})")


REGRESSIONS = (
    Regression(
        name="lm_second_forward", expected="counter", file="models/lm/workload.py",
        what="LM workload forward runs the model twice: no-grad logits for a progress line, then the real ones",
        old='        return model(batch["tokens"], batch["lengths"])\n',
        new='        with torch.no_grad():  # train-set logits for the progress line\n'
            '            self.last_logits = model(batch["tokens"], batch["lengths"])\n'
            '        return model(batch["tokens"], batch["lengths"])\n'),
    Regression(
        name="gpcm_scan_runs_parallel", expected="ratio", file="models/gpcm/model.py",
        what="GPCM forward=scan dispatches to the parallel (autograd loop) memory code",
        old='        if self.forward_mode == "parallel":\n            reads = self._memory_loop(',
        new='        if self.forward_mode in ("parallel", "scan"):\n            reads = self._memory_loop('),
    Regression(
        name="gpcm_init_changed", expected="equivalence", file="models/gpcm/model.py",
        what="GPCM initial value memory M_0 halved at init in forward=scan only (same parameter count)",
        old="            self.key_embed.weight[0].zero_()\n",
        new="            self.key_embed.weight[0].zero_()\n"
            '            if self.forward_mode == "scan":  # a smaller M_0 for the scan\'s long products\n'
            "                self.init_value_memory.mul_(0.5)\n"),
    Regression(
        name="sudoku_extra_round", expected="equivalence", file="models/sudoku/model.py",
        what="Sudoku RRN forward=dense runs one extra message-passing round (read-out keeps the last n_steps)",
        old="""\
        for _ in range(self.n_steps):
            m = messages(h.view(b, N_CELLS, -1))                                      # (B, 81, H)
            x = self.post_mlp(torch.cat([m, x0], dim=-1))                             # (B, 81, H)
            h, c = self.lstm(x.reshape(b * N_CELLS, -1), (h, c))
            logits.append(self.readout(h).view(b, N_CELLS, N_DIGITS))
        return torch.stack(logits, dim=1)                                             # (B, S, 81, 9)
""",
        new="""\
        # dense: one warm-up round, so the first read-out already sees the peers of peers
        for _ in range(self.n_steps + (self.forward_mode == "dense")):
            m = messages(h.view(b, N_CELLS, -1))                                      # (B, 81, H)
            x = self.post_mlp(torch.cat([m, x0], dim=-1))                             # (B, 81, H)
            h, c = self.lstm(x.reshape(b * N_CELLS, -1), (h, c))
            logits.append(self.readout(h).view(b, N_CELLS, N_DIGITS))
        return torch.stack(logits[-self.n_steps:], dim=1)                             # (B, S, 81, 9)
"""),
    Regression(
        name="doctrans_checkpointing_noop", expected="counter", file="models/doctrans/layers.py",
        what="DocTrans gradient checkpointing is a no-op: the checkpoint call replaced by a plain block call",
        old="            x = checkpoint(block, x, *args, use_reentrant=False)\n",
        new="            x = block(x, *args)  # was checkpoint(...): plain call while debugging a backward\n"),
    Regression(
        name="lm_collate_slow", expected="against", file="models/lm/data.py",
        what="LM collate fills tokens and targets one element at a time in Python (same tensors, slower step)",
        old="""\
    tokens = torch.full((len(batch), max(lengths)), PAD, dtype=torch.long)
    for i, seq in enumerate(batch):
        tokens[i, : len(seq)] = seq
    targets = tokens[:, 1:].clone()
    targets[torch.arange(max(lengths) - 1)[None, :] >= torch.tensor(lengths)[:, None] - 1] = IGNORE
""",
        new="""\
    tokens = torch.full((len(batch), max(lengths)), PAD, dtype=torch.long)
    targets = torch.full((len(batch), max(lengths) - 1), IGNORE, dtype=torch.long)
    for i, seq in enumerate(batch):  # explicit per-token copy: easier to read than the mask
        for t in range(len(seq)):
            tokens[i, t] = seq[t]
            if t > 0:
                targets[i, t - 1] = seq[t]
"""),
    Regression(
        name="lm_collate_sleep", expected="against", file="models/lm/data.py",
        what="LM collate sleeps 0.6 ms per batch (waiting, not CPU work)",
        old="    lengths = [len(s) for s in batch]\n",
        new="    import time\n\n"
            "    time.sleep(0.0006)  # yield the GIL to the loader's pin-memory thread\n"
            "    lengths = [len(s) for s in batch]\n"),
    Regression(
        name="lm_float64_monitor", expected="reference, against", file="models/lm/model.py",
        what="LM logits() also computes a float64 max-logit monitor every forward (~8-13% more FLOPs, same loss)",
        old="        return self.ln_f(x) @ self.tok.weight.T  # (B, T, V), tied output embedding\n",
        new="        h = self.ln_f(x)  # (B, T, d)\n"
            "        with torch.no_grad():  # logit-scale monitor, float64 so a drifting max logit is exact\n"
            "            self.max_logit = (h.double() @ self.tok.weight.double().T).amax()\n"
            "        return h @ self.tok.weight.T  # (B, T, V), tied output embedding\n"),
    Regression(
        name="lm_second_forward_method", expected="counter", file="models/lm/workload.py",
        what="LM workload forward also runs model.logits() (every layer again) outside the root module's call",
        old='        return model(batch["tokens"], batch["lengths"])\n',
        new='        with torch.no_grad():  # train-set logits for the progress line\n'
            '            self.last_logits = model.logits(batch["tokens"][:, :-1])\n'
            '        return model(batch["tokens"], batch["lengths"])\n'),
    Regression(
        name="zero_grad_outside_step", expected="reference", file="harness/trainer.py",
        what="zero_grad indented into the GradScaler branch: without fp16 gradients accumulate across steps",
        old="""\
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
""",
        new="""\
            self.scaler.update()
            self.opt.zero_grad(set_to_none=True)
        else:
            self.opt.step()
"""),
    # Off the default path: each breaks a knob path only the experiments' variants (or a user) take; the stored
    # references' variants and their per-step counters (lr, gradient norms, EMA and parameter checksums) pin them.
    Regression(
        name="cosine_from_step0", expected="reference", file="harness/optim.py",
        what="cosine schedule measures its progress from step 0 instead of from the end of the warmup",
        old="            progress = (step - warmup) / max(total - warmup, 1)\n",
        new="            progress = step / max(total - warmup, 1)\n"),
    Regression(
        name="schedule_before_step", expected="reference", file="harness/trainer.py",
        what="the scheduler advanced before the optimizer step: every step runs at the next step's learning rate",
        old="""\
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
""",
        new="""\
        else:
            if self.sched is not None:
                self.sched.step()
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
"""),
    Regression(
        name="ema_before_step", expected="reference", file="harness/trainer.py",
        what="the EMA update moved before the optimizer step: the average lags one step behind the weights",
        old="""\
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            update_ema(self.ema, self.model)
""",
        new="""\
        if self.ema is not None:
            update_ema(self.ema, self.model)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
"""),
    Regression(
        name="bucketing_one_batch", expected="reference", file="harness/data.py",
        what="the length-sorting pool shrunk to one batch: bucket_by_length sorts inside each batch, cutting nothing",
        old="        self.pool = batch_size * pool_batches\n",
        new="        self.pool = batch_size  # sort within each batch\n"),
    Regression(
        name="lm_keeps_logits", expected="reference", file="models/lm/workload.py",
        what="LM workload keeps every step's logits for a train-accuracy line: memory grows one batch per step",
        old='        return model(batch["tokens"], batch["lengths"])\n',
        new='        logits = model(batch["tokens"], batch["lengths"])\n'
            '        self.__dict__.setdefault("seen_logits", []).append(logits.detach())  # train accuracy, later\n'
            '        return logits\n'),
    Regression(
        name="amp_off_on_cpu", expected="reference", file="harness/trainer.py",
        what="autocast enabled on CUDA only: amp=bf16 silently trains in float32 on a CPU",
        old="    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == \"bf16\" else torch.float16)\n",
        new="    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == \"bf16\" else torch.float16,\n"
            "                          enabled=device.type == \"cuda\")\n"),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one tree's gate run (or `--check` patch) gave."""

    name: str
    what: str
    expected: str
    returncode: int
    failed: tuple[tuple[str, str], ...]
    """(node id, first line of its message) per FAILED line of pytest's short summary."""
    seconds: float
    note: str = ""
    """Why there is no failed test to show: the patch did not apply, or the gate's last output line."""

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    @property
    def caught(self) -> bool:
        return self.returncode != 0 and bool(self.failed)


def patch_text(text: str, reg: Regression) -> str:
    """`text` with `reg.old` replaced by `reg.new`; ValueError unless `old` occurs exactly `count` times."""
    found = text.count(reg.old)
    if found != reg.count:
        raise ValueError(f"{reg.name}: the anchor occurs {found} times in {reg.file} (expected {reg.count}); "
                         "update the regression to the committed file")
    return text.replace(reg.old, reg.new)


def git(*args: str, cwd: Path = ROOT) -> str:
    """A git command's stdout; CalledProcessError on failure."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def uncommitted() -> list[str]:
    """Changed or untracked paths under `WATCHED`: the clones of HEAD do not have them."""
    return [line[3:] for line in git("status", "--porcelain", "--", *WATCHED).splitlines()]


def clone(dest: Path, reg: Regression | None) -> None:
    """Clone the committed HEAD into `dest` and apply `reg`'s patch there, uncommitted."""
    git("clone", "-q", str(ROOT), str(dest))
    if reg is not None:
        path = dest / reg.file
        path.write_text(patch_text(path.read_text(), reg))


def tree_env(tree: Path) -> dict[str, str]:
    """Environment of a command run in `tree`: its packages first on the path, CI mode on."""
    return {**os.environ, "PYTHONPATH": str(tree), "CI": "true"}


def check_imports_from(tree: Path) -> None:
    """Raise unless `harness` and `models` resolve to the clone (not an installed or editable copy)."""
    code = ("import importlib.util as u; "
            "print(*(u.find_spec(p).submodule_search_locations[0] for p in ('harness', 'models')), sep='\\n')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=tree_env(tree), check=True,
                         capture_output=True, text=True).stdout.split()
    wrong = [p for p in out if not Path(p).resolve().is_relative_to(tree.resolve())]
    if wrong:
        raise RuntimeError(f"the gate would import {wrong[0]}, not the clone {tree}; check PYTHONPATH and "
                           "installed copies of trainbench")


def parse_failures(output: str) -> tuple[tuple[str, str], ...]:
    """(node id, first message line) of every ``FAILED node - message`` line of pytest's -rf summary."""
    found = (FAILED_LINE.match(line) for line in output.splitlines())
    return tuple((m["node"], (m["message"] or "").strip()) for m in found if m)


def gate_argv(cmd: str) -> list[str]:
    """The gate command as argv; a leading `python` is this interpreter (the one with torch and pytest)."""
    argv = shlex.split(cmd)
    return [sys.executable, *argv[1:]] if argv and argv[0] == "python" else argv


def run_gate(tree: Path, reg: Regression | None, cmd: str) -> Outcome:
    """Run the gate command in `tree`; the exit code, failed tests and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(gate_argv(cmd), cwd=tree, env=tree_env(tree), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    failed = parse_failures(proc.stdout)
    last = next((line for line in reversed(proc.stdout.splitlines()) if line.strip()), "")
    return outcome(reg, returncode=proc.returncode, failed=failed, seconds=seconds,
                   note="" if failed else last.strip())


def outcome(reg: Regression | None, **fields: object) -> Outcome:
    """An `Outcome` named after `reg` (the unchanged tree when None)."""
    if reg is None:
        return Outcome(name=UNCHANGED, what="HEAD as committed", expected="-", **fields)
    return Outcome(name=reg.name, what=reg.what, expected=reg.expected, **fields)


def one_tree(reg: Regression | None, check: bool, cmd: str) -> Outcome:
    """Clone, patch, then byte-compile (`check`) or run the gate; a patch that does not apply is an outcome."""
    with tempfile.TemporaryDirectory(prefix="trainbench-regressions-") as tmp:
        tree = Path(tmp) / "tree"
        try:
            clone(tree, reg)
        except ValueError as err:
            return outcome(reg, returncode=-1, failed=(), seconds=0.0, note=f"patch does not apply: {err}")
        check_imports_from(tree)
        if not check:
            return run_gate(tree, reg, cmd)
        compiled = subprocess.run([sys.executable, "-m", "py_compile", reg.file], cwd=tree,
                                  capture_output=True, text=True) if reg else None
        if compiled is not None and compiled.returncode:
            return outcome(reg, returncode=-1, failed=(), seconds=0.0,
                           note=f"patched file does not compile: {compiled.stderr.strip().splitlines()[-1]}")
        note = f"applies ({reg.file})" if reg else "clean clone"
        return outcome(reg, returncode=0, failed=(), seconds=0.0, note=note)


def short_id(node: str) -> str:
    """``bench/test_bench_lm.py::test_x[p]`` -> ``test_bench_lm::test_x[p]``."""
    path, _, rest = node.partition("::")
    return f"{Path(path).stem}::{rest}" if rest else node


def caught_by(o: Outcome) -> str:
    """The table's "caught by" cell: the failed tests, "passed", or the exit code with no FAILED line."""
    if o.failed:
        return ", ".join(short_id(node) for node, _ in o.failed)
    return "passed" if o.passed else f"nothing (exit {o.returncode}, no FAILED line)"


def cell(text: str, limit: int | None = None) -> str:
    """`text` safe inside a markdown table cell, truncated to `limit` characters."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome]) -> str:
    """The markdown table of every tree's gate run."""
    rows = ["| regression | what | expected gate | caught by | first message | gate run s |",
            "| --- | --- | --- | --- | --- | ---: |"]
    for o in outcomes:
        message = o.failed[0][1] if o.failed else o.note
        rows.append(f"| {o.name} | {cell(o.what)} | {o.expected} | {cell(caught_by(o))} "
                    f"| {cell(message, MESSAGE_CHARS)} | {o.seconds:.1f} |")
    return "\n".join(rows) + "\n"


def progress_line(o: Outcome, check: bool) -> str:
    """One line per finished tree."""
    if check:
        return f"{o.name}: {o.note}"
    verdict = "passed" if o.passed else "caught" if o.caught else "NOT caught"
    detail = caught_by(o) if o.failed else o.note
    return f"{o.name}: {verdict} in {o.seconds:.0f} s ({cell(detail, MESSAGE_CHARS)})"


def select(only: list[str] | None) -> list[Regression | None]:
    """The trees to run: the unchanged one and every regression, or those `--only` names."""
    trees: list[Regression | None] = [None, *REGRESSIONS]
    if not only:
        return trees
    known = {UNCHANGED, *(r.name for r in REGRESSIONS)}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"--only: unknown name {unknown[0]!r}; allowed: {' | '.join(sorted(known))}")
    return [t for t in trees if (t.name if t else UNCHANGED) in only]


def missed(outcomes: list[Outcome], check: bool) -> list[str]:
    """Names of the trees that did not do what they should: apply (`check`), pass (unchanged), be caught."""
    if check:
        return [o.name for o in outcomes if o.returncode != 0]
    return [o.name for o in outcomes if not (o.passed if o.name == UNCHANGED else o.caught)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"trees to run ({UNCHANGED!r} or a regression)")
    parser.add_argument("--check", action="store_true", help="only apply each patch and byte-compile the file")
    parser.add_argument("--gate-cmd", default=GATE_CMD, help="command run in each clone (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    try:
        trees = select(args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dirty = uncommitted()
    if dirty:
        print(f"warning: uncommitted changes under {', '.join(w + '/' for w in WATCHED)} are not in the clones "
              f"of HEAD: {', '.join(dirty)}", flush=True)
    outcomes = []
    for reg in trees:
        outcomes.append(one_tree(reg, args.check, args.gate_cmd))
        print(progress_line(outcomes[-1], args.check), flush=True)
    if not args.check:
        print()
        print(table(outcomes), end="")
        if args.out:
            args.out.write_text(table(outcomes))
    bad = missed(outcomes, args.check)
    if bad:
        what = "did not apply" if args.check else "missed (unchanged must pass, a regression must fail a gate)"
        print(f"{what}: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
