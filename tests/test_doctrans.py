"""doctrans model and loss: fusion gate, padding in the loss, checkpointing, accumulation, sizes, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.experiment import knob_kinds, load_experiment
from harness.registry import resolve
from models.doctrans.data import PAD
from models.doctrans.encoders import shifted_window_mask
from models.doctrans.layers import PatchEmbed
from models.doctrans.qformer import GatedFusion

ROOT = Path(__file__).resolve().parents[1]


def _setup(**knobs):
    cfg = resolve("doctrans", {"preset": "tiny", **knobs})
    wl = cfg.get_workload()
    train, _ = wl.build_datasets(cfg)
    return cfg, wl, train, wl.collate(cfg)


def _model(cfg, wl):
    torch.manual_seed(cfg.seed)  # what the harness does before build_model
    return wl.build_model(cfg).train()


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_fusion_gate_shapes_and_extremes():
    fusion = GatedFusion(width=8, out_dim=5)
    q_a, q_b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    fused, alpha = fusion(q_a, q_b)
    assert fused.shape == (2, 3, 5) and alpha.shape == (2, 3, 1)  # one gate per query
    assert ((alpha > 0) & (alpha < 1)).all()
    with torch.no_grad():
        fusion.gate.weight.zero_()
        for bias, chosen in ((50.0, q_a), (-50.0, q_b)):  # alpha -> 1 keeps Q_a, alpha -> 0 keeps Q_b
            fusion.gate.bias.fill_(bias)
            torch.testing.assert_close(fusion(q_a, q_b)[0], fusion.out(chosen))


def test_patch_embedding_is_a_strided_convolution():
    embed = PatchEmbed(4, 6)
    conv = torch.nn.Conv2d(1, 6, kernel_size=4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight.view(6, 1, 4, 4))
        conv.bias.copy_(embed.proj.bias)
    image = torch.randn(2, 1, 8, 12)
    torch.testing.assert_close(embed(image), conv(image).permute(0, 2, 3, 1))


def test_shifted_window_mask_blocks_tokens_from_other_regions():
    # 8x8 tokens, windows of 4, shift 2: after the cyclic roll the top-left window holds one region,
    # the two edge windows two regions of 8 tokens, the bottom-right window four regions of 4 tokens.
    mask = shifted_window_mask(8, 8, 4, 2)  # (4 windows, 16, 16)
    assert mask.shape == (4, 16, 16)
    blocked = torch.isinf(mask).sum(dim=(1, 2)).tolist()
    assert blocked == [0, 16 * 8, 16 * 8, 16 * 12]
    assert (mask.diagonal(dim1=1, dim2=2) == 0).all()  # a token always sees itself


def test_model_shapes_on_the_tiny_preset():
    cfg, wl, train, collate = _setup()
    model = _model(cfg, wl)
    batch = collate([train[i] for i in range(3)])
    memory, alpha = model.encode(batch["image"])
    assert memory.shape == (3, cfg.num_queries, cfg.dec_width) and alpha.shape == (3, cfg.num_queries, 1)
    logits = wl.forward(model, batch, cfg)
    assert logits.shape == (*batch["labels"].shape, cfg.vocab_size)


def _padded_batch(train, collate):
    lengths = [len(train[i]["target"]) for i in range(len(train))]
    short, long = lengths.index(min(lengths)), lengths.index(max(lengths))
    batch = collate([train[short], train[long]])
    assert (batch["labels"] == PAD).any()
    return batch, [short, long]


@pytest.mark.parametrize("ignore_pad", [True, False])
def test_padding_in_the_loss_follows_ignore_pad(ignore_pad):
    cfg, wl, train, collate = _setup(ignore_pad=ignore_pad)
    batch, _ = _padded_batch(train, collate)
    labels = batch["labels"]
    logits = torch.randn(*labels.shape, cfg.vocab_size)
    counted = labels != PAD if ignore_pad else torch.ones_like(labels, dtype=torch.bool)
    by_hand = -logits.log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)[counted].sum()
    torch.testing.assert_close(wl.loss(logits, batch, cfg).total, by_hand)
    assert wl.batch_counts(batch, cfg).loss_elements == int(counted.sum())
    pad_changed = logits.clone()
    pad_changed[labels == PAD] = torch.randn_like(pad_changed[labels == PAD]) * 5
    changed = not torch.allclose(wl.loss(pad_changed, batch, cfg).total, by_hand)
    assert changed is not ignore_pad


def test_ignored_padding_makes_the_loss_independent_of_batching():
    for ignore_pad, independent in ((True, True), (False, False)):
        cfg, wl, train, collate = _setup(ignore_pad=ignore_pad)
        model = _model(cfg, wl).eval()
        batch, idx = _padded_batch(train, collate)
        with torch.no_grad():
            together = wl.loss(wl.forward(model, batch, cfg), batch, cfg).total
            alone = sum(wl.loss(wl.forward(model, b, cfg), b, cfg).total for b in (collate([train[i]]) for i in idx))
        assert torch.allclose(together, alone, rtol=1e-5) is independent


def _one_step_grads(cfg, wl, train, collate, batch_size, grad_accum):
    """Gradient of one optimizer step the way the trainer forms it: each micro loss / the step's elements."""
    model = _model(cfg, wl)
    micro = [collate([train[j] for j in range(i * batch_size, (i + 1) * batch_size)]) for i in range(grad_accum)]
    elements = sum(wl.batch_counts(b, cfg).loss_elements for b in micro)
    total = 0.0
    for b in micro:
        loss = wl.loss(wl.forward(model, b, cfg), b, cfg).total / elements
        loss.backward()
        total += loss.item()
    return total, _grads(model)


@pytest.mark.parametrize("batch_size,grad_accum", [(1, 8), (2, 4), (4, 2)])
def test_micro_batch_times_accumulation_equals_one_big_batch(batch_size, grad_accum):
    cfg, wl, train, collate = _setup()
    ref_loss, ref = _one_step_grads(cfg, wl, train, collate, 8, 1)
    loss, grads = _one_step_grads(cfg, wl, train, collate, batch_size, grad_accum)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_counting_padding_breaks_accumulation_equivalence():
    cfg, wl, train, collate = _setup(ignore_pad=False)
    _, ref = _one_step_grads(cfg, wl, train, collate, 8, 1)
    _, grads = _one_step_grads(cfg, wl, train, collate, 1, 8)
    assert max((grads[n] - ref[n]).abs().max() / ref[n].abs().max().clamp_min(1e-12) for n in ref) > 1e-2


def test_grad_checkpointing_recomputes_blocks_and_keeps_loss_and_grads():
    results = {}
    for ckpt in (False, True):
        cfg, wl, train, collate = _setup(grad_checkpointing=ckpt)
        model = _model(cfg, wl)
        calls = {"vit": 0, "swin": 0, "decoder": 0}
        for part, block in (("vit", model.vit.blocks[0]), ("swin", model.swin.stages[0][0]),
                            ("decoder", model.decoder.blocks[0])):
            # wrap forward itself: checkpoint's recomputation does not fire module hooks
            def counted(*args, part=part, forward=block.forward, calls=calls):
                calls[part] += 1
                return forward(*args)
            block.forward = counted
        batch = collate([train[i] for i in range(4)])
        loss = wl.loss(wl.forward(model, batch, cfg), batch, cfg).total
        loss.backward()
        results[ckpt] = (loss.detach(), _grads(model), calls)
    assert results[False][2] == {"vit": 1, "swin": 1, "decoder": 1}
    assert results[True][2] == {"vit": 2, "swin": 2, "decoder": 2}  # recomputed in backward
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=0)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_seed_preset_has_about_209m_parameters():
    cfg = resolve("doctrans", {"preset": "seed"})
    assert (cfg.num_queries, cfg.dec_depth) == (256, 3)
    count = cfg.get_workload().parameter_count(cfg)  # on the meta device: nothing allocated
    assert abs(count / 209e6 - 1) < 0.05, count


@pytest.mark.parametrize("overrides,fragments", [
    ({"image_h": 36}, ["'image_h'", "36", "patch_px=8", "multiple of 8"]),
    ({"image_w": 40}, ["'image_w'", "40", "window=4", "multiple of 32"]),
    ({"swin_depths": "1,1,1"}, ["'image_h'", "32", "2^2 patch mergings", "multiple of 64"]),
    ({"batch_size": 65}, ["'batch_size'", "65", "64", "train_samples"]),
    ({"grad_accum": "0"}, ["'grad_accum'", "'0'"]),
    ({"grad_accum": "1.5"}, ["'grad_accum'"]),
    ({"swin_depths": "2,x"}, ["'swin_depths'", "2,x"]),
    ({"vit_width": 40}, ["'vit_width'", "40", "head_dim=16"]),
    ({"max_len": 41}, ["'max_len'", "41", "capacity 40"]),
    ({"min_len": 9}, ["'min_len'", "9", "max_len=8"]),
])
def test_bad_settings_are_one_line_value_errors(overrides, fragments):
    with pytest.raises(ValueError) as err:
        resolve("doctrans", {"preset": "tiny", **overrides})
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_experiment_file_resolves_and_shape_variants_are_exact():
    exp = load_experiment(ROOT / "bench" / "experiments" / "doctrans.toml")
    base = exp.configs[exp.baseline_name]
    assert (exp.baseline_name, base.batch_size, base.grad_accum, base.grad_checkpointing) == ("b1x32", 1, 32, True)
    for name in ("b2x16", "b4x8", "b8x4"):
        cfg = exp.configs[name]
        assert cfg.batch_size * cfg.grad_accum == 32
        assert knob_kinds(exp, name) == {"exact"}
    assert knob_kinds(exp, "no_ckpt") == {"exact"}
