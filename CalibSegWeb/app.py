"""The page: trame-slicer slice views of the session's MRML scene and CalibSeg's controls.

Each control calls one :class:`~CalibSegWeb.session.ViewerSession` method through
:meth:`CalibSegWebApp.guarded`, which turns any error into the one message shown at the
top of the page (the server keeps running). A model run is polled from an asyncio task, so
the page, the views and Cancel stay live while it runs; so is a temperature change's
whole-volume refresh, while the page says it shows a preview of the visible slices.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import time
import traceback
from collections.abc import Callable

import slicer
from CalibSegSlicer import layouts
from trame.app import TrameApp
from trame.decorators import change
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from CalibSegLib.errors import CalibSegError
from CalibSegWeb.catalogue import ModelCatalogue
from CalibSegWeb.session import OVERLAYS, SAMPLE_REFERENCE, ViewerSession
from CalibSegWeb.uploads import PrivateFolder

SINGLE, COMPARE = "single", "compare"
#: Slice views of the page: name (the Slicer layout name the logic knows), orientation.
VIEW_A, VIEW_B = "Red", layouts.COMPARE_VIEW
POLL_SECONDS = 0.25
#: A temperature is applied to the whole volume once its slider rests this long.
APPLY_AFTER_SECONDS = 0.4
#: After a layout change or a new image, views the page resizes are fitted again for this long.
REFIT_SECONDS = 5.0


def pngDataUri(image) -> str:
    """``data:`` URI of a 2D uint8 array (grey) or of PNG bytes."""
    if not isinstance(image, (bytes, bytearray)):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def viewLayouts() -> dict[str, Layout]:
    axial = ViewLayoutDefinition.slice_view("Axial", label=VIEW_A, color="#F34A33")
    sagittal = ViewLayoutDefinition.slice_view("Sagittal", label="Yellow", color="#EDD54C")
    coronal = ViewLayoutDefinition.slice_view("Coronal", label="Green", color="#6EB04B")
    axialB = ViewLayoutDefinition.slice_view("Axial", label=VIEW_B, color="#3377CC")
    return {
        SINGLE: Layout(LayoutDirection.Horizontal,
                       [axial, Layout(LayoutDirection.Vertical, [coronal, sagittal])]),
        COMPARE: Layout(LayoutDirection.Horizontal, [axial, axialB]),
    }


class CalibSegWebApp(TrameApp):
    """The browser app (see the module docstring)."""

    def __init__(self, catalogue: ModelCatalogue, folder: PrivateFolder, server=None,
                 device: str = "cpu", form: str = "auto"):
        super().__init__(server, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicerApp = SlicerApp()
        slicer.mrmlScene = self.slicerApp.scene
        register_rca_factories(self.slicerApp.view_manager, self.server)
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager,
                                           self.server)
        self.layoutManager.register_layout_dict(viewLayouts())
        self.layoutManager.set_layout(SINGLE)
        self.session = ViewerSession(self.slicerApp.scene, catalogue, folder, device=device,
                                     form=form)
        self._syncing = False
        self._temperatureTicket = 0
        self._refitUntil = 0.0
        self._observeClicks()
        self._observeResizes()
        self._initState()
        self._buildUi()

    # ------------------------------------------------------------------------- errors
    def guarded(self, action: Callable, *args, **kwargs):
        """Run ``action``; show any error as the page's one message and return None."""
        try:
            with self.state:
                self.state.error = ""
            return action(*args, **kwargs)
        except CalibSegError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001  (the server keeps running)
            traceback.print_exc(file=sys.stderr)
            message = f"Unexpected error ({type(exc).__name__}): {exc}"
        with self.state:
            self.state.error = message
        return None

    # ------------------------------------------------------------------------- state
    def _initState(self) -> None:
        s = self.state
        s.trame__title = "CalibSeg"
        catalogue = self.session.catalogue
        s.models = [{"title": e.label, "value": e.id} for e in catalogue.entries]
        s.cards = {e.id: e.summary() for e in catalogue.entries}
        usable = [e.id for e in catalogue.entries if e.error is None]
        s.update({
            "error": "", "input_name": "", "has_input": False,
            "model_a": usable[0] if usable else None, "model_b": None,
            "running": False, "progress": 0, "progress_message": "",
            "has_results": False, "slots": [], "overlays": list(OVERLAYS),
            "overlay": "confidence", "opacity": 0.6, "proto_map": False, "compare": False,
            "temperature_A": 1.0, "temperature_B": 1.0, "temperature_state": "",
            "reference": None, "metrics_header": [], "metrics_rows": [], "diagram_src": "",
            "legend": None, "probe": None, "export_name": "calibseg-results.zip",
        })

    def _refresh(self) -> None:
        """Push the session's read-outs (results, temperatures, table, diagram) to the page."""
        session = self.session
        results = session.logic.results
        header, rows = session.metricsTable()
        diagram = session.diagramPng()
        self._syncing = True
        try:
            with self.state as s:
                s.has_input = session.inputNode is not None
                s.input_name = session.inputName
                s.export_name = session.exportName()
                s.has_results = bool(results)
                s.slots = list(results)
                for slot, value in session.temperatures().items():
                    s[f"temperature_{slot}"] = round(value, 3)
                s.temperature_state = session.showing()
                s.metrics_header, s.metrics_rows = header, rows
                s.diagram_src = pngDataUri(diagram) if diagram else ""
                s.legend = session.legend() if results else None
                s.compare = bool(session.logic.comparing)
        finally:
            self._syncing = False

    # ------------------------------------------------------------------------- actions
    def loadSample(self) -> None:
        if self.guarded(self.session.loadSample) is not None:
            self._afterInput()

    def loadPath(self, path: str) -> None:
        if self.guarded(self.session.loadImage, path) is not None:
            self._afterInput()

    def uploadImage(self, files) -> None:
        def load():
            path, name = self._saveUpload(files)
            return self.session.loadImage(path, name=name)

        if self.guarded(load) is not None:
            self._afterInput()

    def uploadReference(self, files) -> None:
        def load():
            return self.session.chooseReference(None, path=self._saveUpload(files)[0])

        if self.guarded(load) is not None:
            with self.state:
                self.state.reference = "uploaded"
            self._refresh()
            if self.session.refreshing:
                create_task(self._followRefresh())

    def _saveUpload(self, files) -> tuple[str, str]:
        """``(path in the private folder, the file's own name)`` of the first uploaded file."""
        from trame.app.file_upload import ClientFile

        files = files if isinstance(files, list) else [files]
        if not files or not files[0]:
            raise CalibSegError("No file received: choose the file again.")
        upload = ClientFile(files[0])
        limit = self.session.folder.maxUploadBytes
        if upload.size is not None and upload.size > limit:
            raise CalibSegError(f"Upload {upload.name!r} is larger than the limit of "
                                f"{limit / 2**20:.0f} MiB; pass its path to 'calibseg view'.")
        return self.session.folder.saveUpload(upload.name, upload.content or b""), upload.name

    def _shownSliceViews(self) -> list:
        manager = self.slicerApp.view_manager
        return manager.filter_visible_views(manager.get_slice_views())

    def _fitViews(self) -> None:
        """Fit the shown slice views to the image, now and whenever the page resizes one of
        them during the next :data:`REFIT_SECONDS` (a view shown for the first time gets its
        size from the page only then). Only shown views: a hidden view linked to them would
        pass on its own zoom."""
        self._refitUntil = time.monotonic() + REFIT_SECONDS
        for view in self._shownSliceViews():
            view.fit_view_to_content()
            view.schedule_render()

    def _observeResizes(self) -> None:
        for view in self.slicerApp.view_manager.get_slice_views():
            def onResize(_obj, _event, _view=view):
                if time.monotonic() < self._refitUntil and _view in self._shownSliceViews():
                    _view.fit_view_to_content()
                    _view.schedule_render()

            # after the view's own handler, which gives the slice node its new size
            view.interactor().AddObserver("WindowResizeEvent", onResize, -1.0)

    def _afterInput(self) -> None:
        self.layoutManager.set_layout(SINGLE)
        self._fitViews()
        with self.state:
            self.state.reference = None
            self.state.probe = None
        self._refresh()

    def run(self) -> None:
        ids = [self.state.model_a] + ([self.state.model_b] if self.state.model_b else [])
        job = self.guarded(self.session.startRun, ids)
        if job is None:
            return
        with self.state:
            self.state.running, self.state.progress = True, 0
            self.state.progress_message = "starting"
        create_task(self._watch(job))

    async def _watch(self, job) -> None:
        while not job.done:
            await asyncio.sleep(POLL_SECONDS)
            with self.state:
                self.state.progress = round(100 * job.fraction)
                self.state.progress_message = job.message
        slots = self.guarded(self.session.finishRun)
        with self.state:
            self.state.running = False
            self.state.progress = 100 if slots else 0
            self.state.progress_message = ("cancelled" if job.cancelled else
                                           "failed" if job.error else "done")
        if slots:
            self._showOverlay()
            self._render()
        self._refresh()
        await self._followRefresh()

    async def _followRefresh(self, ticket: int | None = None) -> None:
        """Poll the whole-volume refresh (temperature, statistics) until it is shown; stop
        when a newer temperature change (``ticket``) took over."""
        while self.session.refreshing and (ticket is None or ticket == self._temperatureTicket):
            await asyncio.sleep(POLL_SECONDS)
            if self.guarded(self.session.pollTemperatures):
                self._render()
                self._refresh()

    def cancel(self) -> None:
        self.guarded(self.session.cancelRun)

    def _showOverlay(self) -> None:
        self.guarded(self.session.setOverlay, self.state.overlay, float(self.state.opacity))

    def _render(self) -> None:
        for view in self.slicerApp.view_manager.get_slice_views():
            view.schedule_render()

    @change("overlay", "opacity")
    def _onOverlay(self, **_):
        if self.session.logic.results and not self._syncing:
            self._showOverlay()
            self._render()
            with self.state:
                self.state.legend = self.session.legend()

    @change("proto_map")
    def _onPrototypeMap(self, proto_map, **_):
        if self.session.logic.results and not self._syncing:
            self.guarded(self.session.showPrototypeMap, bool(proto_map))
            self._render()

    @change("compare")
    def _onCompare(self, compare, **_):
        if self._syncing:
            return
        if self.guarded(self.session.setCompare, bool(compare)) is None and \
                bool(compare) != bool(self.session.logic.comparing):
            self._refresh()
            return
        self.layoutManager.set_layout(COMPARE if compare else SINGLE)
        self._showOverlay()
        self._fitViews()

    @change("temperature_A", "temperature_B")
    def _onTemperature(self, temperature_A, temperature_B, **_):
        """Preview on the shown planes at once; apply to volume, table and diagram once the
        slider rests (:data:`APPLY_AFTER_SECONDS`)."""
        if self._syncing:
            return
        current = self.session.temperatures()
        changed = False
        for slot, value in (("A", temperature_A), ("B", temperature_B)):
            if slot in current and abs(float(value) - current[slot]) > 1e-6:
                self.guarded(self.session.previewTemperature, slot, float(value))
                changed = True
        if changed:
            self._render()
            self._refresh()  # the estimated table and diagram, "preview: visible slices"
            self._temperatureTicket += 1
            create_task(self._applyTemperaturesLater(self._temperatureTicket))

    async def _applyTemperaturesLater(self, ticket: int) -> None:
        await asyncio.sleep(APPLY_AFTER_SECONDS)
        if ticket != self._temperatureTicket:
            return  # the slider moved again
        self.guarded(self.session.applyTemperatures)
        self._render()
        self._refresh()
        await self._followRefresh(ticket)  # the whole volume, in the background

    def fitTemperature(self) -> None:
        self.guarded(self.session.fitTemperatures)
        self._render()
        self._refresh()

    @change("reference")
    def _onReference(self, reference, **_):
        if self._syncing or reference == "uploaded":
            return
        which = SAMPLE_REFERENCE if reference == SAMPLE_REFERENCE else None
        self.guarded(self.session.chooseReference, which)
        self._refresh()
        if self.session.refreshing:
            create_task(self._followRefresh())

    def exportResults(self):
        out = self.guarded(self.session.exportZip)
        if out is None:
            return None
        return self.server.protocol.addAttachment(out[1])

    # ------------------------------------------------------------------------- probe
    def _observeClicks(self) -> None:
        for view in self.slicerApp.view_manager.get_slice_views():
            self._observeClicksOn(view)

    def _observeClicksOn(self, view) -> None:
        interactor = view.interactor()
        pressed: dict = {}

        def onPress(obj, _event):
            pressed["xy"] = obj.GetEventPosition()

        def onRelease(obj, _event):
            xy = obj.GetEventPosition()
            if pressed.pop("xy", None) == xy:
                self.probeAt(view.get_view_node(), xy[0], xy[1])

        interactor.AddObserver("LeftButtonPressEvent", onPress, 1.0)
        interactor.AddObserver("LeftButtonReleaseEvent", onRelease, 1.0)

    def probeAt(self, sliceNode, x: float, y: float) -> None:
        if not self.session.logic.results:
            return
        probe = self.guarded(self.session.probeSliceView, sliceNode, x, y)
        if probe is None:
            return
        models = []
        for slot, entry in probe["models"].items():
            models.append({
                "slot": slot, "model": entry["model"], "class_name": entry["class_name"],
                "confidence": round(entry["confidence"], 4),
                "entropy": round(entry["entropy"], 4),
                "temperature": round(entry["temperature"], 3),
                "probabilities": [{"name": k, "value": round(v, 4)}
                                  for k, v in entry["probabilities"].items()],
                "prototypes": [{
                    "index": row["prototype"], "similarity": round(row["similarity"], 4),
                    "class_name": (row.get("source") or {}).get("class_name", ""),
                    "case": (row.get("source") or {}).get("case", ""),
                    "crop": pngDataUri(row["crop"]) if row.get("crop") is not None else "",
                } for row in entry["prototypes"]],
            })
        with self.state:
            self.state.probe = {"ras": probe["ras"], "models": models,
                                "outside": not models}

    # ------------------------------------------------------------------------- page
    def _buildUi(self) -> None:
        with SinglePageWithDrawerLayout(self.server, width=380) as self.ui:
            self.ui.title.set_text("CalibSeg")
            client.Style("html { overflow-y: auto; } .calibseg-legend { height: 12px; }")
            with self.ui.toolbar:
                v3.VSpacer()
                with v3.VProgressLinear(v_if=("running",), model_value=("progress",),
                                        height=18, color="primary", id="progress",
                                        style="max-width: 360px;"):
                    html.Span("{{ progress_message }} {{ progress }}%", classes="text-caption")
                html.Span("{{ input_name }}", classes="mx-4 text-caption", id="input-name")
            with self.ui.drawer:
                self._controls()
            with self.ui.content:
                v3.VAlert(v_if=("error",), type="error", text=("error",), closable=True,
                          id="error-message", density="compact",
                          click_close="error = ''")
                with html.Div(style="height: calc(100vh - 64px); display: flex;"), \
                        html.Div(style="flex: 1 1 auto; position: relative;", id="views"):
                    self.layoutManager.initialize_layout_grid(self.ui)

    def _controls(self) -> None:
        with v3.VContainer(classes="pa-2", fluid=True):
            html.Div("Image", classes="text-subtitle-2")
            with html.Div(classes="d-flex align-center"):
                v3.VBtn("Sample case", click=self.loadSample, id="load-sample", size="small",
                        disabled=("running",))
                v3.VFileInput(label="upload image", density="compact", hide_details=True,
                              classes="ml-2", id="upload-image", disabled=("running",),
                              change=(self.uploadImage, "[$event.target.files[0]]"))
            html.Div("Models", classes="text-subtitle-2 mt-3")
            v3.VSelect(label="model A", items=("models",), v_model=("model_a",),
                       density="compact", hide_details=True, id="model-a")
            v3.VSelect(label="model B (compare)", items=("models",), v_model=("model_b",),
                       density="compact", hide_details=True, clearable=True, id="model-b",
                       classes="mt-1")
            for key in ("model_a", "model_b"):
                with v3.VCard(v_if=(f"{key} && cards[{key}]",), variant="tonal",
                              classes="mt-1 pa-2 text-caption"):
                    html.Div(f"{{{{ cards[{key}].text }}}}", v_if=(f"!cards[{key}].error",),
                             style="white-space: pre-line;")
                    html.Div(f"{{{{ cards[{key}].error }}}}", v_if=(f"cards[{key}].error",),
                             classes="text-error")
            with html.Div(classes="d-flex mt-2"):
                v3.VBtn("Run", click=self.run, color="primary", id="run",
                        disabled=("running || !has_input",))
                v3.VBtn("Cancel", click=self.cancel, id="cancel", classes="ml-2",
                        disabled=("!running",))
            html.Div("{{ progress_message }}", classes="text-caption", id="run-status")

            with html.Div(v_if=("has_results",)):
                html.Div("Overlay", classes="text-subtitle-2 mt-3")
                v3.VSelect(items=("overlays",), v_model=("overlay",), density="compact",
                           hide_details=True, id="overlay")
                with html.Div(id="opacity-box"):
                    v3.VSlider(label="opacity", v_model=("opacity",), min=0, max=1, step=0.05,
                               density="compact", hide_details=True)
                with html.Div(v_if=("legend",), classes="text-caption"):
                    html.Div(classes="calibseg-legend", id="legend",
                             style=("{background: 'linear-gradient(to right, ' + "
                                    "legend.colors.join(', ') + ')'}",))
                    html.Div("{{ legend.low.toFixed(2) }} … {{ legend.high.toFixed(2) }}: "
                             "{{ overlay }}")
                v3.VSwitch(label="nearest-prototype map", v_model=("proto_map",),
                           density="compact", hide_details=True)
                v3.VSwitch(label="compare A | B", v_model=("compare",), density="compact",
                           hide_details=True, id="compare", disabled=("slots.length < 2",))

                html.Div("Temperature", classes="text-subtitle-2 mt-3")
                for slot in ("A", "B"):
                    with html.Div(v_if=(f"slots.includes('{slot}')",), id=f"temperature-{slot}"):
                        v3.VSlider(label=slot, v_model=(f"temperature_{slot}",), min=0.25,
                                   max=4.0, step=0.01, thumb_label="always", density="compact",
                                   hide_details=True, classes="mt-4")
                html.Div("showing: {{ temperature_state }}", v_if=("temperature_state",),
                         classes="text-caption", id="temperature-state")
                v3.VBtn("Fit to reference", click=self.fitTemperature, size="small",
                        disabled=("!reference",), id="fit-temperature")

                html.Div("Reference", classes="text-subtitle-2 mt-3")
                v3.VSelect(items=("[{title: 'sample tissue labels', value: 'sample'},"
                                  " {title: 'uploaded labels', value: 'uploaded'}]",),
                           v_model=("reference",), label="reference segmentation",
                           clearable=True, density="compact", hide_details=True,
                           id="reference")
                v3.VFileInput(label="upload label file", density="compact", hide_details=True,
                              id="upload-reference",
                              change=(self.uploadReference, "[$event.target.files[0]]"))
                with v3.VTable(v_if=("metrics_rows.length",), density="compact",
                               id="metrics-table", classes="text-caption"):
                    with html.Thead(), html.Tr():
                        html.Th("{{ h }}", v_for="h in metrics_header", key="h")
                    with html.Tbody(), html.Tr(v_for="(row, i) in metrics_rows", key="i"):
                        html.Td("{{ cell }}", v_for="(cell, j) in row", key="j")
                html.Img(v_if=("diagram_src",), src=("diagram_src",), style="width: 100%;",
                         id="diagram")

                html.Div("Voxel (click a slice view)", classes="text-subtitle-2 mt-3")
                with html.Div(v_if=("probe",), id="probe", classes="text-caption"):
                    html.Div("RAS {{ probe.ras.join(', ') }}")
                    html.Div("outside the volume", v_if=("probe.outside",))
                    with html.Div(v_for="m in probe.models", key="m.slot", classes="mt-1"):
                        html.Div("{{ m.slot }}: {{ m.model }} → {{ m.class_name }}, "
                                 "confidence {{ m.confidence }}, entropy {{ m.entropy }} "
                                 "(T {{ m.temperature }})", classes="font-weight-bold")
                        html.Div("{{ p.name }}: {{ p.value }}", v_for="p in m.probabilities",
                                 key="p.name")
                        with html.Div(classes="d-flex flex-wrap"), \
                                html.Div(v_for="q in m.prototypes", key="q.index",
                                         classes="ma-1"):
                            html.Img(v_if=("q.crop",), src=("q.crop",),
                                     style="width: 72px; image-rendering: pixelated;")
                            html.Div("#{{ q.index }} {{ q.class_name }} "
                                     "sim {{ q.similarity }}")
                v3.VBtn("Export (zip)", size="small", classes="mt-3", id="export",
                        click=(f"utils.download(export_name, "
                               f"trigger('{self.ctrl.trigger_name(self.exportResults)}'), "
                               "'application/zip')"))
