"""K networks of one shape held as stacked tensors: what the ensemble trainer steps.

Every tensor of K MemoryNets (their parameters, and the leaky core's tau whether trained or fixed)
is one tensor with a leading network dimension K, so that a training step is one recurrence call
(the op's network dimension), one readout product, one loss, one gradient clip (a norm per
network) and one fused SGD step for all K. The readout's head table is padded to the largest
capacity among the networks: the padding rows are zeros, get zero gradients and stay zero.

The networks' own modules (and their optimizers' momentum) are the record between epochs: a
NetworkStack is built from them at the start of an epoch and writes its values back at its end,
so that checkpoints, state.pt and the tau statistics are the lone trainer's, unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constraints import constrained_weight_hh, tau_from_parameter
from ..leaky_base import ROLES
from ..ops import leaky_rnn

TABLE = "readout.table"
IGNORE = -100  # the label of a head a network does not train this step (cross_entropy's ignore_index)


def _tensors(model) -> dict:
    """Every parameter and buffer of a model by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, rows - tensor.shape[0]))


class NetworkStack:
    """The tensors of K networks (trainers of one shape), stacked, with one fused SGD optimizer.

    Attributes:
        tensors: {name: (K, ...)} leaves; those that are a parameter of any network require grad.
        rows: {name: the rows network k owns of it}: all, but the head table's own capacity.
        trainable: the names the optimizer steps, in the networks' parameter order.
    """

    def __init__(self, trainers: list):
        self.trainers = list(trainers)
        models = [t.model for t in self.trainers]
        first, cfg = models[0], self.trainers[0].config
        self.core, self.hidden = first.core, first.hidden_size
        owned = [_tensors(m) for m in models]
        params = [dict(m.named_parameters()) for m in models]
        self.capacity = max(m.readout.capacity for m in models)
        self.table_rows = [m.readout.capacity for m in models]
        # In the parameter order of the network with the most (a fixed tau is a buffer, not a parameter).
        self.trainable = [n for n in max(params, key=len) if n in owned[0]]
        self.tensors = {}
        with torch.no_grad():
            for name in owned[0]:
                parts = [o[name].detach() for o in owned]
                if name == TABLE:
                    parts = [_pad_rows(p, self.capacity) for p in parts]
                self.tensors[name] = torch.stack(parts).requires_grad_(name in self.trainable)
        # A tensor trained by some networks and fixed in others (tau under different settings):
        # the fixed networks' rows reach the op detached, so their gradient is an exact zero.
        self.frozen = {n: torch.tensor([n not in p for p in params], device=self.tensors[n].device)
                       for n in self.trainable if not all(n in p for p in params)}
        self.optimizer = torch.optim.SGD([self.tensors[n] for n in self.trainable], lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov and cfg.momentum > 0, fused=True)
        self._load_momentum(params)
        self.max_norms = torch.tensor([t.config.clip for t in self.trainers], device=self.tensors[TABLE].device)

    def __len__(self) -> int:
        return len(self.trainers)

    def _load_momentum(self, params: list[dict]) -> None:
        """The networks' momentum buffers, stacked (zeros where a network has none yet: with no
        dampening, a zero buffer and a first step give the same update)."""
        for name in self.trainable:
            found = [t.optimizer.state.get(p[name], {}).get("momentum_buffer") if name in p else None
                     for t, p in zip(self.trainers, params)]
            if all(b is None for b in found):
                continue
            stacked = self.tensors[name]
            buffers = [torch.zeros_like(stacked[k]) if b is None else b.detach() for k, b in enumerate(found)]
            if name == TABLE:
                buffers = [_pad_rows(b, self.capacity) for b in buffers]
            self.optimizer.state[stacked]["momentum_buffer"] = torch.stack(buffers).clone()

    def _own(self, name: str, k: int) -> torch.Tensor:
        """Network k's part of a stacked tensor (or of its gradient or momentum), as its module holds it."""
        tensor = self.tensors[name]
        return tensor[k, :self.table_rows[k]] if name == TABLE else tensor[k]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copies every network's values and momentum back into its own module and optimizer."""
        for k, trainer in enumerate(self.trainers):
            owned, params = _tensors(trainer.model), dict(trainer.model.named_parameters())
            for name in self.tensors:
                owned[name].copy_(self._own(name, k))
                buffer = self.optimizer.state.get(self.tensors[name], {}).get("momentum_buffer")
                if name in params and buffer is not None:
                    own = buffer[k, :self.table_rows[k]] if name == TABLE else buffer[k]
                    trainer.optimizer.state[params[name]]["momentum_buffer"] = own.clone()

    # a step ----------------------------------------------------------------------------------------
    def _input(self, name: str) -> torch.Tensor:
        tensor = self.tensors[name]
        if name not in self.frozen:
            return tensor
        mask = self.frozen[name].view(-1, *([1] * (tensor.dim() - 1)))
        return torch.where(mask, tensor.detach(), tensor)

    def final_states(self, x: torch.Tensor, h0: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """h_n (K, B, H) of every network: x (K, T, B, I) padded with zeros past network k's length
        lengths[k], h0 (K, B, H). The leaky core is one op call for all K (per-row lengths where they
        differ: the op holds a row's state past its length, so h_n is its state at its own last step);
        GRU and LSTM run network by network on their own lengths."""
        if self.core != "leaky":
            return torch.stack([self._core_state(k, x[k, :n], h0[k]) for k, n in enumerate(lengths)])
        rnn = self.trainers[0].model.rnn
        names = rnn._groups[0]
        w_ih, w_hh, b_ih, b_hh, p = (None if names[r] is None or f"rnn.{names[r]}" not in self.tensors
                                     else self._input(f"rnn.{names[r]}") for r in ROLES)
        w_hh = constrained_weight_hh(w_hh, rnn.connectivity_mask, rnn.dale_signs)
        tau = tau_from_parameter(p, rnn.tau_parameterisation, rnn.tau_bounds)
        rows = None
        if len(set(lengths)) > 1:
            rows = torch.tensor(lengths, device=x.device).view(-1, 1).expand(len(lengths), x.shape[2]).contiguous()
        _, h_n = leaky_rnn(x, h0, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity=rnn.nonlinearity,
                           placement=rnn.placement, self_connections=rnn.self_connections, backend=rnn.backend,
                           lengths=rows)
        return h_n

    def _core_state(self, k: int, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """Network k's final state (B, H) from its own core module run on its slices of the stacks."""
        model = self.trainers[k].model
        params = {name[len("rnn."):]: self._input(name)[k] for name in self.tensors if name.startswith("rnn.")}
        return model.core_final_state(x, h0, params)

    def logits(self, x: torch.Tensor, h0: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(K, B, capacity, 2): every head of every network read from its final state in one batched
        product (the bias as the weight of a constant input 1, as MultiHeadReadout does)."""
        h1 = F.pad(self.final_states(x, h0, lengths), (0, 1), value=1.0)               # (K, B, H + 1)
        table = self.tensors[TABLE]
        flat = table.view(len(self), -1, self.hidden + 1)                                # (K, capacity * 2, H + 1)
        return torch.bmm(h1, flat.transpose(1, 2)).view(len(self), h1.shape[1], self.capacity, -1)

    @staticmethod
    def losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(K,): each network's loss, summed over its trained heads and averaged over the batch (a lone
        run's), from logits (K, B, capacity, 2) and labels (K, B, capacity) (IGNORE where untrained).
        Each logit's gradient is (softmax - onehot) / B, as a lone run's."""
        count, batch = labels.shape[0], labels.shape[1]
        each = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="none")
        return each.view(count, -1).sum(1) / batch

    def clip_and_step(self, inactive: torch.Tensor | None) -> None:
        """Clips each network's gradient by its own total norm (as clip_gradients does for a lone run:
        one foreach norm over every network's part of every gradient, one foreach scaling), then one
        fused SGD step for all K; the table rows in inactive (flat indices into (K * capacity)) keep
        their values and momentum."""
        grads = [self.tensors[n].grad for n in self.trainable]
        parts = [g[k, :self.table_rows[k]] if n == TABLE else g[k]
                 for k in range(len(self)) for n, g in zip(self.trainable, grads)]
        norms = torch.stack(torch._foreach_norm(parts)).view(len(self), len(grads))
        total = torch.linalg.vector_norm(norms, dim=1)
        scale = torch.clamp(self.max_norms / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, [scale.view(-1, *([1] * (g.dim() - 1))) for g in grads])
        self._step(inactive)

    def _step(self, inactive: torch.Tensor | None) -> None:
        if inactive is None:
            self.optimizer.step()
            return
        table = self.tensors[TABLE]
        flat = table.detach().view(-1, *table.shape[2:])
        state = self.optimizer.state.get(table, {})
        kept = {key: v.view(flat.shape).index_select(0, inactive) for key, v in state.items()
                if torch.is_tensor(v) and v.shape == table.shape}
        rows = flat.index_select(0, inactive)
        self.optimizer.step()
        with torch.no_grad():
            flat.index_copy_(0, inactive, rows)
            for key, value in kept.items():
                self.optimizer.state[table][key].view(flat.shape).index_copy_(0, inactive, value)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
