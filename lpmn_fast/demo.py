"""A short demo of the prototype-MIL op and the PrototypeMIL layer on random frames."""

from __future__ import annotations

import argparse

import torch

from . import PrototypeMIL, prototype_mil
from .cli import add_version
from .ops import resolve_backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lpmn-demo", description=__doc__)
    parser.add_argument("--kernel", choices=("auto", "triton", "torch"), default="auto",
                        help="op backend: fused Triton kernels, PyTorch reference, or auto (fused on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to run on (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    add_version(parser)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    B, T, C, K, classes = 8, 50, 64, 32, 4
    x = torch.randn(B, T, C, device=device)
    lengths = torch.randint(T // 2, T + 1, (B,), device=device)
    print(f"backend: {resolve_backend(args.kernel, device)} on {device}")

    out = prototype_mil(x, torch.randn(K, C, device=device), lengths, tau=0.1, backend=args.kernel)
    print(f"prototype_mil: x {tuple(x.shape)} -> pooled {tuple(out.pooled.shape)}, "
          f"frame_index {tuple(out.frame_index.shape)}, nearest {tuple(out.nearest.shape)}")

    layer = PrototypeMIL(K, C, tau=0.1, kernel=args.kernel).to(device)
    classifier = torch.nn.Linear(K, classes).to(device)
    labels = torch.randint(0, classes, (B,), device=device)
    optimizer = torch.optim.Adam([*layer.parameters(), *classifier.parameters()], lr=1e-2)
    for step in range(5):
        out = layer(x, lengths)
        ce = torch.nn.functional.cross_entropy(classifier(out.pooled), labels)
        loss = ce + layer.quantization_loss(x, lengths, out.nearest)
        optimizer.zero_grad()
        loss.backward()
        layer.update_fisher()
        optimizer.step()
        print(f"step {step}: cross-entropy {ce.item():.4f}, total loss {loss.item():.4f}")
    top = layer.select_top(5).tolist()
    print(f"5 most important prototypes by Fisher EMA (eq. 4): {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
