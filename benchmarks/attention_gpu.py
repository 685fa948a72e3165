"""SD-1.5's attention shapes on each fused SDPA kernel: which one the remover's ``attention`` should prefer.

Attention is about a fifth of the compiled remover's GPU time on an H100, and SD-1.5's
head dims (40, 80, 160) are not the 64/128 that fused kernels are tuned for. For every
attention call the UNet makes at 512x512 (self-attention over 64², 32² and 16² latents,
cross-attention to 77 prompt tokens) at the remover's UNet batch (objects x 2 with
guidance), this times each backend on the same bf16 inputs, reports its TFLOP/s and its
ratio to flash attention (the baseline, run in the same process), and flags a backend that
cannot take the shape. Needs only torch and a CUDA device.

    python benchmarks/attention_gpu.py --batch 32
"""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from _common import quiet_logging
from torch.nn.attention import SDPBackend, sdpa_kernel

LOG = logging.getLogger("benchmark")
BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")
#: (query tokens, key tokens, heads, head dim, calls per UNet evaluation) of SD-1.5 at 512x512.
SD15_CALLS = (
    (4096, 4096, 8, 40, 5), (4096, 77, 8, 40, 5),
    (1024, 1024, 8, 80, 5), (1024, 77, 8, 80, 5),
    (256, 256, 8, 160, 5), (256, 77, 8, 160, 5),
    (64, 64, 8, 160, 1), (64, 77, 8, 160, 1),
)


def time_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> float:
    """Milliseconds per call of ``backend`` alone, or NaN where it cannot take these inputs."""
    with sdpa_kernel([getattr(SDPBackend, backend)]):
        try:
            F.scaled_dot_product_attention(q, k, v)
        except RuntimeError:
            return float("nan")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            F.scaled_dot_product_attention(q, k, v)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="UNet batch: objects per model call x 2 with guidance")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    quiet_logging()
    device = torch.device("cuda")
    print(f"SDPA on {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}, UNet batch {args.batch}")
    print(f"{'q x kv tokens, heads x dim':32}" + "".join(f"{b.split('_')[0].lower():>20}" for b in BACKENDS))
    totals = dict.fromkeys(BACKENDS, 0.0)
    for queries, keys, heads, dim, calls in SD15_CALLS:
        q = torch.randn(args.batch, heads, queries, dim, device=device, dtype=torch.bfloat16)
        k, v = (torch.randn(args.batch, heads, keys, dim, device=device, dtype=torch.bfloat16) for _ in range(2))
        flop = 4 * args.batch * heads * queries * keys * dim
        times = {backend: time_backend(backend, q, k, v, args.repeats) for backend in BACKENDS}
        # What PyTorch picks with no pin (the remover's ``attention: auto``).
        picked = SDPBackend(torch._fused_sdp_choice(q, k, v)).name.split("_")[0].lower()
        cells = []
        for backend, ms in times.items():
            # A shape a backend cannot take counts at flash's time: the remover falls back to flash there.
            totals[backend] += calls * (ms if ms == ms else times["FLASH_ATTENTION"])
            cells.append(f"{'n/a':>20}" if ms != ms else f"{ms:8.3f} ms {flop / ms / 1e9:4.0f} TF/s")
        print(f"{queries:5} x {keys:<5} {heads} x {dim:<4} (x{calls})     " + "".join(cells) + f"   auto: {picked}")
    flash = totals["FLASH_ATTENTION"]
    print("per UNet evaluation: " + ", ".join(
        f"{backend.split('_')[0].lower()} {ms:.2f} ms ({flash / ms:.2f}x flash)" for backend, ms in totals.items()))


if __name__ == "__main__":
    main()
