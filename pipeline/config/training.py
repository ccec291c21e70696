"""Config sections of the training commands: `fit` (sampling, clustering, backbone, GSD),
STEGO's head training and `pretrain` (part of ``pipeline.config.RunConfig``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.section import Section


class FitConfig(Section):
    """Sampling and clustering for `stego fit` (CLI flags override these)."""

    method: Literal["stego", "pixel-kmeans", "feature-kmeans", "threshold", "region",
                    "edge", "classifier"] = Field(
        default="stego", description="stego, a baseline (pixel-kmeans, feature-kmeans), a "
        "classic segmenter (threshold, region, edge) or classifier (few labels, --samples)")
    clusters: int = Field(default=5, description="classes (clusters) to discover")
    backbone: str = Field(default="vit_small_patch8_224.dino",
                          description="a preset (`stego backbones`) or a timm model name")
    gsd: float | Literal["native"] | None = Field(
        default=None,
        description="metres per pixel to run the backbone at (stego, feature-kmeans): input "
        "scale = the rasters' GSD / gsd, never above 1; null: a preset's own GSD when "
        "`backbone` names a preset, else the rasters' own; native: always the rasters' own",
    )
    weights: str = Field(default="auto", description="auto, hub, random or a local file")
    seed: int = Field(default=0, description="seeds crop sampling, k-means and head training")
    sample_pixels: int = Field(default=200_000, ge=1, description="pixels sampled for pixel-kmeans")
    crops: int = Field(default=64, ge=1, description="crops sampled for feature-kmeans")
    crop_size: int = Field(default=224, ge=16,
                           description="crop edge in pixels (multiple of patch)")
    iterations: int = Field(default=50, ge=1, description="k-means iterations")
    n_init: int = Field(
        default=10, ge=1,
        description="k-means initialisations; the best objective is kept (as scikit-learn's "
        "n_init)",
    )
    max_nodata_fraction: float = Field(default=0.5, ge=0, le=1,
                                       description="skip crops with more nodata")
    cache_dir: str | None = Field(
        default=None, description="STEGO feature cache; default MODEL_DIR/.cache"
    )

    @field_validator("gsd")
    @classmethod
    def _positive_gsd(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and not v > 0:
            raise ValueError("must be a positive number of metres per pixel, 'native' or null")
        return v


class StegoConfig(Section):
    """STEGO head training (defaults: the official Potsdam configuration)."""

    dim: int = Field(default=70, description="code dimension of the segmentation head")
    steps: int = Field(default=5000, ge=1, description="head training steps")
    batch_size: int = Field(default=16, ge=1, description="crops per training step")
    lr_head: float = Field(default=5e-4, description="Adam learning rate of the head")
    lr_probe: float = Field(default=5e-3, description="Adam learning rate of the cluster probe "
                            "(and the linear probe with --labels)")
    neighbors: int = Field(default=7, description="kNN positives drawn from the top-k")
    feature_samples: int = Field(default=11, description="S x S sampled points per image")
    neg_samples: int = Field(default=5, description="random (negative) partner images per "
                             "crop; the random term is their mean")
    knn_weight: float = Field(default=0.25, description="weight of the kNN correspondence term")
    self_weight: float = Field(default=0.67, description="weight of the same-crop term")
    rand_weight: float = Field(default=0.63, description="weight of the random-pair term")
    knn_shift: float = Field(default=0.02, description="paper shifts: subtracted from the "
                             "feature correlations of kNN pairs (higher: fewer attract)")
    self_shift: float = Field(default=0.08, description="paper shifts: the same for same-crop "
                              "pairs")
    rand_shift: float = Field(default=0.46, description="paper shifts: the same for random "
                              "pairs")
    shifts: Literal["auto", "paper", "calibrated"] = Field(
        default="auto",
        description="paper: the *_shift keys as given (the official values for DINO ViT-S/8); "
        "calibrated: set from the backbone's feature correlations on the training crops so "
        "that the attract_* shares of pairs attract; auto: paper for DINO ViT-S/8 weights, "
        "calibrated for every other backbone",
    )
    attract_self: float = Field(default=0.5, gt=0, lt=1,
                                description="calibrated: share of same-crop pairs that attract")
    attract_knn: float = Field(default=0.4, gt=0, lt=1,
                               description="calibrated: share of kNN pairs that attract")
    attract_rand: float = Field(default=0.3, gt=0, lt=1,
                                description="calibrated: share of random pairs that attract")
    pointwise: bool = Field(default=True, description="centre the feature correlations over "
                            "the partner's locations, then restore the global mean (official)")
    zero_clamp: bool = Field(default=True, description="clamp the code correlations below at 0 "
                             "(official)")
    stabilize: bool = Field(default=False, description="also clamp the code correlations above "
                            "at 0.8")
    feature_dropout: bool = Field(
        default=True, description="Dropout2d on the features used in the loss (official)"
    )
    extra_clusters: int = Field(default=0, description="probe clusters beyond fit.clusters "
                                "(scored as errors, or dropped by evaluate's stego_variant)")
    probe_refine_iterations: int = Field(
        default=20,
        description="after training, Lloyd iterations of cosine k-means on the codes starting "
        "from the probe (re-seeds dead clusters; 0 = the official probe as trained)",
    )
    alpha: float = Field(default=2.0, description="softmax(alpha * cos) class scores")
    input_scale: float = Field(
        default=1.0, description="resample input before the backbone (0.5: 5 cm -> 10 cm)"
    )
    crf: bool = Field(default=False, description="dense CRF on each tile at inference")
    log_every: int = Field(default=50, description="steps between the loss records of "
                           "training.json and loss.png")


class Normalisation(Section):
    """Fixed per-band mean and std (values in [0, 1]) for the pretraining inputs."""

    mean: tuple[float, float, float] = Field(description="per-band mean, bands in [0, 1]")
    std: tuple[float, float, float] = Field(description="per-band standard deviation (> 0)")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("every std must be > 0")
        return v


class PretrainConfig(Section):
    """Self-supervised DINO pretraining of a backbone (`stego pretrain`); CLI flags override."""

    backbone: str = Field(default="vit_small_patch8_224", description="timm ViT to pretrain")
    overrides: dict[str, Any] = Field(
        default={"depth": 4, "embed_dim": 192, "num_heads": 3},
        description="timm create_model overrides (a 4-block, width-192 ViT trains on CPUs)",
    )
    minutes: float | None = Field(default=5.0, description="budget in wall-clock minutes")
    steps: int | None = Field(
        default=None, description="budget in steps (exact and reproducible; wins over minutes)"
    )
    batch_size: int = Field(default=32, description="source crops per step")
    pool_crops: int = Field(default=512, description="crops read once and augmented each step")
    source_size: int = Field(default=256, description="pool crop edge in native pixels")
    global_size: int = Field(default=96, description="global view edge (2 per crop)")
    local_size: int = Field(default=48, description="local view edge")
    local_views: int = Field(default=4, description="local views per crop")
    global_scale: tuple[float, float] = Field(
        default=(0.25, 1.0), description="area share of the pool crop a global view covers")
    local_scale: tuple[float, float] = Field(
        default=(0.05, 0.4), description="area share of the pool crop a local view covers")
    jitter_p: float = Field(default=0.8, ge=0, le=1,
                            description="share of views with brightness/contrast/saturation jitter")
    grayscale_p: float = Field(default=0.2, ge=0, le=1, description="share of grayscale views")
    out_dim: int = Field(default=1024, description="DINO prototypes")
    objective: Literal["dino", "ibot"] = Field(
        default="dino", description="dino: image-level self-distillation only; ibot: plus "
        "masked patch-token distillation (shapes the patch features k-means and STEGO use)")
    patch_weight: float = Field(default=1.0, ge=0, description="ibot: weight of the patch loss")
    patch_out_dim: int = Field(default=1024, description="ibot: patch prototypes")
    mask_ratio: tuple[float, float] = Field(
        default=(0.1, 0.5), description="ibot: share of a masked view's patches masked")
    mask_probability: float = Field(
        default=0.5, ge=0, le=1, description="ibot: share of global views that are masked")
    lr: float = Field(default=1e-3, description="AdamW peak learning rate")
    min_lr: float = Field(default=1e-5, description="learning rate at the end of the cosine "
                          "schedule")
    warmup_fraction: float = Field(default=0.1, description="share of steps warming up lr")
    weight_decay: tuple[float, float] = Field(default=(0.04, 0.4), description="start, end")
    momentum: float = Field(default=0.99, description="teacher EMA momentum at the start")
    student_temp: float = Field(default=0.1, description="student softmax temperature")
    teacher_temp: tuple[float, float] = Field(
        default=(0.04, 0.04), description="teacher temperature: start and after warm-up"
    )
    center_momentum: float = Field(default=0.9, description="EMA momentum of the teacher "
                                   "output centre")
    clip_grad: float = Field(default=3.0, description="gradient norm clipping")
    max_nodata_fraction: float = Field(default=0.1, description="skip crops with more nodata")
    normalisation: Literal["pool", "pool-shared", "imagenet"] | Normalisation = Field(
        default="pool",
        description="input mean/std the backbone learns with (and later runs with): pool: the "
        "pool's own per-band mean and std; pool-shared: one mean and std over all its bands "
        "(keeps the bands' balance); imagenet: DINO's ImageNet values; or {mean: [r, g, b], "
        "std: [r, g, b]}",
    )
    normalisation_offset: float = Field(
        default=0.0,
        description="pool and pool-shared: subtract mean - offset * std instead of the mean, so "
        "the normalised inputs sit this many std above zero rather than centred",
    )
    seed: int = Field(default=0, description="seeds the crop pool, views and initial weights")
    checkpoint_every: int = Field(default=25, description="steps between checkpoints")
    log_every: int = Field(default=10, description="steps between progress lines and the "
                           "loss records of backbone.json")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.minutes is None and self.steps is None:
            raise ValueError("give a budget: minutes or steps")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError("minutes must be > 0")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if min(self.batch_size, self.pool_crops, self.checkpoint_every, self.log_every) < 1:
            raise ValueError("batch_size, pool_crops, checkpoint_every, log_every must be >= 1")
        if not self.local_size <= self.global_size <= self.source_size:
            raise ValueError("need local_size <= global_size <= source_size")
        return self
