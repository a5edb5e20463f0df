"""What a newcomer meets at the command line: random weights are never silent, a missing extra is one line, and
tables survive pipes."""
import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest

from cvzoo.card import list_models
from cvzoo.datasets import demo_images


def _cvzoo(*argv, block=(), env=None):
    """The CLI in a fresh process, stdout a pipe (not a terminal); `block`: modules that fail to import there;
    `env`: variables set there."""
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in block) + \
        "from cvzoo.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_list_through_a_pipe_keeps_every_name_whole():
    names = [c.name for c in list_models()]
    plain = _cvzoo("list")
    assert plain.returncode == 0
    first_column = [line.split()[0] for line in plain.stdout.splitlines()[1:]]
    assert first_column == names  # one line per card, no name cut or wrapped
    rows = list(csv.DictReader(io.StringIO(_cvzoo("list", "--format", "csv").stdout)))
    assert [r["name"] for r in rows] == names and {"family", "arch", "input", "top1"} <= set(rows[0])
    data = json.loads(_cvzoo("list", "--family", "dla", "--format", "json").stdout)
    assert data and all(r["family"] == "dla" for r in data)
    bad = _cvzoo("list", "--format", "yaml")
    assert bad.returncode == 2 and "--format must be one of table, plain, csv, json" in bad.stderr


def test_demo_through_a_pipe(tmp_path):
    """README's first command: the shipped photos, each named after its class, predicted by the exported lite0; the
    output stays readable in a log (a rule once ran 100,000 columns wide there)."""
    run = _cvzoo("demo", "--out", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert max(len(line) for line in run.stdout.splitlines()) < 1000
    lines = (tmp_path / "out" / "result.txt").read_text().splitlines()
    photos = demo_images()
    assert len(lines) == 5 * len(photos)
    for photo in photos:
        top5 = [line.split("class name: ", 1)[1].lower() for line in lines if line.startswith(f"{photo}:")]
        assert len(top5) == 5 and any(photo.stem.replace("_", " ") in name for name in top5), (photo.name, top5)


def test_predictions_to_standard_output_are_all_it_prints(artifacts):
    """`--jsonl -` / `--out -`: the predictions alone on stdout, for a pipe (jq, grep); the summary goes to stderr."""
    art = artifacts("tf_efficientnet_lite0")
    photos = demo_images()[:2]
    run = _cvzoo("predict", art, *photos, "-k", "2", "--jsonl", "-")
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in photos] and all(len(r["topk"]) == 2 for r in rows)
    assert "2 images predicted, 0 skipped; wrote standard output" in " ".join(run.stderr.split())
    txt = _cvzoo("predict", art, photos[0], "-k", "1", "--out", "-")
    assert txt.stdout.splitlines() == [f"{photos[0]}: Relay top-0 id: {rows[0]['topk'][0]['id']}, prob: "
                                       f"{rows[0]['topk'][0]['prob']:.8f}, class name: {rows[0]['topk'][0]['name']}"]
    both = _cvzoo("predict", art, photos[0], "--out", "-", "--jsonl", "-")
    assert both.returncode == 2 and "--out and --jsonl cannot both be '-'" in both.stderr and not both.stdout


def test_random_weights_are_refused_unless_asked_for(artifacts):
    photo = demo_images()[0]
    name = _cvzoo("predict", "dla46_c", photo)
    assert name.returncode == 2 and name.stderr.count("error:") == 1
    assert "dla46_c: no weights given and the card has none; pass --weights PATH, or --random-init" in \
        " ".join(name.stderr.split())
    art = artifacts("dla46_c", weights=None)
    for argv in (["predict", art, photo], ["eval", art, photo.parent, "-o", art.parent / "never"]):
        run = _cvzoo(*argv)
        assert run.returncode == 2 and "exported without weights (random init)" in " ".join(run.stderr.split())
    ok = _cvzoo("predict", art, photo, "--random-init", "-q")
    assert ok.returncode == 0 and "1 images predicted" in ok.stdout


def test_a_missing_extra_is_one_line_naming_it(artifacts, tmp_path):
    """A deploy-only install (no torch): exporting says what to install; a built artifact still runs, and so does a
    model name whose verified export is in the cache."""
    for argv in (["export", "dla34"], ["predict", "tf_efficientnet_lite0", demo_images()[0]]):
        run = _cvzoo(*argv, block=("torch", "timm"), env={"CVZOO_CACHE": str(tmp_path / "empty")})
        err = " ".join(run.stderr.split())
        assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("error:") == 1, err
        assert "needs torch, which is not installed: pip install 'cvzoo[models]'" in err
        assert "a built artifact runs without it" in err
    artifacts("tf_efficientnet_lite0")  # exported into the session's cache, which the CLI is given
    cached = _cvzoo("predict", "tf_efficientnet_lite0", demo_images()[0], "-q", block=("torch", "timm"))
    assert cached.returncode == 0 and "1 images predicted" in cached.stdout, cached.stderr
    run = _cvzoo("serve", "tf_efficientnet_lite0", block=("fastapi",))
    err = " ".join(run.stderr.split())
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("error:") == 1, err
    assert "needs fastapi, which is not installed: pip install 'cvzoo[serve]'" in err


def test_serve_on_ray_without_ray_is_one_line(artifacts):
    run = _cvzoo("serve", artifacts("tf_efficientnet_lite0"), "--ray", "local", block=("ray",))
    err = " ".join(run.stderr.split())
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("error:") == 1, err
    assert "--ray needs Ray Serve: pip install 'cvzoo[ray]'" in err


def test_a_file_name_with_brackets_is_named_as_it_is(artifacts, tmp_path):
    """Lines that name a file print it literally: rich would take '[b]' in a path for markup and drop it."""
    bad = tmp_path / "[b]" / "photo[i].jpg"
    bad.parent.mkdir()
    bad.write_text("not an image")
    run = _cvzoo("predict", artifacts("tf_efficientnet_lite0"), bad, "-q")
    assert run.returncode == 3 and f"error: {bad}: not an image" in " ".join(run.stderr.split()), run.stderr


def _fill(words: list[str], names: dict[str, str]) -> list[str]:
    """Each word's leading placeholder (IMAGE, DIR/x.json, FILE:) replaced by its path."""
    def one(word: str) -> str:
        head = re.match(r"[A-Z]+", word)
        return names[head[0]] + word[head.end():] if head and head[0] in names else word
    return [one(w) for w in words]


@pytest.mark.parametrize("argv, line", [
    (["export", "tf_efficientnet_lite0", "--size", "-5"], "--size must be >= 32, got -5"),  # was PIL's ValueError
    (["predict", "no-such-model", "IMAGE", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["predict", "no-such-model", "IMAGE", "--engine", "tensorrt"], "unknown engine 'tensorrt'"),
    (["eval", "no-such-model", "DEMO", "--limit", "-1"], "--limit must be >= 1, got -1"),  # dropped the last image
    (["bench", "no-such-model", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["serve", "no-such-model", "--port", "99999"], "--port must be 0-65535, got 99999"),  # was an OverflowError
])
def test_a_value_out_of_range_is_one_line_before_the_model_is_looked_up(argv, line, capsys):
    """The unknown model is never reached (nor a zoo name's export): the option is named first."""
    from cvzoo.cli import main
    photo = sorted(demo_images())[0]
    assert main(_fill(argv, {"IMAGE": str(photo), "DEMO": str(photo.parent)})) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: {line}") and err.count("error:") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("argv, says", [
    (["predict", "no-such-model", "IMAGE", "--out", "DIR"], "DIR: is a folder, not a file to write"),
    (["predict", "no-such-model", "IMAGE", "--jsonl", "FILE/p.jsonl"], "FILE/p.jsonl: FILE is a file"),
    (["eval", "no-such-model", "DEMO", "--out", "FILE/eval"], "FILE/eval: FILE is a file"),
    (["bench", "no-such-model", "--json", "FILE/b.json"], "FILE/b.json: FILE is a file"),
    (["bench", "no-such-model", "--csv", "DIR"], "DIR: is a folder, not a file to write"),
    (["build", "tf_efficientnet_lite0", "--workspace", "FILE"], "FILE: is a file, not a folder to write in"),
    (["export", "tf_efficientnet_lite0", "--out", "FILE/art"], "FILE/art: FILE is a file"),
    (["image2npz", "DEMO", "FILE/npz"], "FILE/npz: FILE is a file"),
    (["sweep", "--models", "tf_efficientnet_lite0", "--dtypes", "fp32", "--data", "DEMO", "--out", "FILE"],
     "FILE: is a file, not a folder to write in"),
])
def test_an_output_that_cannot_be_written_is_one_line_before_the_work(argv, says, tmp_path, capsys):
    """Refused before any model is looked up, built or run (those were tracebacks at the end, the work lost), and
    nothing is made on the way."""
    from cvzoo.cli import main
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    photo = sorted(demo_images())[0]
    names = {"IMAGE": str(photo), "DEMO": str(photo.parent), "DIR": str(tmp_path), "FILE": str(blocker)}
    assert main(_fill(argv, names)) == 2
    err = " ".join(capsys.readouterr().err.split())
    says = " ".join(_fill(says.split(" "), names))
    assert err.startswith(f"error: {says}") and err.count("error:") == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [blocker]
