"""Issue 5: eval reproduces fp32 accuracy, resumes after SIGKILL, eval-topk agrees, data tools."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cvzoo.datatools import image2npz, valprep
from cvzoo.evaluate import eval_topk, evaluate
from tests.conftest import IMAGENET_SAMPLE, IMAGENETTE_VAL, README_TOP1, imagenet_sample_files, need, top1_of

@pytest.mark.shared
@pytest.mark.parametrize("name", ["ese_vovnet19b_dw-imagenette", "efficientnetv2_rw_t-imagenette"])
def test_eval_fixture_reproduces_fp32(name, artifacts, fp32_predictions, tmp_path):
    """Image for image predict's top-1, which test_predict holds to PyTorch's. Two fixtures (the two preprocessing
    kinds, 224 px crop and 288 px uncropped)."""
    s = evaluate(artifacts(name), need(IMAGENETTE_VAL), tmp_path, progress=False)
    assert s["counts"]["labelled"] == 1000 and s["counts"]["skipped"] == 0
    records = sorted((json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()),
                     key=lambda r: r["i"])
    assert [r["ids"][0] for r in records] == [p["ids"][0] for p in fp32_predictions(name)]
    assert s["top1"] == pytest.approx(100.0 * sum(r["ids"][0] == r["label"] for r in records) / 1000)
    assert s["top1"] >= README_TOP1[name] - 5
    assert len(s["per_class"]) == 10 and s["worst_classes"][0]["top1"] <= s["top1"]
    # eval-topk on our own result.txt gives eval's numbers
    from cvzoo.artifact import Artifact
    r = eval_topk(tmp_path / "result.txt", Artifact.load(artifacts(name)).synsets)
    assert (r["top1"], r["top5"], r["images"]) == (s["top1"], s["top5"], 1000)


@pytest.mark.shared
def test_eval_lite0_imagenet_sample(artifacts, fp32_predictions, tmp_path):
    """A flat folder of n01440764_tench.JPEG-style names: the synset prefix is the label (the first 200 of the 1000,
    in name order: 200 classes; the accuracy on all of them is test_predict's)."""
    s = evaluate(artifacts("tf_efficientnet_lite0"), need(IMAGENET_SAMPLE), tmp_path, progress=False, limit=200)
    files = imagenet_sample_files()[:200]
    ids = [p["ids"][0] for p in fp32_predictions("tf_efficientnet_lite0")[:200]]
    assert s["counts"]["labelled"] == 200 and s["top1"] == pytest.approx(top1_of(ids, files))
    r = eval_topk(tmp_path / "result.txt")
    assert (r["images"], r["top1"], r["top5"]) == (200, s["top1"], s["top5"])


RESUMED = 300  # images of the interrupted eval: the first 300 of Imagenette val (resuming is the same at any count)


def _eval_cmd(art, data, out):
    return [sys.executable, "-m", "cvzoo", "eval", str(art), str(data), "-o", str(out), "--batch", "8", "-q",
            "--limit", str(RESUMED)]


@pytest.mark.shared
def test_one_eval_per_folder_and_sigkill_resume_gives_identical_summary(artifacts, tmp_path):
    art = artifacts("dla34-imagenette")
    data = need(IMAGENETTE_VAL)
    full = tmp_path / "full"
    subprocess.run(_eval_cmd(art, data, full), check=True, capture_output=True)
    part = tmp_path / "part"
    proc = subprocess.Popen(_eval_cmd(art, data, part), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = part / "results.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 100:
            break
        time.sleep(0.05)
    # a second eval on the same folder while the first holds it (stopped, so it cannot finish meanwhile): exit 2,
    # naming the holder, and nothing of the first run's touched
    os.kill(proc.pid, signal.SIGSTOP)
    before = results.read_bytes()
    second = subprocess.run(_eval_cmd(art, data, part), capture_output=True, text=True)
    assert second.returncode == 2 and f"another eval (pid {proc.pid})" in " ".join(second.stderr.split())
    assert "Traceback" not in second.stderr and results.read_bytes() == before
    os.kill(proc.pid, signal.SIGKILL)  # then killed mid-run: the resume below must still give the full run's numbers
    proc.wait()
    n_killed = results.read_text().count("\n")
    assert 100 <= n_killed < RESUMED, n_killed
    with open(results, "a") as f:  # as if killed in the middle of a write
        f.write('{"i": 99999, "path": "torn')
    subprocess.run(_eval_cmd(art, data, part), check=True, capture_output=True)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    for s in (a, b):
        s.pop("throughput")
    assert a == b
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(r["i"] for r in lines) == list(range(RESUMED))  # no duplicate, none missing
    assert (full / "result.txt").read_text() == (part / "result.txt").read_text()


def test_resume_refuses_another_run(artifacts, tmp_path):
    from cvzoo.errors import CvzooError
    from cvzoo.datasets import demo_images
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in demo_images()[:3]:
        shutil.copy(p, imgs / p.name)
    evaluate(artifacts("tf_efficientnet_lite0"), imgs, tmp_path / "o", progress=False)
    with pytest.raises(CvzooError, match="holds results of a different run"):
        evaluate(artifacts("tf_efficientnet_lite0"), imgs, tmp_path / "o", progress=False, limit=2)
    pytest.importorskip("openvino")
    with pytest.raises(CvzooError, match=r"different run \(engine differ"):  # same artifact, another engine
        evaluate(artifacts("tf_efficientnet_lite0"), imgs, tmp_path / "o", progress=False, engine="openvino")


def test_damaged_result_lines_are_evaluated_again_and_an_unreadable_run_file_refused(artifacts, tmp_path, caplog):
    from cvzoo.errors import CvzooError
    from cvzoo.datasets import demo_images
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in demo_images()[:4]:
        shutil.copy(p, imgs / p.name)
    art, out = artifacts("tf_efficientnet_lite0"), tmp_path / "o"
    first = evaluate(art, imgs, out, progress=False)
    results = out / "results.jsonl"
    lines = results.read_text().splitlines()
    lines[1] = "garbage{"
    lines[2] = lines[2].replace('"ids": [', '"ids": [5000, ', 1).replace('"probs": [', '"probs": [0.5, ', 1)
    results.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")  # and a line that is not UTF-8
    again = evaluate(art, imgs, out, progress=False)  # was a JSONDecodeError traceback
    assert "3 line(s) are not results of this run (line 2, 3, 5)" in caplog.text
    assert again["throughput"]["images_this_session"] == 2
    for s in (first, again):
        s.pop("throughput")
    assert again == first
    assert sorted(json.loads(x)["i"] for x in results.read_text().splitlines()) == [0, 1, 2, 3]
    (out / "run.json").write_text("zz")
    with pytest.raises(CvzooError, match="run.json: unreadable .* use another --out or --fresh"):
        evaluate(art, imgs, out, progress=False)


def test_bad_images_are_listed_not_dropped(artifacts, tmp_path):
    from cvzoo.datasets import demo_images
    d = tmp_path / "n01440764"
    d.mkdir()
    shutil.copy(demo_images()[0], d / "a.JPEG")
    (d / "b.JPEG").write_text("not an image")
    s = evaluate(artifacts("tf_efficientnet_lite0"), tmp_path, tmp_path / "o", progress=False)
    assert s["counts"] == {**s["counts"], "samples": 2, "evaluated": 1, "skipped": 1}
    assert "b.JPEG" in s["skipped"][0]["path"] and "not an image" in s["skipped"][0]["reason"]


@pytest.mark.shared
def test_valprep_builds_synset_folders_idempotently(tmp_path, artifacts):
    src = sorted(need(IMAGENET_SAMPLE).glob("*.JPEG"))[:30]
    flat = tmp_path / "val"
    flat.mkdir()
    rows = ["ImageId,PredictionString"]
    gt = []
    from cvzoo.labels import load_label_set
    synsets = [s for s, _ in load_label_set("imagenet-1k")]
    for k, f in enumerate(src, 1):
        name = f"ILSVRC2012_val_{k:08d}"
        shutil.copy(f, flat / f"{name}.JPEG")
        syn = f.name.split("_")[0]
        rows.append(f"{name},{syn} 1 2 3 4")
        gt.append(str(synsets.index(syn) + 1))  # 1-based indices, one per line
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "gt.txt").write_text("\n".join(gt) + "\n")
    r = valprep(flat, tmp_path / "LOC_val_solution.csv", tmp_path / "sorted", mode="copy")
    assert r["placed"] == 30 and r["classes"] == 30
    for f in src:
        syn = f.name.split("_")[0]
        assert len(list((tmp_path / "sorted" / syn).glob("ILSVRC2012_val_*.JPEG"))) == 1
    snapshot = sorted(str(p) for p in (tmp_path / "sorted").rglob("*"))
    r2 = valprep(flat, tmp_path / "LOC_val_solution.csv", tmp_path / "sorted", mode="copy")
    assert r2["placed"] == 0 and sorted(str(p) for p in (tmp_path / "sorted").rglob("*")) == snapshot
    # in place, by move, with a plain index-per-line ground truth; then a second run changes nothing
    r3 = valprep(flat, tmp_path / "gt.txt", mode="move")
    assert r3["placed"] == 30 and not list(flat.glob("*.JPEG"))
    assert valprep(flat, tmp_path / "gt.txt", mode="move")["placed"] == 0
    s = evaluate(artifacts("tf_efficientnet_lite0"), flat, tmp_path / "ev", progress=False)
    assert s["counts"]["labelled"] == 30 and s["top1"] >= 70


@pytest.mark.shared
def test_image2npz_datalist_evaluates_the_same(tmp_path, artifacts):
    art = artifacts("dla34-imagenette")
    src = tmp_path / "src"
    for syn in sorted(p.name for p in need(IMAGENETTE_VAL).iterdir())[:3]:
        (src / syn).mkdir(parents=True)
        for f in sorted((IMAGENETTE_VAL / syn).glob("*.JPEG"))[:5]:
            shutil.copy(f, src / syn / f.name)
    r = image2npz(src, tmp_path / "npz", tmp_path / "datalist.txt")
    assert r["written"] == 15
    a = evaluate(art, src, tmp_path / "a", progress=False)
    b = evaluate(art, tmp_path / "datalist.txt", tmp_path / "b", progress=False)
    ids_a = [json.loads(x)["ids"] for x in (tmp_path / "a" / "results.jsonl").read_text().splitlines()]
    ids_b = [json.loads(x)["ids"] for x in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    assert ids_a == ids_b and b["counts"]["labelled"] == 15 and b["top1"] == a["top1"]


def test_ground_truth_and_datalist_files_that_are_not_utf8_are_one_line(tmp_path):
    from cvzoo.datasets import demo_images, load_samples
    from cvzoo.errors import CvzooError
    shutil.copy(demo_images()[0], tmp_path / "a.jpg")
    (tmp_path / "truth.txt").write_bytes(b"a.jpg \xff\n")
    (tmp_path / "list.txt").write_bytes(b"a.npz n01440764\n\xff\n")
    with pytest.raises(CvzooError, match="truth.txt: not UTF-8 text \\(byte 6\\), so not a ground-truth file"):
        load_samples(tmp_path, ["n01440764"], tmp_path / "truth.txt")
    with pytest.raises(CvzooError, match="list.txt: not UTF-8 text \\(byte 16\\), so not a datalist"):
        load_samples(tmp_path / "list.txt", ["n01440764"])


@pytest.mark.parametrize("name, content, says", [
    ("truth.txt", "1\nhi\n", "line 2: expected one 1-based class index 1..10, got 'hi'"),  # these were tracebacks
    ("truth.txt", "1\n11\n", "line 2: expected one 1-based class index 1..10, got '11'"),
    ("truth.txt", "a.jpg 0\nb.jpg\n", "line 2: expected 'FILE INDEX' with a 0-based class index 0..9, got 'b.jpg'"),
    ("truth.txt", "a.jpg 0\nb.jpg x\n", "line 2: expected 'FILE INDEX' with a 0-based class index 0..9"),
    ("truth.txt", "a.jpg 0\nb.jpg 10\n", "line 2: expected 'FILE INDEX' with a 0-based class index 0..9"),  # was taken
    ("truth.csv", "ImageId,Label\na,n00000001\n",
     "a LOC_val_solution.csv needs the columns ImageId and PredictionString"),
    ("truth.csv", "ImageId,PredictionString\na,\n", "line 2: synset (none) is not in the model's label set"),
])
def test_a_bad_ground_truth_file_is_one_line_naming_its_line(tmp_path, name, content, says):
    from cvzoo.datasets import demo_images, load_samples
    from cvzoo.errors import CvzooError
    for stem, photo in zip("ab", demo_images()):
        shutil.copy(photo, tmp_path / f"{stem}.jpg")
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / name).write_text(content)
    with pytest.raises(CvzooError, match=re.escape(f"{tmp_path / 'gt' / name}: {says}")):
        load_samples(tmp_path, [f"n{i:08d}" for i in range(10)], tmp_path / "gt" / name)


def test_a_datalist_tag_of_non_ascii_digits_is_no_class_index(tmp_path):
    from cvzoo.datasets import load_samples
    (tmp_path / "list.txt").write_text("a.npz n01440764\nb.npz 3\nc.npz \u00b2\n", encoding="utf-8")
    samples = load_samples(tmp_path / "list.txt", ["n01440764", "n02102040"])
    assert [s.label for s in samples] == [0, 3, None]  # '²' passes str.isdigit, and int() refused it


def test_eval_topk_refuses_ids_in_another_class_order(tmp_path):
    from cvzoo.errors import CvzooError

    def result(*rows):
        path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.txt"
        path.write_text("".join(f"val/n01440764/n01440764_1.JPEG: Relay top-{rank} id: {i}, prob: 0.5, class name: "
                                f"{name}\n" for rank, (i, name) in enumerate(rows)))
        return path
    assert eval_topk(result((0, "tench"), (1, "goldfish")))["top1"] == 100.0  # ImageNet-1k's names, shortened
    assert eval_topk(result((0, ""), (1, "")))["top5"] == 100.0  # no names: nothing to compare
    # an Imagenette model's result.txt, which was scored as if its ids were ImageNet-1k's
    with pytest.raises(CvzooError, match="class names are not ImageNet-1k's at their ids \\(id 1: 'English springer'"):
        eval_topk(result((0, "tench"), (1, "English springer"), (9, "parachute")))
    with pytest.raises(CvzooError, match="class id 1000 is not one of the 1000 classes of ImageNet-1k"):
        eval_topk(result((0, "tench"), (1000, "x")))
    from cvzoo.cli import main
    imagenette = result((0, "tench"), (1, "English springer"), (9, "parachute"))
    assert main(["eval-topk", str(imagenette), "--model", "ese_vovnet19b_dw-imagenette"]) == 0  # its class order
