"""VFN against the planned 3D U-Net: parameter counts and CPU forward time of one planned patch.

Usage: python benchmarks/fusion_networks.py [--threads 1] [--repeats 3] [--no-time]

Settings: a Hippocampus-like plan (median shape 36×50×35, organ box about 25×35×20, one
image channel, two foreground classes), the paper's 64³ patch (one organ), and, for the
parameter ratio only, a CT-abdomen-like plan whose 3D U-Net patch reaches the 128³ cap.
The paper reports the VFN at about 10% of a 3D network's parameters; the ratio depends on
the 3D network's widths, so this compares against the planned nnU-Net-shaped baseline.
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

from vfnet.experiment_planning.plans import plan_unet3d, plan_vfn
from vfnet.networks.unet3d import build_unet3d
from vfnet.networks.vfn import build_vfn, count_parameters

# name, median shape, median foreground box, image channels, classes (with background), time it
SETTINGS = [
    ("Hippocampus-like (36×50×35)", (36, 50, 35), (25, 35, 20), 1, 3, True),
    ("paper 64³ patch, one organ", (64, 64, 64), (40, 40, 40), 1, 2, True),
    ("CT abdomen-like (240×512×512)", (240, 512, 512), (60, 80, 70), 1, 2, False),
]


def forward_seconds(net: torch.nn.Module, channels: int, patch: list[int], repeats: int) -> float:
    """Median wall time of one batch-1 forward pass in eval mode, after one warm-up."""
    net.eval()
    x = torch.rand(1, channels, *patch)
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(repeats):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per network")
    parser.add_argument("--no-time", action="store_true", help="parameter counts only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    for name, shape, bbox, channels, classes, timed in SETTINGS:
        plan = {"vfn": plan_vfn(shape, bbox), "unet3d": plan_unet3d(shape)}
        vfn = build_vfn(plan, channels, classes)
        unet = build_unet3d(plan, channels, classes)
        row = {
            "setting": name, "vfn_patch": plan["vfn"]["patch_size"], "vfn_features": plan["vfn"]["features"],
            "vfn_in_channels": vfn.in_channels, "vfn_parameters": count_parameters(vfn),
            "unet3d_patch": plan["unet3d"]["patch_size"], "unet3d_features": plan["unet3d"]["features"],
            "unet3d_parameters": count_parameters(unet), "vfn_seconds": None, "unet3d_seconds": None,
        }
        row["ratio"] = row["vfn_parameters"] / row["unet3d_parameters"]
        if timed and not args.no_time:
            row["vfn_seconds"] = forward_seconds(vfn, vfn.in_channels, plan["vfn"]["patch_size"], args.repeats)
            row["unet3d_seconds"] = forward_seconds(unet, channels, plan["unet3d"]["patch_size"], args.repeats)
        rows.append(row)
        print(f"{name}: VFN {row['vfn_parameters']:,} / 3D U-Net {row['unet3d_parameters']:,} parameters "
              f"({100 * row['ratio']:.1f}%)"
              + (f"; forward {row['vfn_seconds']:.3f} s / {row['unet3d_seconds']:.3f} s" if row["vfn_seconds"] else ""))

    def fmt_time(seconds):
        return "—" if seconds is None else f"{seconds:.3f}"

    lines = [
        ("| setting | VFN patch | VFN features | VFN params | 3D U-Net patch | 3D U-Net features | 3D U-Net params "
        "| VFN / 3D | VFN forward s | 3D U-Net forward s |"),
        "|---|---|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {'×'.join(map(str, r['vfn_patch']))} | {r['vfn_features']} | {r['vfn_parameters']:,} "
            f"| {'×'.join(map(str, r['unet3d_patch']))} | {r['unet3d_features']} | {r['unet3d_parameters']:,} "
            f"| {100 * r['ratio']:.1f}% | {fmt_time(r['vfn_seconds'])} | {fmt_time(r['unet3d_seconds'])} |")
    body = (
        "VFN (the paper's layout; `plan['vfn']['features']`) against the planned nnU-Net-shaped 3D U-Net "
        "(`plan['unet3d']`), built by `vfnet.networks`. Forward time: one patch of each network's planned "
        f"size, batch 1, eval mode, CPU, {args.threads} torch thread(s), median of {args.repeats} after a "
        "warm-up. The paper reports the VFN at about 10% of a 3D network's parameters.\n\n"
        + "\n".join(lines)
        + "\n\nCommand: `python benchmarks/fusion_networks.py"
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "") + (" --no-time" if args.no_time else "") + "`"
    )
    path = write_results("fusion_networks", "VFN vs 3D U-Net: parameters and forward time", body,
                         {"threads": args.threads, "repeats": args.repeats, "rows": rows})
    print(f"written: {path}")


if __name__ == "__main__":
    main()
