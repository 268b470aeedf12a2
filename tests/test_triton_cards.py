"""The kernels compile for every card of devices.CARDS (sm_75, 80, 86, 89, 90, 120) as launched there.

benchmarks/kernel_tools/triton_cards.py captures the launchers with each card's DeviceProperties (so the persistent
plan is the one the rule picks on that card), compiles for its sm_XX with triton's bundled ptxas (no GPU)
and reports registers, spills and shared memory; it runs in a subprocess under triton 3.6.0 (the GPU
machine's, `make triton-3.6`) for every case and under the newest triton for the quick ones.
"""
import sys
import types

import pytest

from conftest import REPO, compile_script_rows, triton36_side
from timescale_kernels.ops import choices, devices
from timescale_kernels.ops import triton_recurrence as tr

sys.path[:0] = [str(REPO / "benchmarks" / d) for d in ("gpu", "kernel_tools", "cpu")]
import triton_cards  # noqa: E402

@pytest.fixture(scope="module")
def rows36(tmp_path_factory):
    result = compile_script_rows("triton_cards.py", tmp_path_factory.mktemp("cards36"), side=triton36_side(),
                                 timeout=1200)
    assert result["triton"] == "3.6.0"
    return result["rows"]


@pytest.fixture(scope="module")
def rows_newest(tmp_path_factory):
    return compile_script_rows("triton_cards.py", tmp_path_factory.mktemp("cards_newest"), quick=True, timeout=1200)["rows"]


# ---- the record and the rules, without compiling ----

def test_the_cards_cover_the_architectures_the_field_uses():
    assert sorted(card.arch for card in devices.CARDS.values()) == [75, 80, 86, 89, 90, 120]
    assert devices.card_for_arch(86).name == devices.CARDS["RTX 3090"].name
    with pytest.raises(ValueError, match="sm_70"):
        devices.card_for_arch(70)


def test_a_torch_properties_object_becomes_the_record():
    torch_like = types.SimpleNamespace(name="NVIDIA A100-SXM4-40GB", major=8, minor=0, multi_processor_count=108,
                                       shared_memory_per_block_optin=163 * 1024, shared_memory_per_multiprocessor=164 * 1024,
                                       regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048, uuid="x")
    assert devices.from_torch(torch_like) == devices.DeviceProperties(
        "NVIDIA A100-SXM4-40GB", 8, 0, 108, 163 * 1024, 164 * 1024, 65536, 2048)
    older = types.SimpleNamespace(name="T4", major=7, minor=5, multi_processor_count=40)  # a torch before 2.4
    assert devices.from_torch(older).shared_memory_per_block_optin == 64 * 1024


@pytest.mark.parametrize("name", list(devices.CARDS))
def test_tensor_core_precisions_are_refused_before_sm_80(name):
    card = devices.CARDS[name]
    for precision in choices.PRECISIONS:
        if precision in tr.MMA_PRECISIONS and card.major < 8:
            with pytest.raises(ValueError, match=f"{card.name} is sm_75: use 'fp32'"):
                tr.check_precision(card, precision)
        else:
            tr.check_precision(card, precision)


@pytest.mark.parametrize("name", list(devices.CARDS))
def test_the_cases_come_from_the_project_tables(name):
    """Every placement and every precision the card runs, both directions, float64; the persistent family
    wherever the rule picks it on that card; each precision the card lacks as a refusal."""
    card = devices.CARDS[name]
    cases = triton_cards.card_cases(name, skip_compiled=False)
    compiled = [c for c in cases if c not in triton_cards.card_cases(name)]  # by triton_compile.py's full set
    assert all(triton_cards.compiled_by_triton_compile(c) for c in compiled)
    assert not compiled or card.arch == 90
    default = [c for c in cases if c.family == "default"]
    runs = {p for p in choices.PRECISIONS if triton_cards.runs(card, p)}
    assert {c.placement for c in default} == set(choices.PLACEMENTS)
    assert {c.precision for c in default if c.dtype == "float32"} == runs
    assert {(c.direction, c.dtype) for c in default} == {(d, t) for d in ("forward", "backward")
                                                        for t in ("float32", "float64")}
    picked = {(b, h, p) for b, h in triton_cards.TABLE_SHAPES for p in runs
              if tr.choose_family(card, b, h, p) == "persistent"}
    persistent = {c.shape[1:] + (c.precision,) for c in cases if c.family == "persistent"}
    assert persistent <= picked and (not picked or persistent)
    assert {c.precision for c in triton_cards.refused_cases(name)} == set(choices.PRECISIONS) - runs


# ---- compiled ----

def check_card_rows(rows, cases):
    """A row per case; none failed; each fits its card: registers within 255, shared memory within the
    card's opt-in limit per block (the plan's estimate holds as compiled); the persistent grid is the
    rule's plan on that card, one program per SM at most; tensor-core precisions on the tensor cores."""
    assert {r["case"] for r in rows} == {c.label for c in cases}, {r["case"] for r in rows} ^ {c.label for c in cases}
    failed = {r["case"]: r["error"] for r in rows if "error" in r}
    assert not failed, failed
    by_label = {c.label: c for c in cases}
    for r in rows:
        case = by_label[r["case"]]
        card = devices.CARDS[case.card]
        if "refused" in r:
            assert not triton_cards.runs(card, case.precision) and card.name in r["refused"], r
            continue
        assert triton_cards.runs(card, case.precision), r
        assert 0 < r["registers"] <= 255 and 0 < r["smem"] <= card.shared_memory_per_block_optin, r
        if case.family == "persistent":
            plan = tr.persistent_plan(card, case.shape[1], case.shape[2], case.precision)
            assert r["grid"] == list(plan.grid) and plan.programs <= card.multi_processor_count, r
            assert r["options"]["launch_cooperative_grid"] is True, r
        if case.precision in tr.MMA_PRECISIONS:
            assert "mma" in r["ptx"], r


@pytest.mark.slow
def test_every_card_compiles_its_kernels_under_triton_36(rows36):
    cases = [c for n in devices.CARDS for c in triton_cards.card_cases(n) + triton_cards.refused_cases(n)]
    check_card_rows(rows36, cases)
    assert {r["card"] for r in rows36} == set(devices.CARDS)
    assert {r["case"].split("/")[1] for r in rows36} == {"forward", "backward"}


def test_every_card_compiles_the_quick_cases_under_newest(rows_newest):
    cases = [c for n in devices.CARDS for c in triton_cards.card_cases(n, quick=True) + triton_cards.refused_cases(n)]
    check_card_rows(rows_newest, cases)
