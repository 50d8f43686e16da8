"""File footprints bucketed on a uniform grid: which files lie under a point or a chip.

Testing a chip against every footprint of a catalog costs time linear in the files (~4 us
per 1,000), paid on every chip and every draw; an R-tree query costs tens of microseconds
of Python. The buckets are plain arrays built once: a lookup reads the few footprints of
one or a few cells.
"""

import numpy as np

#: Grid cells per footprint at most (a sparse catalog gets coarser cells).
_CELLS_PER_BOX = 4


class FootprintGrid:
    """Axis-aligned boxes (xmin, ymin, xmax, ymax) in buckets of a uniform grid.

    Cells are about as large as a typical box, so a point falls in one cell holding the
    few boxes around it, and a chip smaller than a box spans at most four cells.

    Args:
        boxes: (n, 4) footprints.

    Raises:
        ValueError: if ``boxes`` is not (n, 4) with n >= 1 and finite.
    """

    def __init__(self, boxes: np.ndarray) -> None:
        """Bucket the boxes."""
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes):
            raise ValueError(f"footprints must be a non-empty (n, 4) array, not {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError("footprints must be finite")
        self.boxes = boxes
        n = len(boxes)
        self.x0, self.y0 = float(boxes[:, 0].min()), float(boxes[:, 1].min())
        span_x = float(boxes[:, 2].max()) - self.x0
        span_y = float(boxes[:, 3].max()) - self.y0
        # a typical box's size, or coarser where the boxes are sparse
        area = max(span_x * span_y / (_CELLS_PER_BOX * n), 0.0)
        cell = max(
            float(np.median(boxes[:, 2] - boxes[:, 0])),
            float(np.median(boxes[:, 3] - boxes[:, 1])),
            float(np.sqrt(area)),
        )
        self.cell = cell if cell > 0 else 1.0
        self.nx = int(span_x // self.cell) + 1
        self.ny = int(span_y // self.cell) + 1
        ix0, iy0 = self._cells(boxes[:, 0], boxes[:, 1])
        ix1, iy1 = self._cells(boxes[:, 2], boxes[:, 3])
        wide, tall = ix1 - ix0 + 1, iy1 - iy0 + 1
        count = wide * tall
        which = np.repeat(np.arange(n), count)
        # the k-th cell of each box, row by row over its cell range
        k = np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count)
        cells = (iy0[which] + k // wide[which]) * self.nx + ix0[which] + k % wide[which]
        order = np.lexsort((which, cells))  # by cell, then by box: first boxes first
        #: Box indices, grouped by cell.
        self.members = which[order].astype(np.int64)
        #: Where each cell's members start in :attr:`members` (``nx * ny + 1``).
        self.starts = np.searchsorted(cells[order], np.arange(self.nx * self.ny + 1))

    def _cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ix = np.clip(((x - self.x0) // self.cell).astype(np.int64), 0, self.nx - 1)
        iy = np.clip(((y - self.y0) // self.cell).astype(np.int64), 0, self.ny - 1)
        return ix, iy

    def containing(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The first box (lowest index) holding each point, ``xmin <= x < xmax`` likewise in y.

        Args:
            x: points' x.
            y: points' y.

        Returns:
            box indices, -1 where no box holds the point.
        """
        x, y = np.atleast_1d(np.asarray(x, np.float64)), np.atleast_1d(np.asarray(y, np.float64))
        ix, iy = self._cells(x, y)
        cells = iy * self.nx + ix
        first, counts = self.starts[cells], self.starts[cells + 1] - self.starts[cells]
        # every (point, candidate) pair, candidates of a cell in ascending box order
        owner = np.repeat(np.arange(len(x)), counts)
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        ids = self.members[np.repeat(first, counts) + offset]
        b, px, py = self.boxes[ids], x[owner], y[owner]
        hit = np.flatnonzero((b[:, 0] <= px) & (px < b[:, 2]) & (b[:, 1] <= py) & (py < b[:, 3]))
        found = np.full(len(x), -1, dtype=np.int64)
        # hits are in (point, box) order, so the first hit of a point is its lowest box
        points, at = np.unique(owner[hit], return_index=True)
        found[points] = ids[hit[at]]
        return found

    def overlapping(self, xmin: float, ymin: float, xmax: float, ymax: float) -> list[int]:
        """Boxes whose interior meets the box's interior (touching edges do not count).

        Runs in plain Python for a handful of candidates: NumPy's overhead on arrays this
        small exceeds the work (this lookup runs once per chip read).

        Args:
            xmin: the box's left edge.
            ymin: its bottom edge.
            xmax: its right edge.
            ymax: its top edge.

        Returns:
            box indices, ascending.
        """
        nx, cell, x0, y0 = self.nx, self.cell, self.x0, self.y0
        ix0 = min(max(int((xmin - x0) // cell), 0), nx - 1)
        ix1 = min(max(int((xmax - x0) // cell), 0), nx - 1)
        iy0 = min(max(int((ymin - y0) // cell), 0), self.ny - 1)
        iy1 = min(max(int((ymax - y0) // cell), 0), self.ny - 1)
        starts, members = self.starts, self.members
        if iy0 == iy1:
            row = iy0 * nx
            ids = members[starts[row + ix0] : starts[row + ix1 + 1]]
            if ix0 != ix1:
                ids = np.unique(ids)
        else:
            rows = range(iy0 * nx, iy1 * nx + 1, nx)
            ids = np.unique(
                np.concatenate([members[starts[r + ix0] : starts[r + ix1 + 1]] for r in rows])
            )
        return [
            i
            for i, (bx0, by0, bx1, by1) in zip(ids.tolist(), self.boxes[ids].tolist(), strict=True)
            if bx0 < xmax and bx1 > xmin and by0 < ymax and by1 > ymin
        ]
