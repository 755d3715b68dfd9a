"""The VFN's speed on this machine by memory layout and with folded BatchNorms, and the U-Nets' by layout.

Times, with the torch threads of the machine (2 on the project's CPU machines), on random data:

- a VFN training step (AdamW, batch 2) and a prediction window pair (batch 2, the sliding
  window's smallest batch), default layout against ``channels_last_3d``, and the pair again with
  the BatchNorms folded (:meth:`VolumetricFusionNet.fold_batch_norm`), with the largest output
  difference it makes;
- a training step of the planned 2D U-Net (``channels_last``) and 3D U-Net (``channels_last_3d``)
  against the default layout, which is why only the VFN runs channels last on CPU
  (:func:`vfnet.device.memory_format`).

Shapes are CHAOST2's (VFN patch 40 × 64 × 64, 4 organs; a 2D batch of 8 slices of 128², a
3D patch of 40 × 56 × 40). Each figure is the median of ``--repeats`` timed runs after one warm-up.

Usage: python benchmarks/vfn_layout.py [--repeats 5]
Writes results/vfn_layout.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results

from vfnet.networks.unet2d import UNet2D
from vfnet.networks.unet3d import UNet3D
from vfnet.networks.vfn import VolumetricFusionNet

NUM_CLASSES = 5  # background + CHAOST2's 4 organs
VFN_PATCH = (40, 64, 64)


def _median_seconds(step, repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _train_seconds(network: torch.nn.Module, data: torch.Tensor, layout: torch.memory_format, repeats: int) -> float:
    torch.manual_seed(0)
    network = network.to(memory_format=layout).train()
    data = data.contiguous(memory_format=layout)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        network(data).square().mean().backward()
        optimizer.step()

    return _median_seconds(step, repeats)


def _predict_seconds(network: torch.nn.Module, data: torch.Tensor, layout: torch.memory_format,
                     repeats: int) -> tuple[float, torch.Tensor]:
    network = network.to(memory_format=layout).eval()
    data = data.contiguous(memory_format=layout)
    with torch.inference_mode():
        return _median_seconds(lambda: network(data), repeats), network(data).float()


def _vfn(seed: int = 0) -> VolumetricFusionNet:
    torch.manual_seed(seed)
    net = VolumetricFusionNet(1, NUM_CLASSES, features=[8, 16, 32, 64], view_prior="mean")
    with torch.no_grad():  # a trained-looking network: BatchNorm statistics and a head away from zero
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        net.head.weight.normal_(0, 0.1)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()

    vfn = _vfn()
    batch = torch.rand(2, vfn.in_channels, *VFN_PATCH)
    rows = {}
    cl3d = torch.channels_last_3d
    rows["VFN training step, batch 2"] = (_train_seconds(_vfn(), batch, torch.contiguous_format, args.repeats),
                                          _train_seconds(_vfn(), batch, cl3d, args.repeats))
    default_s, expected = _predict_seconds(vfn, batch, torch.contiguous_format, args.repeats)
    last_s, _ = _predict_seconds(vfn, batch, cl3d, args.repeats)
    rows["VFN prediction, 2 windows"] = (default_s, last_s)
    folded_s, folded_out = _predict_seconds(_vfn().fold_batch_norm(), batch, cl3d, args.repeats)
    fold_difference = float((folded_out - expected).abs().max())
    slices = torch.rand(8, 3, 128, 128)
    rows["2D U-Net training step, 8 slices of 128²"] = (
        _train_seconds(UNet2D(3, NUM_CLASSES, [16, 32, 64, 128]), slices, torch.contiguous_format, args.repeats),
        _train_seconds(UNet2D(3, NUM_CLASSES, [16, 32, 64, 128]), slices, torch.channels_last, args.repeats))
    patch3d = torch.rand(2, 1, 40, 56, 40)
    rows["3D U-Net training step, batch 2 of 40 × 56 × 40"] = (
        _train_seconds(UNet3D(1, NUM_CLASSES, [32, 64, 128, 256]), patch3d, torch.contiguous_format, args.repeats),
        _train_seconds(UNet3D(1, NUM_CLASSES, [32, 64, 128, 256]), patch3d, cl3d, args.repeats))

    lines = [(f"Command: `python benchmarks/vfn_layout.py --repeats {args.repeats}` ({threads} torch threads, "
              "random data, median of the timed runs after one warm-up)."), "",
             "| step | default layout, s | channels last, s | speed-up |", "|---|---|---|---|"]
    for name, (default, last) in rows.items():
        lines.append(f"| {name} | {default:.4f} | {last:.4f} | {default / last:.2f}× |")
    lines += ["", (f"VFN prediction, 2 windows, channels last with the BatchNorms folded: {folded_s:.4f} s "
                   f"({last_s / folded_s:.2f}× the unfolded channels-last pair); largest logit difference to the "
                   f"unfolded network {fold_difference:.2e}.")]
    data = {"command": f"python benchmarks/vfn_layout.py --repeats {args.repeats}", "threads": threads,
            "seconds": {name: {"default": d, "channels_last": c, "speedup": d / c} for name, (d, c) in rows.items()},
            "vfn_predict_folded_s": folded_s, "fold_speedup": last_s / folded_s,
            "fold_max_difference": fold_difference}
    print(write_results("vfn_layout", "The VFN's speed by memory layout and with folded BatchNorms, CPU",
                        "\n".join(lines), data))


if __name__ == "__main__":
    main()
