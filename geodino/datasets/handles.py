"""Open raster files a dataset keeps per process: as many as its reads touch, within the fd limit.

A chip read from a file that is already open costs the read alone; reopening costs the open
(~1 ms for a local GeoTIFF: the header, the tile index, TorchGeo's CRS checks, a warped
view where one is needed; a round trip for a remote object). TorchGeo keeps 128 handles per
process, so a worker drawing chips from more files than that reopens nearly every one.
:class:`OpenFiles` keeps every file the process touches open, up to :func:`open_file_budget`
(derived from the process's file descriptor limit), and closes the least recently used one
beyond it.
"""

import logging
import resource
import weakref
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

#: File descriptors left to everything else in the process: loader pipes and shared-memory
#: batches, logs, checkpoints, sockets.
RESERVED_FDS = 256
#: Share of the remaining descriptors one dataset may hold; a process often reads several
#: (two modalities, a validation set).
DATASET_SHARE = 0.5
#: Handles kept at the least, whatever the limit.
MIN_OPEN_FILES = 16
#: Handles kept at the most: each holds its file's header and tile index, so this bounds
#: the memory of a process's handles even with an unlimited descriptor limit.
MAX_OPEN_FILES = 8192


def open_file_budget(files: int | None = None) -> int:
    """How many files one dataset keeps open in this process.

    Args:
        files: the files the dataset reads (None: unknown). No more handles than files are
            kept.

    Returns:
        :data:`DATASET_SHARE` of the soft ``RLIMIT_NOFILE`` above :data:`RESERVED_FDS`,
        between :data:`MIN_OPEN_FILES` and :data:`MAX_OPEN_FILES`, and at most ``files``.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = MAX_OPEN_FILES * 2 + RESERVED_FDS
    budget = int((soft - RESERVED_FDS) * DATASET_SHARE)
    budget = min(max(budget, MIN_OPEN_FILES), MAX_OPEN_FILES)
    return budget if files is None else max(1, min(budget, files))


class OpenFiles[H]:
    """Handles by path, opened on first use and closed least recently used first.

    Args:
        capacity: most handles kept open.
        open_file: opens a path.
        close_file: closes a handle (called on eviction and by :meth:`close`).

    Raises:
        ValueError: if ``capacity`` is below 1.
    """

    def __init__(
        self, capacity: int, open_file: Callable[[str], H], close_file: Callable[[H], None]
    ) -> None:
        """Start empty."""
        if capacity < 1:
            raise ValueError(f"an open-file cache needs a capacity of at least 1, not {capacity}")
        self.capacity = capacity
        self._open, self._close = open_file, close_file
        self._handles: OrderedDict[str, H] = OrderedDict()
        # Handles still open when the interpreter exits are closed before its teardown: GDAL
        # closing them afterwards calls back into a half-finalised Python, which prints
        # "Error in sys.excepthook" for every such file.
        self._finalizer = weakref.finalize(self, _close_all, self._handles, close_file)
        #: Files opened so far (first opens and reopens after eviction).
        self.opens = 0
        #: Handles closed to make room.
        self.evictions = 0

    def __getitem__(self, path: str) -> H:
        """The handle of a file, opened if it is not open.

        Args:
            path: the file.

        Returns:
            its handle.
        """
        handle = self._handles.get(path)
        if handle is not None:
            self._handles.move_to_end(path)
            return handle
        handle = self._open(path)
        self.opens += 1
        self._handles[path] = handle
        if len(self._handles) > self.capacity:
            _, oldest = self._handles.popitem(last=False)
            self.evictions += 1
            if self.evictions == 1:
                log.info(
                    "reading from more than %d files in this process: the least recently "
                    "read are closed and reopened when read again",
                    self.capacity,
                )
            self._close(oldest)
        return handle

    def __contains__(self, path: object) -> bool:
        """Whether a file is open.

        Args:
            path: the file.

        Returns:
            True if its handle is kept.
        """
        return path in self._handles

    def __len__(self) -> int:
        """Handles open now.

        Returns:
            their number.
        """
        return len(self._handles)

    def close(self) -> None:
        """Close every handle."""
        _close_all(self._handles, self._close)


def _close_all[H](handles: "OrderedDict[str, H]", close_file: Callable[[H], None]) -> None:
    """Close and forget every handle, least recently used first."""
    while handles:
        close_file(handles.popitem(last=False)[1])
