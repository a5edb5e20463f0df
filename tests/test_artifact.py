"""An artifact is verified on every load: a changed or missing file, or an edited manifest, is refused by predict /
eval / bench in one line naming it; --no-verify runs it anyway and says so."""
import json

import pytest

from cvzoo.artifact import Artifact
from cvzoo.manifest import content_digest
from cvzoo.cli import main
from cvzoo.errors import CvzooError
from cvzoo.datasets import demo_images


def _flip(path, at=0.5):
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())


@pytest.mark.parametrize("victim", ["model.onnx", "vdsp_params.json"])
def test_a_flipped_bit_in_any_listed_file_is_refused_by_every_command(artifact_copy, tmp_path, capsys, victim):
    _flip(artifact_copy / victim)
    photo = demo_images()[0]
    for argv in (["predict", artifact_copy, photo, "-q"],
                 ["eval", artifact_copy, photo.parent, "-o", tmp_path / "e", "-q"],
                 ["bench", artifact_copy, "--iterations", 2, "--warmup", 0]):
        code, _, err = _run(capsys, *argv)
        assert code == 2, (argv[0], err)
        assert err.count("error:") == 1 and f"{artifact_copy / victim}: sha256 differs from the manifest" in err, err
    assert not (tmp_path / "e" / "results.jsonl").exists()


def test_no_verify_runs_a_modified_artifact_and_says_so(artifact_copy, capsys):
    _flip(artifact_copy / "vdsp_params.json", at=0.0)  # '{' -> 'z': the engine never reads it, so the run can go on
    code, out, err = _run(capsys, "predict", artifact_copy, demo_images()[0], "--no-verify", "-q")
    assert code == 0 and "1 images predicted" in out
    assert "--no-verify: the artifact's files are not checked" in err


def test_missing_or_unlisted_files_are_refused(artifact_copy):
    (artifact_copy / "vdsp_params.json").unlink()
    with pytest.raises(CvzooError, match="vdsp_params.json: listed in the manifest but missing"):
        Artifact.load(artifact_copy)
    m = json.loads((artifact_copy / "manifest.json").read_text())
    del m["files"]["model.onnx"]
    m["digest"] = content_digest(m)  # a manifest written that way, not edited since
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CvzooError, match="lists no sha256 for model.onnx"):
        Artifact.load(artifact_copy)
    assert Artifact.load(artifact_copy, verify_hashes=False).name == "tf_efficientnet_lite0"


def test_an_edited_manifest_is_refused_and_a_reindented_one_is_not(artifact_copy, capsys):
    path = artifact_copy / "manifest.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps(m, indent=4, sort_keys=True))  # the same content, laid out differently
    assert Artifact.load(artifact_copy).manifest.digest == m["digest"]
    m["preprocessing"]["input_size"] = 256  # still a valid manifest; no longer the one that was built
    path.write_text(json.dumps(m))
    with pytest.raises(CvzooError, match="manifest.json: modified since it was written"):
        Artifact.load(artifact_copy)
    code, _, err = _run(capsys, "predict", artifact_copy, demo_images()[0], "-q")
    assert code == 2 and err.count("error:") == 1 and "modified since it was written" in err, err
    code, _, err = _run(capsys, "predict", artifact_copy, demo_images()[0], "-q", "--no-verify")  # was a traceback
    assert code == 2 and err.count("error:") == 1 and "input of shape [1, 3, 256, 256] does not fit" in err, err
    m["preprocessing"]["input_size"] = 224
    m["files"]["../model.onnx"] = m["files"]["model.onnx"]  # a file beside the artifact, not in it
    m["digest"] = content_digest(m)
    path.write_text(json.dumps(m))
    with pytest.raises(CvzooError, match="lists '../model.onnx', which is not a file of this folder"):
        Artifact.load(artifact_copy)


def test_artifacts_and_results_are_readable_like_any_file_this_user_writes(tmp_path):
    """Written through a private temporary (tempfile: 0700 folders, 0600 files) and renamed into place, they kept
    those modes: an artifact built by one user, or in a container, could not be read by the service that runs it."""
    import os
    import stat

    from cvzoo.artifact import atomic_dir
    from cvzoo.postprocess import write_text_atomic
    mask = os.umask(0)
    os.umask(mask)
    with atomic_dir(tmp_path / "art") as d:
        (d / "model.onnx").write_bytes(b"x")
    write_text_atomic(tmp_path / "summary.json", "{}")
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o666 & ~mask
