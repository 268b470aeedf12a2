"""neurogym's PerceptualDecisionMaking-v0 learned by three recurrent networks, on the CPU in a few minutes.

    LeakyRNN, placement "voltage"  PsychRNN's and nn4n's form: v integrates W f(v) + input, the rates f(v) are read out
    LeakyRNN, placement "outside"  the study's form: h = f((1 - alpha) h + alpha drive)
    torch.nn.RNN (tanh)            the Elman network, as in neurogym's own examples

Each network reads the task's three inputs (fixation, two noisy evidence streams), has 64 neurons and a linear
readout to the three actions (fixate, left, right), and is trained with Adam on neurogym's Dataset batches
(cross-entropy at every step). Every --eval-every updates it is scored on the same held-out batches: the
decision-period accuracy is the fraction of the decision steps (ground truth not "fixate") where the readout's
largest output is the right choice. The curves go to a PNG and a CSV.

    pip install -e ".[examples]"   # neurogym and matplotlib
    python examples/neurogym_decision.py --out neurogym_decision.png
"""
from __future__ import annotations

import argparse
import csv
import time
import warnings

import torch
from torch import nn

import timescale_kernels as tk

TASK = "PerceptualDecisionMaking-v0"


class Net(nn.Module):
    """A recurrent core (T, B, I) -> (T, B, H) and a linear readout to the actions."""

    def __init__(self, core: nn.Module, hidden: int, actions: int):
        super().__init__()
        self.core, self.readout = core, nn.Linear(hidden, actions)

    def forward(self, x):
        return self.readout(self.core(x)[0])


def make_nets(inputs: int, actions: int, hidden: int, tau: float) -> dict[str, Net]:
    """The three networks, initialised from one seed each."""
    torch.manual_seed(0)
    voltage = tk.LeakyRNN(inputs, hidden, nonlinearity="relu", placement="voltage", tau_init=tau,
                          self_connections=True)
    torch.manual_seed(0)
    study = tk.LeakyRNN(inputs, hidden, nonlinearity="leaky_relu", placement="outside", tau_init=(1.0, 2.0))
    torch.manual_seed(0)
    elman = nn.RNN(inputs, hidden, nonlinearity="tanh")
    return {"LeakyRNN voltage (relu)": Net(voltage, hidden, actions),
            "LeakyRNN outside (study)": Net(study, hidden, actions),
            "torch.nn.RNN (tanh)": Net(elman, hidden, actions)}


def batches(dataset, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """count (inputs (T, B, I) float32, targets (T, B) int64) batches drawn from a neurogym Dataset."""
    out = []
    for _ in range(count):
        x, y = dataset()
        out.append((torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)))
    return out


@torch.no_grad()
def decision_accuracy(net: Net, held_out) -> float:
    """The fraction of decision steps (target != 0, "fixate") where the largest output is the target."""
    right = total = 0
    for x, y in held_out:
        choice = net(x).argmax(-1)
        decision = y != 0
        right += int((choice[decision] == y[decision]).sum())
        total += int(decision.sum())
    return right / max(total, 1)


def train(net: Net, dataset, held_out, steps: int, eval_every: int, lr: float) -> list[tuple[int, float, float]]:
    """Adam on cross-entropy at every step; [(update, accuracy, seconds so far)] every eval_every updates."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    curve, seconds = [(0, decision_accuracy(net, held_out), 0.0)], 0.0
    for step in range(1, steps + 1):
        x, y = batches(dataset, 1)[0]
        start = time.perf_counter()
        logits = net(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
        if step % eval_every == 0:
            curve.append((step, decision_accuracy(net, held_out), seconds))
    return curve


def plot(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label=name)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance (two choices)")
    ax.set_xlabel("training update")
    ax.set_ylabel("decision-period accuracy (held out)")
    ax.set_title(TASK)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training updates per network")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--dt", type=int, default=100, help="ms per step (the task's dt, as neurogym's examples)")
    parser.add_argument("--tau-ms", type=float, default=200.0, help="the voltage network's time constant in ms")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (these small networks run best on 1)")
    parser.add_argument("--out", default="neurogym_decision.png", help="the plot; the CSV goes beside it")
    args = parser.parse_args(argv)
    import neurogym as ngym
    warnings.filterwarnings("ignore", module="gymnasium")  # neurogym 2.3 reads wrapped attributes
    if args.threads:  # more threads than cores (or a busy machine) slows these small GEMMs down badly
        torch.set_num_threads(args.threads)
    make = lambda: ngym.Dataset(TASK, env_kwargs={"dt": args.dt}, batch_size=args.batch,  # noqa: E731
                                seq_len=args.seq_len)
    dataset, held_dataset = make(), make()
    dataset.seed(0)
    held_dataset.seed(1)
    held_out = batches(held_dataset, 8)
    inputs, actions = held_out[0][0].shape[-1], int(dataset.env.action_space.n)
    curves = {}
    for name, net in make_nets(inputs, actions, args.hidden, args.tau_ms / args.dt).items():
        curves[name] = train(net, dataset, held_out, args.steps, args.eval_every, args.lr)
        step, acc, seconds = curves[name][-1]
        print(f"{name}: decision-period accuracy {acc:.3f} after {step} updates, {seconds:.1f} s training")
    plot(curves, args.out)
    with open(args.out.rsplit(".", 1)[0] + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["network", "update", "decision_accuracy", "train_seconds"])
        for name, curve in curves.items():
            writer.writerows([name, *row] for row in curve)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
