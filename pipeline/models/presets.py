"""Named presets for the backbones that lead unsupervised aerial segmentation (DINO, DINOv2,
DINOv3 incl. the satellite-trained SAT-493M ViT-L/16): timm name, patch, feature size, prefix
tokens, normalisation, licence, the file users download, and the ground sampling distance the
features are used at."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, ground_sampling_distance

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SAT493M = ((0.430, 0.411, 0.296), (0.213, 0.156, 0.143))
FB = "https://dl.fbaipublicfiles.com"
DINOV3_FORM = ("https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
               " (request access)")


@dataclass(frozen=True)
class BackbonePreset:
    """A recommended backbone and everything needed to use its weights correctly."""

    name: str
    timm_name: str
    family: str
    patch: int
    dim: int
    prefix_tokens: int  # class token + registers, dropped from the patch features
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gsd: float  # metres per pixel the features are used at (sets stego/feature input scale)
    licence: str
    file: str  # the original checkpoint's file name (glob where it carries a hash suffix)
    source: str  # where that file comes from

    @property
    def hub_repo(self) -> str:
        """The Hugging Face repository timm downloads this preset's safetensors from."""
        return f"timm/{self.timm_name}"

    def describe(self) -> dict[str, Any]:
        """Plain-data description (for `stego backbones --json` and model provenance)."""
        return {**asdict(self), "hub_repo": self.hub_repo}


def _dino(name: str, timm_name: str, dim: int, file: str, gsd: float = 0.1) -> BackbonePreset:
    stem = file.removesuffix(".pth")
    return BackbonePreset(name, timm_name, "DINO", 8, dim, 1, *IMAGENET, gsd, "Apache-2.0",
                          file, f"{FB}/dino/{stem}/{file}")


def _dinov2(name: str, timm_name: str, dim: int, size: str, reg: bool) -> BackbonePreset:
    file = f"dinov2_vit{size}14{'_reg4' if reg else ''}_pretrain.pth"
    return BackbonePreset(name, timm_name, "DINOv2", 14, dim, 5 if reg else 1, *IMAGENET, 0.1,
                          "Apache-2.0", file, f"{FB}/dinov2/dinov2_vit{size}14/{file}")


PRESETS: dict[str, BackbonePreset] = {p.name: p for p in (
    # STEGO's released Potsdam configuration (ViT-S/8), at 10 cm as in STEGO/IIC's Potsdam
    _dino("dino-s8", "vit_small_patch8_224.dino", 384, "dino_deitsmall8_pretrain.pth"),
    _dino("dino-b8", "vit_base_patch8_224.dino", 768, "dino_vitbase8_pretrain.pth"),
    _dinov2("dinov2-s14", "vit_small_patch14_dinov2.lvd142m", 384, "s", reg=False),
    _dinov2("dinov2-b14", "vit_base_patch14_dinov2.lvd142m", 768, "b", reg=False),
    _dinov2("dinov2-b14-reg", "vit_base_patch14_reg4_dinov2.lvd142m", 768, "b", reg=True),
    BackbonePreset("dinov3-s16", "vit_small_patch16_dinov3.lvd1689m", "DINOv3", 16, 384, 5,
                   *IMAGENET, 0.1, "DINOv3 License", "dinov3_vits16_pretrain_lvd1689m-*.pth",
                   DINOV3_FORM),
    # trained on 493 M Maxar satellite images at ~0.6 m
    BackbonePreset("dinov3-l16-sat", "vit_large_patch16_dinov3.sat493m", "DINOv3", 16, 1024, 5,
                   *SAT493M, 0.6, "DINOv3 License", "dinov3_vitl16_pretrain_sat493m-*.pth",
                   DINOV3_FORM),
)}


def get_preset(name: str) -> BackbonePreset | None:
    """The preset called ``name``, or None when ``name`` is not a preset (e.g. a timm name)."""
    return PRESETS.get(name)


def timm_name_of(name: str) -> str:
    """The timm model name for a preset name or a timm name (returned unchanged)."""
    preset = PRESETS.get(name)
    return preset.timm_name if preset else name


def preset_for_timm(timm_name: str) -> BackbonePreset | None:
    """The preset whose timm name is ``timm_name`` (with or without its pretrained tag)."""
    for p in PRESETS.values():
        if timm_name in (p.timm_name, p.timm_name.split(".")[0]):
            return p
    return None


def hub_cache_dir() -> Path:
    """Where huggingface_hub (and so timm) caches downloads on this machine."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "huggingface")
    return Path(home) / "hub"


def find_local(preset: BackbonePreset, search: list[Path]) -> str | None:
    """Where this machine has the preset's weights: the original file in one of ``search``,
    or timm's safetensors in the Hugging Face cache; None when nowhere."""
    for folder in search:
        hits = sorted(Path(folder).expanduser().glob(preset.file)) if Path(folder).is_dir() \
            else []
        if hits:
            return str(hits[0])
    repo = hub_cache_dir() / ("models--" + preset.hub_repo.replace("/", "--"))
    snapshots = sorted(repo.glob("snapshots/*/*.safetensors")) if repo.is_dir() else []
    return f"hub cache ({snapshots[0]})" if snapshots else None


def gsd_input_scale(backbone: str, gsd: float | str | None,
                    rasters: list[RasterInfo]) -> tuple[float | None, dict[str, Any] | None]:
    """The input scale that runs the backbone at the target ground sampling distance: ``gsd``
    (metres per pixel) when given, else the preset's own when ``backbone`` names a preset;
    ``None`` when neither applies (``gsd="native"``, or a timm name). The scale is the inputs'
    GSD over the target, never above 1 (the backbone never sees upsampled pixels), and the
    same for every input: their GSDs must agree within 5 %. Returns (scale, record)."""
    preset = PRESETS.get(backbone)
    target = gsd if gsd is not None else (preset.gsd if preset else None)
    if target is None or target == "native":
        return None, None
    own = [ground_sampling_distance(info) for info in rasters]
    for info, value in zip(rasters, own, strict=True):
        if value is None:
            if gsd is None:  # the preset's default cannot apply: run at the raster's own
                return None, {"target": target, "skipped": f"{info.path} has no CRS"}
            raise InputError(info.path, f"has no CRS, so --gsd {target} cannot be applied "
                             "(set stego.input_scale instead)")
    if max(own) > 1.05 * min(own):
        raise InputError("--gsd", "inputs have different ground sampling distances "
                         f"({min(own):.3g}-{max(own):.3g} m); fit them separately")
    scale = round(min(1.0, own[0] / float(target)), 4)
    return scale, {"target": float(target), "raster": round(own[0], 4), "input_scale": scale,
                   "from": "--gsd" if gsd is not None else f"preset {backbone}"}
