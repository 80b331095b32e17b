"""The doctrans workload (seed 002, DIMTDA): document-image translation with two encoders,
per-encoder Q-Formers, gated fusion and a text decoder, on synthetic rendered pages.

Loss: next-token cross-entropy summed over the counted target positions. With ``ignore_pad=true``
(the default) padding positions are not counted. DIMTDA's public training code averaged the loss over
pad positions too; that dilutes the gradient of the real tokens by the padding fraction, makes the
loss depend on how much padding a batch happens to carry, and so breaks the equivalence of
micro-batch x accumulation at equal effective batch (batch 1 has no padding, batch 2 pads to the
longer page). ``ignore_pad=false`` reproduces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.knobs import Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload, eval_batches, move_to
from models.attention import attention_knob, check_device
from models.doctrans.data import BOS, EOS, FIRST_TOKEN, PAD, PageCollate, PageSpec, build_splits
from models.doctrans.model import DocTranslator, ModelSizes

if TYPE_CHECKING:
    from harness.config import RunConfig


def _q(name: str, type_: type, default: Any, doc: str, **kw: Any) -> Knob:
    return Knob(name=name, type=type_, default=default, kind="quality", doc=doc, **kw)


_KNOBS = (
    attention_knob(),
    _q("image_h", int, 64, "page height in pixels", min=8),
    _q("image_w", int, 128, "page width in pixels", min=8),
    _q("patch_px", int, 8, "ViT (patch encoder) patch side in pixels", min=1),
    _q("vit_width", int, 64, "ViT width", min=1),
    _q("vit_depth", int, 2, "ViT blocks", min=1),
    _q("swin_patch_px", int, 4, "Swin patch-embedding side in pixels", min=1),
    _q("swin_width", int, 32, "Swin first-stage width (doubles at each patch merging)", min=1),
    _q("swin_depths", str, "2,2", "Swin blocks per stage, comma-separated (e.g. 2,2,18,2)"),
    _q("window", int, 4, "Swin attention window side in tokens", min=1),
    _q("head_dim", int, 16, "width of one attention head (every width must be a multiple)", min=1),
    _q("num_queries", int, 32, "learnable queries per Q-Former", min=1),
    _q("qformer_width", int, 64, "Q-Former width", min=1),
    _q("dec_width", int, 64, "text decoder width", min=1),
    _q("dec_depth", int, 2, "text decoder blocks", min=1),
    _q("vocab_size", int, 64, "token vocabulary incl. PAD/BOS/EOS (one glyph per token)", min=FIRST_TOKEN + 2),
    _q("glyph_px", int, 8, "glyph bitmap side in pixels", min=2),
    _q("min_len", int, 8, "fewest source tokens per page", min=1),
    _q("max_len", int, 24, "most source tokens per page", min=1),
    _q("reorder_window", int, 3, "the translation reverses token order inside windows of this size", min=1),
    _q("noise_std", float, 0.1, "Gaussian pixel noise (pixels in [0, 1])", min=0.0, max=1.0),
    _q("train_samples", int, 512, "pages in the train split", min=1),
    _q("eval_samples", int, 64, "pages in the eval split", min=1),
    _q("data_seed", int, 0, "seed of the generated pages (glyphs, mapping, texts, noise)", min=0),
    _q("ignore_pad", bool, True, "leave padding out of the loss (DIMTDA's code counted it; see docs)"),
)

_TINY = dict(image_h=32, image_w=32, patch_px=8, vit_width=32, vit_depth=1, swin_patch_px=4, swin_width=16,
             swin_depths="1,1", window=4, head_dim=16, num_queries=8, qformer_width=32, dec_width=32,
             dec_depth=1, vocab_size=16, glyph_px=4, min_len=3, max_len=8, train_samples=64, eval_samples=16,
             batch_size=4, bench_warmup_steps=1, bench_steps=2)
_CPU = dict(batch_size=8, grad_accum=4, bench_warmup_steps=1, bench_steps=3)  # knob defaults are the CPU sizes
# DIMTDA sizes: DiT-base-like ViT (768 x 12), Swin-B-like windowed encoder (128, depths 2-2-14-2),
# 256 queries, 3 decoder layers; the seed note's final settings: batch 2 x 16, fp16, checkpointing.
_SEED = dict(image_h=768, image_w=512, patch_px=16, vit_width=768, vit_depth=12, swin_patch_px=4,
             swin_width=128, swin_depths="2,2,14,2", window=8, head_dim=64, num_queries=256,
             qformer_width=768, dec_width=768, dec_depth=3, vocab_size=4096, glyph_px=16, min_len=64,
             max_len=256, train_samples=512, eval_samples=64, batch_size=2, grad_accum=16, amp="fp16",
             grad_checkpointing=True, clip_grad_norm=1.0, lr=1e-4, bench_warmup_steps=1, bench_steps=3)


_EVAL_BATCH = 16


def swin_depths(cfg: RunConfig) -> tuple[int, ...]:
    """The `swin_depths` knob as a tuple; ValueError unless it is comma-separated positive integers."""
    try:
        depths = tuple(int(d) for d in str(cfg.swin_depths).split(","))
    except ValueError:
        depths = ()
    if not depths or min(depths) < 1:
        raise ValueError(f"knob 'swin_depths': bad value {cfg.swin_depths!r}; "
                         "allowed: comma-separated positive integers, e.g. 2,2,6,2")
    return depths


def page_spec(cfg: RunConfig) -> PageSpec:
    """The data knobs of a config."""
    return PageSpec(image_h=cfg.image_h, image_w=cfg.image_w, glyph_px=cfg.glyph_px, vocab_size=cfg.vocab_size,
                    min_len=cfg.min_len, max_len=cfg.max_len, noise_std=cfg.noise_std,
                    reorder_window=cfg.reorder_window, data_seed=cfg.data_seed)


def model_sizes(cfg: RunConfig) -> ModelSizes:
    """The model knobs of a config."""
    return ModelSizes(image_hw=(cfg.image_h, cfg.image_w), patch_px=cfg.patch_px, vit_width=cfg.vit_width,
                      vit_depth=cfg.vit_depth, swin_patch_px=cfg.swin_patch_px, swin_width=cfg.swin_width,
                      swin_depths=swin_depths(cfg), window=cfg.window, head_dim=cfg.head_dim,
                      num_queries=cfg.num_queries, qformer_width=cfg.qformer_width, dec_width=cfg.dec_width,
                      dec_depth=cfg.dec_depth, vocab_size=cfg.vocab_size, max_positions=cfg.max_len + 1)


def _check_divisible(name: str, value: int, unit: int, why: str) -> None:
    if value % unit:
        lower, upper = value // unit * unit, (value // unit + 1) * unit
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"knob '{name}': {value} is not divisible by {unit} ({why}); "
                         f"use a multiple of {unit}, e.g. {options}")


def detokenize(ids: torch.Tensor) -> str:
    """Token ids up to the first EOS as a space-separated string (the unit BLEU counts in)."""
    words = []
    for token in ids.tolist():
        if token == EOS:
            break
        if token not in (PAD, BOS):
            words.append(f"t{token}")
    return " ".join(words)


class DocTransWorkload(Workload):
    """Document-image translation: ViT + Swin encoders, two Q-Formers, gated fusion, text decoder."""

    name = "doctrans"
    description = "document-image translation (DIMTDA topology) on synthetic rendered pages"
    knobs = _KNOBS
    presets = {
        "tiny": Preset(values=_TINY, doc="unit tests: 32x32 pages, one block per part; milliseconds per step"),
        "cpu": Preset(values=_CPU, doc="CPU report: 64x128 pages, 0.54M params; a 32-page step in 1-3 s "
                                       "on one core"),
        "seed": Preset(values=_SEED, device_hint="cuda",
                       doc="seed 002's DIMTDA sizes (~209M params, 256 queries, 3 decoder layers), "
                           "768x512 pages, batch 2 x 16 with fp16 and checkpointing"),
    }
    default_preset = "cpu"
    supports = frozenset({"grad_checkpointing"})
    primary_metric = "bleu"
    higher_is_better = True
    quality_metrics = ("bleu", "token_accuracy")
    eval_imports = ("torchmetrics",)  # evaluate imports it lazily: ~2-3 s (scipy) a speed run never pays

    def validate(self, cfg: RunConfig) -> None:
        """One-line ValueErrors for sizes the model or the page layout cannot take."""
        check_device(cfg.attention, cfg.device)
        depths = swin_depths(cfg)
        for side in ("image_h", "image_w"):
            _check_divisible(side, getattr(cfg, side), cfg.patch_px, f"patch_px={cfg.patch_px}")
            # Swin: patch embedding, then (stages - 1) halvings, and whole windows at the last stage.
            unit = cfg.swin_patch_px * 2 ** (len(depths) - 1) * cfg.window
            _check_divisible(side, getattr(cfg, side), unit, f"swin_patch_px={cfg.swin_patch_px} x 2^{len(depths) - 1} "
                                                    f"patch mergings x window={cfg.window}")
        for width in ("vit_width", "swin_width", "qformer_width", "dec_width"):
            _check_divisible(width, getattr(cfg, width), cfg.head_dim, f"head_dim={cfg.head_dim}")
        if cfg.min_len > cfg.max_len:
            raise ValueError(f"knob 'min_len': {cfg.min_len} exceeds max_len={cfg.max_len}; "
                             "set min_len <= max_len")
        capacity = page_spec(cfg).capacity
        if cfg.max_len > capacity:
            raise ValueError(f"knob 'max_len': {cfg.max_len} tokens do not fit on a {cfg.image_h}x{cfg.image_w} "
                             f"page with glyph_px={cfg.glyph_px} (capacity {capacity}); lower max_len or "
                             "glyph_px, or enlarge the page")
        if 2 ** (cfg.glyph_px ** 2) <= 2 * (cfg.vocab_size - FIRST_TOKEN):
            raise ValueError(f"knob 'glyph_px': {cfg.glyph_px} gives too few distinct glyphs for "
                             f"vocab_size={cfg.vocab_size}; raise glyph_px")
        if cfg.batch_size > cfg.train_samples:
            raise ValueError(f"knob 'batch_size': {cfg.batch_size} exceeds the {cfg.train_samples} pages of "
                             "the train split (train_samples); lower batch_size or raise train_samples")

    # --- building -------------------------------------------------------------------------------

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """DocTranslator at the config's sizes; checkpointing is a build-time switch on the blocks."""
        return DocTranslator(model_sizes(cfg), grad_checkpointing=cfg.grad_checkpointing, attention=cfg.attention)

    def build_datasets(self, cfg: RunConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """Rendered (train, eval) pages, cached on disk."""
        return build_splits(page_spec(cfg), cfg.train_samples, cfg.eval_samples)

    def collate(self, cfg: RunConfig) -> PageCollate:
        """Pads targets; images to float."""
        return PageCollate()

    # --- the step -------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig) -> torch.Tensor:
        """One call of the root module: logits (B, T, vocab)."""
        return model(batch["image"], batch["tokens_in"])

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: RunConfig) -> LossResult:
        """Summed next-token cross-entropy over the counted positions (non-pad, or all)."""
        # (B*T, vocab); CE in at least fp32 (autocast hands back half-precision logits)
        logits = outputs.to(torch.promote_types(outputs.dtype, torch.float32)).flatten(0, 1)
        labels = batch["labels"].flatten()  # (B*T,)
        ce = F.cross_entropy(logits, labels, ignore_index=PAD if cfg.ignore_pad else -100, reduction="sum")
        return LossResult(total=ce, parts={"ce": ce})

    def batch_counts(self, batch: dict[str, torch.Tensor], cfg: RunConfig) -> BatchCounts:
        """Pages, counted label positions, real and padded target tokens (host tensors)."""
        labels = batch["labels"]
        real = int((labels != PAD).sum())
        return BatchCounts(samples=labels.shape[0], loss_elements=real if cfg.ignore_pad else labels.numel(),
                           real_tokens=real, padded_tokens=labels.numel())

    # --- quality --------------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, model: DocTranslator, image: torch.Tensor, max_tokens: int) -> torch.Tensor:
        """(B, 1, H, W) pages -> (B, <= max_tokens) greedy token ids (no KV cache: O(T^2) decoding)."""
        memory, _ = model.encode(image)
        tokens = torch.full((image.shape[0], 1), BOS, dtype=torch.long, device=image.device)
        done = torch.zeros(image.shape[0], dtype=torch.bool, device=image.device)
        for _ in range(max_tokens):
            next_token = model.decoder(tokens, memory)[:, -1].argmax(-1)  # (B,)
            next_token = torch.where(done, torch.full_like(next_token, PAD), next_token)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            done |= next_token == EOS
            if bool(done.all()):  # host sync once per decoded position
                break
        return tokens[:, 1:]

    def evaluate(self, model: nn.Module, dataset: torch.utils.data.Dataset, cfg: RunConfig,
                 device: torch.device) -> dict[str, float]:
        """Corpus BLEU of greedy translations and teacher-forced token accuracy (pad excluded)."""
        # imported here: torchmetrics pulls in scipy (~2 s), which speed runs never need
        from torchmetrics.functional.classification import multiclass_accuracy
        from torchmetrics.functional.text import bleu_score

        hypotheses: list[str] = []
        references: list[list[str]] = []
        logits_all, labels_all = [], []
        # Pages are independent, so the eval batch only sets speed: never decode one page at a time.
        for batch in eval_batches(dataset, max(cfg.batch_size, _EVAL_BATCH), self.collate(cfg)):
            batch = move_to(batch, device)
            logits_all.append(model(batch["image"], batch["tokens_in"]).float().flatten(0, 1).cpu())
            labels_all.append(batch["labels"].flatten().cpu())
            decoded = self.greedy_decode(model, batch["image"], cfg.max_len + 1).cpu()
            hypotheses += [detokenize(row) for row in decoded]
            references += [[detokenize(row)] for row in batch["labels"].cpu()]
        accuracy = multiclass_accuracy(torch.cat(logits_all), torch.cat(labels_all), num_classes=cfg.vocab_size,
                                       average="micro", ignore_index=PAD)
        return {"bleu": float(bleu_score(hypotheses, references, n_gram=4)), "token_accuracy": float(accuracy)}

    def cost_components(self, cfg: RunConfig) -> dict[str, float]:
        """Parameters per part of the model (counted on the meta device)."""
        with torch.device("meta"):
            model = self.build_model(cfg)
        return {f"params_{name}": float(sum(p.numel() for p in part.parameters()))
                for name, part in model.named_children()}
