"""The ``geodino`` command: LightningCLI subcommands plus geodino's own tools.

Heavy libraries are imported inside the commands so that ``geodino --help`` answers at once.
"""

import inspect
import json
import logging
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

#: Subcommands handled by LightningCLI.
LIGHTNING_COMMANDS = {
    "fit": "pretrain a model: geodino fit --config CFG.yaml [--key=value ...] [--ckpt_path last]",
    "validate": "run validation of a model on a data module",
    "test": "run the test loop of a model on a data module",
    "predict": "run prediction of a model on a data module",
}


def demo_data(
    out: Path = Path("geodino_demo/data"),
    seed: int = 0,
    scene_size: int = 512,
    overwrite: bool = False,
    series: bool = False,
) -> None:
    """Write the synthetic demo catalog: S2-like and S1 scenes, land-cover labels and an AOI.

    The catalog holds 13-band S2-like scenes in two UTM zones, S1 VV/VH scenes, land-cover
    labels and an AOI GeoPackage. With ``--series``, the seasonal time-series catalog
    instead (8 dated S2 and S1 scenes over a year, parcels whose class is their number of
    growing seasons; by default in geodino_demo/series, where configs/s2_series.yaml and
    configs/s1s2_series.yaml read it).

    Args:
        out: folder to write the catalog into.
        seed: seed of the scenes; the same seed writes the same catalog.
        scene_size: side of each scene in pixels.
        overwrite: rewrite an existing catalog.
        series: write the seasonal time-series catalog (docs/time-series.md).
    """
    if series:
        from geodino.demo.series import SERIES_ROOT, write_series_catalog

        root = SERIES_ROOT if out == Path("geodino_demo/data") else out
        seasonal = write_series_catalog(root, seed=seed, scene_size=scene_size)
        _say(
            f"seasonal catalog in {seasonal.root}: S2 {seasonal.s2}, S1 {seasonal.s1}, "
            f"parcels {seasonal.parcels}; {len(seasonal.dates)} dates"
        )
        return
    from geodino.demo.catalog import write_demo_catalog

    catalog = write_demo_catalog(out, seed=seed, scene_size=scene_size, overwrite=overwrite)
    _say(
        f"demo catalog in {catalog.root}: S2 {catalog.s2}, S1 {catalog.s1}, "
        f"labels {catalog.labels}, AOI {catalog.aoi}; classes {', '.join(catalog.classes)}"
    )


def catalog(
    url: str,
    out: Path = Path("catalog.parquet"),
    collections: list[str] | None = None,
    bbox: list[float] | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    max_items: int | None = None,
    overwrite: bool = False,
) -> None:
    """Search a STAC API and write the items as STAC-GeoParquet for geodino.datasets.STACCatalog.

    Usage: geodino catalog URL --out items.parquet --collections sentinel-2-l2a --bbox W S E N
    --datetime 2024-06-01/2024-08-31 [--max_cloud_cover 20]. The search is the only step that
    needs the STAC API; the file it writes is what training reads (needs pystac-client:
    pip install 'geodino[stac]').

    Args:
        url: the STAC API's root URL.
        out: the STAC-GeoParquet file to write.
        collections: collection ids to search.
        bbox: west south east north, in degrees.
        datetime: an instant or an interval (start/end).
        max_cloud_cover: keep items whose eo:cloud_cover is below this (percent).
        max_items: stop after this many items.
        overwrite: replace an existing file.
    """
    from geodino.errors import ConfigError
    from geodino.stac_search import search_items, write_geoparquet

    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite true to replace it.")
    items = []
    for item in search_items(url, collections, bbox, datetime, max_cloud_cover, max_items):
        items.append(item)
        if len(items) % 1000 == 0:
            _say(f"{len(items)} items ...")
    path = write_geoparquet(items, out)
    _say(f"{len(items)} items -> {path}")


def stats(
    config: Path,
    out: Path = Path("band_stats.yaml"),
    chips: int = 512,
    data_overrides: Sequence[str] = (),
) -> None:
    """Measure per-band mean, std and 2/98 percentiles of a config's data source.

    Nodata is ignored; the statistics are written as YAML/JSON that ``data.statistics`` can
    point to.

    Usage: geodino stats CFG [--out FILE] [--chips N] [--data.init_args.KEY=VALUE ...]; the
    ``--data...`` overrides change the config's data section as they do for ``geodino fit``.

    Args:
        config: a geodino config (its ``data`` section is used).
        out: statistics file to write (.yaml, .yml or .json).
        chips: number of chips of the training stream to measure.
        data_overrides: ``--data...`` arguments applied over the config's data section.
    """
    from geodino.config import datamodule_from_config

    datamodule = datamodule_from_config(config, data_overrides)
    datamodule.statistics_path = None
    datamodule.train_draw = None
    datamodule.setup_draws()
    statistics = datamodule.measure_statistics(chips)
    statistics.source = f"{chips} chips of {config}"
    path = statistics.save(out)
    rows = [
        f"  {b:>8}  mean {m:10.4g}  std {s:10.4g}  p2 {lo:10.4g}  p98 {hi:10.4g}"
        for b, m, s, lo, hi in zip(
            statistics.band_names,
            statistics.mean,
            statistics.std,
            statistics.p2,
            statistics.p98,
            strict=True,
        )
    ]
    _say("\n".join([f"band statistics of {statistics.pixels} valid pixels -> {path}", *rows]))


def demo(out: Path = Path("geodino_demo"), seed: int = 0, max_steps: int | None = None) -> None:
    """Run the whole story on the synthetic catalog: write, pretrain, evaluate and plot.

    Writes the catalog, pretrains a small ViT on it, evaluates it and writes plots.

    Args:
        out: folder for the catalog and the run.
        seed: seed of the catalog and of training.
        max_steps: training steps (default: the demo config's).
    """
    from geodino.demo import run_demo

    _say(run_demo(out, seed=seed, max_steps=max_steps))


def export(
    checkpoint: Path,
    out_dir: Path,
    student: bool = False,
    random_init: bool = False,
    seed: int = 0,
) -> None:
    """Export the pretrained backbone for TorchGeo and timm.

    Writes backbone.ckpt, backbone.safetensors and backbone.json (architecture, bands, band
    statistics, patch size).

    Args:
        checkpoint: a checkpoint written by ``geodino fit`` (or, with --random_init, an
            export folder).
        out_dir: folder to write the three files into.
        student: export the student instead of the EMA teacher.
        random_init: export the random-init twin instead: the same architecture, bands and
            band statistics at timm's initialisation (the floor knn/probe report beside it).
        seed: seed of the random initialisation.
    """
    from geodino.evaluation.baselines import random_init_export
    from geodino.export import export_backbone

    if random_init:
        paths = random_init_export(checkpoint, out_dir, seed)
    else:
        paths = export_backbone(checkpoint, out_dir, "student" if student else "teacher")
    _say("\n".join(f"{kind:>12}  {path}" for kind, path in paths.items()))


def embed(
    weights: Path,
    rasters: list[Path],
    out: Path = Path("embeddings.tif"),
    catalog: Path | None = None,
    items: list[str] | None = None,
    aoi: Path | None = None,
    bbox: list[float] | None = None,
    pca: int | None = None,
    chip_size: int | None = None,
    batch_size: int = 16,
    overwrite: bool = False,
    date_regex: str | None = None,
    date_format: str = "%Y%m%d",
) -> None:
    """Embed rasters or STAC items (inside an AOI) as GeoTIFFs of patch embeddings or a table.

    Usage: geodino embed WEIGHTS RASTER... --out OUT [--aoi AOI | --bbox W S E N] [--pca K],
    or geodino embed WEIGHTS --catalog ITEMS.parquet [--items ID...] --out OUT ... to embed
    items of a STAC catalog as rasters of the backbone's bands. A .tif OUT is a
    Cloud-Optimised GeoTIFF of patch embeddings on the raster's grid coarsened by the patch
    size (one pixel per patch, bands emb_000... or pc1...); a .gpkg (GeoPackage), .fgb
    (FlatGeobuf), .parquet (GeoParquet) or .geojson OUT holds chip polygons with their CLS
    embeddings as float32 columns emb_000... (or pc1...). An interrupted run resumes from
    OUT.parts/.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        rasters: GeoTIFFs with the backbone's bands, in its order (none with --catalog).
        out: .tif (one file per raster or item when several are given, OUT_<stem or item
            id>.tif), or .gpkg, .fgb, .parquet or .geojson (one table).
        catalog: a STAC-GeoParquet or ItemCollection JSON file, or a geodino config whose
            dataset is a STACCatalog (its filters and remote settings are used): embed its
            items, each on the grid of its finest band.
        items: ids of the catalog's items to embed (default: all, or those under the AOI).
        aoi: AOI polygons (GeoPackage, GeoJSON, Shapefile): embed only inside them.
        bbox: west south east north in degrees (EPSG:4326), instead of --aoi.
        pca: reduce the embeddings to this many principal components.
        chip_size: window side in pixels (default: the size the backbone was trained at).
        batch_size: windows per forward pass.
        overwrite: replace an existing output.
        date_regex: the rasters are one date stack of a time-series backbone, dated by this
            regex of their names (a ``(?P<date>...)`` group): OUT is a table with one
            embedding per window from every date (docs/time-series.md).
        date_format: ``strptime`` format of the date group.
    """
    from geodino.errors import ConfigError
    from geodino.inference import embed as run_embed
    from geodino.inference import embed_items

    if catalog is not None and rasters:
        raise ConfigError("give rasters or --catalog, not both.")
    if catalog is None and not rasters:
        raise ConfigError("give the rasters to embed, or --catalog ITEMS.parquet.")
    if items and catalog is None:
        raise ConfigError("--items names items of a STAC catalog: give --catalog too.")
    if bbox is not None and aoi is not None:
        raise ConfigError("give --aoi or --bbox, not both.")
    region: Any = aoi
    if bbox is not None:
        region = _bbox_aoi(bbox)
    options: dict[str, Any] = {
        "aoi": region,
        "pca": pca,
        "chip_size": chip_size,
        "batch_size": batch_size,
        "overwrite": overwrite,
    }
    if date_regex is not None:
        if catalog is not None:
            raise ConfigError("--date_regex embeds a date stack of rasters, not --catalog items.")
        from geodino.inference.series import embed_series

        table = embed_series(
            weights, rasters, out, date_regex, date_format, region, chip_size, batch_size, overwrite
        )
        _say(f"embeddings  {table}")
        return
    if catalog is not None:
        paths = embed_items(weights, catalog, out, items=items, **options)
    else:
        paths = run_embed(weights, rasters, out, **options)
    _say("\n".join(f"embeddings  {path}" for path in paths))


def _bbox_aoi(bbox: Sequence[float]) -> Any:
    """An AOI of one box in degrees (EPSG:4326), from ``--bbox W S E N``."""
    from geopandas import GeoDataFrame
    from shapely.geometry import box

    from geodino.errors import ConfigError

    if len(bbox) != 4 or not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
        raise ConfigError(
            f"--bbox {list(bbox)} must be west south east north in degrees, west < east and "
            "south < north (e.g. --bbox 6 45.5 8 46.5)."
        )
    return GeoDataFrame(geometry=[box(*bbox)], crs="EPSG:4326")


def knn(
    weights: Path,
    source: Path,
    out: Path = Path("eval_knn"),
    rasters: list[Path] | None = None,
    label_column: str = "label",
    group_column: str = "group_id",
    split_column: str | None = None,
    chip_size: int | None = None,
    band_names: list[str] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    repeats: int = 1,
    baselines: bool = True,
    ks: tuple[int, ...] = (10, 20, 100),
    temperature: float = 0.07,
    date_regex: str | None = None,
    date_format: str = "%Y%m%d",
) -> None:
    """k-NN evaluation of a frozen backbone on a labelled source, metrics as JSON and PNGs.

    Usage: geodino knn WEIGHTS SOURCE --out DIR [--rasters a.tif b.tif ...]. DINO protocol: cosine
    similarity of CLS features, temperature-weighted vote. Writes knn.json (accuracy,
    balanced accuracy, macro precision/recall/F1, per-class scores, confusion matrix per k,
    and the baselines' scores on the same split) and a confusion-matrix and per-class PNG
    per k.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled images: a folder with class folders and labels.txt
            (``root/<class>/<image>``), a JSON annotation file (``metainfo.classes`` and
            ``data_list`` entries with img_path, gt_label, group_id), or a vector file
            (GeoPackage, GeoJSON, Shapefile, GeoParquet) of labelled points or polygons over
            ``--rasters`` (one chip centred on each point, or on each polygon's inner point).
        out: folder for the JSON report and the PNGs.
        rasters: GeoTIFFs under vector labels (files or folders).
        label_column: class column of vector labels (names or integers).
        group_column: group column of vector labels: samples of one group never straddle
            train and test (JSON annotations use their ``group_id``).
        split_column: column of vector labels fixing the split ('train' vs anything else);
            without it the samples are split at random, stratified by class, by group.
        chip_size: chip side in pixels for vector labels (default: the training size).
        band_names: band names of the images or rasters, when the files do not name them
            (GDAL's "Band 1".."Band N" name nothing).
        test_fraction: share of samples (or groups) held out for testing.
        seed: seed of the split (and of the random baselines).
        repeats: grouped splits to draw (the first from --seed): the scores are then
            also reported as mean +- std over them.
        baselines: also score per-band statistics, random convolutional features and the
            architecture at random init on the same split(s) (--baselines false skips them).
        ks: neighbour counts, one report each.
        temperature: temperature of the vote weights.
        date_regex: the rasters are dated acquisitions (a regex of their names with a
            ``(?P<date>...)`` group): each label gets the time series of every date under it,
            for a time-series backbone (docs/time-series.md).
        date_format: ``strptime`` format of the date group.
    """
    from geodino.evaluation.protocols import run_knn, summary

    report = run_knn(
        weights,
        source,
        out,
        ks=ks,
        temperature=temperature,
        test_fraction=test_fraction,
        seed=seed,
        repeats=repeats,
        baselines=baselines,
        rasters=rasters,
        chip_size=chip_size,
        label_column=label_column,
        group_column=group_column,
        split_column=split_column,
        band_names=band_names,
        date_regex=date_regex,
        date_format=date_format,
    )
    _say(summary(report, out))


def probe(
    weights: Path,
    source: Path,
    out: Path = Path("eval_probe"),
    rasters: list[Path] | None = None,
    label_column: str = "label",
    group_column: str = "group_id",
    split_column: str | None = None,
    chip_size: int | None = None,
    band_names: list[str] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    repeats: int = 1,
    baselines: bool = True,
    cs: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0),
    folds: int = 3,
) -> None:
    """Linear-probe evaluation of a frozen backbone on a labelled source, as JSON and PNGs.

    Usage: geodino probe WEIGHTS SOURCE --out DIR [--rasters a.tif b.tif ...]. Logistic
    regression on standardised CLS features, C chosen by a cross-validated sweep on the
    training split.
    Writes probe.json (accuracy, balanced accuracy, macro precision/recall/F1, per-class
    scores, confusion matrix, the sweep, the baselines' scores on the same split),
    probe_confusion.png and probe_per_class.png.

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        source: the labelled images: a folder with class folders and labels.txt
            (``root/<class>/<image>``), a JSON annotation file (``metainfo.classes`` and
            ``data_list`` entries with img_path, gt_label, group_id), or a vector file
            (GeoPackage, GeoJSON, Shapefile, GeoParquet) of labelled points or polygons over
            ``--rasters`` (one chip centred on each point, or on each polygon's inner point).
        out: folder for the JSON report and the PNGs.
        rasters: GeoTIFFs under vector labels (files or folders).
        label_column: class column of vector labels (names or integers).
        group_column: group column of vector labels: samples of one group never straddle
            train and test (JSON annotations use their ``group_id``).
        split_column: column of vector labels fixing the split ('train' vs anything else);
            without it the samples are split at random, stratified by class, by group.
        chip_size: chip side in pixels for vector labels (default: the training size).
        band_names: band names of the images or rasters, when the files do not name them
            (GDAL's "Band 1".."Band N" name nothing).
        test_fraction: share of samples (or groups) held out for testing.
        seed: seed of the split (and of the random baselines).
        repeats: grouped splits to draw (the first from --seed): the scores are then
            also reported as mean +- std over them.
        baselines: also score per-band statistics, random convolutional features and the
            architecture at random init on the same split(s) (--baselines false skips them).
        cs: inverse regularisation strengths swept.
        folds: cross-validation folds of the sweep.
    """
    from geodino.evaluation.protocols import run_probe, summary

    report = run_probe(
        weights,
        source,
        out,
        cs=cs,
        folds=folds,
        test_fraction=test_fraction,
        seed=seed,
        repeats=repeats,
        baselines=baselines,
        rasters=rasters,
        chip_size=chip_size,
        label_column=label_column,
        group_column=group_column,
        split_column=split_column,
        band_names=band_names,
    )
    _say(summary(report, out))


def maps(
    weights: Path,
    raster: Path,
    out: Path = Path("maps"),
    aoi: Path | None = None,
    x: float | None = None,
    y: float | None = None,
    crs: str | None = None,
    chip_size: int | None = None,
    batch_size: int = 16,
) -> None:
    """PCA feature map of a raster and attention maps of a chip, as PNGs and a GeoTIFF.

    Usage: geodino maps WEIGHTS RASTER --out DIR [--aoi AOI] [--x X --y Y]. Writes
    pca_map.png and pca_map.tif (patch embeddings, PCA 1-3 as RGB, on the patch grid) and
    attention.png (one chip, its PCA map, attention of the class token and each register).

    Args:
        weights: a ``geodino export`` folder or a ``geodino fit`` checkpoint.
        raster: a GeoTIFF with the backbone's bands.
        out: folder for the maps.
        aoi: AOI polygons: map only inside them.
        x: x of the attention chip's centre (default: the centre of the map).
        y: y of the attention chip's centre.
        crs: CRS of x/y (default: the raster's), e.g. EPSG:4326.
        chip_size: window side in pixels (default: the size the backbone was trained at).
        batch_size: windows per forward pass.
    """
    from geodino.inference import write_maps

    point = (x, y) if x is not None and y is not None else None
    paths = write_maps(
        weights,
        raster,
        out,
        aoi=aoi,
        point=point,
        crs=crs,
        chip_size=chip_size,
        batch_size=batch_size,
    )
    _say("\n".join(f"{kind:>14}  {path}" for kind, path in paths.items()))


def similar(
    embeddings: Path,
    out: Path = Path("similarity.tif"),
    x: float | None = None,
    y: float | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    crs: str | None = None,
    top_k: int = 10,
    matches: Path | None = None,
) -> None:
    """Similarity heatmap GeoTIFF and top-k matches of a query point or chip.

    Usage: geodino similar EMB.tif --x X --y Y [--crs EPSG:4326] --out sim.tif, where
    EMB.tif comes from geodino embed (without --pca). Writes the cosine similarity of every
    patch to the query (a point, or the mean of a --bbox) on the same grid, and the top-k
    most similar patches (polygons with rank, similarity and embedding) as --matches.

    Args:
        embeddings: a patch-embedding GeoTIFF written by ``geodino embed``.
        out: similarity GeoTIFF to write.
        x: x of the query point.
        y: y of the query point.
        bbox: query box as [xmin, ymin, xmax, ymax]: its mean embedding is the query.
        crs: CRS of the query coordinates (default: the embeddings'), e.g. EPSG:4326.
        top_k: number of best matches to list.
        matches: table of the matches: .gpkg, .fgb, .parquet or .geojson (default:
            OUT_matches.geojson beside OUT).
    """
    from geodino.errors import DataError
    from geodino.inference import similarity_search

    if (x is None) != (y is None):
        raise DataError("give both --x and --y for a query point.")
    point = (x, y) if x is not None and y is not None else None
    heatmap, matches = similarity_search(
        embeddings, out, point=point, bbox=bbox, crs=crs, top_k=top_k, matches=matches
    )
    _say(f"similarity  {heatmap}\n   matches  {matches}")


#: Parameters of the tools that the command line fills by other means than an option.
_HIDDEN: set[str | int] = {"data_overrides"}

#: geodino's own subcommands: name -> function whose signature and docstring define its CLI.
TOOLS: dict[str, Callable[..., Any]] = {
    "demo": demo,
    "demo-data": demo_data,
    "catalog": catalog,
    "stats": stats,
    "export": export,
    "embed": embed,
    "knn": knn,
    "probe": probe,
    "maps": maps,
    "similar": similar,
}


class _UserFacing(logging.Filter):
    """Pass geodino's records and every library's warnings and errors.

    Libraries' INFO records stay out: rasterio's merge logs one for each file it skips when
    a chip only touches it (dozens a run), and Lightning prints its own through its handler.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is shown."""
        return record.levelno >= logging.WARNING or record.name.split(".")[0] == "geodino"


#: Lightning's messages that tell a geodino user nothing about their run: adverts, the
#: replacement of its default ModelCheckpoint by the task's atomic one (geodino's design),
#: its CSV fallback for a TensorBoard it does not ship, an internal deprecation under torch
#: 2.14, and the empty validation loader that geodino returns when no validation is asked for.
_LIGHTNING_NOISE = re.compile(
    r"💡 Tip:|returned in `LightningModule.configure_callbacks` will override|"
    r"`tensorboardX` has been removed|isinstance\(treespec, LeafSpec\)|"
    r"Total length of `\w+` across ranks is zero|LightningCLI's args parameter is intended"
)


class _NotLightningNoise(logging.Filter):
    """Drop the Lightning records that :data:`_LIGHTNING_NOISE` matches."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record is shown."""
        return not _LIGHTNING_NOISE.search(record.getMessage())


def _configure_logging() -> None:
    """Log geodino's INFO messages and every library's warnings, each once, on stderr.

    Lightning's adverts and notices about its own packaging are left out (as records of its
    rank-zero loggers and as Python warnings).
    """
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NotLightningNoise) for f in logger.filters):
            logger.addFilter(_NotLightningNoise())
    # warnings filters match from the start of the message
    warnings.filterwarnings("ignore", message=f".*(?:{_LIGHTNING_NOISE.pattern})")
    root = logging.getLogger()
    if not any(isinstance(f, _UserFacing) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_UserFacing())
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _say(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


def _usage() -> str:
    lines = ["usage: geodino COMMAND [options]   (geodino COMMAND --help for details)", ""]
    lines += [f"  {name:<10} {help}" for name, help in LIGHTNING_COMMANDS.items()]
    for name, func in TOOLS.items():
        summary = " ".join((func.__doc__ or "").split("\n\n")[0].split())
        lines.append(f"  {name:<10} {summary}")
    return "\n".join(lines)


def _list_options(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The options of a tool that take several values (list or tuple annotations)."""
    options = {}
    for param in inspect.signature(func).parameters.values():
        if param.default is inspect.Parameter.empty:
            continue
        annotation = param.annotation
        kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
        if any(typing.get_origin(a) in (list, tuple) for a in (annotation, *kinds)):
            options[param.name] = param
    return options


def _metavar(name: str) -> str:
    """``rasters`` -> ``RASTER [RASTER ...]``: one or more values, as the option reads them."""
    one = name.upper().removesuffix("S") or name.upper()
    return f"{one} [{one} ...]"


def _gather_lists(func: Callable[..., Any], args: list[str]) -> list[str]:
    """Turn ``--opt a b`` and ``--opt=a`` into the list jsonargparse reads (``["a", "b"]``).

    A single value that is already a list (``--opt '[a, b]'``) and jsonargparse's own
    ``--opt+ a`` pass unchanged.
    """
    options = {f"--{name}" for name in _list_options(func)}
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        if flag not in options:
            out.append(args[i])
            i += 1
            continue
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(args) and not _is_option(args[i]):
            values.append(args[i])
            i += 1
        if len(values) == 1 and values[0].lstrip().startswith("["):
            out += [flag, values[0]]
        else:
            out += [flag, json.dumps(values)]
    return out


def _is_option(arg: str) -> bool:
    return arg.startswith("-") and not arg[1:2].isdigit() and arg != "-"


def _data_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--data...`` overrides (as ``geodino fit`` takes them) from the other arguments."""
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--data" or arg.startswith(("--data.", "--data=")):
            takes_value = "=" not in arg and i + 1 < len(args)
            overrides += args[i : i + 2] if takes_value else [arg]
            i += 2 if takes_value else 1
        else:
            rest.append(arg)
            i += 1
    return rest, overrides


def tool_parser(name: str) -> "ArgumentParser":
    """The argument parser of one of geodino's own tools, built from its signature.

    Args:
        name: the tool (a key of :data:`TOOLS`).

    Returns:
        the parser; its usage shows list options as ``--rasters RASTER [RASTER ...]``.
    """
    from jsonargparse import ArgumentParser

    func = TOOLS[name]
    parser = ArgumentParser(prog=f"geodino {name}", description=func.__doc__, exit_on_error=True)
    parser.add_function_arguments(func, as_positional=True, skip=_HIDDEN)
    lists = _list_options(func)
    for action in parser._actions:
        if action.dest in lists:
            action.metavar = _metavar(action.dest)
    return parser


def parse_tool_args(name: str, args: list[str]) -> dict[str, Any]:
    """Parse the command line of one of geodino's own tools into its keyword arguments.

    List options take one value or several (``--rasters a.tif b.tif``), a YAML list
    (``--rasters '[a.tif, b.tif]'``) or repeats (``--rasters+ a.tif --rasters+ b.tif``);
    ``stats`` also takes ``--data.init_args...`` overrides of its config, as ``fit`` does.

    Args:
        name: the tool (a key of :data:`TOOLS`).
        args: its arguments.

    Returns:
        the keyword arguments of the tool's function.
    """
    func = TOOLS[name]
    params = list(inspect.signature(func).parameters.values())
    optional = [p for p in params if p.default is not inspect.Parameter.empty]
    optional = [p for p in optional if p.name not in _HIDDEN]
    positional = [p for p in params if p.default is inspect.Parameter.empty]
    overrides: list[str] = []
    if "data_overrides" in inspect.signature(func).parameters:
        args, overrides = _data_overrides(args)
    variadic = bool(positional) and getattr(positional[-1].annotation, "__origin__", None) is list
    if variadic and args and args[0] not in ("-h", "--help"):
        # `geodino embed W R1 R2 --out X`: the bare values after the fixed ones form the list
        fixed = len(positional) - 1
        values = []
        for value in args[fixed:]:
            if value.startswith("-"):
                break
            values.append(value)
        args = [*args[:fixed], json.dumps(values), *args[fixed + len(values) :]]
    bare = [a for a in args[: len(positional) + 1] if not a.startswith("-")]
    # `geodino demo-data OUT`: a leading bare value fills the first optional folder argument
    if not variadic and optional and len(bare) == len(positional) + 1 and len(args) >= len(bare):
        index = len(positional)
        args = [*args[:index], f"--{optional[0].name}", *args[index:]]
    cfg = tool_parser(name).parse_args(_gather_lists(func, args)).as_dict()
    if overrides:
        cfg["data_overrides"] = overrides
    return cfg


def _run_tool(name: str, args: list[str]) -> int:
    TOOLS[name](**parse_tool_args(name, args))
    return 0


def _run_lightning(args: list[str] | None) -> int:
    from geodino.config import run_lightning_cli

    run_lightning_cli(args)
    return 0


def _geodino_cause(error: BaseException) -> BaseException | None:
    """The GeoDINOError behind an exception (config parsers wrap the errors they meet)."""
    from geodino.errors import GeoDINOError

    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, GeoDINOError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the ``geodino`` command.

    Args:
        argv: command-line arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        the process exit status: 0 on success, 2 on bad input (with a one-paragraph message).
    """
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _say(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from geodino import __version__

        _say(f"geodino {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    _configure_logging()
    try:
        if command in LIGHTNING_COMMANDS:
            return _run_lightning(None if from_sys else argv)
        if command in TOOLS:
            return _run_tool(command, rest)
    except Exception as error:
        cause = _geodino_cause(error)
        if cause is None:
            raise
        sys.stderr.write(f"geodino {command}: error: {cause}\n")
        return 2
    sys.stderr.write(f"geodino: unknown command {command!r}\n\n{_usage()}\n")
    return 2
