"""Run one CalibSeg model on one image file, or import a model, as a child process of Slicer.

Usage (started by :mod:`CalibSegSlicer.process` with ``PythonSlicer``)::

    CalibSegSlicer/runner.py --input in.nrrd --model MODEL_FOLDER --output out.npz \
        [--device auto] [--form auto|full|compact]
    CalibSegSlicer/runner.py --import-source BUNDLE_OR_TORCHSCRIPT --output NEW_MODEL_FOLDER

This is ``calibseg predict`` for the Slicer module: the same library calls, but
it prints one machine-readable line per progress step
(``CALIBSEG-PROGRESS <fraction> <message>``), ``CALIBSEG-ERROR <message>`` for an
error the user can fix, and ``CALIBSEG-DONE <path>`` at the end. The output file is the library's
``save_prediction`` (the class scores, for temperature changes without re-inference:
the top-k form for large volumes with ``--form auto``, at most 16 bytes per voxel). An
import is ``calibseg import-model`` (the library's ``import_model``), with the same lines.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input")
    parser.add_argument("--model")
    parser.add_argument("--import-source", dest="importSource")
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--form", default="auto", choices=("auto", "full", "compact"))
    args = parser.parse_args(argv)
    if args.importSource is None and (args.input is None or args.model is None):
        parser.error("give --input and --model (inference) or --import-source (import)")

    moduleDir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if moduleDir not in sys.path:  # CalibSegSlicer (this package) importable
        sys.path.insert(0, moduleDir)
    for root in (moduleDir, os.path.dirname(moduleDir)):
        if os.path.isdir(os.path.join(root, "CalibSegLib")) and root not in sys.path:
            sys.path.insert(0, root)
    from CalibSegLib.errors import CalibSegError
    from CalibSegSlicer.process import DONE_PREFIX, ERROR_PREFIX, progressLine

    def progress(fraction, message=""):
        print(progressLine(0.05 + 0.9 * fraction, message), flush=True)

    try:
        if args.importSource is not None:
            from CalibSegLib.models.importers import import_model

            import_model(args.importSource, args.output, progress=progress)
            print(progressLine(1.0, "done"), flush=True)
            print(f"{DONE_PREFIX} {args.output}", flush=True)
            return 0
        from CalibSegLib.inference import predict
        from CalibSegLib.inference.prediction_io import save_prediction
        from CalibSegLib.io import read_image
        from CalibSegLib.models import load_model

        print(progressLine(0.0, "reading input"), flush=True)
        image, affine = read_image(args.input)
        print(progressLine(0.02, "loading model"), flush=True)
        model = load_model(args.model)
        prediction = predict(image, affine, model, device=args.device, progress=progress,
                             form=args.form)
        print(progressLine(0.96, "writing result"), flush=True)
        save_prediction(args.output, prediction)
    except CalibSegError as exc:
        print(f"{ERROR_PREFIX} {' '.join(str(exc).split())}", flush=True)
        return 2
    print(progressLine(1.0, "done"), flush=True)
    print(f"{DONE_PREFIX} {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
