"""Check and repair a model you were handed, in five lines of Python (README: "Check and repair a model ...").

    python scripts/repair_example.py --model suspicious.pt --net my_pkg.MyNet --clean clean_images/ --out repaired/

Without --model it first makes a stand-in: a tiny net trained with plain torch on the embedded digits with a 3x3
backdoor patch (20% of non-target images relabelled 1), and a folder of 300 clean digits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import mcrobust


def stand_in(folder: Path) -> tuple[Path, Path, Path]:
    """A backdoored checkpoint {'net': state_dict}, a clean image folder and a trigger YAML, for trying it out."""
    from PIL import Image

    from mcrobust.data.sources import load_split
    from mcrobust.threats.backdoor import poison
    from mcrobust.threats.triggers import PatchTrigger

    train = load_split("digits", "train")
    poisoned = poison(train.images, train.labels, PatchTrigger(), target=1, rate=0.2, seed=0)
    x = torch.from_numpy(poisoned.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(poisoned.labels)
    torch.manual_seed(0)
    net = mcrobust.create_net("tiny", width=16)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(20):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            optimizer.step()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"net": net.state_dict(), "note": "stand-in"}, folder / "suspicious.pt")
    for i, (image, label) in enumerate(zip(train.images[:300], train.labels[:300], strict=True)):
        (folder / "clean" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "clean" / str(label) / f"{i}.png")
    (folder / "trigger.yaml").write_text("trigger:\n  class_path: mcrobust.threats.triggers.PatchTrigger\ntarget: 1\n")
    return folder / "suspicious.pt", folder / "clean", folder / "trigger.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the suspicious checkpoint (default: make a stand-in)")
    parser.add_argument("--net", default="tiny", help="its architecture (registered name or class path)")
    parser.add_argument("--clean", help="clean images, one sub-folder per class")
    parser.add_argument("--trigger", help="optional trigger YAML, only for reporting ASR")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per stage")
    parser.add_argument("--out", default="lightning_logs/repair_example", help="output folder")
    args = parser.parse_args()
    model, clean, trigger = (args.model, args.clean, args.trigger)
    if model is None:
        model, clean, trigger = stand_in(Path(args.out) / "inputs")
    # the five lines
    before = mcrobust.evaluate(model, clean, net=args.net, trigger=trigger)
    result = mcrobust.repair(
        model,
        clean,
        net=args.net,
        trigger=trigger,
        epochs=args.epochs,
        epoch_samples=320,
        batch_size=32,
        path_lr=0.05,
        finetune_lr=0.05,
        out=args.out,
    )
    print(f"before: {before}\nrepaired at t = {result.t}: {result.record['metrics']}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    result.save(args.out)


if __name__ == "__main__":
    main()
