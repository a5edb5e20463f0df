"""`cvzoo eval`: top-1/top-5 on a labelled set, resumable, with result.txt and summary.json.

Results are appended to results.jsonl per batch (flushed and fsynced); a killed run continues where it
stopped and ends with exactly the numbers an uninterrupted run gives, because the summary is always
computed from the file, in sample order.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .artifact import Artifact
from .datasets import Sample, load_samples
from .errors import CvzooError
from .postprocess import Prediction, result_txt_lines, writable_folder, write_text_atomic
from .predict import Predictor

RESULTS, RUN, SUMMARY, RESULT_TXT, LOCK = "results.jsonl", "run.json", "summary.json", "result.txt", ".lock"


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """One eval at a time per --out: a second one would interleave its lines with the first's. The OS drops the lock
    when its holder exits, killed or not, so a stale lock file never blocks a resume."""
    import fcntl
    with open(out / LOCK, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise CvzooError(f"{out}: another eval (pid {holder}) is writing its results here; wait for it to end, "
                             "or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def _read_results(path: Path, samples: int, classes: int) -> dict[int, dict]:
    """Lines already written. A torn last line (killed mid-write) is cut off the file; lines that are not results of
    this run (damaged or edited) are dropped from it with a warning, and their images are evaluated again."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    kept, bad = [], []
    for n, line in enumerate(raw[:good_end].split(b"\n")[:-1], 1):
        if line.strip():
            rec = _result(line, samples, classes)
            if rec is None:
                bad.append(n)
            else:
                done[rec["i"]] = rec
                kept.append(line.decode("utf-8") + "\n")
    if bad:
        logging.getLogger("cvzoo").warning(
            f"{path}: {len(bad)} line(s) are not results of this run (line {', '.join(map(str, bad[:5]))}"
            f"{' ...' if len(bad) > 5 else ''}); dropped, and their images are evaluated again")
        write_text_atomic(path, "".join(kept))
    elif good_end < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _result(line: bytes, samples: int, classes: int) -> Optional[dict]:
    """One results.jsonl line as written by `_record`, or None."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError
        return None
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
    if not (isinstance(rec, dict) and is_int(rec.get("i")) and 0 <= rec["i"] < samples
            and isinstance(rec.get("path"), str) and (rec.get("label") is None or is_int(rec["label"]))):
        return None
    if "error" in rec:
        return rec if isinstance(rec["error"], str) else None
    ids, probs = rec.get("ids"), rec.get("probs")
    ok = (isinstance(ids, list) and isinstance(probs, list) and len(ids) == len(probs) > 0
          and all(is_int(c) and 0 <= c < classes for c in ids)
          and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs))
    return rec if ok else None


def _run_identity(art: Artifact, engine: str, data: Path, labels: Optional[Path], samples: list[Sample],
                  topk: int) -> dict:
    # the engine too: a resumed run must not mix, say, OpenVINO bf16 answers with ONNX Runtime fp32 ones
    return {"artifact": art.manifest.files[art.manifest.model_file].sha256, "model": art.name,
            "precision": art.precision, "engine": engine, "data": str(Path(data).resolve()),
            "labels": str(labels) if labels else None, "samples": len(samples), "topk": topk}


def summarize(records: list[dict], class_names: list[str]) -> dict:
    ok = [r for r in records if "error" not in r]
    labelled = [r for r in ok if r["label"] is not None]
    n = len(labelled)
    top1 = sum(r["ids"][0] == r["label"] for r in labelled)
    top5 = sum(r["label"] in r["ids"][:5] for r in labelled)
    per_class: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    wrong: dict[int, Counter] = defaultdict(Counter)
    for r in labelled:
        per_class[r["label"]][0] += 1
        per_class[r["label"]][1] += r["ids"][0] == r["label"]
        if r["ids"][0] != r["label"]:
            wrong[r["label"]][r["ids"][0]] += 1
    classes = {class_names[c]: {"images": t, "top1": round(100.0 * k / t, 3)} for c, (t, k) in sorted(per_class.items())}
    worst = sorted(per_class.items(), key=lambda kv: (kv[1][1] / kv[1][0], kv[0]))[:10]
    return {
        "top1": round(100.0 * top1 / n, 4) if n else None,
        "top5": round(100.0 * top5 / n, 4) if n else None,
        "counts": {"samples": len(records), "evaluated": len(ok), "labelled": n, "skipped": len(records) - len(ok),
                   "top1_correct": top1, "top5_correct": top5},
        "skipped": [{"path": r["path"], "reason": r["error"]} for r in records if "error" in r],
        "per_class": classes,
        "worst_classes": [{"class": class_names[c], "top1": round(100.0 * k / t, 2), "images": t,
                           "most_confused_with": [[class_names[o], m] for o, m in wrong[c].most_common(3)]}
                          for c, (t, k) in worst],
    }


def evaluate(model: Union[str, Path], data: Union[str, Path], out: Union[str, Path], labels: Optional[Path] = None,
             batch: int = 32, workers: Optional[int] = None, limit: Optional[int] = None, topk: int = 5,
             engine: Optional[str] = None, threads: Optional[int] = None, weights: Optional[str] = None,
             fresh: bool = False, progress: bool = True, on_batch: Optional[Callable[[int], None]] = None,
             verify_hashes: bool = True, random_init: bool = False) -> dict:
    if batch < 1:
        raise CvzooError(f"--batch must be >= 1, got {batch}")
    if limit is not None and limit < 1:
        raise CvzooError(f"--limit must be >= 1, got {limit}")
    out = Path(out)
    writable_folder(out)
    predictor = Predictor(model, engine=engine, threads=threads, weights=weights, verify_hashes=verify_hashes,
                          random_init=random_init)
    art = predictor.artifact
    samples = load_samples(Path(data), art.synsets, Path(labels) if labels else None)
    if limit:
        samples = samples[:limit]
    identity = _run_identity(art, predictor.engine.name, Path(data), labels, samples, topk)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        return _run(predictor, samples, out, identity, batch, workers, topk, fresh, progress, on_batch)


def _run(predictor: Predictor, samples: list[Sample], out: Path, identity: dict, batch: int, workers: Optional[int],
         topk: int, fresh: bool, progress: bool, on_batch: Optional[Callable[[int], None]]) -> dict:
    art = predictor.artifact
    run_file, results_file = out / RUN, out / RESULTS
    if fresh:
        results_file.unlink(missing_ok=True)
    if run_file.exists() and results_file.exists():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise CvzooError(f"{run_file}: unreadable ({e}), so the results beside it cannot be resumed; use another "
                             "--out or --fresh") from None
        if not isinstance(previous, dict):
            previous = {}
        if previous != identity:
            changed = [k for k in identity if previous.get(k) != identity[k]]
            raise CvzooError(f"{out}: holds results of a different run ({', '.join(changed)} differ); "
                             f"use another --out or --fresh")
    write_text_atomic(run_file, json.dumps(identity, indent=2))
    done = _read_results(results_file, len(samples), len(art.class_names))
    todo = [(i, s) for i, s in enumerate(samples) if i not in done]

    from tqdm import tqdm
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), unit="img", disable=not progress,
               desc=f"eval {art.name} ({art.precision})", dynamic_ncols=True)
    t0, processed = time.perf_counter(), 0
    with open(results_file, "a", encoding="utf-8") as f:
        pending: list[str] = []
        preds = predictor.predict_paths([s.path for _, s in todo], topk=topk, batch=batch, workers=workers)
        for (i, sample), pred in zip(todo, preds):
            pending.append(json.dumps(_record(i, sample, pred), ensure_ascii=False))
            if len(pending) >= batch:
                _flush(f, pending)
                processed += len(pending)
                bar.update(len(pending))
                if on_batch:
                    on_batch(processed)
                pending = []
        if pending:
            _flush(f, pending)
            processed += len(pending)
            bar.update(len(pending))
    bar.close()
    seconds = time.perf_counter() - t0
    records = [r for _, r in sorted(_read_results(results_file, len(samples), len(art.class_names)).items())]
    summary = summarize(records, art.class_names)
    summary.update({
        "model": art.name, "precision": art.precision, "engine": predictor.engine.name, "artifact": str(art.folder),
        "artifact_sha256": identity["artifact"], "data": identity["data"],
        "throughput": {"images_this_session": processed, "seconds": round(seconds, 2),
                       "images_per_s": round(processed / seconds, 2) if processed and seconds > 0 else None,
                       "resumed_from": len(samples) - len(todo), "batch": batch,
                       "threads": getattr(predictor.engine, "threads", None)},
    })
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2, ensure_ascii=False))
    write_text_atomic(out / RESULT_TXT, "".join(
        line + "\n" for r in records if "error" not in r for line in result_txt_lines(_as_prediction(r, art.class_names))))
    return summary


def _record(i: int, sample: Sample, pred: Prediction) -> dict:
    if not pred.ok:
        return {"i": i, "path": str(sample.path), "label": sample.label, "error": pred.error}
    return {"i": i, "path": str(sample.path), "label": sample.label, "ids": pred.ids,
            "probs": [round(p, 8) for p in pred.probs]}


def _flush(f, lines: list[str]) -> None:
    f.write("".join(line + "\n" for line in lines))
    f.flush()
    os.fsync(f.fileno())


def _as_prediction(r: dict, names: list[str]) -> Prediction:
    return Prediction(path=r["path"], ids=r["ids"], probs=r["probs"], names=[names[i] for i in r["ids"]])


def eval_topk(result_txt: Path, synsets: Optional[list[str]] = None, names: Optional[list[str]] = None,
              source: str = "ImageNet-1k") -> dict:
    """The seeds' eval_topk: top-1/top-5 of a result.txt; the true class comes from each path's synset
    (its folder, or an n######## file-name prefix). `synsets` and `names` in the class order of the ids (`source`'s;
    ImageNet-1k by default): ids outside it, or class names that mostly disagree with it, are refused."""
    from .labels import load_label_set
    from .postprocess import parse_result_txt
    path = Path(result_txt)
    if not path.is_file():
        raise CvzooError(f"{path}: result file not found")
    try:
        parsed = parse_result_txt(path.read_text(encoding="utf-8").splitlines())
    except ValueError as e:
        raise CvzooError(f"{path}: {e}") from None
    if synsets is None:
        synsets, names = map(list, zip(*load_label_set("imagenet-1k")))
    _check_class_order(path, parsed, len(synsets), names, source)
    index = {s: i for i, s in enumerate(synsets)}
    top1 = top5 = n = unlabelled = 0
    for img, rows in parsed.items():
        p = Path(img)
        key = p.parent.name if p.parent.name in index else p.name.split("_")[0]
        if key not in index:
            unlabelled += 1
            continue
        ids = [i for _, i, _, _ in sorted(rows)]
        n += 1
        top1 += ids[0] == index[key]
        top5 += index[key] in ids[:5]
    if not n:
        raise CvzooError(f"{path}: no image path names a known synset (folder or file-name prefix)")
    return {"images": n, "unlabelled": unlabelled, "top1": round(100.0 * top1 / n, 4), "top5": round(100.0 * top5 / n, 4)}


def _check_class_order(path: Path, parsed: dict, classes: int, names: Optional[list[str]], source: str) -> None:
    """The ids index `source`'s classes: none outside them, and their names mostly the same (the first comma part,
    case aside: the seeds' result.txt may shorten a name), else the result comes from a model of other classes."""
    rows = [(img, i, name) for img, found in parsed.items() for _, i, _, name in found]
    for img, i, _ in rows:
        if not 0 <= i < classes:
            raise CvzooError(f"{path}: {img}: class id {i} is not one of the {classes} classes of {source}; pass "
                             "--model with the artifact or model name whose class order the ids use")
    if names:
        head = lambda text: text.split(",")[0].strip().lower()
        named = [(i, name) for _, i, name in rows if head(name)]  # a result.txt without names says nothing here
        differ = [(i, name) for i, name in named if head(name) != head(names[i])]
        if 2 * len(differ) > len(named):
            i, name = differ[0]
            raise CvzooError(f"{path}: its class names are not {source}'s at their ids (id {i}: '{name}' here, "
                             f"'{names[i]}' in {source}); pass --model with the artifact or model name whose class "
                             "order the ids use")
