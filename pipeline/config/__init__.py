"""One typed run configuration, loaded from ``configs/*.yaml`` and overridable from the CLI."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.config.classic import RegionsConfig, ThresholdConfig
from pipeline.config.classifier import ClassifierConfig
from pipeline.config.section import Section
from pipeline.config.training import FitConfig, PretrainConfig, StegoConfig
from pipeline.errors import InputError

# scheme://host[:port], host[:port] or [ipv6]:port; ports 1-65535 (0 only for inproc)
SCHEDULER_ADDRESS = re.compile(
    r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)"
    r"(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d{2}|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}))?"
    r"|inproc://\S+")




class InputConfig(Section):
    """How pixels are read and scaled."""

    bands: list[int] | None = Field(
        default=None, description="1-based bands fed to the model; default: the first three"
    )
    percentiles: tuple[float, float] = Field(
        default=(2.0, 98.0), description="robust min/max for scaling non-uint8 input to [0, 1]"
    )

    @model_validator(mode="after")
    def _check(self) -> InputConfig:
        if self.bands is not None and (len(self.bands) == 0 or min(self.bands) < 1):
            raise ValueError("bands must be a non-empty list of 1-based band indices")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
        return self


class TilingConfig(Section):
    """Blocks (Dask tasks, aligned to output chunks) and model tiles inside them."""

    tile_size: int = Field(default=544, description="model tile edge in pixels")
    overlap: int = Field(default=32, description="pixels shared by neighbouring tiles (blended)")
    block_size: int | Literal["auto"] = Field(
        default=10240,
        description="block core edge (one Dask task each); a multiple of chunk_size (and "
        "ideally of the tile stride). auto = from the cluster: the largest edge <= 10240 that "
        "gives at least 4 blocks per worker thread (dask.workers x threads_per_worker, or the "
        "scheduler's threads when the run plans); a rerun keeps the edge of the unfinished run "
        "it resumes, on a cluster of any size (--fresh: this cluster's edge). With a "
        "dask.scheduler_address and no block_size set, segment uses auto",
    )
    chunk_size: int = Field(default=512, description="Zarr chunk and COG tile edge")
    batch_size: int | Literal["auto"] = Field(
        default=4, description="tiles per model call; auto = from free GPU memory (4 on CPU)"
    )

    @field_validator("block_size", mode="before")
    @classmethod
    def _block_size(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto" and not value.strip().isdigit():
            raise ValueError("block_size must be a multiple of chunk_size or 'auto'")
        return value

    @model_validator(mode="after")
    def _check(self) -> TilingConfig:
        if self.tile_size < 16 or self.overlap < 0 or self.overlap >= self.tile_size // 2 + 1:
            raise ValueError("need tile_size >= 16 and 0 <= overlap <= tile_size / 2")
        if self.chunk_size % 16 or self.chunk_size < 16:
            raise ValueError("chunk_size must be a positive multiple of 16")
        if self.block_size != "auto" and (self.block_size < self.chunk_size
                                          or self.block_size % self.chunk_size):
            raise ValueError("block_size must be a positive multiple of chunk_size or 'auto'")
        if self.batch_size != "auto" and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or 'auto'")
        return self

    def grid_block_size(self) -> int:
        """The block edge that decides a scene's tile grid outside a segment run's plan (fit's
        features at labelled pixels): only whether the scene is one block matters, and with
        ``auto`` that is so exactly when it fits in one chunk, whatever the cluster."""
        return self.chunk_size if self.block_size == "auto" else self.block_size


class VectorizeConfig(Section):
    """Polygon output."""

    enabled: bool = Field(default=True, description="write polygons (false: rasters only)")
    min_area_m2: float | None = Field(
        default=None, description="sieve regions smaller than this area (overrides min_pixels)"
    )
    min_pixels: int = Field(default=16, description="sieve regions smaller than this (pixels)")
    simplify_tolerance: float = Field(
        default=0.0, description="in metres (pixels without a CRS); 0 = off"
    )
    layer: str = Field(default="polygons", description="layer name in the polygon file")
    format: Literal["gpkg", "parquet", "fgb"] = Field(
        default="gpkg", description="GeoPackage, GeoParquet or FlatGeobuf"
    )


class OutputConfig(Section):
    """Raster outputs."""

    compress: Literal["DEFLATE", "LZW", "ZSTD"] = Field(
        default="DEFLATE", description="labels.tif compression (ZSTD needs GDAL built with it)")
    overview_resampling: Literal["nearest", "mode"] = Field(
        default="nearest", description="how the COG's internal overviews are computed; mode: "
        "the most frequent class of each cell")
    confidence: bool = Field(default=True, description="write the confidence array to Zarr")
    zarr_format: Literal[2, 3] = Field(
        default=2, description="labels.zarr format: 2 opens in every GDAL >= 3.4 (QGIS on "
        "Debian/Ubuntu LTS); 3 needs GDAL >= 3.11 (the v3 'bytes' codec)")


class StacConfig(Section):
    """The STAC item's time."""

    datetime: pydantic.AwareDatetime | None = Field(
        default=None, description="acquisition time (ISO 8601 with a time zone) for item.json; "
        "null = the input's TIFFTAG_DATETIME/ACQUISITIONDATETIME tag, else the processing time")


class DaskConfig(Section):
    """Where chunk-parallel work runs."""

    workers: int = Field(default=1, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(default=1, ge=1, description="threads of each "
                                    "LocalCluster worker (blocks run in parallel per worker)")
    processes: bool | Literal["auto"] = Field(
        default="auto",
        description="LocalCluster workers as processes; auto = only when workers > 1 (one "
        "in-process worker starts in well under a second and re-imports nothing)",
    )
    scheduler_address: str | None = Field(
        default=None, description="connect to an existing Dask scheduler instead"
    )
    host: str = Field(
        default="127.0.0.1", description="where the embedded LocalCluster (scheduler, workers, "
        "dashboards) listens; 127.0.0.1: this machine only. 0.0.0.0 opens the unauthenticated "
        "dashboard (task names, paths, logs) to the network")
    connect_timeout: float = Field(
        default=20.0, gt=0, allow_inf_nan=False,
        description="seconds to reach the scheduler; an unreachable one is refused within this")
    resources: dict[str, float] | None = Field(
        default=None,
        description="Dask resources each block task needs, e.g. {GPU: 1} (workers started with "
        "--resources GPU=1); null = {GPU: 1} when the model runs on CUDA",
    )
    scenes_at_once: int | Literal["auto"] = Field(
        default="auto", description="segment-folder: scenes segmented at the same time on the "
        "cluster; auto = 1 on the embedded LocalCluster (it already uses the machine), 4 with "
        "a scheduler_address")
    io_retries: int = Field(default=3, ge=0, description="retries of a block after an I/O error")
    retry_delay: float = Field(default=1.0, ge=0,
                               description="first retry delay (s), then doubled")

    @field_validator("scenes_at_once")
    @classmethod
    def _scenes(cls, value: int | str) -> int | str:
        if value != "auto" and int(value) < 1:
            raise ValueError("scenes_at_once must be >= 1 or 'auto'")
        return value

    @field_validator("scheduler_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not SCHEDULER_ADDRESS.fullmatch(value):
            raise ValueError("not a scheduler address like tcp://host:8786 (or tls://, ucx://, "
                             "inproc://; ports 1-65535)")
        return value


class RecoveryConfig(Section):
    """How a run that died is recovered from without a human."""

    lock_lease: float = Field(
        default=120.0, ge=1, allow_inf_nan=False,
        description="seconds the output lock (OUT_DIR/.stego.lock) stays valid without renewal; "
        "a live run renews it every third of this; a rerun from any host takes over a lock "
        "whose lease has lapsed (a killed client, a rescheduled pod). Hosts' clocks must agree "
        "to well within two thirds of it")


class ModelRuntimeConfig(Section):
    """Where and how the model runs."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where the model runs; auto = CUDA when available")
    crf: bool | None = Field(
        default=None, description="dense CRF on each tile's probabilities (STEGO's settings): "
        "STEGO switches its own; any other model gets it after the refinement, on the tile "
        "reduced 4x (the few-labels classifier: 1-8 points more accuracy, 15-20 % more "
        "segment time); null = the model's own (STEGO as fitted; else off)")
    flip: bool | None = Field(
        default=None, description="STEGO: average the codes of each tile and its horizontal "
        "mirror, as STEGO's own evaluation does (twice the backbone work); null = the model's")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="backbone autocast dtype; auto = bf16 on CUDA and on CPUs "
        "with native bf16 (AVX512-BF16/AMX), else float32"
    )
    compile: bool = Field(default=False, description="torch.compile the backbone (GPU runs)")
    refine: Literal["none", "regions"] | None = Field(
        default=None, description="regions: average class probabilities within SLIC "
        "superpixels of each tile before blending (object-based clean-up, any method); "
        "null: the model's own (regions for the few-labels classifier, where it measured "
        "better; none for the others)")
    refine_pixels: int | None = Field(
        default=None, ge=4, description="refine: mean superpixel area in pixels; null: the "
        "model's own (256 for the few-labels classifier, where it measured best; else 64)")
    probe: Literal["cluster", "linear"] = Field(
        default="cluster", description="STEGO: unsupervised clusters, or the linear probe "
        "trained from --labels (evaluation only)"
    )


class RunConfig(Section):
    """Everything a `fit` or `segment` run is configured by."""

    input: InputConfig = InputConfig()
    tiling: TilingConfig = TilingConfig()
    vectorize: VectorizeConfig = VectorizeConfig()
    output: OutputConfig = OutputConfig()
    stac: StacConfig = StacConfig()
    dask: DaskConfig = DaskConfig()
    fit: FitConfig = FitConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    regions: RegionsConfig = RegionsConfig()
    stego: StegoConfig = StegoConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    pretrain: PretrainConfig = PretrainConfig()
    model: ModelRuntimeConfig = ModelRuntimeConfig()
    recovery: RecoveryConfig = RecoveryConfig()


def _walk(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel]]:
    """The config keys along a validation error's location (pydantic's union-member tags such
    as ``literal['pool']`` dropped) and the config section the last key belongs to."""
    current: type[BaseModel] = RunConfig
    names: list[str] = []
    members: tuple[Any, ...] = ()  # the members of the union field just passed, if any
    for part in loc:
        tagged = [m for m in members if getattr(m, "__name__", None) == part]
        if tagged and isinstance(tagged[0], type) and issubclass(tagged[0], BaseModel):
            current, members = tagged[0], ()
            continue
        if members:  # a tag naming a non-model member of the union
            members = ()
            continue
        names.append(str(part))
        field = current.model_fields.get(str(part))
        ann = field.annotation if field is not None else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            current = ann
        elif typing.get_origin(ann) in (typing.Union, types.UnionType):
            members = typing.get_args(ann)
    return names, current


def _format_error(source: str, err: ValidationError) -> InputError:
    errors = err.errors()
    # a value that fits no member of a union: prefer a member's own complaint (a mapping with
    # a bad entry) over "not this type"; if there is none, say what each member wanted
    specific = [e for e in errors
                if not e["type"].endswith("_type") and e["type"] != "literal_error"]
    first = specific[0] if len(errors) > 1 and specific else errors[0]
    loc = tuple(first["loc"])
    dotted = ".".join(_walk(loc)[0]) or "(top level)"
    if first["type"] == "extra_forbidden":
        valid = ", ".join(sorted(_walk(loc[:-1])[1].model_fields))
        return InputError(source, f"unknown config key '{dotted}' (valid keys: {valid})")
    msg = str(first["msg"]).removeprefix("Value error, ")
    if len(errors) > 1 and not specific:
        wanted = dict.fromkeys(str(e["msg"]).removeprefix("Input should be ") for e in errors)
        msg = "Input should be " + "; or ".join(wanted)
    return InputError(source, f"config key '{dotted}': {msg}")


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a RunConfig, raising a one-line InputError on problems."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise _format_error(source, err) from None


def blocks_for_the_cluster(scheduler_address: str | None, tiling: TilingConfig) -> bool:
    """Whether a run on ``scheduler_address`` should split scenes for its threads: there is
    a scheduler and ``tiling`` (as loaded) does not set ``block_size``."""
    return bool(scheduler_address) and "block_size" not in tiling.model_fields_set


def blocks_follow_the_cluster(config: RunConfig) -> RunConfig:
    """With a scheduler address and ``tiling.block_size`` not set (neither in the config nor
    by an override), the config with ``block_size: auto``: on an existing cluster a scene is
    split for its worker threads unless the block size is pinned."""
    if blocks_for_the_cluster(config.dask.scheduler_address, config.tiling):
        config = config.model_copy(deep=True)
        config.tiling.block_size = "auto"
    return config


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML scalars/lists)."""
    result = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise InputError("--set", f"expected section.key=value, got '{item}'")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError("--set", f"'{key}' does not name a config key")
        node[parts[-1]] = _parse_scalar(value)
    return result


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise InputError(path, "config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(path, "a config file must be a mapping of sections")
        data = loaded
    if overrides:
        data = apply_overrides(data, overrides)
    return build_config(data, source)
