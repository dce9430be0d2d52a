"""Background inference of the Slicer module, headless: command line, progress lines,
temporary files, cancel, and the real runner on a tiny model."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "CalibSeg"))

from CalibSegSlicer import process as proc  # noqa: E402


def test_progress_lines_round_trip():
    line = proc.progressLine(0.4567, "sliding window 3/8")
    assert proc.parseLine(line + "\n") == ("progress", 0.4567, "sliding window 3/8")
    assert proc.parseLine(proc.progressLine(7.0)) == ("progress", 1.0, "")
    assert proc.parseLine(proc.progressLine(-1, "x")) == ("progress", 0.0, "x")
    assert proc.parseLine("CALIBSEG-PROGRESS nan-ish oops") == (
        "log", "CALIBSEG-PROGRESS nan-ish oops")
    assert proc.parseLine("CALIBSEG-ERROR Model folder x is missing.") == (
        "error", "Model folder x is missing.")
    assert proc.parseLine("CALIBSEG-DONE /tmp/p.npz") == ("done", "/tmp/p.npz")
    assert proc.parseLine("Some warning from torch\r\n") == ("log", "Some warning from torch")


def test_command_line_is_a_list_with_every_argument():
    cmd = proc.buildCommand("/tmp/in put.nrrd", "/models/my model", "/tmp/out.npz", "cuda",
                            python="/opt/Slicer/bin/PythonSlicer")
    assert cmd[0] == "/opt/Slicer/bin/PythonSlicer"
    assert cmd[1].endswith(os.path.join("CalibSegSlicer", "runner.py")) and os.path.isfile(cmd[1])
    assert cmd[2:] == ["--input", "/tmp/in put.nrrd", "--model", "/models/my model",
                       "--output", "/tmp/out.npz", "--device", "cuda", "--form", "auto"]
    assert proc.buildCommand("i", "m", "o", form="compact")[-2:] == ["--form", "compact"]
    env = proc.runnerEnvironment({"PYTHONPATH": "/elsewhere"})
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[-1] == "/elsewhere"
    assert any(os.path.isdir(os.path.join(p, "CalibSegLib")) for p in parts)


def _fake(tmp_path, body: str) -> list[str]:
    script = tmp_path / "fake_runner.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_job_reports_progress_and_finishes(tmp_path):
    out = tmp_path / "never-used"
    job = proc.InferenceJob("model", command=None)
    fake = _fake(tmp_path, f"""
        import sys
        for i in range(5):
            print("CALIBSEG-PROGRESS", i / 4, "step", i, flush=True)
        print("a log line", flush=True)
        open({job.outputPath!r}, "w").write("x")
        print("CALIBSEG-DONE", {job.outputPath!r}, flush=True)
    """)
    job._command = fake
    job.start()
    seen = []
    deadline = time.monotonic() + 30
    while job.state == "running" and time.monotonic() < deadline:
        seen += job.poll()
        time.sleep(0.02)
    assert job.state == "finished", job.error
    assert job.fraction == 1.0
    fractions = [e[1] for e in seen if e[0] == "progress"]
    assert fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert "a log line" in job.log
    assert os.path.isdir(job.tempDir)
    job.cleanup()
    assert not os.path.exists(job.tempDir)
    assert not out.exists()


def test_job_failure_carries_the_error_message(tmp_path):
    job = proc.InferenceJob("model")
    job._command = _fake(tmp_path, """
        import sys
        print("CALIBSEG-ERROR Reference and volume differ: resample first.", flush=True)
        sys.exit(2)
    """)
    job.start()
    assert job.wait(30) == "failed"
    assert job.error == "Reference and volume differ: resample first."
    job.cleanup()
    crash = proc.InferenceJob("model")
    crash._command = _fake(tmp_path, """
        raise RuntimeError("boom")
    """)
    crash.start()
    assert crash.wait(30) == "failed"
    assert "code 1" in crash.error and "RuntimeError: boom" in crash.error
    crash.cleanup()


@pytest.mark.skipif(os.name == "nt", reason="process groups")
def test_cancel_kills_the_process_tree_and_removes_files(tmp_path):
    pidfile = tmp_path / "child.pid"
    job = proc.InferenceJob("model")
    job.writeInput(np.zeros((4, 5, 6), np.float32), np.eye(4))
    assert os.path.isfile(job.inputPath)
    job._command = _fake(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("CALIBSEG-PROGRESS 0.1 started", flush=True)
        time.sleep(60)
    """)
    job.start()
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 10
    assert job.state == "cancelled"
    assert job.process.poll() is not None
    assert not os.path.exists(job.tempDir)
    # The grandchild is gone too (reaped by init, or a zombie at most).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as fh:
                if fh.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild still running after cancel")


def test_full_prediction_file_of_earlier_versions_is_still_read(tmp_path):
    """The layout the inference process wrote before the top-k form (kept by the library)."""
    from doubles import write_earlier_prediction_file
    from logic_support import models_and_predictions

    from CalibSegLib.inference.prediction_io import load_prediction

    (_, pred), _ = models_and_predictions()
    path = str(tmp_path / "old.npz")
    write_earlier_prediction_file(path, pred)
    back = load_prediction(path)
    for name in ("logits", "labels", "confidence", "entropy", "probs", "similarity",
                 "nearest_prototype", "prototype_class", "prototype_weights", "affine"):
        np.testing.assert_array_equal(getattr(back, name), getattr(pred, name), err_msg=name)
    assert back.class_names == pred.class_names and back.temperature == pred.temperature


def _crop():
    from logic_support import case4

    case = case4()
    image = np.ascontiguousarray(case.image[8:40, 16:48, 12:44])  # 32^3 keeps it quick
    affine = case.affine.copy()
    affine[:3, 3] = (case.affine @ np.array([12, 16, 8, 1.0]))[:3]
    return image, affine


def _run(job, image, affine):
    job.writeInput(image, affine)
    job.start()
    events = []
    deadline = time.monotonic() + 120
    while job.state == "running" and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.05)
    assert job.state == "finished", job.error + "\n" + "\n".join(job.log)
    return events


def test_real_runner_matches_in_process_inference(tmp_path, capsys):
    from logic_support import model_folders

    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model

    image, affine = _crop()
    folder = model_folders()[1]
    job = proc.InferenceJob(folder, "cpu", form="full")
    events = _run(job, image, affine)
    assert any(e[0] == "done" for e in events)
    assert len([e for e in events if e[0] == "progress"]) >= 3
    back = job.result()
    expected = predict(image, affine, load_model(folder), device="cpu", form="full")
    assert not back.is_compact
    np.testing.assert_allclose(back.logits, expected.logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    job.cleanup()
    assert not os.path.exists(job.tempDir)


def _owns_no_memory(array) -> bool:
    """Whether ``array`` is a view of a memory map (no copy in this process's heap)."""
    import mmap

    base = array
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        if base.base is None:
            return False
        base = base.base
    return isinstance(base, (np.memmap, mmap.mmap))


def test_compact_hand_over_is_memory_mapped_and_read_back_equal(tmp_path):
    """The runner writes the top-k form (no per-class float32 member); Slicer maps it."""
    import zipfile

    from logic_support import model_folders

    from CalibSegLib.inference import predict
    from CalibSegLib.models import load_model

    image, affine = _crop()
    folder = model_folders()[1]  # linear head: the compact form applies
    job = proc.ProcessRunner(form="compact").inference(folder, "cpu")
    _run(job, image, affine)
    voxels = image.size
    with zipfile.ZipFile(job.outputPath) as archive:
        sizes = {i.filename: i.file_size for i in archive.infolist()}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
    per_voxel = {name: size / voxels for name, size in sizes.items() if size > voxels}
    # top-k arrays (at most 16 bytes per voxel in all) and the two float32 maps, no C-fold array
    assert set(per_voxel) == {"indices.npy", "gaps.npy", "confidence.npy", "entropy.npy"}
    assert sum(per_voxel[n] for n in ("indices.npy", "gaps.npy")) <= 16 + 1e-3
    back = job.result()
    assert back.is_compact and back.logits is None and back.probs is None
    for array in (back.scores.indices, back.scores.gaps, back.confidence, back.entropy,
                  back.labels):
        assert _owns_no_memory(array) and not array.flags.writeable
    expected = predict(image, affine, load_model(folder), device="cpu", form="compact")
    for name in ("indices", "gaps", "tail"):
        np.testing.assert_array_equal(getattr(back.scores, name),
                                      getattr(expected.scores, name), err_msg=name)
    for name in ("labels", "confidence", "entropy"):
        np.testing.assert_array_equal(getattr(back, name), getattr(expected, name), err_msg=name)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    assert back.class_names == expected.class_names and back.temperature == expected.temperature
    job.cleanup()  # the mapping keeps the removed file's data (POSIX)
    assert not os.path.exists(job.tempDir)
    np.testing.assert_array_equal(back.confidence, expected.confidence)


def test_runner_reports_user_errors_as_one_line(tmp_path, capsys):
    from CalibSegSlicer import runner

    from CalibSegLib.io import write_image

    image = str(tmp_path / "in.nrrd")
    write_image(image, np.zeros((4, 4, 4), np.float32), np.eye(4))
    code = runner.main(["--input", image, "--model", str(tmp_path / "no-such-model"),
                                "--output", str(tmp_path / "out.npz")])
    assert code == 2
    lines = capsys.readouterr().out.strip().splitlines()
    kind, message = proc.parseLine(lines[-1])
    assert kind == "error" and "no-such-model" in message
    assert not (tmp_path / "out.npz").exists()


def test_import_runs_the_library_importer_in_a_child_process(tmp_path):
    import torch

    from CalibSegLib.models import ModelCard

    cmd = proc.buildImportCommand("/data/my model.ts", "/models/new", python="/bin/PythonSlicer")
    assert cmd[0] == "/bin/PythonSlicer" and cmd[1].endswith("runner.py")
    assert cmd[2:] == ["--import-source", "/data/my model.ts", "--output", "/models/new"]
    source = tmp_path / "tiny.ts"
    torch.jit.trace(torch.nn.Conv3d(1, 2, 1), torch.zeros(1, 1, 4, 4, 4)).save(str(source))
    destination = str(tmp_path / "imported")
    job = proc.ProcessRunner().importModel(str(source), destination)
    job.start()
    assert job.wait(120) == "finished", job.error + "\n" + "\n".join(job.log)
    assert job.result() == destination
    card = ModelCard.from_file(os.path.join(destination, "model.json"))
    assert card.num_classes == 2 and card.architecture == "torchscript"
    job.cleanup()
    # A file that is no model: the job fails with the importer's one-line message.
    bad = tmp_path / "bad.ts"
    bad.write_text("not a model")
    failed = proc.ProcessRunner().importModel(str(bad), str(tmp_path / "never"))
    failed.start()
    assert failed.wait(120) == "failed"
    assert failed.error and "\n" not in failed.error
    assert not os.path.exists(tmp_path / "never")
    failed.cleanup()
