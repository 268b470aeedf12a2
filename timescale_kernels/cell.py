"""LeakyRNNCell: one step of the leaky RNN with torch.nn.RNNCell's contract."""
from __future__ import annotations

import torch
from torch import nn

from .leaky_base import ROLES, LeakyBase, check_input_features
from .ops.step import leaky_rnn_step


class LeakyRNNCell(LeakyBase):
    r"""One step of a leaky RNN layer, as torch.nn.RNNCell is one step of torch.nn.RNN.

    .. math::
        \tau = g(p), \quad \alpha = 1 / \tau, \quad
        d = W h + b_{hh} + W_{ih} x + b_{ih} + \sigma_{rec} \sqrt{2 \tau}\, \xi

    placement "outside": h' = f((1 - alpha) h + alpha d); "inside": h' = (1 - alpha) h + alpha f(d);
    "voltage": h is the pre-activation v, d reads f(v) in place of h, and h' = v' = (1 - alpha) v + alpha d
    (the state; the rate output is f(v'), e.g. torch.tanh(cell(x, v)) for nonlinearity "tanh");
    W = |W_hh| * dale_signs[None, :] * connectivity_mask (each factor only when given). Plain,
    differentiable PyTorch (ops.step.leaky_rnn_step): gradients of gradients, torch.func.jacrev and
    fixed-point searches work on any device. Running it for T steps gives LeakyRNN's output.

    Args:
        input_size, hidden_size, bias, nonlinearity, placement, tau_init, learn_tau,
        self_connections, device, dtype, and (keyword only) tau_parameterisation, tau_bounds,
        sigma_rec, noise_generator, connectivity_mask, dale_signs: as LeakyRNN's.

    Inputs: input, hx (forward also takes generator= by keyword)
        input: (B, I) or unbatched (I,).
        hx: (B, H) or (H,); None means zeros.

    Outputs: h'
        (B, H) or (H,): the next state (for "voltage" the pre-activation v', not the rate f(v')).

    Attributes:
        weight_ih (H, I), weight_hh (H, H), bias_ih (H,), bias_hh (H,), tau (H,).

    Examples::

        >>> cell = LeakyRNNCell(3, 20)
        >>> h = torch.zeros(8, 20)
        >>> for x_t in torch.randn(6, 8, 3):
        ...     h = cell(x_t, h)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "leaky_relu",
                 placement: str = "outside", tau_init=(1.0, 2.0), learn_tau: bool = True,
                 self_connections: bool = False, device=None, dtype=None, *, tau_parameterisation: str = "clamp",
                 tau_bounds=None, sigma_rec: float = 0.0, noise_generator: torch.Generator | None = None,
                 connectivity_mask: torch.Tensor | None = None, dale_signs: torch.Tensor | None = None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self._setup(input_size, hidden_size, bias, nonlinearity, placement, tau_init, learn_tau, self_connections,
                    tau_parameterisation, tau_bounds, sigma_rec, connectivity_mask, dale_signs, factory)
        self.noise_generator = noise_generator
        self._add_group({role: role for role in ROLES}, input_size, factory)
        self.reset_parameters()

    def time_constants(self) -> torch.Tensor:
        """The time constants (H,) the cell runs with (>= 1)."""
        return self.group_time_constants(self._groups[0])

    def extra_repr(self) -> str:
        return ", ".join([f"{self.input_size}, {self.hidden_size}"] + self._option_repr())

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input: expected a torch.Tensor; got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"input: expected (B, {self.input_size}) or unbatched ({self.input_size},); "
                             f"got shape {tuple(input.shape)}")
        batched = input.dim() == 2
        check_input_features(input, self.input_size)
        x = input if batched else input.unsqueeze(0)
        self.check_input_dtype(x)
        if hx is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            want = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"hx: expected a torch.Tensor of shape {want}; got {type(hx).__name__}")
            if tuple(hx.shape) != want:
                raise ValueError(f"hx: expected shape {want}; got {tuple(hx.shape)}")
            h = hx if batched else hx.unsqueeze(0)
        w_ih, w_hh, b_ih, b_hh, tau = self.group_tensors(self._groups[0])
        noise = self.noise_for(tau, (x.shape[0], self.hidden_size),
                               generator if generator is not None else self.noise_generator, x)
        h_next = leaky_rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, tau, nonlinearity=self.nonlinearity,
                                placement=self.placement, self_connections=self.self_connections,
                                drive_noise=noise)
        return h_next if batched else h_next.squeeze(0)

    @classmethod
    def from_torch_rnn_cell(cls, cell: nn.RNNCell, **kwargs) -> "LeakyRNNCell":
        """A LeakyRNNCell computing exactly what a torch.nn.RNNCell computes (tau = 1, fixed,
        self-connections kept); kwargs override those settings or add others (placement, ...)."""
        if not isinstance(cell, nn.RNNCell):
            raise TypeError(f"cell: expected a torch.nn.RNNCell; got {type(cell).__name__}")
        ref = cell.weight_hh
        settings = dict(bias=cell.bias, nonlinearity=cell.nonlinearity, tau_init=1.0, learn_tau=False,
                        self_connections=True, device=ref.device, dtype=ref.dtype)
        settings.update(kwargs)
        model = cls(cell.input_size, cell.hidden_size, **settings)
        with torch.no_grad():
            for role in ROLES[:4]:
                source, target = getattr(cell, role), model._stored(role)
                if source is not None and target is not None:
                    target.copy_(source)
        model.zero_diagonals()
        return model.train(cell.training)
