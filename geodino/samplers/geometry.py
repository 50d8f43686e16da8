"""Planar geometry of chip placement: where a chip's centre may fall, and uniform draws there.

A catalog's footprint is often thousands of separate tiles. The erosion and growth below work
on each part of a geometry on its own (a box-shaped chip inside the geometry lies inside one
of its parts), with axis-aligned rectangles handled in closed form, so that their cost grows
with the number of parts instead of with a union over all of them. Results are normalised
(:func:`shapely.normalize`): the same whichever way they were computed.
"""

from typing import Any

import numpy as np
import shapely

from geodino.aoi import polygonal


def _rectangles(parts: np.ndarray) -> np.ndarray:
    """Which polygons are axis-aligned rectangles without holes or extra vertices."""
    xmin, ymin, xmax, ymax = shapely.bounds(parts).T
    box_area = (xmax - xmin) * (ymax - ymin)
    simple = (shapely.get_num_coordinates(parts) == 5) & (
        shapely.get_num_interior_rings(parts) == 0
    )
    rect: np.ndarray = simple & np.isclose(shapely.area(parts), box_area, rtol=1e-12, atol=0)
    return rect


def _assemble(pieces: list[np.ndarray]) -> Any:
    """Disjoint polygons as one normalised polygonal geometry, or None when there are none."""
    polygons = np.concatenate(pieces)
    if not len(polygons):
        return None
    if len(polygons) == 1:
        return shapely.normalize(polygons[0])
    return shapely.normalize(shapely.multipolygons(polygons))


def _erode_general(geometry: Any, half_w: float, half_h: float) -> Any:
    """The erosion of any polygonal geometry: minus its boundary segments swept by the box."""
    lines = shapely.get_parts(shapely.boundary(geometry))
    coords, which = shapely.get_coordinates(lines, return_index=True)
    same = which[1:] == which[:-1]
    segments = np.stack([coords[:-1][same], coords[1:][same]], axis=1)
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    points = (segments[:, :, None, :] + corners[None, None]).reshape(len(segments), 8, 2)
    swept = shapely.union_all(shapely.convex_hull(shapely.multipoints(points)))
    return polygonal(shapely.difference(geometry, swept))


def erode_by_box(geometry: Any, half_w: float, half_h: float) -> Any:
    """Centres of the ``2 half_w x 2 half_h`` boxes that lie inside a polygonal geometry.

    This is the Minkowski erosion by the box: the geometry minus every point whose box crosses
    its boundary, i.e. minus each boundary segment swept by the box (a convex hexagon). A
    negative mitre ``buffer`` is not the same: it under-erodes edges that are not axis-aligned.
    Each part is eroded on its own (a box inside the geometry lies inside one part); a
    rectangle's erosion is the rectangle shrunk by the box.

    Args:
        geometry: a polygonal geometry, or None.
        half_w: half the box width.
        half_h: half the box height.

    Returns:
        the eroded polygonal geometry (normalised), or None when nothing is left.
    """
    if geometry is None or geometry.is_empty:
        return None
    parts = shapely.get_parts(geometry)
    rect = _rectangles(parts)
    xmin, ymin, xmax, ymax = shapely.bounds(parts[rect]).T
    fits = (xmax - xmin > 2 * half_w) & (ymax - ymin > 2 * half_h)
    boxes = shapely.box(
        xmin[fits] + half_w, ymin[fits] + half_h, xmax[fits] - half_w, ymax[fits] - half_h
    )
    pieces = [np.asarray(boxes)]
    if not rect.all():
        others = parts[~rect]
        general = _erode_general(
            others[0] if len(others) == 1 else shapely.multipolygons(others), half_w, half_h
        )
        if general is not None:
            pieces.append(shapely.get_parts(general))
    return _assemble(pieces)


def grow(geometry: Any, distance: float) -> Any:
    """A polygonal geometry grown by ``distance`` with mitred corners (normalised).

    Parts are grown on their own; the union is only taken where grown parts meet.

    Args:
        geometry: a polygonal geometry.
        distance: how far each edge moves out.

    Returns:
        the grown geometry.
    """
    parts = shapely.buffer(shapely.get_parts(geometry), distance, join_style="mitre")
    if len(parts) > 1:
        tree = shapely.STRtree(parts)
        left, right = tree.query(parts, predicate="intersects")
        if (left != right).any():
            return shapely.normalize(shapely.union_all(parts))
    return _assemble([parts])


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
