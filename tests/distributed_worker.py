"""What tests/test_distributed.py runs under torchrun (one process per rank).

``features OUT``: sharded features of fixed data, gathered; rank 0 saves them and their Frechet distance.
``train-killed-once MARKER STEP -- CLI ARGS``: the ``diffusekit`` command line, except that rank 1 exits
abruptly before step STEP the first time (MARKER file absent), as a crashed process would.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch


def fixed_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items (101, 3), reference items (80, 3) and the extractor's weights (3, 5), the same in every process."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(101, 3, generator=g), torch.randn(80, 3, generator=g) + 0.3, torch.randn(3, 5, generator=g)


def frechet_of_features(world: object = None) -> tuple[np.ndarray, float]:
    """Features of the fixed items (sharded over ``world``) and their Frechet distance to the reference's."""
    from diffusekit.evaluate import sharded_features
    from diffusekit.metrics import frechet_distance_from_features

    x, real, w = fixed_data()

    def extractor(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(v @ w)

    fake = sharded_features(extractor, x, world, batch_size=16, progress=False)  # type: ignore[arg-type]
    ref = extractor(real).double().numpy()
    return fake, float(frechet_distance_from_features(fake, ref))


def main() -> None:
    from diffusekit.train.distributed import distributed_world

    mode = sys.argv[1]
    if mode == "features":
        with distributed_world() as world:
            fake, fd = frechet_of_features(world)
            if world.is_main:
                np.savez(sys.argv[2], features=fake, fd=fd, world=world.size)
    elif mode == "train-killed-once":
        marker, step = Path(sys.argv[2]), int(sys.argv[3])
        from diffusekit.cli import main as cli
        from diffusekit.train import Trainer

        original = Trainer._train_step

        def crash_once(self: Trainer):  # type: ignore[no-untyped-def]
            if self.world.rank == 1 and self.step == step and not marker.exists():
                marker.write_text("rank 1 died here\n")
                os._exit(17)
            return original(self)

        Trainer._train_step = crash_once  # type: ignore[method-assign]
        cli(sys.argv[sys.argv.index("--") + 1:])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
