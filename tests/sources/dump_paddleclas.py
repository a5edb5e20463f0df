"""Runs in the PaddleClas venv (tests/sources/requirements-paddleclas.txt), never imports cvzoo.

usage: dump_paddleclas.py OUT_DIR CARD=PaddleClasName[@size] ... [--images IMG ...]
For each model: random init, data-like BN statistics, random BN affine (so a swapped or dropped tensor
shows in the logits), saved with paddle.save as OUT_DIR/CARD.pdparams; logits of a seeded input in
OUT_DIR/CARD.npz. With --images: PaddleClas' own eval preprocessing (cv2 decode, ResizeImage, CropImage)
of each image, uint8 HWC RGB, in OUT_DIR/preprocess-SHORT-SIZE.npz.
"""
import sys
from pathlib import Path

import numpy as np
import paddle
from paddleclas.deploy.python.preprocess import CropImage, DecodeImage, ResizeImage
from paddleclas.ppcls.arch.backbone.model_zoo import cspnet, dla


def build(name: str):
    module = cspnet if name.startswith("CSP") else dla
    return getattr(module, name)(class_num=1000)


LOGIT_SCALE = 20.0  # max |logit| of a trained ImageNet net is of this order; a 1e-4 gate means something there


def randomize(model, size: int, seed: int) -> None:
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    for bn in bns:
        bn._momentum = 0.0  # running stats := this batch's stats
    model.train()
    with paddle.no_grad():  # 64 px: data-like statistics at a tenth of the cost (Paddle's CPU kernels are slow)
        model(paddle.to_tensor(rng.standard_normal((4, 3, 64, 64)).astype("float32")))
    for bn in bns:
        bn.weight.set_value(rng.uniform(0.5, 1.5, bn.weight.shape).astype("float32"))
        bn.bias.set_value(rng.normal(0, 0.1, bn.bias.shape).astype("float32"))
    model.eval()
    with paddle.no_grad():  # residual stacks of random blocks reach logits in the thousands: scale the classifier
        peak = float(model(paddle.to_tensor(rng.standard_normal((2, 3, size, size)).astype("float32"))).abs().max())
        model.fc.weight.set_value(model.fc.weight.numpy() * (LOGIT_SCALE / peak))
        model.fc.bias.set_value(model.fc.bias.numpy() * (LOGIT_SCALE / peak))


def main(argv):
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    images = argv[argv.index("--images") + 1:] if "--images" in argv else []
    specs = argv[1:argv.index("--images")] if "--images" in argv else argv[1:]
    sizes = set()
    for i, spec in enumerate(specs):
        card, name = spec.split("=")
        name, _, size = name.partition("@")
        size = int(size or 224)
        sizes.add(size)
        model = build(name)
        randomize(model, size, seed=i)
        paddle.save(model.state_dict(), str(out / f"{card}.pdparams"))
        x = np.random.default_rng(100 + i).standard_normal((2, 3, size, size)).astype("float32")
        with paddle.no_grad():
            logits = model(paddle.to_tensor(x)).numpy()
        np.savez(out / f"{card}.npz", input=x, logits=logits)
        print(card, name, size, float(np.abs(logits).max()), flush=True)
    for short, size in ((256, 224), (288, 256)):  # the ppcls eval configs of DLA / CSPDarkNet53
        decode, resize, crop = DecodeImage(to_rgb=True), ResizeImage(resize_short=short), CropImage(size=size)
        arrays = {}
        for path in images:
            arrays[Path(path).name] = np.ascontiguousarray(crop(resize(decode(Path(path).read_bytes()))))
        if arrays:
            np.savez(out / f"preprocess-{short}-{size}.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1:])
