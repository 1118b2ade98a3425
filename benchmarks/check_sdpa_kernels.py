"""Which SDPA kernels the encoder's attention can run on, and how fast each is (a GPU check).

    python benchmarks/check_sdpa_kernels.py            # base encoder, 32 samples x 2250 tokens, bf16
    python benchmarks/check_sdpa_kernels.py --tiny     # what runs on CPU

The encoder's forward + backward runs with SDPA restricted to one backend at a time
(flash, memory-efficient, cuDNN, math). A backend that cannot take the encoder's call (an
attention mask, a head size or dtype it lacks) raises, and is reported as unusable: the
line to read is whether FLASH_ATTENTION runs, and its step time beside MATH's.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_gpu import BASE, TINY, autocast, model_inputs, sync  # a sibling script
from torch.nn.attention import SDPBackend, sdpa_kernel

from spacenit.arch.models import create_model
from spacenit.sensors import SENTINEL2_L2A


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup = TINY if args.tiny or device.type != "cuda" else BASE
    torch.manual_seed(0)
    encoder = create_model("spacenit_base", [SENTINEL2_L2A], **setup.model_overrides).encoder.to(device).train()
    images, months = model_inputs(setup.batch, setup.timesteps, setup.grid[0] * setup.patch, setup.grid[1] * setup.patch, device)

    def step() -> None:
        with autocast(device):
            out, _, _ = encoder(images, months, setup.patch)
        out.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)

    print(f"device {device}, {setup.batch} samples x {setup.tokens} tokens, bf16 autocast")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                step()
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync(device)
            print(f"{backend.name:22s} runs   {1000 * (time.perf_counter() - start) / args.steps:8.1f} ms/step")
        except RuntimeError as e:
            print(f"{backend.name:22s} cannot run: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
