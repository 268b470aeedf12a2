"""The training loop of the study, made reproducible, resumable and free of per-step host syncs.

One epoch: steps_per_epoch SGD steps on fresh batches of the active N's (loss = sum over active heads
of the mean cross-entropy), then test_batches fresh test batches; promotion when the curriculum says
so. Every random number comes from a generator derived from the seed:

    model init (core): the global RNG under fork_rng, seeded from seed
    head k init:        a CPU generator seeded from (seed, k), so a head does not depend on when it was added
    "lengths" (CPU):    the sequence length T of every batch, drawn once per epoch
    "train"/"test" (on the device): the bits, bit rates and h0 of training / test batches

Their states, the optimizer and the curriculum are saved after every epoch, so a resumed run
continues bit for bit where an uninterrupted one would be.

A step costs the same number of ops whatever the number of heads: every head lives in one tensor
(the readout's table, read out in one product), the optimizer has one parameter group updated by
one fused SGD kernel, the gradient clip is one foreach norm and one foreach scaling. (The task
batch's labels are drawn by tasks.make_batch.)
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import save_checkpoint
from ..models import MemoryNet, fit_rows
from ..ops import resolve_backend
from ..progress import tqdm
from ..tasks import make_batch, sequence_length_range
from .config import RunConfig
from .curricula import Curriculum
from .rundir import RunDir

STOP_REASONS = ("target_N", "max_epochs", "time_budget", "finished", "diverged", "interrupted")


def derive_seed(seed: int, *key: int) -> int:
    """A well-mixed 63-bit seed for stream `key` of run seed `seed`."""
    return int(np.random.SeedSequence([int(seed), *key]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def build_model(config: RunConfig) -> MemoryNet:
    """The MemoryNet of a config, without heads, on config.device; initialised from the seed alone."""
    kwargs = {}
    if config.model == "leaky":
        kwargs = {"nonlinearity": config.nonlinearity, "placement": config.placement,
                  "tau_init": tuple(config.tau_init), "learn_tau": config.learn_tau, "backend": config.backend}
    with torch.random.fork_rng(devices=[]):
        # Built on the CPU so the initial weights do not depend on the device.
        torch.random.default_generator.manual_seed(derive_seed(config.seed, 0))  # the CPU's alone
        model = MemoryNet(config.model, config.hidden_size, 1, num_heads=0,
                          h0="study" if config.model == "leaky" else "zeros", **kwargs)
    return model.to(config.device)


class Trainer:
    """Trains one network under one curriculum. run_dir (optional) receives config, metrics, state,
    checkpoints. progress: show tqdm bars. log: a callable for one-line messages (or None)."""

    def __init__(self, config: RunConfig, run_dir: RunDir | None = None, *, progress: bool = False,
                 log=None, num_heads: int | None = None, model=None):
        self.config = config.validate()
        self.run_dir, self.progress, self.log = run_dir, progress, log
        self.device = torch.device(config.device)
        self.curriculum = Curriculum.from_config(config)
        # model: an existing MemoryNet to train further (e.g. retraining); default a fresh one.
        self.model = model if model is not None else build_model(config)
        # One parameter group: the core's parameters and the readout's one head table, updated by
        # one fused kernel, so a step costs the same number of ops whatever the number of heads.
        self.optimizer = torch.optim.SGD(list(self.model.parameters()), lr=config.lr, momentum=config.momentum,
                                         nesterov=config.nesterov and config.momentum > 0, fused=True)
        for _ in range(num_heads if num_heads is not None else self.curriculum.num_heads):
            self._add_head()
        self.generators = {"lengths": torch.Generator("cpu"), "train": torch.Generator(self.device),
                           "test": torch.Generator(self.device)}
        for key, gen in enumerate(self.generators.values(), start=1):
            gen.manual_seed(derive_seed(config.seed, key))
        self.epoch, self.elapsed, self.metrics = 0, 0.0, []
        self.N_reached = None
        self.stop_reason = None
        self.keep_previous_state = False  # state.prev.pt as well (set for a network of an ensemble)
        self._saved_epoch = None
        self.backend = (resolve_backend(config.backend, self.device) if config.model == "leaky" else "torch.nn")

    # construction ------------------------------------------------------------------------------
    def _add_head(self) -> None:
        """Appends head k with weights from its own seed (torch.nn.Linear's init: U(+-1/sqrt(H)));
        when the head table grows, its optimizer state grows with it (zeros for the new rows: a head
        without momentum yet)."""
        index = self.model.add_head()
        head = self.model.readout.heads[index]
        gen = torch.Generator("cpu")
        gen.manual_seed(derive_seed(self.config.seed, 100, index))
        bound = 1.0 / math.sqrt(self.config.hidden_size)
        with torch.no_grad():
            for p in (head.weight, head.bias):
                p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=gen))
        self._fit_optimizer_state()

    def _fit_optimizer_state(self) -> None:
        """Gives the head table's optimizer state (momentum) as many rows as the table has."""
        table = self.model.readout.table
        state = self.optimizer.state.get(table, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() == table.dim() and value.shape[0] != table.shape[0]:
                state[key] = fit_rows(value, table.shape[0])

    def ensure_heads(self) -> None:
        while self.model.num_heads < self.curriculum.num_heads:
            self._add_head()

    # state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(), "epoch": self.epoch, "elapsed": self.elapsed,
                "num_heads": self.model.num_heads,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "curriculum": self.curriculum.state_dict(),
                "generators": {k: g.get_state() for k, g in self.generators.items()},
                "metrics": list(self.metrics), "N_reached": self.N_reached, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        if len(optimizer["param_groups"]) > 1:  # saved when every head was its own parameter group
            optimizer = merge_head_groups(optimizer, self.model.readout, self.optimizer.param_groups[0])
        self.optimizer.load_state_dict(optimizer)
        self._fit_optimizer_state()
        self.curriculum.load_state_dict(state["curriculum"])
        for k, g in self.generators.items():
            g.set_state(state["generators"][k])
        self.epoch, self.elapsed = int(state["epoch"]), float(state["elapsed"])
        self.metrics = list(state["metrics"])
        self.N_reached = state["N_reached"]
        # A run that stopped on a limit may go on under a new limit; a finished curriculum stays finished.
        self.stop_reason = state["stop_reason"] if state["stop_reason"] == "finished" else None

    @classmethod
    def from_state(cls, config: RunConfig, state: dict, run_dir: RunDir | None = None, **kwargs) -> "Trainer":
        trainer = cls(config, run_dir, num_heads=int(state["num_heads"]), **kwargs)
        trainer.load_state_dict(state)
        return trainer

    # one epoch -------------------------------------------------------------------------------------
    def _lengths(self, count: int) -> list[int]:
        low, high = sequence_length_range(self.curriculum.Ns)
        return torch.randint(low, high + 1, (count,), generator=self.generators["lengths"]).tolist()

    def _batch(self, gen, length):
        """x (T, B, 1), labels (len(Ns), B), h0 (B, H) from one device generator."""
        cfg = self.config
        x, labels = make_batch(cfg.task, self.curriculum.Ns, cfg.batch_size, generator=gen, length=length)
        return x, labels, self.model.initial_state(cfg.batch_size, gen)

    def train_epoch(self, bar=None) -> torch.Tensor:
        """steps_per_epoch SGD steps; returns the summed loss as a device scalar (no host sync)."""
        heads, cfg = self.curriculum.heads, self.config
        params = self.optimizer.param_groups[0]["params"]
        inactive = self._inactive_heads(heads)
        loss_sum = torch.zeros((), device=self.device)
        self.model.train()
        for length in self._lengths(cfg.steps_per_epoch):
            x, labels, h0 = self._batch(self.generators["train"], length)
            logits = self.model(x, heads=heads, h0=h0)  # (heads, B, 2)
            # Mean over the batch, summed over heads (the study's sum of per-head CrossEntropyLoss).
            loss = F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1)) * len(heads)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(params, cfg.clip)
            self._step(inactive)
            loss_sum += loss.detach()
            if bar is not None:
                bar.update(1)
        return loss_sum

    def _inactive_heads(self, heads) -> torch.Tensor | None:
        """Heads that exist but are not trained this epoch, as an index tensor (None when every head
        is trained, as in every curriculum so far)."""
        inactive = sorted(set(range(self.model.num_heads)) - set(heads))
        return torch.tensor(inactive, device=self.device) if inactive else None

    def _step(self, inactive: torch.Tensor | None) -> None:
        """optimizer.step(), leaving the heads in `inactive` and their momentum as they were (as when
        each head was its own parameter and an unused one got no gradient and no update)."""
        if inactive is None:
            self.optimizer.step()
            return
        table = self.model.readout.table
        state = self.optimizer.state.get(table, {})
        kept = {key: v.index_select(0, inactive) for key, v in state.items()
                if torch.is_tensor(v) and v.shape == table.shape}
        rows = table.detach().index_select(0, inactive)
        self.optimizer.step()
        with torch.no_grad():
            table.index_copy_(0, inactive, rows)
            for key, value in kept.items():
                self.optimizer.state[table][key].index_copy_(0, inactive, value)

    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> torch.Tensor:
        """Correct answers per active head over `batches` fresh test batches, (heads,) int64 on the device."""
        heads = self.curriculum.heads
        correct = torch.zeros(len(heads), dtype=torch.int64, device=self.device)
        self.model.eval()
        for length in self._lengths(batches or self.config.test_batches):
            x, labels, h0 = self._batch(self.generators["test"], length)
            correct += (self.model(x, heads=heads, h0=h0).argmax(-1) == labels).sum(1)
        return correct

    def _tau_stats(self) -> torch.Tensor:
        if self.config.model != "leaky":
            return torch.full((2,), float("nan"), device=self.device)
        tau = self.model.rnn.tau.detach().clamp(min=1.0)
        return torch.stack([tau.mean(), tau.std() if tau.numel() > 1 else torch.zeros((), device=tau.device)])

    def run_epoch(self, bar=None) -> dict:
        """Trains and tests one epoch, saves a checkpoint on a pass, advances the curriculum; returns
        the epoch's metrics row."""
        Ns = list(self.curriculum.Ns)
        start = time.perf_counter()
        loss_sum = self.train_epoch(bar)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per epoch, for an honest steps/s
        train_time = time.perf_counter() - start
        return self.finish_epoch(Ns, loss_sum, self.evaluate(), start, train_time)

    def finish_epoch(self, Ns: list, loss_sum: torch.Tensor, correct: torch.Tensor, start: float,
                     train_time: float) -> dict:
        """The end of an epoch trained on Ns: loss_sum (a device scalar, summed over the steps) and
        correct (heads,) from evaluate() become the metrics row; a pass saves a checkpoint and
        advances the curriculum. start: perf_counter() when the epoch began; train_time: seconds of
        its training steps. (The ensemble trainer ends each of its networks' epochs here.)"""
        cfg, cur = self.config, self.curriculum
        # The epoch's only host read: loss, accuracies and tau statistics together.
        values = torch.cat([loss_sum.double().view(1) / cfg.steps_per_epoch,
                            correct.double() / (cfg.test_batches * cfg.batch_size),
                            self._tau_stats().double()]).tolist()
        epoch_time = time.perf_counter() - start
        loss, acc, (tau_mean, tau_std) = values[0], values[1:-2], values[-2:]
        self.epoch += 1
        self.elapsed += epoch_time
        passed = math.isfinite(loss) and cur.passed(acc)
        if passed:
            self.N_reached = max(Ns) if self.N_reached is None else max(self.N_reached, max(Ns))
        row = {"epoch": self.epoch, "N_low": min(Ns), "N_high": max(Ns), "N_reached": self.N_reached,
               "passed": int(passed), "loss": loss, "mean_acc": sum(acc) / len(acc), "newest_acc": acc[-1],
               "acc": dict(zip(Ns, acc)), "tau_mean": tau_mean, "tau_std": tau_std, "epoch_time": epoch_time,
               "wall_time": self.elapsed, "steps_per_s": cfg.steps_per_epoch / max(train_time, 1e-9)}
        self.metrics.append(row)
        if passed:
            if self.run_dir is not None:
                save_checkpoint(self.run_dir.checkpoint_path(Ns), self.model, self._checkpoint_meta(Ns, acc, row))
            if self.log:
                self.log(f"epoch {self.epoch}: passed {cur.describe()} (mean accuracy {row['mean_acc']:.3f}, "
                         f"{self.elapsed:.0f} s)")
            cur.advance()
            self.ensure_heads()
        if not math.isfinite(loss):
            self.stop_reason = "diverged"
        return row

    def _checkpoint_meta(self, Ns, acc, row) -> dict:
        return {"Ns": list(Ns), "head_for_N": self.curriculum.head_for_N, "epoch": self.epoch,
                "curriculum": self.curriculum.state_dict(), "task": self.config.task,
                "accuracy": dict(zip(Ns, acc)), "tau_mean": row["tau_mean"], "tau_std": row["tau_std"],
                "wall_time": self.elapsed, "config": self.config.to_dict()}

    # the loop --------------------------------------------------------------------------------------
    def check_stop(self) -> str | None:
        """The reason to stop before the next epoch, or None."""
        cfg = self.config
        if self.stop_reason in ("finished", "diverged"):
            return self.stop_reason
        if self.curriculum.finished:
            return "finished"
        if cfg.target_N is not None and self.N_reached is not None and self.N_reached >= cfg.target_N:
            return "target_N"
        if self.epoch >= cfg.max_epochs:
            return "max_epochs"
        if cfg.time_budget is not None and self.metrics:
            # Stop before an epoch that would likely overrun the budget (the next is at least as long).
            if self.elapsed + self.metrics[-1]["epoch_time"] > cfg.time_budget:
                return "time_budget"
        return None

    def save(self) -> None:
        if self.run_dir is not None:
            # The state it replaces becomes state.prev.pt when it is an earlier epoch's (not when a stop
            # is recorded at the epoch just saved).
            keep = self.keep_previous_state and self._saved_epoch != self.epoch
            self.run_dir.save_state(self.state_dict(), keep_previous=keep)
            self._saved_epoch = self.epoch
            self.run_dir.write_metrics(self.metrics)

    def run(self) -> dict:
        """Trains until a stop condition; returns summary(). Ctrl-C stops after saving nothing partial
        (state.pt holds the last completed epoch) with stop_reason "interrupted"."""
        cfg = self.config
        threads = torch.get_num_threads()
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        outer = tqdm(total=cfg.max_epochs, initial=min(self.epoch, cfg.max_epochs), desc="epochs", unit="epoch",
                     disable=not self.progress, file=sys.stderr, dynamic_ncols=True)
        try:
            while (reason := self.check_stop()) is None:
                desc = f"epoch {self.epoch + 1} {self.curriculum.describe()}"
                with tqdm(total=cfg.steps_per_epoch, desc=desc, unit="step", leave=False, file=sys.stderr,
                          disable=not self.progress, dynamic_ncols=True) as bar:
                    row = self.run_epoch(bar)
                self.save()
                outer.update(1)
                tested = f"N={row['N_low']}" + (f"..{row['N_high']}" if row["N_high"] > row["N_low"] else "")
                outer.set_postfix_str(f"{tested} acc={row['mean_acc']:.3f} reached={row['N_reached']} "
                                      f"{row['steps_per_s']:.1f} steps/s")
            self.stop_reason = reason
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
        finally:
            outer.close()
            torch.set_num_threads(threads)
        if self.stop_reason != "interrupted":
            self.save()  # records the stop reason
        return self.summary()

    def summary(self) -> dict:
        return {"stop_reason": self.stop_reason, "epochs": self.epoch, "N_reached": self.N_reached,
                "Ns": list(self.curriculum.Ns), "wall_time": self.elapsed, "backend": self.backend,
                "curriculum": self.config.curriculum, "task": self.config.task, "model": self.config.model,
                "hidden_size": self.config.hidden_size}


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ in a fixed number of ops: one foreach norm over every gradient,
    their total norm, one foreach scaling by min(1, max_norm / (total + 1e-6)); returns the total
    norm (a device scalar, no host read). Parameters without a gradient are skipped."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def merge_head_groups(saved: dict, readout, group: dict) -> dict:
    """An SGD state_dict saved with the core in group 0 and head k as group k + 1 (weight, bias),
    rewritten for one group holding the core's parameters and then the readout's head table: each
    head's momentum becomes its rows of the table's (zeros for a head that never stepped). The
    settings come from group 0, the implementation flags (foreach, fused) from `group`."""
    groups, old = saved["param_groups"], saved["state"]
    core = list(groups[0]["params"])
    table_id, hidden = len(core), readout.hidden_size
    table_state = {}
    for k, ids in enumerate(g["params"] for g in groups[1:]):
        for pid, part in zip(ids, ("weight", "bias")):
            for key, value in old.get(pid, {}).items():
                if not torch.is_tensor(value) or value.dim() == 0:
                    continue
                rows = table_state.setdefault(key, torch.zeros(readout.table.shape, dtype=value.dtype))
                if part == "weight":
                    rows[k, :, :hidden] = value
                else:
                    rows[k, :, hidden] = value
    state = {pid: old[pid] for pid in core if pid in old}
    if table_state:
        state[table_id] = table_state
    flags = {key: group[key] for key in ("foreach", "fused", "differentiable") if key in group}
    return {"state": state, "param_groups": [{**groups[0], **flags, "params": core + [table_id]}]}
