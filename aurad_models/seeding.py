"""Per-sample seeds derived from a base seed, so any one sample can be regenerated on its own.

Never seed globally: every random draw takes a generator built from one of these seeds.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MAX_SEED = 2**63 - 1


def derive_seed(base_seed: int, *keys: int | str) -> int:
    """A stable 63-bit seed from a base seed and keys (sample index, stage name, try number...).

    Strings are hashed with sha256 (Python's `hash` changes per process), so seeds are identical on
    every machine and in every worker process.
    """
    entropy = [int(base_seed) & 0xFFFFFFFF, (int(base_seed) >> 32) & 0xFFFFFFFF]
    for key in keys:
        if isinstance(key, str):
            entropy.append(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little"))
        else:
            entropy.extend([int(key) & 0xFFFFFFFF, (int(key) >> 32) & 0xFFFFFFFF])
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & _MAX_SEED)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded for one sample."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
