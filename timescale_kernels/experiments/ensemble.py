"""K networks of one shape trained together in one process, each as it would train alone.

An EnsembleTrainer drives K lone Trainers (trainer.py): each keeps its own config, generators,
sequence lengths, curriculum (its N's, heads and promotions), metrics, run directory and stop. Per
step, each network draws its own batch from its own generators; the batches are padded to the
longest sequence and the K networks run as one NetworkStack (stack.py): one recurrence call, one
readout product, one loss, a clip per network and one fused SGD step. Each network's epoch then
ends in its own Trainer.finish_epoch (metrics, checkpoint, promotion) and its own state.pt, so a
run directory written here is one a lone run writes, and a lone `train --resume` can go on from it.

A network that stops (its target N, max_epochs, time budget, a finished curriculum, divergence)
leaves the ensemble; the others go on. Every network's epoch time is the ensemble's.
"""
from __future__ import annotations

import sys
import time

import torch

from ..curricula import ConfigError
from ..progress import tqdm
from .stack import IGNORE, NetworkStack

# What the networks of one ensemble share: one op call, one optimizer, one step count.
SHAPE_KEYS = ("model", "hidden_size", "batch_size", "task", "curriculum", "nonlinearity", "placement", "device",
              "backend", "steps_per_epoch", "test_batches", "lr", "momentum", "nesterov", "threads")


def shape_of(config) -> tuple:
    """The settings a network must share with the others of its ensemble, as a hashable key."""
    values = config.to_dict()
    return tuple(values[k] for k in SHAPE_KEYS)


def check_one_shape(configs) -> None:
    """ConfigError naming the first setting (SHAPE_KEYS) in which the configs differ."""
    first = configs[0].to_dict()
    for cfg in configs[1:]:
        values = cfg.to_dict()
        for key in SHAPE_KEYS:
            if values[key] != first[key]:
                raise ConfigError(f"ensemble: networks of one ensemble must share {key}; got {first[key]!r} and "
                                  f"{values[key]!r}")


def align_epochs(trainers: list) -> list:
    """The trainers of a resumed ensemble back in step. A kill between two networks' saves leaves some
    one epoch ahead of the others; each of those goes back to its state.prev.pt, so that the ensemble
    redoes that epoch together as the uninterrupted one did (a network's last bits of rounding depend
    on its partners: the recurrence runs to the longest of their lengths). Returns the list with those
    trainers replaced; the others are returned as they are."""
    training = [t for t in trainers if t.check_stop() is None]
    if not training:
        return list(trainers)
    low = min(t.epoch for t in training)
    out = []
    for trainer in trainers:
        previous = None
        if trainer.epoch == low + 1 and trainer.run_dir is not None:
            previous = trainer.run_dir.load_previous_state()
        if previous is not None and int(previous["epoch"]) == low:
            trainer = type(trainer).from_state(trainer.config, previous, trainer.run_dir, progress=trainer.progress,
                                               log=trainer.log)
        out.append(trainer)
    return out


class EnsembleTrainer:
    """Trains the trainers' networks together until each stops.

    Args:
        trainers: Trainers (fresh or resumed, with their run directories) of one shape (SHAPE_KEYS).
        progress: tqdm bars. log: a callable for one-line messages (or None).
        on_stop: called with a trainer when its network leaves the ensemble (its final state saved).
    """

    def __init__(self, trainers: list, *, progress: bool = False, log=None, on_stop=None):
        if not trainers:
            raise ConfigError("ensemble: expected at least one network")
        check_one_shape([t.config for t in trainers])
        self.trainers, self.progress, self.log, self.on_stop = list(trainers), progress, log, on_stop
        for trainer in self.trainers:  # so that align_epochs can bring a resumed ensemble back in step
            trainer.keep_previous_state = True
        self.active = list(self.trainers)
        self.config = self.trainers[0].config
        self.device = self.trainers[0].device

    # batches ---------------------------------------------------------------------------------------
    def _batches(self, key: str, lengths: list[int]):
        """One batch per network from its own generator `key` ("train" or "test") at its own length:
        x (K, T, B, 1) zero-padded to the longest, labels (K, B, capacity) (IGNORE for heads not
        trained), h0 (K, B, H)."""
        count, batch, longest = len(self.active), self.config.batch_size, max(lengths)
        x = torch.zeros(count, longest, batch, 1, device=self.device)
        labels = torch.full((count, self._capacity, batch), IGNORE, dtype=torch.int64, device=self.device)
        starts = []
        for k, (trainer, length) in enumerate(zip(self.active, lengths)):
            x_k, labels_k, h0_k = trainer._batch(trainer.generators[key], length)
            x[k, :length] = x_k
            labels[k, self._heads[k]] = labels_k
            starts.append(h0_k)
        return x, labels.transpose(1, 2), torch.stack(starts)

    def _prepare_heads(self, stack: NetworkStack) -> None:
        """Each network's trained heads as an index (a slice for consecutive heads), and the table rows
        that exist but are not trained (flat indices into (K * capacity), or None)."""
        self._capacity = stack.capacity
        self._heads, inactive = [], []
        for k, trainer in enumerate(self.active):
            heads = trainer.curriculum.heads
            consecutive = heads == list(range(heads[0], heads[0] + len(heads)))
            self._heads.append(slice(heads[0], heads[0] + len(heads)) if consecutive else heads)
            unused = sorted(set(range(trainer.model.num_heads)) - set(heads))
            inactive += [k * stack.capacity + h for h in unused]
        self._inactive = torch.tensor(inactive, device=self.device) if inactive else None

    # one epoch -------------------------------------------------------------------------------------
    def train_epoch(self, stack: NetworkStack, bar=None) -> torch.Tensor:
        """steps_per_epoch steps of every network; returns each one's summed loss (K,) on the device."""
        lengths = [t._lengths(self.config.steps_per_epoch) for t in self.active]
        loss_sum = torch.zeros(len(self.active), device=self.device)
        for trainer in self.active:
            trainer.model.train()
        for step_lengths in zip(*lengths):
            x, labels, h0 = self._batches("train", list(step_lengths))
            losses = stack.losses(stack.logits(x, h0, list(step_lengths)), labels)
            stack.zero_grad()
            losses.sum().backward()
            stack.clip_and_step(self._inactive)
            loss_sum += losses.detach()
            if bar is not None:
                bar.update(1)
        return loss_sum

    @torch.no_grad()
    def evaluate(self, stack: NetworkStack) -> list[torch.Tensor]:
        """Correct answers per trained head of each network over test_batches fresh test batches."""
        lengths = [t._lengths(self.config.test_batches) for t in self.active]
        correct = torch.zeros(len(self.active), self._capacity, dtype=torch.int64, device=self.device)
        for trainer in self.active:
            trainer.model.eval()
        for step_lengths in zip(*lengths):
            x, labels, h0 = self._batches("test", list(step_lengths))
            correct += (stack.logits(x, h0, list(step_lengths)).argmax(-1) == labels).sum(1)
        return [correct[k, heads] for k, heads in enumerate(self._heads)]

    def run_epoch(self, bar=None) -> list[dict]:
        """One epoch of every network still training; returns their metrics rows."""
        stack = NetworkStack(self.active)
        self._prepare_heads(stack)
        Ns = [list(t.curriculum.Ns) for t in self.active]
        start = time.perf_counter()
        loss_sum = self.train_epoch(stack, bar)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - start
        correct = self.evaluate(stack)
        stack.write_back()
        return [t.finish_epoch(n, loss_sum[k], correct[k], start, train_time)
                for k, (t, n) in enumerate(zip(self.active, Ns))]

    # the loop --------------------------------------------------------------------------------------
    def _leave_stopped(self) -> None:
        """Networks with a reason to stop record it, save and leave."""
        for trainer in list(self.active):
            reason = trainer.check_stop()
            if reason is None:
                continue
            trainer.stop_reason = reason
            trainer.save()
            self.active.remove(trainer)
            if self.log and self.active:
                self.log(f"seed {trainer.config.seed} leaves the ensemble ({reason}, epoch {trainer.epoch}); "
                         f"{len(self.active)} go on")
            if self.on_stop is not None:
                self.on_stop(trainer)

    def run(self) -> list[dict]:
        """Trains until every network stops; returns their summaries, in the trainers' order. Ctrl-C
        stops every network still training with stop_reason "interrupted" (state.pt holds each one's
        last completed epoch)."""
        threads = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        outer = tqdm(total=max(t.config.max_epochs for t in self.trainers), desc="epochs", unit="epoch",
                     initial=min(t.epoch for t in self.trainers), disable=not self.progress, file=sys.stderr,
                     dynamic_ncols=True)
        try:
            self._leave_stopped()
            while self.active:
                with tqdm(total=self.config.steps_per_epoch, desc=f"epoch {self.active[0].epoch + 1}", unit="step",
                          leave=False, file=sys.stderr, disable=not self.progress, dynamic_ncols=True) as bar:
                    rows = self.run_epoch(bar)
                for trainer in self.active:
                    trainer.save()
                outer.update(1)
                outer.set_postfix_str(" ".join(f"s{t.config.seed}:N={r['N_high']}" for t, r in zip(self.active, rows)))
                self._leave_stopped()
        except KeyboardInterrupt:
            for trainer in self.active:
                trainer.stop_reason = "interrupted"
        finally:
            outer.close()
            torch.set_num_threads(threads)
        return [t.summary() for t in self.trainers]
