"""``python -m CalibSegWeb``: start the browser app (what ``calibseg view`` runs).

Binds 127.0.0.1 unless ``--host`` names another address together with ``--allow-remote``
(then a warning is printed: anyone who can reach that address can use the app and read
what it shows). Uploads and exports live in a private temporary folder removed on exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``calibseg view`` (one definition: :mod:`CalibSegLib.commands.view`)."""
    from CalibSegLib.commands.view import add_arguments

    parser = argparse.ArgumentParser(prog="calibseg view", description=(
        "CalibSeg in the browser: Slicer's slice views with segmentation, confidence, entropy "
        "and prototype overlays, reliability diagram, temperature and voxel probe."))
    add_arguments(parser)
    return parser


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address without ``--allow-remote``; warn with it."""
    from CalibSegLib.errors import CalibSegError

    loopback = host in LOOPBACK
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if loopback:
        return
    if not allow_remote:
        raise CalibSegError(
            f"--host {host} would make the app reachable from other computers; add "
            "--allow-remote to do so on purpose, or leave --host at 127.0.0.1.")
    print(f"calibseg view: WARNING: listening on {host}: anyone who can reach this address "
          "can load images, run models and see the results; there is no login. Use it only "
          "on a trusted network.", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from CalibSegLib.errors import CalibSegError

    try:
        check_host(args.host, args.allow_remote)
    except CalibSegError as exc:
        print(f"calibseg view: error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from vtkmodules.vtkCommonCore import vtkObject

    vtkObject.GlobalWarningDisplayOff()  # VTK's deprecation warnings mean nothing to users
    from CalibSegSlicer import locations

    import CalibSegWeb  # noqa: F401  (puts CalibSegSlicer on sys.path)
    from CalibSegWeb.app import CalibSegWebApp
    from CalibSegWeb.catalogue import ModelCatalogue
    from CalibSegWeb.uploads import PrivateFolder

    folder = PrivateFolder(maxUploadBytes=int(args.max_upload_mb * 2**20))
    try:
        catalogue = ModelCatalogue.build(locations.shippedModelFolders(), args.model)
        app = CalibSegWebApp(catalogue, folder, device=args.device, form=args.form)
        if args.image:
            app.loadPath(args.image)
        elif args.sample:
            app.loadSample()
        if args.reference and app.session.inputNode is not None:
            app.guarded(app.session.chooseReference, None, path=args.reference)
            app.state.reference = "uploaded"

        def announce(**_):
            print(f"calibseg view: uploads and exports go to {folder.path} (removed on exit)",
                  flush=True)
            print(f"calibseg view: http://{_url_host(args.host)}:{app.server.port}/ "
                  "(Ctrl+C to stop)", flush=True)

        app.server.controller.on_server_ready.add(announce)
        sys.argv = sys.argv[:1]  # trame reads its own options from sys.argv
        app.server.start(host=args.host, port=args.port, open_browser=False,
                         show_connection_info=False, disable_logging=True, timeout=0)
    finally:
        folder.remove()
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
