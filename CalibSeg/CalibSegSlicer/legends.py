"""Colour legends of the overlays: the colours a volume's display node maps its values to."""

from __future__ import annotations


def legend(volumeNode, steps: int = 8) -> dict | None:
    """Legend of a scalar volume's display: ``{"title", "low", "high", "colors": [#rrggbb]}``.

    ``low`` and ``high`` are the values at the two ends of the colour ramp (the display's
    window and level); ``colors`` samples the colour table evenly from ``low`` to ``high``.
    None when the node has no display or colour table.
    """
    if volumeNode is None:
        return None
    display = volumeNode.GetDisplayNode()
    colorNode = display.GetColorNode() if display is not None else None
    if colorNode is None or colorNode.GetNumberOfColors() == 0:
        return None
    window, level = display.GetWindow(), display.GetLevel()
    count = colorNode.GetNumberOfColors()
    colors = []
    for i in range(steps):
        index = round(i * (count - 1) / max(steps - 1, 1))
        rgba = [0.0, 0.0, 0.0, 0.0]
        colorNode.GetColor(index, rgba)
        colors.append("#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}"
                                    for c in rgba[:3]))
    return {"title": volumeNode.GetName(), "low": level - window / 2.0,
            "high": level + window / 2.0, "colors": colors}
