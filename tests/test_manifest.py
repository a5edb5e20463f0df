"""manifest.json is one typed record: written and read through cvzoo.manifest.Manifest; format 1 still loads."""
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from cvzoo.artifact import Artifact, write_manifest
from cvzoo.cli import main
from cvzoo.datasets import demo_images
from cvzoo.errors import CvzooError
from cvzoo.manifest import FORMAT_VERSION, Manifest, field_list

REFERENCE = Path(__file__).parent / "reference"


def _rewrite(folder: Path, change) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def _as_v1(m: dict) -> None:
    m.pop("digest")  # format 1 had none
    io = m.pop("io")
    m.update(format_version=1, inputs=io["inputs"], outputs=io["outputs"])


def test_a_format_1_artifact_loads_and_predicts_the_same(artifact_copy, capsys):
    predict = lambda jsonl: main(["predict", str(artifact_copy), str(demo_images()[0]), "--jsonl",
                                  str(artifact_copy.parent / jsonl)])
    before = predict("v2.jsonl")
    _rewrite(artifact_copy, _as_v1)
    art = Artifact.load(artifact_copy)
    assert art.manifest.format_version == FORMAT_VERSION and art.input_name == "input"
    assert art.manifest.io.inputs[0].shape == ["batch", 3, 224, 224]
    assert predict("v1.jsonl") == before == 0
    assert (artifact_copy.parent / "v1.jsonl").read_text() == (artifact_copy.parent / "v2.jsonl").read_text()


def test_real_format_1_manifests_of_every_kind_validate():
    """Written by cvzoo before the typed manifest (an export, an int8 build, an OpenVINO fp16 build)."""
    files = sorted(REFERENCE.glob("manifest_v1_*.json"))
    assert len(files) >= 2
    for f in files:
        m = Manifest.model_validate(json.loads(f.read_text()))
        assert m.io.inputs[0].name == "input" and m.files[m.model_file].bytes > 0
        if m.precision == "int8":
            assert m.build.quantization.form and m.build.guard.after.images > 0


@pytest.mark.parametrize("change, says", [
    (lambda m: m.update(precision="int4"), "precision"),
    (lambda m: m.pop("classes"), "classes"),
    (lambda m: m["io"]["inputs"][0].update(shape="224"), "io.inputs.0.shape"),
    (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer cvzoo"),
])
def test_an_invalid_manifest_is_one_line_naming_file_and_field(artifact_copy, capsys, change, says):
    _rewrite(artifact_copy, change)
    with pytest.raises(CvzooError, match=re.escape(str(artifact_copy / "manifest.json")) + ".*" + re.escape(says)):
        Artifact.load(artifact_copy)
    assert main(["predict", str(artifact_copy), str(demo_images()[0])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and says in err


def test_writing_goes_through_the_type(artifact_copy, tmp_path):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    out = tmp_path / "w"
    out.mkdir()
    (out / "model.onnx").write_bytes((artifact_copy / "model.onnx").read_bytes())
    with pytest.raises(ValidationError, match="weights"):  # neither a checkpoint nor a random-init note
        write_manifest(out, {**m, "weights": {}})
    with pytest.raises(ValidationError, match="engin_format"):  # a misspelt section fails where it is written
        write_manifest(out, {**m, "engin_format": "onnx"})
    assert not (out / "manifest.json").exists()
    written = write_manifest(out, m)
    assert set(written.files) == {"model.onnx"} and Artifact.load(out).manifest == written


def test_readme_lists_the_manifest_fields():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("manifest.json fields:"))
    assert re.findall(r"`(\w+)`", line) == field_list()
