"""The Deep-GPCM workload (seeds 000 and 001): knobs, presets, data, loss and ordinal metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.knobs import Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload, cached, eval_batches
from models.gpcm.data import SyntheticOCSpec, collate_padded, generate_synthetic_oc, spec_params, split_datasets
from models.gpcm.metrics import METRIC_NAMES, ordinal_metrics
from models.gpcm.model import FORWARD_MODES, DeepGPCM
from models.gpcm.scan import DEFAULT_CHUNK_LEN

if TYPE_CHECKING:
    from harness.config import RunConfig


def _knob(name: str, type_: type, default: Any, kind: str, doc: str, **kw: Any) -> Knob:
    return Knob(name=name, type=type_, default=default, kind=kind, doc=doc, **kw)


# The public code's training recipe, set by every preset (seed 001's AdamW + cosine is a knob change).
_RECIPE = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "clip_grad_norm": 1.0, "batch_size": 64}


ORACLE_METRICS = ("oracle_qwk", "oracle_categorical_accuracy")


def oracle_metrics(dataset: torch.utils.data.Dataset, cfg: RunConfig) -> dict[str, float]:
    """The generating GPCM's QWK and categorical accuracy on the dataset's valid positions (its most probable
    category against the sampled one); empty for data without an oracle. Computed once per dataset."""
    oracle = getattr(dataset, "oracle", None)
    if oracle is None:
        return {}
    if getattr(dataset, "oracle_scores", None) is None:
        valid = torch.arange(dataset.questions.shape[1]) < dataset.lengths.unsqueeze(1)  # type: ignore[attr-defined]
        scores = ordinal_metrics(oracle[valid], dataset.responses[valid], cfg.n_cats)  # type: ignore[attr-defined]
        dataset.oracle_scores = {f"oracle_{k}": scores[k] for k in ("qwk", "categorical_accuracy")}  # type: ignore[attr-defined]
    return dict(dataset.oracle_scores)  # type: ignore[attr-defined]


class GPCMWorkload(Workload):
    """DKVMN + GPCM on synthetic_OC; `forward` = sequential | parallel | scan computes one function."""

    name = "gpcm"
    description = "Deep-GPCM (DKVMN memory + GPCM ordinal IRT head) on generated synthetic_OC; seeds 000/001"
    knobs = (
        _knob("forward", str, "scan", "exact", "how the model runs: sequential (per-step loop, the original), "
              "parallel (only the memory loop per step), scan (memory as one autograd node)", choices=FORWARD_MODES),
        _knob("scan_chunk_len", int, DEFAULT_CHUNK_LEN, "exact",
              "forward=scan: steps per recomputed chunk (one state saved per chunk; same function)", min=1),
        _knob("n_questions", int, 400, "quality", "question vocabulary Q (ids 1..Q; 0 is padding)", min=1),
        _knob("n_cats", int, 4, "quality", "ordinal response categories K (responses 0..K-1)", min=2),
        _knob("memory_size", int, 50, "quality", "DKVMN memory slots N", min=1),
        _knob("key_dim", int, 50, "quality", "key embedding / key memory width d_k", min=1),
        _knob("value_dim", int, 200, "quality", "value embedding / value memory width d_v", min=1),
        _knob("summary_dim", int, 50, "quality", "summary network width", min=1),
        _knob("ability_scale", float, 1.0, "quality", "scale of the ability theta", min=1e-6, max=100.0),
        _knob("n_students", int, 800, "quality", "synthetic_OC students (80% train, 20% eval)", min=2),
        _knob("min_seq_len", int, 100, "quality", "synthetic_OC shortest sequence", min=1),
        _knob("max_seq_len", int, 399, "quality", "synthetic_OC longest sequence", min=1),
        _knob("data_seed", int, 42, "quality", "synthetic_OC generator seed (independent of the training seed)",
              min=0),
    )
    presets = {
        "tiny": Preset(values={**_RECIPE, "n_questions": 20, "memory_size": 5, "key_dim": 8, "value_dim": 12,
                               "summary_dim": 8, "n_students": 80, "min_seq_len": 5, "max_seq_len": 20,
                               "batch_size": 8, "bench_warmup_steps": 1, "bench_steps": 3},
                       doc="tests: 80 students x 5..20 steps, N=5, d_v=12; a step takes milliseconds"),
        "cpu": Preset(values={**_RECIPE, "n_questions": 100, "memory_size": 20, "key_dim": 32, "value_dim": 64,
                              "summary_dim": 32, "n_students": 400, "min_seq_len": 20, "max_seq_len": 100,
                              "bench_warmup_steps": 2, "bench_steps": 10},
                      doc="CPU report: 400 students x 20..100 steps, 100 questions, N=20, d_k=32, d_v=64, batch 64"),
        "seed": Preset(values={**_RECIPE, "n_questions": 400, "memory_size": 50, "key_dim": 50, "value_dim": 200,
                               "summary_dim": 50, "n_students": 800, "min_seq_len": 100, "max_seq_len": 399},
                       doc="seed 000/001: synthetic_OC 800 students x 100..399 steps, 400 questions, N=50, "
                           "d_k=50, d_v=200, summary 50, batch 64", device_hint="cuda"),
    }
    default_preset = "cpu"
    supports = frozenset({"bucket_by_length"})
    primary_metric = "qwk"
    higher_is_better = True
    quality_metrics = (*METRIC_NAMES, *ORACLE_METRICS)
    eval_imports = ("torchmetrics",)  # evaluate imports it lazily: ~2-3 s (scipy) a speed run never pays

    # --- building -------------------------------------------------------------------------------

    def validate(self, cfg: RunConfig) -> None:
        """Data settings must make a generator spec (min_seq_len <= max_seq_len, >= 2 students)."""
        self._spec(cfg)

    @staticmethod
    def _spec(cfg: RunConfig) -> SyntheticOCSpec:
        return SyntheticOCSpec(n_students=cfg.n_students, n_questions=cfg.n_questions, n_cats=cfg.n_cats,
                               min_seq_len=cfg.min_seq_len, max_seq_len=cfg.max_seq_len, seed=cfg.data_seed)

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """DeepGPCM in the configured forward mode (identical weights for every mode from one seed)."""
        return DeepGPCM(n_questions=cfg.n_questions, n_cats=cfg.n_cats, memory_size=cfg.memory_size,
                        key_dim=cfg.key_dim, value_dim=cfg.value_dim, summary_dim=cfg.summary_dim,
                        ability_scale=cfg.ability_scale, forward_mode=cfg.forward,
                        scan_chunk_len=cfg.scan_chunk_len)

    def build_datasets(self, cfg: RunConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """synthetic_OC (train, eval), generated once per generator setting and cached on disk."""
        spec = self._spec(cfg)
        data = cached("gpcm_synthetic_oc", spec_params(spec), lambda: generate_synthetic_oc(spec))
        return split_datasets(data, cfg.n_questions, cfg.n_cats)

    def collate(self, cfg: RunConfig) -> Callable[[list[Any]], Any]:
        """Right-padding collate (module-level, so DataLoader workers can pickle it)."""
        return collate_padded

    def sample_lengths(self, dataset: torch.utils.data.Dataset, cfg: RunConfig) -> Sequence[int]:
        """Sequence lengths, for bucket_by_length."""
        return dataset.lengths.tolist()  # type: ignore[attr-defined]

    # --- the step -------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig) -> dict[str, torch.Tensor]:
        """One call of the root module on the whole batch."""
        return model(batch["questions"], batch["responses"])

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: RunConfig) -> LossResult:
        """Negative log-likelihood of the observed category, summed over valid (q != 0) positions."""
        log_probs = outputs["log_probs"]  # (B, T, K)
        picked = log_probs.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)  # (B, T)
        nll = -torch.where(batch["questions"] != 0, picked, torch.zeros_like(picked)).sum()
        return LossResult(total=nll, parts={"nll": nll})

    def batch_counts(self, batch: dict[str, torch.Tensor], cfg: RunConfig) -> BatchCounts:
        """Valid positions are the loss elements; padded positions are computed too."""
        questions = batch["questions"]
        valid = int((questions != 0).sum())
        return BatchCounts(samples=questions.shape[0], loss_elements=valid, real_tokens=valid,
                           padded_tokens=questions.numel())

    def compare_outputs(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The equivalence check compares the category probabilities at valid positions."""
        return [outputs["log_probs"].exp()[batch["questions"] != 0]]  # (valid, K)

    # --- quality --------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, dataset: torch.utils.data.Dataset, cfg: RunConfig,
                 device: torch.device) -> dict[str, float]:
        """QWK, categorical and ordinal accuracy, MAE of argmax predictions on valid eval positions; on generated
        data also the generating GPCM's own QWK and categorical accuracy on the same positions (`oracle_*`: the
        ceiling the model is read against)."""
        preds, targets = [], []
        for batch in eval_batches(dataset, cfg.batch_size, self.collate(cfg)):
            outputs = self.forward(model, self.to_device(batch, device), cfg)
            valid = batch["questions"] != 0
            preds.append(outputs["log_probs"].argmax(-1).cpu()[valid])  # .cpu() syncs: fine in eval
            targets.append(batch["responses"][valid])
        return {**ordinal_metrics(torch.cat(preds), torch.cat(targets), cfg.n_cats), **oracle_metrics(dataset, cfg)}

    # --- analytic cost --------------------------------------------------------------------------

    def flops_per_token(self, cfg: RunConfig) -> float:
        """Training FLOPs per (padded) position: 3x the forward's multiply-adds x 2."""
        k, n, dk, dv, f = cfg.n_cats, cfg.memory_size, cfg.key_dim, cfg.value_dim, cfg.summary_dim
        forward = (dk * dk + n * dk          # query transform, correlation with the key memory
                   + k * dv + 2 * dv * dv    # value gather-and-mix, erase and add
                   + 3 * n * dv              # read, erase-add write
                   + (dv + dk) * f + f + dk * (k - 1) + (f + dk) + 2 * k)  # summary, IRT head, GPCM
        return 3.0 * 2.0 * forward

    def cost_components(self, cfg: RunConfig) -> dict[str, float]:
        """Memory-state size and value-embedding width, the terms the sequence loop scales with."""
        return {"memory_state_floats": float(cfg.memory_size * cfg.value_dim),
                "value_embedding_params": float(cfg.n_cats * cfg.n_questions * cfg.value_dim)}
