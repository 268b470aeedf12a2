"""The GPU properties the triton backend's launch rules read, as one small record, and the cards the
field trains on.

DeviceProperties holds the fields of torch.cuda.get_device_properties that the rules use (the
persistent family's plan reads the SM count and the opt-in shared memory per block; the precisions
read the compute capability). from_torch() makes one from torch's object on a real GPU; CARDS are
the cards of the compile tests (tests/test_triton_cards.py), so that the rule can be asked what it
would pick on a card nobody here has.

The numbers are NVIDIA's: the per-architecture limits (shared memory per SM and the most a block
may opt in to, registers and threads per SM) from the CUDA C++ Programming Guide's table
"Technical Specifications per Compute Capability" and the architectures' tuning guides (Volta: 96
KB per block; Turing: 64 KB; Ampere GA100: 164 KB per SM, 163 KB per block; GA10x and Ada: 100 KB
per SM, 99 KB per block; Hopper: 228 KB per SM, 227 KB per block; Blackwell compute capability
12.0: 100 KB per SM, 99 KB per block); the SM counts from each product's datasheet or
architecture whitepaper. Not checked here against a card: the tests run on none.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

KB = 1024


@dataclass(frozen=True)
class DeviceProperties:
    """What the launch rules know of a GPU: name, compute capability (major, minor), SM count,
    shared memory per block (opt-in maximum) and per SM in bytes, 32-bit registers and resident
    threads per SM. Field names are torch.cuda.get_device_properties' own, so either can be passed
    to the rules."""
    name: str
    major: int
    minor: int
    multi_processor_count: int
    shared_memory_per_block_optin: int
    shared_memory_per_multiprocessor: int
    regs_per_multiprocessor: int = 65536
    max_threads_per_multi_processor: int = 2048

    @property
    def arch(self) -> int:
        """The sm_XX number triton compiles for: 75, 80, ..., 120."""
        return 10 * self.major + self.minor

    @property
    def tensor_core_float(self) -> bool:
        """Whether the tensor cores take tf32 and bf16 operands (compute capability 8.0 and newer;
        Turing's take fp16 and integers only)."""
        return self.major >= 8


def from_torch(props) -> DeviceProperties:
    """The record of a torch.cuda.get_device_properties() object (or anything with its fields).
    A torch without shared_memory_per_block_optin (before 2.4) gets the architecture's value."""
    values = {f.name: getattr(props, f.name, None) for f in fields(DeviceProperties)}
    if not values["shared_memory_per_block_optin"]:
        values["shared_memory_per_block_optin"] = _optin_by_arch(props.major, props.minor)
    if not values["shared_memory_per_multiprocessor"]:
        values["shared_memory_per_multiprocessor"] = values["shared_memory_per_block_optin"] + KB
    for name in ("regs_per_multiprocessor", "max_threads_per_multi_processor"):
        if values[name] is None:
            values[name] = DeviceProperties.__dataclass_fields__[name].default
    return DeviceProperties(**values)


def _optin_by_arch(major: int, minor: int) -> int:
    """The opt-in shared memory per block of an architecture, in bytes (the Programming Guide's table)."""
    if major >= 9 and (major, minor) < (12, 0):
        return 227 * KB
    if (major, minor) in ((8, 0), (8, 7)):
        return 163 * KB
    if major == 7:
        return 64 * KB if minor == 5 else 96 * KB  # Turing; Volta
    if major < 7:
        return 48 * KB
    return 99 * KB  # 8.6, 8.9, 12.x


# The cards of the compile tests, one per architecture the field trains on (free notebooks' T4 to
# consumer Blackwell). SM counts: T4 40, A100 108, RTX 3090 82, L40 142, H100 SXM 132, RTX 5090 170.
CARDS = {
    "T4": DeviceProperties("NVIDIA T4", 7, 5, 40, 64 * KB, 64 * KB, max_threads_per_multi_processor=1024),
    "A100": DeviceProperties("NVIDIA A100", 8, 0, 108, 163 * KB, 164 * KB),
    "RTX 3090": DeviceProperties("NVIDIA GeForce RTX 3090", 8, 6, 82, 99 * KB, 100 * KB,
                                 max_threads_per_multi_processor=1536),
    "L40": DeviceProperties("NVIDIA L40", 8, 9, 142, 99 * KB, 100 * KB, max_threads_per_multi_processor=1536),
    "H100": DeviceProperties("NVIDIA H100 SXM", 9, 0, 132, 227 * KB, 228 * KB),
    "RTX 5090": DeviceProperties("NVIDIA GeForce RTX 5090", 12, 0, 170, 99 * KB, 100 * KB,
                                 max_threads_per_multi_processor=1536),
}


def card_for_arch(arch: int) -> DeviceProperties:
    """The card of CARDS with this sm_XX number; ValueError naming the ones there are."""
    found = [card for card in CARDS.values() if card.arch == arch]
    if not found:
        raise ValueError(f"arch: no card of sm_{arch} in devices.CARDS; there are "
                         f"{sorted(card.arch for card in CARDS.values())}")
    return found[0]
