"""Your own model in trainbench: a GRU sequence tagger through the light path (trainbench.SimpleWorkload).

The whole adapter, model and data included, is the 23 non-blank lines below this docstring
(tests/test_simple.py counts them): variable-length sentences padded with 0, a token-level
cross-entropy that is a mean over the non-padding tags, and the model's own knob `width`
(typed by its default, validated, swept and reported like the generic knobs). From the
repository root:

    trainbench run examples.tagger:WORKLOAD --repeats 3
    trainbench run examples.tagger:WORKLOAD width=32,64          # a grid over your own knob
    trainbench run examples.tagger:WORKLOAD batch_size=8 grad_accum=2 epochs=2
"""
import torch
from torch import nn
from torch.nn.functional import cross_entropy
from torch.nn.utils.rnn import pad_sequence

from trainbench import SimpleWorkload


class Tagger(nn.Module):
    def __init__(self, vocab: int = 50, tags: int = 5, dim: int = 32) -> None:
        super().__init__()
        self.emb, self.gru = nn.Embedding(vocab, dim), nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, tags + 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(self.emb(tokens))[0])


def sentences(n: int = 192, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=g).tolist()
    return [(x, x % 5 + 1) for x in (torch.randint(1, 50, (k,), generator=g) for k in lengths)]


def pad(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sequence([x for x, _ in items], batch_first=True), pad_sequence([y for _, y in items], batch_first=True)


WORKLOAD = SimpleWorkload(
    "tagger", model=lambda cfg: Tagger(dim=cfg.width), train=lambda cfg: sentences(),
    eval=lambda cfg: sentences(64, seed=1), collate=pad, pad_id=0, knobs={"width": 32},
    loss=lambda out, batch: cross_entropy(out.flatten(0, 1), batch[1].flatten(), ignore_index=0),
    batch_size=16, bench_steps=5)
