"""Encoder forward + backward: SpaceNit vs a standard ViT of the same width, depth, heads and tokens.

    python benchmarks/bench_encoder.py                 # nano and base
    python benchmarks/bench_encoder.py --sizes nano --steps 5

The peer is timm's VisionTransformer when `import timm` works. timm cannot be
installed next to this project's CPU torch (it needs torchvision, which does
not work with it), so otherwise the peer is the same standard ViT built from
torch.nn.TransformerEncoderLayer: pre-norm LayerNorm, 4x GELU MLP,
batch_first, SDPA attention, a Conv2d patch embedding and a learned
position embedding, no class token (so both see the same number of tokens).

SpaceNit's step is the whole encoder: tokenizer (three Sentinel-2 band
groups, absent-token detection, group and month embeddings), RoPE, the
transformer, the final norm. Both steps run in the same process, alternating,
and the ratio SpaceNit / peer (target <= 1.10) is the median over steps of
the ratio of neighbouring steps, which cancels most of the drift of a shared
machine; the best-of ratio is printed beside it.
FLOPs of each step are counted by torch.utils.flop_counter; achieved FLOP/s
is set against a dense matmul measured on the same machine. On CUDA, the
steps run under bf16 autocast and MFU is reported against `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spacenit.arch.models import PRESETS, create_model
from spacenit.sensors import SENTINEL2_L2A

PATCH = 8


class PeerViT(nn.Module):
    """The stand-in for timm's VisionTransformer (see the module docstring)."""

    def __init__(self, in_chans: int, grid: tuple[int, int], dim: int, depth: int, heads: int, patch: int = PATCH) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1], dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        return self.norm(self.blocks(tokens))


def make_peer(in_chans: int, grid: tuple[int, int], dim: int, depth: int, heads: int, patch: int = PATCH) -> tuple[nn.Module, str]:
    """A standard ViT over a grid[0] x grid[1] grid of `patch`-pixel patches: timm's, or the stand-in."""
    try:
        import timm  # noqa: F401
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return PeerViT(in_chans, grid, dim, depth, heads, patch), "torch.nn.TransformerEncoder ViT (stand-in for timm)"
    vit = VisionTransformer(img_size=(grid[0] * patch, grid[1] * patch), patch_size=patch, in_chans=in_chans, embed_dim=dim,
                            depth=depth, num_heads=heads, num_classes=0, class_token=False, global_pool="avg")  # fmt: skip
    return vit, "timm VisionTransformer"


def dense_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times[1:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def bench(size: str, batch: int, timesteps: int, tile_px: int, steps: int, device: torch.device, peak_tflops: float) -> None:
    cfg = PRESETS[f"spacenit_{size}"]
    torch.manual_seed(0)
    model = create_model(f"spacenit_{size}", [SENTINEL2_L2A]).encoder.to(device).train()
    images = {"sentinel2_l2a": torch.randn(batch, timesteps, 12, tile_px, tile_px, device=device)}
    months = {"sentinel2_l2a": torch.randint(1, 13, (batch, timesteps), device=device)}
    side = tile_px // PATCH
    tokens = 3 * timesteps * side * side  # three band groups
    # The peer sees the same number of tokens: one image of (3 * timesteps * side) x side patches.
    peer, peer_name = make_peer(4, (3 * timesteps * side, side), cfg.dim, cfg.depth, cfg.heads)
    peer = peer.to(device).train()
    peer_images = torch.randn(batch, 4, 3 * timesteps * tile_px, tile_px, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def ours() -> None:
        with autocast:
            out, _, _ = model(images, months, PATCH)
        out.float().square().mean().backward()

    def theirs() -> None:
        with autocast:
            out = peer(peer_images)
        out.float().square().mean().backward()

    for step in (ours, theirs, ours, theirs):  # warm up
        step()
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for _ in range(steps):
        for name, step in (("ours", ours), ("peer", theirs)):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    t_ours, t_peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["peer"], strict=True))
    f_ours, f_peer = count_flops(ours), count_flops(theirs)
    dense = dense_matmul_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    print(f"[{size}] dim {cfg.dim} depth {cfg.depth} heads {cfg.heads}; batch {batch} x {tokens} tokens; peer: {peer_name}")
    print(f"  step time  SpaceNit {t_ours * 1e3:8.1f} ms   peer {t_peer * 1e3:8.1f} ms   ratio {ratio:.3f} "
          f"(best of {steps}: {min(times['ours']) / min(times['peer']):.3f})")  # fmt: skip
    print(f"  FLOPs      SpaceNit {f_ours / 1e9:8.2f} G    peer {f_peer / 1e9:8.2f} G")
    print(f"  FLOP/s     SpaceNit {f_ours / t_ours / 1e9:8.1f} G/s  peer {f_peer / t_peer / 1e9:8.1f} G/s  "
          f"dense matmul {dense / 1e9:.1f} G/s  -> fraction {f_ours / t_ours / dense:.2f} (peer {f_peer / t_peer / dense:.2f})")  # fmt: skip
    if device.type == "cuda":
        print(f"  MFU        SpaceNit {f_ours / t_ours / (peak_tflops * 1e12):.3f} of {peak_tflops:.0f} TFLOP/s bf16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["nano", "base"], choices=["nano", "tiny", "base", "large"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=None, help="default: 4; 1 for base/large on CPU (a step takes ~10 s)")
    parser.add_argument("--tile-px", type=int, default=64)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 for nano/tiny, 2 for base/large (x8 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's); 1 is steadier on a busy machine")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for size in args.sizes:
        small = size in ("nano", "tiny")
        batch = args.batch or (8 if small else 2) * (8 if device.type == "cuda" else 1)
        timesteps = args.timesteps or (4 if small or device.type == "cuda" else 1)
        bench(size, batch, timesteps, args.tile_px, args.steps, device, args.peak_tflops)


if __name__ == "__main__":
    main()
