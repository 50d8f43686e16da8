"""Planar geometry of chip placement: where a chip's centre may fall, and uniform draws there."""

from typing import Any

import numpy as np
import shapely

from geodino.aoi import polygonal


def erode_by_box(geometry: Any, half_w: float, half_h: float) -> Any:
    """Centres of the ``2 half_w x 2 half_h`` boxes that lie inside a polygonal geometry.

    This is the Minkowski erosion by the box: the geometry minus every point whose box crosses
    its boundary, i.e. minus each boundary segment swept by the box (a convex hexagon). A
    negative mitre ``buffer`` is not the same: it under-erodes edges that are not axis-aligned.

    Args:
        geometry: a polygonal geometry, or None.
        half_w: half the box width.
        half_h: half the box height.

    Returns:
        the eroded polygonal geometry, or None when nothing is left.
    """
    if geometry is None or geometry.is_empty:
        return None
    lines = shapely.get_parts(shapely.boundary(geometry))
    coords, which = shapely.get_coordinates(lines, return_index=True)
    same = which[1:] == which[:-1]
    segments = np.stack([coords[:-1][same], coords[1:][same]], axis=1)
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    points = (segments[:, :, None, :] + corners[None, None]).reshape(len(segments), 8, 2)
    swept = shapely.union_all(shapely.convex_hull(shapely.multipoints(points)))
    return polygonal(shapely.difference(geometry, swept))


def triangulate(geometry: Any) -> tuple[np.ndarray, np.ndarray]:
    """Triangles tiling a polygonal geometry, to draw points uniformly inside it.

    Args:
        geometry: a polygonal geometry.

    Returns:
        the triangles' corners ``(n, 3, 2)`` and their cumulative areas ``(n,)``.
    """
    parts = shapely.get_parts(shapely.constrained_delaunay_triangles(geometry))
    corners = shapely.get_coordinates(parts).reshape(len(parts), 4, 2)[:, :3]
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    areas = 0.5 * np.abs(
        (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    )
    keep = areas > 0
    return corners[keep], np.cumsum(areas[keep])
