"""CalibSeg's view layouts and the slice views they need.

Two layouts are registered on the scene's layout node:

- ``LAYOUT_OVERVIEW``: the three slice views (Red large, Yellow and Green below)
  and a plot view with the reliability diagram on the right;
- ``LAYOUT_COMPARE``: model A (Red) and model B (``CalibSegB``) side by side in
  linked axial views, the reliability diagram of both underneath.

The slice and plot view nodes the layouts name are created here when the scene
has none yet (Slicer's layout manager reuses nodes with the same singleton
tag), so the logic can wire them headless as well as in the application.
"""

from __future__ import annotations

import slicer

LAYOUT_OVERVIEW = 29801
LAYOUT_COMPARE = 29802
COMPARE_VIEW = "CalibSegB"
PLOT_VIEW = "CalibSegPlot"

_SLICE = (
    '<item{extra}><view class="vtkMRMLSliceNode" singletontag="{name}">'
    '<property name="orientation" action="default">{orientation}</property>'
    '<property name="viewlabel" action="default">{label}</property>'
    '<property name="viewcolor" action="default">{color}</property>'
    "{group}</view></item>"
)
_PLOT = (
    '<item{extra}><view class="vtkMRMLPlotViewNode" singletontag="' + PLOT_VIEW + '">'
    '<property name="viewlabel" action="default">P</property></view></item>'
)


def _slice(name, orientation, label, color, extra="", group=None):
    group_xml = (f'<property name="viewgroup" action="default">{group}</property>'
                 if group is not None else "")
    return _SLICE.format(name=name, orientation=orientation, label=label, color=color,
                         extra=extra, group=group_xml)


OVERVIEW_XML = (
    '<layout type="horizontal" split="true">'
    '<item splitSize="600"><layout type="vertical">'
    + _slice("Red", "Axial", "R", "#F34A33", extra=' splitSize="500"')
    + '<item splitSize="300"><layout type="horizontal">'
    + _slice("Yellow", "Sagittal", "Y", "#EDD54C")
    + _slice("Green", "Coronal", "G", "#6EB04B")
    + "</layout></item></layout></item>"
    + _PLOT.format(extra=' splitSize="400"')
    + "</layout>"
)

COMPARE_XML = (
    '<layout type="vertical" split="true">'
    '<item splitSize="600"><layout type="horizontal">'
    + _slice("Red", "Axial", "A", "#F34A33")
    + _slice(COMPARE_VIEW, "Axial", "B", "#3377CC")
    + "</layout></item>"
    + _PLOT.format(extra=' splitSize="300"')
    + "</layout>"
)

LAYOUTS = {LAYOUT_OVERVIEW: OVERVIEW_XML, LAYOUT_COMPARE: COMPARE_XML}


def layoutNode(scene):
    """The scene's layout node (created when the scene has none, e.g. headless)."""
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        node = slicer.vtkMRMLLayoutNode()
        node.SetSingletonTag("vtkMRMLLayoutNode")
        scene.AddNode(node)
    return node


def registerLayouts(scene):
    """Add (or refresh) CalibSeg's layout descriptions on the layout node; return it."""
    node = layoutNode(scene)
    for index, xml in LAYOUTS.items():
        if node.IsLayoutDescription(index):
            node.SetLayoutDescription(index, xml)
        else:
            node.AddLayoutDescription(index, xml)
    return node


def sliceNode(scene, name: str, orientation: str = "Axial"):
    """The slice node of view ``name``; created with its composite node when missing."""
    for node in _nodes(scene, "vtkMRMLSliceNode"):
        if node.GetLayoutName() == name:
            compositeNode(scene, name)
            return node
    default = scene.GetDefaultNodeByClass("vtkMRMLSliceNode")
    if default is None or default.GetNumberOfSliceOrientationPresets() == 0:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.CreateNodeByClass("vtkMRMLSliceNode")  # copies the default node's presets
    node.UnRegister(None)  # the Python reference keeps it alive
    node.SetName(name)
    node.SetLayoutName(name)
    node.SetSingletonTag(name)
    node.SetLayoutLabel("B" if name == COMPARE_VIEW else name[:1])
    node.SetOrientation(orientation)
    scene.AddNode(node)
    compositeNode(scene, name)
    return node


def compositeNode(scene, name: str):
    """The slice composite node of view ``name`` (created when missing)."""
    for node in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        if node.GetLayoutName() == name:
            return node
    node = slicer.vtkMRMLSliceCompositeNode()
    node.SetLayoutName(name)
    node.SetSingletonTag(name)
    scene.AddNode(node)
    return node


def compositeNodes(scene, exclude=(COMPARE_VIEW,)):
    """Every slice composite node of the scene except those of ``exclude`` views."""
    return [n for n in _nodes(scene, "vtkMRMLSliceCompositeNode")
            if n.GetLayoutName() not in exclude]


def plotViewNode(scene):
    """The plot view node of CalibSeg's layouts (created when missing)."""
    for node in _nodes(scene, "vtkMRMLPlotViewNode"):
        if node.GetSingletonTag() == PLOT_VIEW or node.GetLayoutName() == PLOT_VIEW:
            return node
    node = slicer.vtkMRMLPlotViewNode()
    node.SetName(PLOT_VIEW)
    node.SetSingletonTag(PLOT_VIEW)
    node.SetLayoutName(PLOT_VIEW)
    node.SetLayoutLabel("P")
    scene.AddNode(node)
    return node


def linkViews(scene, names) -> list:
    """Link the slice composite nodes of views ``names`` (pan, zoom, slice offset)."""
    nodes = [compositeNode(scene, name) for name in names]
    for node in nodes:
        node.SetLinkedControl(True)
        node.SetHotLinkedControl(True)
    # Linked views share one view group, so the link applies between them only.
    for name in names:
        sliceNode(scene, name).SetViewGroup(0)
    return nodes


def _nodes(scene, className):
    collection = scene.GetNodesByClass(className)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def sliceNodeIfPresent(scene, name: str):
    """The slice node of view ``name``, or None (never created here)."""
    for node in _nodes(scene, "vtkMRMLSliceNode"):
        if node.GetLayoutName() == name:
            return node
    return None
