"""Runs in the mmpretrain venv (tests/sources/requirements-mmpretrain.txt), never imports cvzoo.

usage: dump_mmpretrain.py OUT_DIR CARD=model-zoo-name ... [--images IMG ...]
For each model: mmpretrain.get_model (the model-zoo config) with random init, data-like BN statistics and
random BN affine, saved as a published mmcls checkpoint ({'meta', 'state_dict'}) in OUT_DIR/CARD.pth;
logits (head output) of a seeded input at the config's test crop in OUT_DIR/CARD.npz. With --images: the
config's own test pipeline (LoadImageFromFile, ResizeEdge, CenterCrop) of each image, uint8 HWC RGB, in
OUT_DIR/CARD-preprocess.npz.
"""
import sys
from pathlib import Path

import numpy as np
import torch
from mmengine.dataset import Compose
from mmpretrain import get_model
from mmpretrain.utils import register_all_modules


LOGIT_SCALE = 20.0  # max |logit| of a trained ImageNet net is of this order; a 1e-4 gate means something there


def randomize(model, size: int, seed: int) -> None:
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = 1.0  # running stats := this batch's stats
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size), mode="tensor")
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
            bn.momentum = 0.1
    model.eval()
    with torch.no_grad():  # residual stacks of random blocks give huge logits: scale the classifier
        peak = float(model(torch.randn(2, 3, size, size), mode="tensor").abs().max())
        model.head.fc.weight.mul_(LOGIT_SCALE / peak)
        model.head.fc.bias.mul_(LOGIT_SCALE / peak)


def main(argv):
    register_all_modules()
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    images = argv[argv.index("--images") + 1:] if "--images" in argv else []
    specs = argv[1:argv.index("--images")] if "--images" in argv else argv[1:]
    for i, spec in enumerate(specs):
        card, name = spec.split("=")
        model = get_model(name, pretrained=False)
        steps = [dict(s) for s in model._config.test_pipeline if s["type"] != "PackInputs"]
        size = next(s["crop_size"] for s in steps if s["type"] == "CenterCrop")
        randomize(model, size, seed=i)
        meta = {"mmpretrain_version": "1.2.0", "dataset_meta": {"classes": [f"c{k}" for k in range(1000)]}}
        torch.save({"meta": meta, "state_dict": model.state_dict()}, out / f"{card}.pth")
        x = np.random.default_rng(100 + i).standard_normal((2, 3, size, size)).astype("float32")
        with torch.no_grad():
            logits = model(torch.from_numpy(x), mode="tensor").numpy()
        np.savez(out / f"{card}.npz", input=x, logits=logits)
        print(card, name, size, float(np.abs(logits).max()), flush=True)
        if images:
            pipeline = Compose(steps)
            arrays = {Path(p).name: np.ascontiguousarray(pipeline({"img_path": str(p)})["img"][:, :, ::-1])
                      for p in images}  # mmcv decodes to BGR; the data preprocessor flips to RGB later
            np.savez(out / f"{card}-preprocess.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
