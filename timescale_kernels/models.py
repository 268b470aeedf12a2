"""The study's network: a recurrent core (LeakyRNN, GRU or LSTM) read out by one head per task difficulty N."""
from __future__ import annotations

import operator

import torch
from torch import nn

from .nn import LeakyRNN
from .ops.checks import check_choice


def capacity_for(num_heads: int) -> int:
    """Rows the head table holds for num_heads heads: a power of two, at least MIN_CAPACITY, so that it
    depends on the number of heads alone (a resumed run rebuilds the same shapes) and grows rarely."""
    capacity = MIN_CAPACITY
    while capacity < num_heads:
        capacity *= 2
    return capacity


MIN_CAPACITY = 8


def fit_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """tensor (R, ...) as (rows, ...): its leading rows kept, zeros after (or cut when rows < R)."""
    out = tensor.new_zeros((rows, *tensor.shape[1:]))
    keep = min(rows, tensor.shape[0])
    out[:keep].copy_(tensor[:keep])
    return out


def _as_index(value) -> int | None:
    """value as a Python int when it is an integer (int, numpy or 0-d integer tensor), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class ReadoutHead:
    """Head k of a MultiHeadReadout: .weight (classes, H) and .bias (classes,) are views into the
    readout's table, so in-place writes (under torch.no_grad) change the readout. Views taken before
    the table grows no longer follow it; take them again after add_head()."""

    def __init__(self, readout: "MultiHeadReadout", index: int):
        self._readout, self.index = readout, index

    @property
    def weight(self) -> torch.Tensor:
        return self._readout.table[self.index, :, :self._readout.hidden_size]

    @property
    def bias(self) -> torch.Tensor:
        return self._readout.table[self.index, :, self._readout.hidden_size]

    @property
    def in_features(self) -> int:
        return self._readout.hidden_size

    @property
    def out_features(self) -> int:
        return self._readout.num_classes

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """h (..., H) -> logits (..., classes), as torch.nn.Linear."""
        return torch.nn.functional.linear(h, self.weight, self.bias)

    def __repr__(self) -> str:
        return f"ReadoutHead({self.index}, in_features={self._readout.hidden_size}, " \
               f"out_features={self._readout.num_classes})"


class _HeadList:
    """readout.heads: a read-only sequence of ReadoutHead views, one per head."""

    def __init__(self, readout: "MultiHeadReadout"):
        self._readout = readout

    def __len__(self) -> int:
        return len(self._readout)

    def __getitem__(self, index: int) -> ReadoutHead:
        count = len(self._readout)
        k = _as_index(index)
        if k is None or not -count <= k < count:
            raise IndexError(f"heads: expected an index in [{-count}, {count}); got {index!r}")
        return ReadoutHead(self._readout, k % count)

    def __iter__(self):
        return (ReadoutHead(self._readout, k) for k in range(len(self._readout)))


class MultiHeadReadout(nn.Module):
    """A growing set of linear readout heads, one per task difficulty N, held in one tensor.

    table: a Parameter (capacity, classes, H + 1); head k's weight is table[k, :, :H] and its bias
    table[k, :, H]; rows from len(self) on are zeros, kept ahead so that add_head() rarely
    reallocates. When it does, the table keeps its identity (its .data is replaced by a larger
    tensor), so an optimizer holding it goes on; its per-parameter state must grow with it
    (fit_rows). heads[k] gives .weight / .bias views of head k. The state_dict holds one
    "heads.{k}.weight" (classes, H) and "heads.{k}.bias" (classes,) per head, the layout of
    checkpoints written when each head was its own torch.nn.Linear.

    forward(h, index=None): h (B, H) -> logits (len(index), B, classes) for the heads selected by
    index (all heads by default), from one matrix product.
    """

    def __init__(self, hidden_size: int, num_classes: int = 2, num_heads: int = 0, device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.num_classes = hidden_size, num_classes
        self._count = 0
        self.table = nn.Parameter(torch.zeros(capacity_for(num_heads), num_classes, hidden_size + 1,
                                              device=device, dtype=dtype))
        for _ in range(num_heads):
            self.add_head()

    @property
    def heads(self) -> _HeadList:
        return _HeadList(self)

    @property
    def capacity(self) -> int:
        return self.table.shape[0]

    def __len__(self) -> int:
        return self._count

    @torch.no_grad()
    def add_head(self) -> int:
        """Appends one head drawn as torch.nn.Linear(H, classes) draws its weights (the global RNG,
        U(+-1/sqrt(H)) for weight then bias); returns its index. Grows the table when it is full."""
        index = self._count
        if index == self.capacity:
            self.table.data = fit_rows(self.table.data, capacity_for(index + 1))
            self.table.grad = None
        fresh = nn.Linear(self.hidden_size, self.num_classes, device=self.table.device, dtype=self.table.dtype)
        self.table[index, :, :self.hidden_size] = fresh.weight
        self.table[index, :, self.hidden_size] = fresh.bias
        self._count += 1
        return index

    @torch.no_grad()
    def clear(self) -> None:
        """Removes every head; heads added later keep the table's device and dtype."""
        self.table.data = self.table.data.new_zeros((MIN_CAPACITY, *self.table.shape[1:]))
        self.table.grad = None
        self._count = 0

    def _selection(self, index):
        """The heads in index as a slice (a run of consecutive heads, the curricula's case) or an
        index tensor; ValueError for an empty or out-of-range index."""
        count = self._count
        if index is None:
            index = range(count)
        elif isinstance(index, torch.Tensor):
            if index.dim() != 1 or index.numel() == 0 or index.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"index: expected a non-empty 1-D integer tensor; got shape "
                                 f"{tuple(index.shape)} of {index.dtype}")
            return index.to(self.table.device)
        given = list(index)
        if not given:
            raise ValueError("index: expected at least one readout head; got none")
        index = [_as_index(i) for i in given]
        if any(i is None or not 0 <= i < count for i in index):
            raise ValueError(f"index: expected head indices in [0, {count}); got {given}")
        first = index[0]
        if index == list(range(first, first + len(index))):
            return slice(first, first + len(index))
        return torch.tensor(index, device=self.table.device)

    def forward(self, h: torch.Tensor, index=None) -> torch.Tensor:
        selection = self._selection(index)
        # Every row of the table in one product, the bias as the weight of a constant input 1; the
        # rows not asked for cost a few columns more and get an exact zero gradient.
        h1 = torch.nn.functional.pad(h, (0, 1), value=1.0)                     # (B, H + 1)
        logits = torch.mm(h1, self.table.view(-1, self.hidden_size + 1).t())  # (B, capacity * classes)
        logits = logits.view(h.shape[0], self.capacity, self.num_classes)
        chosen = logits[:, selection] if isinstance(selection, slice) else logits.index_select(1, selection)
        return chosen.transpose(0, 1)                                          # (heads, B, classes)

    # The state_dict keeps one weight and one bias per head -----------------------------------
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        table = self.table if keep_vars else self.table.detach()
        for k in range(self._count):
            destination[f"{prefix}heads.{k}.weight"] = table[k, :, :self.hidden_size]
            destination[f"{prefix}heads.{k}.bias"] = table[k, :, self.hidden_size]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        expected = {}
        for k, head in enumerate(self.heads):
            expected[f"{prefix}heads.{k}.weight"], expected[f"{prefix}heads.{k}.bias"] = head.weight, head.bias
        if strict:
            unexpected_keys.extend(key for key in state_dict if key.startswith(prefix) and key not in expected)
        with torch.no_grad():
            for key, view in expected.items():
                if key not in state_dict:
                    missing_keys.append(key)
                elif tuple(state_dict[key].shape) != tuple(view.shape):
                    error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                      f"{tuple(state_dict[key].shape)} from checkpoint, the shape in current "
                                      f"model is {tuple(view.shape)}.")
                else:
                    view.copy_(state_dict[key])


CORES = ("leaky", "gru", "lstm")


class MemoryNet(nn.Module):
    """A recurrent core read out at the last step by one head per task difficulty N.

    The study's network: a LeakyRNN (default: 500 neurons, leaky ReLU, "outside" placement,
    tau from U(1, 2), no self-connections) started from h0 = 0.1 * U(0, 1), fresh per batch,
    and a linear head per N (weight (2, H) and bias (2,); all heads are rows of one tensor, see
    MultiHeadReadout). GRU and LSTM cores (torch.nn, cuDNN on a GPU) start from zeros and serve as
    baselines.

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

    def _run(self, x: torch.Tensor, h0: torch.Tensor | None, generator: torch.Generator | None,
             params: dict | None = None):
        """(every hidden state (T, B, H), the final state (B, H)); params: tensors to run the core
        with instead of its own, by the core's names (torch.func.functional_call)."""
        if h0 is None:
            h0 = self.initial_state(x.shape[1], generator)
        state = h0.unsqueeze(0)
        if self.core == "lstm":
            state = (state, torch.zeros_like(state))
        if params is None:
            output, h_n = self.rnn(x, state)
        else:
            output, h_n = torch.func.functional_call(self.rnn, params, (x, state))
        if self.core == "lstm":
            h_n = h_n[0]
        return output, h_n[-1]

    def core_final_state(self, x: torch.Tensor, h0: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """The core's final state (B, H) from x (T, B, I) and h0 (B, H), with params (by the core's
        names) in place of its own tensors when given (an ensemble's slices of its stacks)."""
        return self._run(x, h0, None, params)[1]

    def states(self, x: torch.Tensor, h0: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Every hidden state: x (T, B, I) -> (T, B, H)."""
        return self._run(x, h0, generator)[0]

    def forward(self, x: torch.Tensor, heads=None, h0: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """x (T, B, I) -> logits (len(heads), B, 2) from the final state; heads: indices or None for all.
        The readout takes the core's h_n, not output[-1]: its gradient then reaches the kernels alone,
        without a zero (T, B, H) gradient for the other steps."""
        return self.readout(self._run(x, h0, generator)[1], heads)
