"""The transformer-LM workload of seed 004: duplicate forward, batching, chunking, model size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.knobs import Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload, cached, eval_batches, upcast
from models.attention import attention_knob, check_device
from models.lm.data import (
    IGNORE,
    SEED_MAX_LEN,
    TokenDataset,
    chunk,
    collate_padded,
    generate_corpus,
    split_sequences,
)
from models.lm.model import TransformerLM

if TYPE_CHECKING:
    from harness.config import RunConfig

DATA_VERSION = 2  # bump when the generator changes, so caches are not reused (2: the chain's entropies kept)


def _k(name: str, type_: type, default: Any, kind: str, doc: str, **kw: Any) -> Knob:
    return Knob(name=name, type=type_, default=default, kind=kind, doc=doc, **kw)


class LMWorkload(Workload):
    """Decoder-only transformer on a synthetic Markov-chain corpus with seed-004 length statistics."""

    name = "lm"
    description = "transformer LM (seed 004): duplicate forward bug, per-sequence vs batched, chunking, size"
    knobs = (
        _k("forward", str, "batched", "exact", "per_sequence: one unpadded sequence at a time; batched: padded batch",
           choices=("per_sequence", "batched")),
        attention_knob(),
        _k("vocab_size", int, 10000, "quality", "vocabulary size (token 0 is padding)", min=8, max=1_000_000),
        _k("d_model", int, 256, "quality", "model width", min=8),
        _k("n_layers", int, 2, "quality", "transformer blocks", min=1),
        _k("n_heads", int, 4, "quality", "attention heads (must divide d_model)", min=1),
        _k("dropout", float, 0.0, "quality", "dropout probability (0 keeps steps deterministic)", min=0.0, max=0.9),
        _k("n_sequences", int, 7440, "quality", "sequences in the corpus before chunking", min=16),
        _k("length_scale", float, 1.0, "quality", "multiply the seed's sequence lengths (mean 88, max 659)",
           min=0.01, max=4.0),
        _k("eval_fraction", float, 0.1, "quality", "share of sequences held out for evaluation", min=0.01, max=0.5),
        _k("data_seed", int, 0, "quality", "seed of the synthetic corpus", min=0),
    )
    presets = {
        "tiny": Preset(values=dict(vocab_size=128, d_model=32, n_layers=1, n_heads=2, n_sequences=160,
                                   length_scale=0.08, max_length=32, batch_size=8, bench_warmup_steps=2,
                                   bench_steps=5),
                       doc="tests: milliseconds per step"),
        "cpu": Preset(values=dict(vocab_size=2000, d_model=128, n_layers=2, n_heads=4, n_sequences=1200,
                                  max_length=128, batch_size=16, lr=2e-3, bench_warmup_steps=3, bench_steps=15),
                      doc="CPU reports: ~0.1-0.3 s per step on 2 cores"),
        "seed_small": Preset(values=dict(vocab_size=10000, d_model=256, n_layers=2, n_heads=4, max_length=128,
                                         batch_size=32), doc="seed 004 small model: 256 dim, 2 layers, 10k vocab",
                             device_hint="cuda"),
        "seed_large": Preset(values=dict(vocab_size=50000, d_model=512, n_layers=6, n_heads=8, max_length=128,
                                         batch_size=32), doc="seed 004 large model: 512 dim, 6 layers, 50k vocab",
                             device_hint="cuda"),
    }
    default_preset = "cpu"
    supports = frozenset({"max_length", "bucket_by_length", "grad_checkpointing"})
    primary_metric = "token_acc"
    higher_is_better = True
    quality_metrics = ("token_acc", "loss", "perplexity", "excess_loss_pct", "achievable_loss", "source_entropy")

    def validate(self, cfg: RunConfig) -> None:
        check_device(cfg.attention, cfg.device)
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"knob 'n_heads': bad value {cfg.n_heads}: it must divide d_model={cfg.d_model}")
        if cfg.max_length == 1:
            raise ValueError("knob 'max_length': bad value 1: a chunk needs 2 tokens (input + target); "
                             "use 0 (no chunking) or >= 2")

    def max_positions(self, cfg: RunConfig) -> int:
        """Longest sequence the model can see: the chunk length, or the corpus's longest."""
        return cfg.max_length if cfg.max_length else max(round(SEED_MAX_LEN * cfg.length_scale), 3)

    def build_model(self, cfg: RunConfig) -> nn.Module:
        return TransformerLM(cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, self.max_positions(cfg),
                             cfg.dropout, cfg.forward, cfg.grad_checkpointing, cfg.attention)

    def build_datasets(self, cfg: RunConfig) -> tuple[TokenDataset, TokenDataset]:
        params = dict(n=cfg.n_sequences, vocab_size=cfg.vocab_size, length_scale=cfg.length_scale,
                      seed=cfg.data_seed, version=DATA_VERSION)
        corpus = cached("lm-corpus", params, lambda: generate_corpus(**{k: params[k] for k in
                                                                       ("n", "vocab_size", "length_scale", "seed")}))
        sequences = split_sequences(corpus)
        n_eval = max(1, int(len(sequences) * cfg.eval_fraction))
        train, held_out = sequences[:-n_eval], sequences[-n_eval:]
        return TokenDataset(chunk(train, cfg.max_length)), TokenDataset(
            chunk(held_out, cfg.max_length), corpus["entropy"], float(corpus["entropy_rate"]))

    def collate(self, cfg: RunConfig):
        return collate_padded

    def sample_lengths(self, dataset: Any, cfg: RunConfig) -> Sequence[int]:
        return [len(s) for s in dataset.sequences]

    def forward(self, model: nn.Module, batch: dict, cfg: RunConfig) -> Any:
        return model(batch["tokens"], batch["lengths"])

    def loss(self, outputs: Any, batch: dict, cfg: RunConfig) -> LossResult:
        targets = batch["targets"]  # (B, T-1), IGNORE at padding
        if isinstance(outputs, list):  # per_sequence: one unpadded sequence at a time
            total = sum(F.cross_entropy(upcast(out), targets[i, : len(out)], reduction="sum")
                        for i, out in enumerate(outputs))
        else:
            total = F.cross_entropy(upcast(outputs.flatten(0, 1)), targets.flatten(), ignore_index=IGNORE,
                                    reduction="sum")
        return LossResult(total=total, parts={"ce": total.detach()})

    def batch_counts(self, batch: dict, cfg: RunConfig) -> BatchCounts:
        lengths = batch["lengths"]
        real = sum(n - 1 for n in lengths)  # positions with a real next-token target
        padded = real if cfg.forward == "per_sequence" else len(lengths) * (max(lengths) - 1)
        return BatchCounts(samples=len(lengths), loss_elements=real, real_tokens=real, padded_tokens=padded)

    def compare_outputs(self, outputs: Any, batch: dict) -> list[torch.Tensor]:
        # Logits at real positions only, (sum(len-1), V): the form both forward modes share.
        if isinstance(outputs, list):
            return [torch.cat(outputs)]
        return [torch.cat([outputs[i, : n - 1] for i, n in enumerate(batch["lengths"])])]

    def evaluate(self, model: nn.Module, dataset: Any, cfg: RunConfig, device: torch.device) -> dict[str, float]:
        total_loss, correct, count, achievable = 0.0, 0, 0, 0.0
        for batch in eval_batches(dataset, max(cfg.batch_size, 32), collate_padded):
            logits = model.logits(batch["tokens"][:, :-1].to(device)).float()  # (B, T-1, V)
            targets = batch["targets"].to(device)
            valid = targets != IGNORE
            total_loss += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                                reduction="sum"))
            correct += int(((logits.argmax(-1) == targets) & valid).sum())
            count += int(valid.sum())
            if dataset.entropy is not None:  # what the chain itself scores on these very targets
                previous = batch["tokens"][:, :-1][batch["targets"] != IGNORE]
                achievable += float(dataset.entropy[previous].sum())
        loss = total_loss / max(count, 1)
        out = {"token_acc": correct / max(count, 1), "loss": loss, "perplexity": math.exp(min(loss, 50.0))}
        if dataset.entropy is not None and count:
            best = achievable / count
            out.update(achievable_loss=best, excess_loss_pct=(loss / best - 1) * 100,
                       source_entropy=dataset.entropy_rate)
        return out

    # --- predicted cost (seed 004's "Component | Small | Large | Ratio") ---------------------------

    def cost_components(self, cfg: RunConfig) -> dict[str, float]:
        d, n_layers, vocab = cfg.d_model, cfg.n_layers, cfg.vocab_size
        return {"embedding_params": vocab * d, "layers": n_layers, "d_model": d, "vocab_size": vocab,
                "matmul_params": 12 * n_layers * d * d + vocab * d, "context": self.context(cfg)}

    def context(self, cfg: RunConfig) -> float:
        """Mean tokens per chunk the attention sees (the T in 12·L·d·T)."""
        mean_len = 88 * cfg.length_scale
        return min(mean_len, cfg.max_length) if cfg.max_length else mean_len

    def flops_per_token(self, cfg: RunConfig) -> float:
        # 6N for the matmul weights (forward 2N + backward 4N, output head included because it is
        # tied to the embedding) + 12·L·d·T for attention scores and values (Kaplan et al. 2020).
        c = self.cost_components(cfg)
        return 6 * c["matmul_params"] + 12 * cfg.n_layers * cfg.d_model * c["context"]
