"""Deep-GPCM: a DKVMN key-value memory feeding a Generalized Partial Credit Model head.

As in the public Deep-GPCM code (`DeepGPCM`, `DKVMN`, `IRTParameterExtractor`, `GPCMProbabilityLayer`):

    k_t   = Embedding(q_t)                                  key, padding_idx 0              (B, T, d_k)
    v_t   = Linear_{K*Q -> d_v}(x_t), x_t[k*Q + q_t - 1] = max(0, 1 - |k - r_t| / (K-1))   "linear decay"
    w_t   = softmax(tanh(W_q k_t + b) M_k^T)                correlation over N slots        (B, T, N)
    r_t   = w_t^T M_t                                       read, before this step's write  (B, T, d_v)
    M_t+1 = M_t * (1 - w_t e_t^T) + w_t a_t^T,  e_t = sigmoid(W_e v_t + b),  a_t = tanh(W_a v_t + b)
    f_t   = tanh(W_f [r_t; k_t]);  theta = scale * (W_theta f_t + b);  beta = tanh(W_beta k_t)  (K-1)
    alpha = softplus(W_alpha [f_t; k_t]);  P(Y=k) = softmax_k(sum_{h<k} alpha (theta - beta_h))

Three forward modes compute this one function from the same parameters (same names, same init):

- ``sequential``: every operation per timestep in a Python loop, as the original `DeepGPCM`;
- ``parallel``:   embeddings, attention, erase/add, summary and IRT head for all timesteps at once;
                  only the memory read/write loop stays sequential (seed 001's `ParallelDeepGPCM`,
                  minus its architecture changes);
- ``scan``:       the memory too, as one autograd node with a hand-written backward (`scan.py`).

The value embedding gathers the K weight columns of question q_t and mixes them with the decay
weights instead of multiplying a dense K*Q one-hot vector (identical result, O(K d_v) per step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.gpcm.scan import DEFAULT_CHUNK_LEN, memory_scan

FORWARD_MODES = ("sequential", "parallel", "scan")


def gpcm_log_probs(theta: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """log P(Y=k) of the GPCM: theta, alpha (...), beta (..., K-1) -> (..., K), a stable log-softmax."""
    # At least float32: under bf16 autocast the cumulative logits lose too many digits.
    dtype = torch.promote_types(theta.dtype, torch.float32)
    steps = alpha.to(dtype).unsqueeze(-1) * (theta.to(dtype).unsqueeze(-1) - beta.to(dtype))  # (..., K-1)
    # cumulative logits: 0 for k = 0 (the empty sum), then sum_{h<k} alpha (theta - beta_h)
    logits = torch.cat([torch.zeros_like(steps[..., :1]), steps.cumsum(-1)], dim=-1)  # (..., K)
    return torch.log_softmax(logits, dim=-1)


def linear_decay_weights(responses: torch.Tensor, n_cats: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """max(0, 1 - |k - r| / (K-1)) for k = 0..K-1: responses (...) -> (..., K)."""
    cats = torch.arange(n_cats, device=responses.device)
    distance = (cats - responses.unsqueeze(-1)).abs().to(dtype)
    return (1.0 - distance / (n_cats - 1)).clamp(min=0.0)


class DeepGPCM(nn.Module):
    """DKVMN + GPCM; `forward_mode` picks how the same function is computed (see module docstring)."""

    def __init__(self, *, n_questions: int, n_cats: int = 4, memory_size: int = 50, key_dim: int = 50,
                 value_dim: int = 200, summary_dim: int = 50, ability_scale: float = 1.0,
                 forward_mode: str = "sequential", scan_chunk_len: int = DEFAULT_CHUNK_LEN) -> None:
        super().__init__()
        if forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode={forward_mode!r}; allowed: {' | '.join(FORWARD_MODES)}")
        if n_cats < 2:
            raise ValueError(f"n_cats={n_cats}: GPCM needs at least 2 response categories; use n_cats >= 2")
        for name, value in (("n_questions", n_questions), ("memory_size", memory_size), ("key_dim", key_dim),
                            ("value_dim", value_dim), ("summary_dim", summary_dim)):
            if value < 1:
                raise ValueError(f"{name}={value}; use a positive integer")
        self.n_questions, self.n_cats, self.ability_scale = n_questions, n_cats, ability_scale
        self.forward_mode = forward_mode
        self.scan_chunk_len = scan_chunk_len

        # Created in one fixed order whatever the mode, so one seed gives identical weights.
        self.key_embed = nn.Embedding(n_questions + 1, key_dim, padding_idx=0)
        self.value_embed = nn.Linear(n_cats * n_questions, value_dim)
        self.key_memory = nn.Parameter(torch.empty(memory_size, key_dim))
        self.query_key = nn.Linear(key_dim, key_dim)
        self.erase = nn.Linear(value_dim, value_dim)
        self.add = nn.Linear(value_dim, value_dim)
        self.init_value_memory = nn.Parameter(torch.empty(memory_size, value_dim))
        self.summary = nn.Linear(value_dim + key_dim, summary_dim)
        self.ability = nn.Linear(summary_dim, 1)
        self.threshold = nn.Linear(key_dim, n_cats - 1)
        self.discrimination = nn.Linear(summary_dim + key_dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The public code: Kaiming-normal weights, zero biases, Kaiming-normal key memory and M_0.
        for module in (self.value_embed, self.query_key, self.erase, self.add, self.summary, self.ability,
                       self.threshold, self.discrimination):
            nn.init.kaiming_normal_(module.weight)
            nn.init.zeros_(module.bias)
        for param in (self.key_embed.weight, self.key_memory, self.init_value_memory):
            nn.init.kaiming_normal_(param)
        with torch.no_grad():  # the public code overwrites the padding row; keep padding_idx's zero row
            self.key_embed.weight[0].zero_()

    # --- building blocks: shape-agnostic over leading dims, shared by every mode ----------------------

    def value(self, questions: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """v = W x + b with the linear-decay x, as a weighted gather of K columns: (...) -> (..., d_v)."""
        n_q = self.n_questions
        decay = linear_decay_weights(responses, self.n_cats, self.value_embed.weight.dtype)  # (..., K)
        decay = decay * (questions != 0).unsqueeze(-1)  # padding: x = 0, v = b, as the one-hot of id 0
        column = (questions - 1).clamp(min=0).unsqueeze(-1) + n_q * torch.arange(self.n_cats, device=questions.device)
        # x has K non-zeros, at columns k*Q + q - 1: sum_k decay_k W[:, k*Q + q - 1] is an embedding bag
        # over W^T (contiguous copy: measured 7x faster than a batched (1, K) @ (K, d_v) matmul on a CPU).
        mixed = F.embedding_bag(column.reshape(-1, self.n_cats), self.value_embed.weight.t().contiguous(),
                                per_sample_weights=decay.reshape(-1, self.n_cats), mode="sum")  # (*, d_v)
        return mixed.view(*questions.shape, -1) + self.value_embed.bias

    def attention(self, keys: torch.Tensor) -> torch.Tensor:
        """Correlation weights over memory slots: (..., d_k) -> (..., N)."""
        return torch.softmax(torch.tanh(self.query_key(keys)) @ self.key_memory.t(), dim=-1)

    def erase_add(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Erase and add vectors of the write: (..., d_v) -> two (..., d_v)."""
        return torch.sigmoid(self.erase(values)), torch.tanh(self.add(values))

    def head(self, reads: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor]:
        """Summary network, IRT parameters and GPCM log-probabilities from reads (..., d_v) and keys (..., d_k)."""
        summary = torch.tanh(self.summary(torch.cat([reads, keys], dim=-1)))  # (..., f)
        theta = self.ability(summary).squeeze(-1) * self.ability_scale  # (...)
        beta = torch.tanh(self.threshold(keys))  # (..., K-1)
        alpha = F.softplus(self.discrimination(torch.cat([summary, keys], dim=-1))).squeeze(-1)  # (...)
        return {"log_probs": gpcm_log_probs(theta, alpha, beta), "theta": theta, "alpha": alpha, "beta": beta}

    @staticmethod
    def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """r = w^T M: memory (B, N, d_v), weights (B, N) -> (B, d_v)."""
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1)

    @staticmethod
    def write(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        """M (1 - w e^T) + w a^T: memory (B, N, d_v), weights (B, N), erase/add (B, d_v) -> (B, N, d_v)."""
        w = weights.unsqueeze(-1)  # (B, N, 1)
        return memory * (1 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)

    # --- the three modes ------------------------------------------------------------------------------

    def forward(self, questions: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        """questions, responses (B, T) int64 -> {"log_probs" (B, T, K), "theta", "alpha" (B, T), "beta" (B, T, K-1)}."""
        if self.forward_mode == "sequential":
            return self._forward_sequential(questions, responses)
        keys = self.key_embed(questions)  # (B, T, d_k)
        weights = self.attention(keys)  # (B, T, N)
        erase, add = self.erase_add(self.value(questions, responses))  # (B, T, d_v) each
        if self.forward_mode == "parallel":
            reads = self._memory_loop(weights, erase, add)
        else:
            reads = memory_scan(weights, erase, add, self.init_value_memory, chunk_len=self.scan_chunk_len)
        return self.head(reads, keys)

    def _initial_memory(self, batch: int) -> torch.Tensor:
        return self.init_value_memory.unsqueeze(0).expand(batch, -1, -1)  # (B, N, d_v)

    def _memory_loop(self, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        memory = self._initial_memory(weights.shape[0])
        # unbind, not weights[:, t]: a slice's backward fills a zero (B, T, ...) tensor per step (O(T^2)
        # traffic, measured 10 s of a 11 s step at the seed preset); unbind's backward stacks once.
        steps = list(zip(weights.unbind(1), erase.unbind(1), add.unbind(1), strict=True))
        reads = []
        for t, (w_t, e_t, a_t) in enumerate(steps):
            reads.append(self.read(memory, w_t))
            if t + 1 < len(steps):  # the last write is never read
                memory = self.write(memory, w_t, e_t, a_t)
        return torch.stack(reads, dim=1)  # (B, T, d_v)

    def _forward_sequential(self, questions: torch.Tensor, responses: torch.Tensor) -> dict[str, torch.Tensor]:
        memory = self._initial_memory(questions.shape[0])
        steps = []
        for t in range(questions.shape[1]):
            keys = self.key_embed(questions[:, t])  # (B, d_k)
            weights = self.attention(keys)  # (B, N)
            steps.append(self.head(self.read(memory, weights), keys))
            if t + 1 < questions.shape[1]:
                memory = self.write(memory, weights, *self.erase_add(self.value(questions[:, t], responses[:, t])))
        return {name: torch.stack([s[name] for s in steps], dim=1) for name in steps[0]}
