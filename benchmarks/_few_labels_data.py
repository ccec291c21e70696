"""few_labels.py's data: the labelled scenes (Potsdam-3, LoveDA tiles, the demo scene), their
per-pixel features computed once, the analyst-like sample designs, and the scores."""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
POTSDAM = (DATA / "isprs_potsdam" / "images" / "2_10_0_0_512_512.png",
           DATA / "isprs_potsdam" / "labels" / "2_10_0_0_512_512.png")
POTSDAM3 = {1: 0, 5: 0, 2: 1, 6: 1, 3: 2, 4: 2}  # value 0 (eroded borders): ignored
POTSDAM3_NAMES = ["roads and cars", "buildings and clutter", "vegetation and trees"]
LOVEDA = [(DATA / "loveda" / "images" / f"{i}.png", DATA / "loveda" / "labels" / f"{i}.png")
          for i in (0, 1)]
# tiling as `stego segment` / `stego fit` run it (RunConfig defaults): features of a pixel come
# from the 544² tile that owns it, exactly as fit computes the features of a labelled pixel
TILING = {"tile_size": 544, "overlap": 32, "block_size": 10240, "batch_size": 1}
DESIGNS = ["5 points", "20 points", "100 points", "3 polygons"]
ALL_DESIGNS = DESIGNS + ["6 polygons", "10 polygons"]  # more places: what the target needs
RADIUS = (5, 15)  # disc radius of a "polygon" in pixels
MAX_PIXELS_PER_FEATURE = 200  # ClassifierConfig.max_pixels_per_feature


@dataclass
class Scene:
    """One labelled image: raster, truth (H, W) int64 with -1 ignored, class names, valid
    pixels (not nodata), and later its features per feature set."""

    name: str
    info: object
    scaling: object
    truth: np.ndarray
    class_names: list[str]
    valid: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)  # (H*W, D) float32
    tile_seconds: dict[str, float] = field(default_factory=dict)  # features of one 544² tile
    image: np.ndarray | None = None  # (H, W, 3) in [0, 1]
    segments: np.ndarray | None = None  # SLIC superpixels (H, W)
    slic_seconds: float = 0.0

    @property
    def n_classes(self) -> int:
        """Classes scored on this scene."""
        return len(self.class_names)


def _open(path: Path) -> tuple:
    import warnings

    from pipeline.io.raster import compute_scaling, open_raster_info, read_window

    with warnings.catch_warnings():  # the PNGs carry no georeferencing
        warnings.simplefilter("ignore")
        info = open_raster_info(str(path), [1, 2, 3])
        scaling = compute_scaling(info)
        image, valid = read_window(info, scaling, 0, 0, info.height, info.width)
    return info, scaling, image.transpose(1, 2, 0), valid


def _read_label(path: Path) -> np.ndarray:
    import warnings

    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as ds:
            return ds.read(1)


def potsdam() -> list[Scene]:
    """Potsdam-3 on the 512² crop."""
    info, scaling, image, valid = _open(POTSDAM[0])
    raw = _read_label(POTSDAM[1])
    truth = np.full(raw.shape, -1, dtype=np.int64)
    for value, k in POTSDAM3.items():
        truth[raw == value] = k
    return [Scene("potsdam-3", info, scaling, truth, POTSDAM3_NAMES, valid, image=image)]


def _crop(scene: Scene, crop: int | None) -> Scene:
    """The scene's top-left ``crop``² pixels (features still from the whole raster's tiles)."""
    if crop:
        scene.truth, scene.valid = scene.truth[:crop, :crop], scene.valid[:crop, :crop]
        scene.image = scene.image[:crop, :crop]
        scene.name += f" (top-left {crop}²)"
    return scene


def loveda(crop: int | None = None) -> list[Scene]:
    """LoveDA tiles 0 and 1, each scored on the classes present in it (0 no-data ignored)."""
    with open(DATA / "loveda" / "classes.csv") as f:
        names = {int(r["value"]): r["name"] for r in csv.DictReader(f)}
    out = []
    for i, (img, lab) in enumerate(LOVEDA):
        info, scaling, image, valid = _open(img)
        raw = _read_label(lab)[:crop, :crop]
        image, valid = image[:crop, :crop], valid[:crop, :crop]
        present = [int(v) for v in np.unique(raw) if v != 0]
        truth = np.full(raw.shape, -1, dtype=np.int64)
        for k, v in enumerate(present):
            truth[raw == v] = k
        out.append(Scene(f"loveda-{i}" + (f" (top-left {crop}²)" if crop else ""), info,
                         scaling, truth, [names[v] for v in present], valid, image=image))
    return out


def demo(size: int = 1024, seed: int = 0, work: Path | None = None,
         crop: int | None = None) -> list[Scene]:
    """The generated demo scene (as `stego demo-scene --size SIZE --seed SEED` writes it)."""
    from pipeline.demo import DEMO_CLASSES, NODATA_LABEL, write_demo_scene

    work = work or Path(tempfile.mkdtemp(prefix="stego-few-labels-"))
    image_path, labels_path = write_demo_scene(work / f"demo_{size}.tif", size=size, seed=seed)
    info, scaling, image, valid = _open(image_path)
    raw = _read_label(labels_path)
    truth = np.where(raw == NODATA_LABEL, -1, raw.astype(np.int64))
    return [_crop(Scene(f"demo-{size}", info, scaling, truth, list(DEMO_CLASSES), valid,
                        image=image), crop)]


def missing_files(sets: list[str]) -> list[Path]:
    """Shared data files the chosen sets need and this checkout lacks."""
    need = {"potsdam": list(POTSDAM), "loveda": [p for pair in LOVEDA for p in pair]}
    return [p for s in sets for p in need.get(s, []) if not p.exists()]


def classifier_model(net, info, radii: list[int], codes_head=None, input_scale: float = 1.0):
    """A SampleClassifier whose ``pixel_features`` are the features (no head yet)."""
    import torch

    from pipeline.models.classifier import SampleClassifier

    empty = {k: torch.zeros(1) for k in ("linear.mean", "linear.std", "linear.weight",
                                         "linear.bias")}
    return SampleClassifier(net, info, "linear", empty, ["a", "b"], [(0, 0, 0)] * 2, radii,
                            input_scale=input_scale, codes_head=codes_head)


def compute_features(scene: Scene, key: str, model) -> None:
    """Every pixel's features (H*W, D), each from the 544² tile that owns it, through fit's
    own :func:`sample_features` (labelled pixels = all pixels), and the time of one tile."""
    from pipeline.fit.samples_fit import sample_features
    from pipeline.io.samples import RasterSamples

    h, w = scene.truth.shape
    rows = np.repeat(np.arange(h, dtype=np.int64), w)
    cols = np.tile(np.arange(w, dtype=np.int64), h)
    zeros = np.zeros(h * w, dtype=np.int64)
    everything = SimpleNamespace(per_raster=[RasterSamples(scene.info.path, rows, cols, zeros,
                                                           zeros)])
    t = TILING
    t0 = time.perf_counter()
    scene.features[key] = sample_features(model, [(scene.info, scene.scaling)], everything,
                                          t["tile_size"], t["overlap"], t["block_size"],
                                          t["batch_size"], log=lambda _: None)
    elapsed = time.perf_counter() - t0
    scene.tile_seconds[key] = tile_seconds(scene, model)
    print(f"  {scene.name}: {key} features {scene.features[key].shape} in {elapsed:.1f} s "
          f"({scene.tile_seconds[key]:.2f} s per 544² tile)", flush=True)


def derive_features(scene: Scene, key: str, source: str, n_cols: int, model) -> None:
    """The first ``n_cols`` features of ``source`` (bands, then local statistics: the same
    columns a model without backbone computes), and that model's time per tile (``model``
    None: bands only, nothing to compute)."""
    scene.features[key] = np.ascontiguousarray(scene.features[source][:, :n_cols])
    scene.tile_seconds[key] = tile_seconds(scene, model) if model is not None else 0.0


def tile_seconds(scene: Scene, model) -> float:
    """Seconds ``model.pixel_features`` takes on one 544² tile (after a warm-up run)."""
    import torch

    from pipeline.io.raster import read_window

    size = TILING["tile_size"]
    tile, _ = read_window(scene.info, scene.scaling, 0, 0, size, size)
    x = torch.from_numpy(tile)[None]
    with torch.no_grad():
        model.pixel_features(x)
        t0 = time.perf_counter()
        model.pixel_features(x)
    return time.perf_counter() - t0


def owner_tile_count(scene: Scene, idx: np.ndarray) -> int:
    """544² tiles `stego fit` runs to get the features of the labelled pixels ``idx``."""
    from pipeline.models.at_pixels import owner_tiles
    from pipeline.tiling import grid_for_raster, snap_to_patch

    w = scene.truth.shape[1]
    tile, overlap = snap_to_patch(TILING["tile_size"], TILING["overlap"], 8)
    grid = grid_for_raster(tile, overlap, scene.info.height, scene.info.width,
                           TILING["block_size"])
    r, c = np.divmod(idx, w)
    keys = np.stack([owner_tiles(r, grid.origin, grid.stride, overlap),
                     owner_tiles(c, grid.origin, grid.stride, overlap)], 1)
    return len(np.unique(keys, axis=0))


def add_superpixels(scene: Scene, pixels: int = 256, iterations: int | None = None) -> None:
    """SLIC superpixels of the whole scene, as `--refine regions` draws them on a tile (256
    px: the classifier's own ``refine_pixels``; 64, 128 and 256 were compared), in horizontal
    strips as high as segment's (a tile's half): segment's cuts, at their density."""
    from pipeline.models.refine import SLIC_STRIPS, superpixels

    t0 = time.perf_counter()
    strip = TILING["tile_size"] / SLIC_STRIPS
    scene.segments = superpixels(scene.image, pixels, strips=max(1, round(len(scene.image)
                                                                          / strip)),
                                 **({} if iterations is None else {"iterations": iterations}))
    scene.slic_seconds = time.perf_counter() - t0


def draw(scene: Scene, design: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training pixels (flat indices) and their classes for one sample design and seed:
    ``N points`` random labelled pixels per class, or ``N polygons`` per class drawn like an
    analyst: discs of radius 5-15 px around random centres inside the class, the disc's
    pixels of that class, at most 200 pixels per disc."""
    rng = np.random.default_rng([seed, ALL_DESIGNS.index(design)])
    flat = scene.truth.ravel()
    h, w = scene.truth.shape
    idx = []
    for k in range(scene.n_classes):
        members = np.flatnonzero(flat == k)
        if design.endswith("points"):
            n = min(int(design.split()[0]), len(members))
            idx.append(rng.choice(members, n, replace=False))
            continue
        for _ in range(int(design.split()[0])):
            cr, cc = divmod(int(rng.choice(members)), w)
            r = int(rng.integers(RADIUS[0], RADIUS[1] + 1))
            rr, cc2 = np.mgrid[max(0, cr - r):min(h, cr + r + 1), max(0, cc - r):min(w, cc + r + 1)]
            disc = ((rr - cr) ** 2 + (cc2 - cc) ** 2 <= r * r)
            pix = (rr * w + cc2)[disc]
            pix = pix[flat[pix] == k]
            if len(pix) > MAX_PIXELS_PER_FEATURE:
                pix = rng.choice(pix, MAX_PIXELS_PER_FEATURE, replace=False)
            idx.append(pix)
    out = np.unique(np.concatenate(idx))
    return out, flat[out]


def score(scene: Scene, probs: np.ndarray, train_idx: np.ndarray) -> tuple[float, float]:
    """Accuracy and mIoU (%) over every labelled pixel that is not a training pixel."""
    flat = scene.truth.ravel()
    keep = flat >= 0
    keep[train_idx] = False
    k = scene.n_classes
    pred = probs.argmax(1)[keep]
    conf = np.bincount(pred * k + flat[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(conf).astype(np.float64)
    present = conf.sum(0) > 0
    iou = tp / np.maximum(conf.sum(0) + conf.sum(1) - tp, 1)
    return 100 * tp.sum() / conf.sum(), 100 * float(iou[present].mean())
