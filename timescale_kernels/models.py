"""The study's network: a recurrent core (LeakyRNN, GRU or LSTM) read out by one head per task difficulty N."""
from __future__ import annotations

import torch
from torch import nn

from .nn import LeakyRNN
from .ops.checks import check_choice


class MultiHeadReadout(nn.Module):
    """A growing set of linear readout heads, one per task difficulty N.

    forward(h) with h (B, H) returns logits (heads, B, classes) for the heads selected by index
    (all heads by default).
    """

    def __init__(self, hidden_size: int, num_classes: int = 2, num_heads: int = 0, device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.num_classes = hidden_size, num_classes
        self._factory = {"device": device, "dtype": dtype}
        self.heads = nn.ModuleList()
        for _ in range(num_heads):
            self.add_head()

    def add_head(self) -> int:
        """Appends one fresh Linear(H, classes) head; returns its index."""
        ref = next(self.parameters(), None)
        factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None else self._factory
        self.heads.append(nn.Linear(self.hidden_size, self.num_classes, **factory))
        return len(self.heads) - 1

    def __len__(self) -> int:
        return len(self.heads)

    def clear(self) -> None:
        """Removes every head; heads added later get the device and dtype of the removed ones."""
        ref = next(self.parameters(), None)
        if ref is not None:
            self._factory = {"device": ref.device, "dtype": ref.dtype}
        self.heads = nn.ModuleList()

    def forward(self, h: torch.Tensor, index=None) -> torch.Tensor:
        chosen = range(len(self.heads)) if index is None else index
        heads = [self.heads[i] for i in chosen]
        if not heads:
            raise ValueError("index: expected at least one readout head; got none")
        weight = torch.stack([m.weight for m in heads])  # (heads, classes, H)
        bias = torch.stack([m.bias for m in heads])      # (heads, classes)
        return torch.baddbmm(bias.unsqueeze(1), h.unsqueeze(0).expand(len(heads), -1, -1), weight.transpose(1, 2))


CORES = ("leaky", "gru", "lstm")


class MemoryNet(nn.Module):
    """A recurrent core read out at the last step by one head per task difficulty N.

    The study's network: a LeakyRNN (default: 500 neurons, leaky ReLU, "outside" placement,
    tau from U(1, 2), no self-connections) started from h0 = 0.1 * U(0, 1), fresh per batch,
    and a Linear(H, 2) head per N. GRU and LSTM cores (torch.nn, cuDNN on a GPU) start from zeros
    and serve as baselines.

    Args:
        core: "leaky", "gru" or "lstm".
        hidden_size: H. input_size: I (1 for the bit-stream tasks).
        num_heads: heads to create now (more with add_head()).
        h0: "study" (0.1 * U(0, 1), fresh per call) or "zeros".
        **leaky_kwargs: passed to LeakyRNN (nonlinearity, placement, tau_init, learn_tau, backend, ...).

    forward(x, heads=None, h0=None): x (T, B, I) -> logits (len(heads), B, 2), read from h_T.
    """

    def __init__(self, core: str = "leaky", hidden_size: int = 500, input_size: int = 1, num_heads: int = 0,
                 h0: str = "study", device=None, dtype=None, **leaky_kwargs):
        super().__init__()
        check_choice("core", core, CORES)
        check_choice("h0", h0, ("study", "zeros"))
        self.core, self.hidden_size, self.input_size, self.h0_mode = core, hidden_size, input_size, h0
        # Everything needed to rebuild this module (heads excepted: num_heads comes from the state).
        self.config = {"core": core, "hidden_size": hidden_size, "input_size": input_size, "h0": h0,
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in leaky_kwargs.items()}}
        factory = {"device": device, "dtype": dtype}
        if core == "leaky":
            self.rnn = LeakyRNN(input_size, hidden_size, device=device, dtype=dtype, **leaky_kwargs)
        elif leaky_kwargs:
            raise ValueError(f"core: {core!r} takes no LeakyRNN options; got {sorted(leaky_kwargs)}")
        elif core == "gru":
            self.rnn = nn.GRU(input_size, hidden_size, **factory)
        else:
            self.rnn = nn.LSTM(input_size, hidden_size, **factory)
        self.readout = MultiHeadReadout(hidden_size, 2, num_heads, **factory)

    @property
    def num_heads(self) -> int:
        return len(self.readout)

    def add_head(self) -> int:
        return self.readout.add_head()

    def initial_state(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """h0 (B, H): the study's 0.1 * U(0, 1) for the leaky core in "study" mode, else zeros."""
        ref = self.rnn.weight_hh if self.core == "leaky" else self.rnn.weight_hh_l0
        if self.core == "leaky" and self.h0_mode == "study":
            return 0.1 * torch.rand(batch, self.hidden_size, generator=generator, device=ref.device, dtype=ref.dtype)
        return torch.zeros(batch, self.hidden_size, device=ref.device, dtype=ref.dtype)

    def states(self, x: torch.Tensor, h0: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Every hidden state: x (T, B, I) -> (T, B, H)."""
        if h0 is None:
            h0 = self.initial_state(x.shape[1], generator)
        if self.core == "lstm":
            output, _ = self.rnn(x, (h0.unsqueeze(0), torch.zeros_like(h0).unsqueeze(0)))
        else:
            output, _ = self.rnn(x, h0.unsqueeze(0))
        return output

    def forward(self, x: torch.Tensor, heads=None, h0: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x (T, B, I) -> logits (len(heads), B, 2) from the final state; heads: indices or None for all."""
        return self.readout(self.states(x, h0, generator)[-1], heads)
