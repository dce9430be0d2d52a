"""Inference and model import in a separate process, so Slicer stays responsive.

For inference the input is written to a temporary NRRD, ``CalibSegSlicer/runner.py``
runs in ``PythonSlicer`` (the same Python as Slicer's), prints machine-readable
progress lines and writes the prediction with the library's ``save_prediction``
(the top-k form for large volumes: at most 16 bytes per voxel, no per-class float32);
Slicer reads it back with ``load_prediction``, memory-mapped (the class scores are
not copied into Slicer's memory; pages are read as the views use them). The temporary
folder is removed once the result is read: on POSIX systems the mapping keeps the
removed file's data until the prediction is released (on Windows, where a mapped file
cannot be removed, the file is read into memory instead, once). For an import it runs the
library's importer and writes the new model folder. A reader thread collects the
output and the panel's timer calls :meth:`BackgroundJob.poll` on the main thread,
where all MRML changes happen. Cancel kills the whole process tree; temporary
files are removed in every case.

:class:`ProcessRunner` starts such jobs; :class:`InProcessRunner` runs the same
library calls in this process (scripts without ``PythonSlicer``, and tests). The
panel takes either.

Nothing here imports Qt or MRML, so it is tested headless with a plain Python.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Protocol

import numpy as np

PROGRESS_PREFIX = "CALIBSEG-PROGRESS"
ERROR_PREFIX = "CALIBSEG-ERROR"
DONE_PREFIX = "CALIBSEG-DONE"
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")


def progressLine(fraction: float, message: str = "") -> str:
    """The line the runner prints for a progress step."""
    return f"{PROGRESS_PREFIX} {min(max(float(fraction), 0.0), 1.0):.4f} {message}".rstrip()


def parseLine(line: str):
    """``("progress", fraction, message)``, ``("error", message)``, ``("done", path)`` or
    ``("log", line)`` for one output line of the runner."""
    text = line.rstrip("\r\n")
    if text.startswith(PROGRESS_PREFIX + " "):
        parts = text[len(PROGRESS_PREFIX) + 1:].split(" ", 1)
        try:
            fraction = min(max(float(parts[0]), 0.0), 1.0)
        except ValueError:
            return ("log", text)
        return ("progress", fraction, parts[1] if len(parts) > 1 else "")
    if text.startswith(ERROR_PREFIX + " "):
        return ("error", text[len(ERROR_PREFIX) + 1:])
    if text.startswith(DONE_PREFIX + " "):
        return ("done", text[len(DONE_PREFIX) + 1:])
    return ("log", text)


def pythonExecutable() -> str:
    """``PythonSlicer`` when running inside Slicer, else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def buildCommand(inputPath: str, modelFolder: str, outputPath: str, device: str = "auto",
                 python: str | None = None, runner: str = RUNNER, form: str = "auto"
                 ) -> list[str]:
    """The runner's inference command line (a list: no shell, paths with spaces are safe)."""
    return [python or pythonExecutable(), runner, "--input", inputPath, "--model", modelFolder,
            "--output", outputPath, "--device", device, "--form", form]


def buildImportCommand(source: str, outputFolder: str, python: str | None = None,
                       runner: str = RUNNER) -> list[str]:
    """The runner's import command line: ``source`` (bundle or TorchScript) to a new folder."""
    return [python or pythonExecutable(), runner, "--import-source", source,
            "--output", outputFolder]


def runnerEnvironment(base=None) -> dict:
    """Environment of the runner: ``CalibSegLib`` (next to this file) importable."""
    env = dict(os.environ if base is None else base)
    moduleDir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [moduleDir, os.path.dirname(moduleDir)]  # installed: beside; source: the parent
    libRoots = [r for r in roots if os.path.isdir(os.path.join(r, "CalibSegLib"))]
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([moduleDir] + libRoots + ([old] if old else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def killTree(process: subprocess.Popen, grace: float = 2.0) -> None:
    """Stop ``process`` and every process it started."""
    if process.poll() is not None:
        return
    if os.name == "nt":  # pragma: no cover - Windows only
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)],
                       capture_output=True, check=False)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


class BackgroundJob:
    """One run of ``runner.py`` in a child process; call :meth:`poll` regularly (a timer).

    States: ``"ready"`` -> ``"running"`` -> ``"finished"`` | ``"failed"`` | ``"cancelled"``.
    Subclasses give the command and the output.
    """

    def __init__(self, outputPath: str = "", python: str | None = None, runner: str = RUNNER,
                 command=None):
        self.python = python
        self.runner = runner
        self._command = command  # tests inject another program here
        self.tempDir = tempfile.mkdtemp(prefix="CalibSeg-")
        self.outputPath = outputPath
        self.state = "ready"
        self.fraction = 0.0
        self.message = ""
        self.error = ""
        self.log: list[str] = []
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        kwargs = {}
        if os.name == "nt":  # pragma: no cover
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the tree
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            encoding="utf-8", errors="replace", env=runnerEnvironment(), bufsize=1, **kwargs)
        self.state = "running"
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def poll(self) -> list[tuple]:
        """Handle new output; return its parsed events. Updates ``state``/``fraction``."""
        events = []
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
                break
            event = parseLine(line)
            events.append(event)
            if event[0] == "progress":
                self.fraction, self.message = event[1], event[2]
            elif event[0] == "error":
                self.error = event[1]
            elif event[0] == "log" and event[1]:
                self.log.append(event[1])
                self.log = self.log[-200:]
        if self.state == "running" and ended:
            code = self.process.wait()
            if code == 0 and os.path.exists(self.outputPath):
                self.state, self.fraction = "finished", 1.0
            else:
                self.state = "failed"
                if not self.error:
                    tail = "\n".join(self.log[-10:])
                    self.error = f"Inference process ended with code {code}.\n{tail}".strip()
        return events

    def wait(self, timeout: float = 60.0, interval: float = 0.05) -> str:
        """Poll until the job ends (for tests and scripts); return the final state."""
        deadline = time.monotonic() + timeout
        while self.state == "running" and time.monotonic() < deadline:
            self.poll()
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        """Kill the process tree; the job ends ``"cancelled"`` and its files are removed."""
        if self.process is not None:
            killTree(self.process)
        self.state = "cancelled"
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the temporary folder (input NRRD and output)."""
        shutil.rmtree(self.tempDir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.state == "running":
            self.cancel()
        self.cleanup()


class InferenceJob(BackgroundJob):
    """One model run on one input image in a child process; :meth:`result` is the Prediction."""

    def __init__(self, modelFolder: str, device: str = "auto", python: str | None = None,
                 runner: str = RUNNER, command=None, form: str = "auto"):
        super().__init__("", python, runner, command)
        self.modelFolder = modelFolder
        self.device = device
        self.form = form
        self.inputPath = os.path.join(self.tempDir, "input.nrrd")
        self.outputPath = os.path.join(self.tempDir, "prediction.npz")

    def writeInput(self, image: np.ndarray, affine: np.ndarray) -> str:
        """Write the input ``(Z, Y, X)`` image and its affine as the temporary NRRD."""
        from CalibSegLib.io import write_image

        return write_image(self.inputPath, image, affine)

    def command(self) -> list[str]:
        if self._command is not None:
            return list(self._command)
        return buildCommand(self.inputPath, self.modelFolder, self.outputPath, self.device,
                            self.python, self.runner, self.form)

    def result(self):
        """The ``Prediction`` the child process wrote (after ``"finished"``), memory-mapped."""
        from CalibSegLib.inference.prediction_io import load_prediction

        return load_prediction(self.outputPath, mmap=os.name != "nt")


class ImportJob(BackgroundJob):
    """The library's model importer in a child process; :meth:`result` is the new folder."""

    def __init__(self, source: str, outputFolder: str, python: str | None = None,
                 runner: str = RUNNER, command=None):
        super().__init__(outputFolder, python, runner, command)
        self.source = source

    def command(self) -> list[str]:
        if self._command is not None:
            return list(self._command)
        return buildImportCommand(self.source, self.outputPath, self.python, self.runner)

    def result(self) -> str:
        """The imported model's folder (after ``"finished"``)."""
        return self.outputPath


class Job(Protocol):
    """What the panel uses of a job (:class:`BackgroundJob` or :class:`InProcessJob`)."""

    state: str  #: "ready", "running", "finished", "failed" or "cancelled"
    fraction: float
    message: str
    error: str

    def start(self) -> None: ...

    def poll(self) -> list[tuple]: ...

    def cancel(self) -> None: ...

    def cleanup(self) -> None: ...

    def result(self) -> Any: ...


class JobRunner(Protocol):
    """Starts the panel's jobs: :class:`ProcessRunner` or :class:`InProcessRunner`."""

    def inference(self, modelFolder: str, device: str = "auto") -> Job: ...

    def importModel(self, source: str, outputFolder: str) -> Job: ...


class ProcessRunner:
    """Starts jobs in child processes (``PythonSlicer`` inside Slicer); ``form`` is the
    prediction's form (``"auto"``: the top-k form beyond the library's memory budget)."""

    def __init__(self, python: str | None = None, form: str = "auto") -> None:
        self.python = python
        self.form = form

    def inference(self, modelFolder: str, device: str = "auto") -> InferenceJob:
        return InferenceJob(modelFolder, device, python=self.python, form=self.form)

    def importModel(self, source: str, outputFolder: str) -> ImportJob:
        return ImportJob(source, outputFolder, python=self.python)


class InProcessJob:
    """A job run in this process at :meth:`start` (blocking); same states and calls as
    :class:`BackgroundJob`."""

    def __init__(self, work) -> None:
        self._work = work
        self.state = "ready"
        self.fraction = 0.0
        self.message = ""
        self.error = ""
        self._result = None
        self._image = None

    def writeInput(self, image: np.ndarray, affine: np.ndarray) -> None:
        self._image = (np.array(image, copy=True), np.array(affine, copy=True))

    def start(self) -> None:
        from CalibSegLib.errors import CalibSegError

        self.state = "running"

        def progress(fraction, message=""):
            self.fraction, self.message = float(fraction), str(message)

        try:
            self._result = self._work(self._image, progress)
        except CalibSegError as exc:
            self.state, self.error = "failed", " ".join(str(exc).split())
            return
        self.state, self.fraction = "finished", 1.0

    def poll(self) -> list[tuple]:
        return []

    def cancel(self) -> None:
        self.state = "cancelled"

    def cleanup(self) -> None:
        self._image = None

    def result(self):
        return self._result


class InProcessRunner:
    """Runs the jobs' library calls in this process (no ``PythonSlicer`` needed)."""

    def __init__(self, form: str = "auto") -> None:
        self.form = form

    def inference(self, modelFolder: str, device: str = "auto") -> InProcessJob:
        form = self.form

        def work(image, progress):
            from CalibSegLib.inference import predict
            from CalibSegLib.models import load_model

            volume, affine = image
            return predict(volume, affine, load_model(modelFolder), device=device,
                           progress=progress, form=form)

        return InProcessJob(work)

    def importModel(self, source: str, outputFolder: str) -> InProcessJob:
        def work(_image, progress):
            from CalibSegLib.models.importers import import_model

            import_model(source, outputFolder, progress=progress)
            return outputFolder

        return InProcessJob(work)
