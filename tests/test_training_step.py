"""The training step with every readout head in one tensor: the readout's views and growth, equivalence
with the per-head formulation (one torch.nn.Linear and one SGD parameter group per head, kept here as
the reference), optimizer state carried as heads are added, resume, and checkpoints written the old way."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import rel_err
from timescale_kernels.checkpoints import FORMAT, load_checkpoint, load_study_checkpoint, save_checkpoint
from timescale_kernels.experiments import Curriculum, RunDir, Trainer, make_config
from timescale_kernels.files import atomic_torch_save
from timescale_kernels.models import MIN_CAPACITY, MemoryNet, MultiHeadReadout
from timescale_kernels.tasks import make_batch, sequence_length_range


def tiny(**overrides):
    values = {"hidden_size": 12, "batch_size": 16, "steps_per_epoch": 20, "test_batches": 1, "lr": 0.1,
              "momentum": 0.5, "clip": 0.5, "max_epochs": 4, "backend": "auto", "device": "cpu", "threads": 1,
              "seed": 5}
    return make_config("quick", **{**values, **overrides})


pytestmark = pytest.mark.usefixtures("one_thread")


# The per-head formulation: one Linear per head, one parameter group per head ----------------------------
class PerHeadReadout(nn.Module):
    """The readout as it was: a ModuleList of Linear(H, 2), logits (heads, B, 2) from stacked weights."""

    def __init__(self, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.heads = nn.ModuleList()

    def add_head(self):
        self.heads.append(nn.Linear(self.hidden_size, 2))
        return len(self.heads) - 1

    def __len__(self):
        return len(self.heads)

    def forward(self, h, index=None):
        heads = [self.heads[i] for i in (range(len(self.heads)) if index is None else index)]
        weight = torch.stack([m.weight for m in heads])
        bias = torch.stack([m.bias for m in heads])
        return torch.baddbmm(bias.unsqueeze(1), h.unsqueeze(0).expand(len(heads), -1, -1), weight.transpose(1, 2))


class PerHeadTrainer:
    """The training step as it was, on a twin of trainer's model: same weights, same generators."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.config = trainer, trainer.config
        self.model = copy.deepcopy(trainer.model)
        self.model.readout = PerHeadReadout(self.config.hidden_size)
        self.optimizer = torch.optim.SGD([p for n, p in self.model.named_parameters() if not n.startswith("readout.")],
                                         lr=self.config.lr, momentum=self.config.momentum, nesterov=True)
        self.generators = {k: torch.Generator().manual_seed(0) for k in trainer.generators}
        for k, g in self.generators.items():
            g.set_state(trainer.generators[k].get_state())
        self.sync_heads()

    def sync_heads(self):
        """Adds the heads the trainer has and this twin lacks, with the trainer's initial weights."""
        while len(self.model.readout) < self.trainer.model.num_heads:
            k = self.model.readout.add_head()
            head, source = self.model.readout.heads[k], self.trainer.model.readout.heads[k]
            with torch.no_grad():
                head.weight.copy_(source.weight)
                head.bias.copy_(source.bias)
            self.optimizer.add_param_group({"params": list(head.parameters())})

    def train_epoch(self, heads=None):
        cur, cfg = self.trainer.curriculum, self.config
        heads = cur.heads if heads is None else heads
        low, high = sequence_length_range(cur.Ns)
        params = list(self.model.parameters())
        lengths = torch.randint(low, high + 1, (cfg.steps_per_epoch,), generator=self.generators["lengths"])
        for length in lengths.tolist():
            gen = self.generators["train"]
            x, labels = make_batch(cfg.task, cur.Ns, cfg.batch_size, generator=gen, length=length)
            h0 = self.model.initial_state(cfg.batch_size, gen)
            logits = self.model(x, heads=heads, h0=h0)
            loss = sum(F.cross_entropy(logits[i], labels[i]) for i in range(len(heads)))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            self.optimizer.step()


def assert_same_weights(trainer: Trainer, twin: PerHeadTrainer, tol=1e-5):
    core = {n: p for n, p in twin.model.named_parameters() if not n.startswith("readout.")}
    for name, p in trainer.model.named_parameters():
        if not name.startswith("readout."):
            assert rel_err(p, core[name]) <= tol, name
    assert trainer.model.num_heads == len(twin.model.readout)
    for k, (new, old) in enumerate(zip(trainer.model.readout.heads, twin.model.readout.heads)):
        assert rel_err(new.weight, old.weight) <= tol and rel_err(new.bias, old.bias) <= tol, k
        momentum = twin.optimizer.state.get(old.weight, {}).get("momentum_buffer")
        table_momentum = trainer.optimizer.state.get(trainer.model.readout.table, {}).get("momentum_buffer")
        if momentum is None:  # never stepped: no momentum
            assert table_momentum is None or torch.count_nonzero(table_momentum[k]) == 0, k
        else:
            assert rel_err(table_momentum[k, :, :-1], momentum) <= tol, k
            bias_momentum = twin.optimizer.state[old.bias]["momentum_buffer"]
            assert rel_err(table_momentum[k, :, -1], bias_momentum) <= tol, k


def multi_trainer(top_N, **overrides):
    trainer = Trainer(tiny(**overrides))
    while trainer.curriculum.Ns[-1] < top_N:
        trainer.curriculum.advance()
    trainer.ensure_heads()
    return trainer


# the readout -----------------------------------------------------------------------------------------------
def test_heads_are_views_into_one_table():
    readout = MultiHeadReadout(6, 2, num_heads=3)
    assert len(readout) == 3 and readout.capacity == MIN_CAPACITY and len(list(readout.parameters())) == 1
    h = torch.randn(5, 6)
    for k, head in enumerate(readout.heads):
        assert head.weight.shape == (2, 6) and head.bias.shape == (2,)
        assert (head.in_features, head.out_features) == (6, 2)
        assert rel_err(readout(h, [k])[0], h @ head.weight.t() + head.bias) <= 1e-6
    with torch.no_grad():
        readout.heads[1].weight[:, [0, 4]] = 0.0  # as the ablation writes it
        readout.heads[2].bias.fill_(3.0)
    assert (readout.table[1, :, [0, 4]] == 0).all() and (readout.table[2, :, 6] == 3.0).all()
    assert (readout.heads[-1].bias == 3.0).all()
    picked = readout(h, [2, 0])
    assert rel_err(picked[0], readout.heads[2](h)) <= 1e-6 and rel_err(picked[1], readout.heads[0](h)) <= 1e-6
    assert rel_err(readout(h, torch.tensor([1])), readout(h, [1])) <= 1e-6
    assert list(readout.state_dict()) == [f"heads.{k}.{p}" for k in range(3) for p in ("weight", "bias")]


def test_heads_grow_in_place_past_the_capacity():
    readout = MultiHeadReadout(4, 2, num_heads=MIN_CAPACITY)
    table = readout.table
    before = table.detach().clone()
    assert readout.add_head() == MIN_CAPACITY
    assert readout.table is table and readout.capacity == 2 * MIN_CAPACITY
    assert torch.equal(table.detach()[:MIN_CAPACITY], before)
    assert torch.count_nonzero(table.detach()[MIN_CAPACITY]) > 0
    assert torch.count_nonzero(table.detach()[MIN_CAPACITY + 1:]) == 0
    readout.clear()
    assert len(readout) == 0 and readout.capacity == MIN_CAPACITY and readout.add_head() == 0


def test_heads_draw_their_weights_as_linear_layers_did():
    torch.manual_seed(3)
    readout = MultiHeadReadout(7, 2, num_heads=2)
    torch.manual_seed(3)
    reference = [nn.Linear(7, 2) for _ in range(2)]
    for head, linear in zip(readout.heads, reference):
        assert torch.equal(head.weight, linear.weight) and torch.equal(head.bias, linear.bias)


def test_readout_bad_index():
    readout = MultiHeadReadout(4, 2, num_heads=2)
    h = torch.randn(3, 4)
    with pytest.raises(ValueError, match="index: expected at least one"):
        readout(h, [])
    with pytest.raises(ValueError, match=r"index: expected head indices in \[0, 2\); got \[0, 2\]"):
        readout(h, [0, 2])
    with pytest.raises(ValueError, match="index: expected head indices"):
        readout(h, [0.5])
    with pytest.raises(ValueError, match="index: expected a non-empty 1-D integer tensor"):
        readout(h, torch.tensor([0.0]))
    with pytest.raises(IndexError, match="heads: expected an index"):
        readout.heads[2]
    with pytest.raises(ValueError, match="index: expected at least one"):
        MultiHeadReadout(4, 2)(h)


def test_state_dict_with_other_heads_is_refused():
    model = MemoryNet("leaky", 6, num_heads=2, backend="reference")
    with pytest.raises(RuntimeError, match="Missing key.*readout.heads.2.weight"):
        MemoryNet("leaky", 6, num_heads=3, backend="reference").load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="Unexpected key.*readout.heads.1.weight"):
        MemoryNet("leaky", 6, num_heads=1, backend="reference").load_state_dict(model.state_dict())
    state = model.state_dict()
    state["readout.heads.0.weight"] = torch.zeros(2, 5)
    with pytest.raises(RuntimeError, match="size mismatch for readout.heads.0.weight"):
        MemoryNet("leaky", 6, num_heads=2, backend="reference").load_state_dict(state)


# the step --------------------------------------------------------------------------------------------------
def test_one_parameter_group_whatever_the_number_of_heads():
    trainer = multi_trainer(3)
    params = list(trainer.optimizer.param_groups[0]["params"])
    for _ in range(MIN_CAPACITY + 2):
        trainer.curriculum.advance()
        trainer.ensure_heads()
    assert len(trainer.optimizer.param_groups) == 1
    assert trainer.optimizer.param_groups[0]["params"] == params
    assert trainer.model.readout.table is params[-1]


@pytest.mark.parametrize("top_N, task", [(2, "parity"), (6, "parity"), (5, "dms")])
def test_twenty_steps_agree_with_the_per_head_formulation(top_N, task):
    trainer = multi_trainer(top_N, task=task)
    twin = PerHeadTrainer(trainer)
    assert_same_weights(trainer, twin, tol=0.0)
    trainer.train_epoch()
    twin.train_epoch()
    assert_same_weights(trainer, twin)
    first = trainer.model.rnn.weight_hh.detach()
    assert not torch.equal(first, PerHeadTrainer(multi_trainer(top_N, task=task)).model.rnn.weight_hh)  # it trained


def test_heads_growing_across_a_curriculum_carry_their_momentum():
    # Past the first capacity, so the table and its momentum are reallocated on the way.
    trainer = multi_trainer(2, steps_per_epoch=3)
    twin = PerHeadTrainer(trainer)
    for _ in range(MIN_CAPACITY + 2):
        trainer.train_epoch()
        twin.train_epoch()
        trainer.curriculum.advance()
        trainer.ensure_heads()
        twin.sync_heads()
    assert trainer.model.readout.capacity == 2 * MIN_CAPACITY
    trainer.train_epoch()
    twin.train_epoch()
    assert_same_weights(trainer, twin)


class _SomeHeads(Curriculum):
    """Trains the heads in `chosen` only (no built-in curriculum leaves an existing head out)."""
    chosen = [0, 2]

    @property
    def heads(self):
        return list(self.chosen)


def test_heads_left_out_of_a_step_keep_their_weights_and_momentum():
    trainer = multi_trainer(4, steps_per_epoch=4)
    twin = PerHeadTrainer(trainer)
    trainer.train_epoch()
    twin.train_epoch()
    subset = _SomeHeads("multi")
    subset.Ns = [2, 4]
    trainer.curriculum, twin_curriculum = subset, trainer.curriculum
    held = trainer.model.readout.heads[1].weight.detach().clone()
    trainer.train_epoch()
    twin.trainer = trainer
    twin.train_epoch(heads=[0, 2])
    assert torch.equal(trainer.model.readout.heads[1].weight, held)
    assert_same_weights(trainer, twin)
    trainer.curriculum = twin_curriculum
    trainer.train_epoch()
    twin.train_epoch()
    assert_same_weights(trainer, twin)


# resume ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [4, MIN_CAPACITY + 1])
def test_resume_across_a_growth_of_the_table_is_bit_for_bit(tmp_path, split):
    # threshold 0: every epoch passes and adds a head, so the table grows after epoch MIN_CAPACITY.
    config = tiny(hidden_size=8, batch_size=8, steps_per_epoch=2, threshold=0.0, max_epochs=MIN_CAPACITY + 3)
    straight = Trainer(config, RunDir(tmp_path / "a"))
    straight.run()
    half = RunDir(tmp_path / "b")
    Trainer(dataclasses.replace(config, max_epochs=split), half).run()
    resumed = Trainer.from_state(config, half.load_state(), half)
    resumed.run()
    assert straight.model.readout.capacity == resumed.model.readout.capacity == 2 * MIN_CAPACITY
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.model.readout.table, resumed.model.readout.table)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for key in sa["state"]:
        assert torch.equal(sa["state"][key]["momentum_buffer"], sb["state"][key]["momentum_buffer"]), key


def test_a_state_saved_with_one_group_per_head_resumes():
    trainer = multi_trainer(5, steps_per_epoch=5)
    twin = PerHeadTrainer(trainer)
    twin.train_epoch()
    # The run state as the per-head trainer wrote it: its model and its per-head optimizer groups.
    state = trainer.state_dict()
    state["model"] = {k: v.detach().clone() for k, v in twin.model.state_dict().items()}
    state["optimizer"] = copy.deepcopy(twin.optimizer.state_dict())  # as read from a file: no shared buffers
    state["generators"] = {k: g.get_state() for k, g in twin.generators.items()}
    assert len(state["optimizer"]["param_groups"]) == 1 + trainer.model.num_heads
    resumed = Trainer.from_state(trainer.config, state)
    twin.trainer = resumed
    assert_same_weights(resumed, twin, tol=0.0)
    assert len(resumed.optimizer.param_groups) == 1
    resumed.train_epoch()
    twin.train_epoch()
    assert_same_weights(resumed, twin)


# checkpoints -----------------------------------------------------------------------------------------------
def test_a_checkpoint_written_with_linear_heads_loads(tmp_path):
    torch.manual_seed(1)
    old = MemoryNet("leaky", 10, num_heads=0, backend="reference")
    old.readout = PerHeadReadout(10)
    for _ in range(3):
        old.readout.add_head()
    # Written as save_checkpoint wrote it when each head was a Linear.
    atomic_torch_save(tmp_path / "old.pt", {"format": FORMAT, "version": 1, "model_config": dict(old.config),
                                            "num_heads": 3, "meta": {"Ns": [2, 3, 4]},
                                            "state_dict": {k: v.detach().cpu() for k, v in old.state_dict().items()}})
    model, meta = load_checkpoint(tmp_path / "old.pt", backend="reference")
    assert meta == {"Ns": [2, 3, 4]} and model.num_heads == 3
    for new, linear in zip(model.readout.heads, old.readout.heads):
        assert torch.equal(new.weight, linear.weight) and torch.equal(new.bias, linear.bias)
    x, h0 = torch.rand(7, 4, 1), torch.rand(4, 10)
    assert rel_err(model(x, h0=h0), old(x, h0=h0)) <= 1e-6
    # And what we write now has the same keys and shapes.
    save_checkpoint(tmp_path / "new.pt", model)
    written = torch.load(tmp_path / "new.pt", weights_only=True)["state_dict"]
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in old.state_dict().items()}


def test_study_checkpoint_heads_are_the_files(study_checkpoints):
    path = study_checkpoints / "multi_head_parity" / "rnn_N2_N11.pt"
    model = load_study_checkpoint(path, backend="reference")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    stored = sum(1 for key in state if key.startswith("modulelist.") and key.endswith(".weight")) - 2
    assert model.num_heads == stored >= 10 and model.readout.capacity >= stored
    for k, head in enumerate(model.readout.heads):
        assert torch.equal(head.weight, state[f"modulelist.{k + 2}.weight"])
        assert torch.equal(head.bias, state[f"modulelist.{k + 2}.bias"])
