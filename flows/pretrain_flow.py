"""The `pretrain` flow: open inputs -> read a crop pool -> DINO pretraining -> backbone dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.fit_flow import open_inputs
from pipeline.config import RunConfig, build_config
from pipeline.io.files import ensure_output_dir, input_checksum
from pipeline.io.raster import RasterInfo, Scaling
from pipeline.models.backbone_dir import write_backbone_dir
from pipeline.models.device import resolve_device
from pipeline.pretrain.loop import CropPool, backbone_description, pretrain, read_pool, recipe_key


@task(name="read-crop-pool")
def read_crop_pool(rasters: list[tuple[RasterInfo, Scaling]], cfg: RunConfig) -> CropPool:
    """Seeded crops from every input, read once."""
    return read_pool(rasters, cfg.pretrain)


@task(name="pretrain-dino")
def train(pool: CropPool, cfg: RunConfig, out_dir: str, inputs: list[dict[str, Any]],
          fresh: bool) -> dict[str, Any]:
    """DINO self-distillation within the budget, resuming from ``OUT/.pretrain``."""
    logger = get_run_logger()
    device = resolve_device(cfg.model.device)
    key = recipe_key(cfg.pretrain, inputs, device)
    nets, progress = pretrain(pool, cfg.pretrain, Path(out_dir) / ".pretrain", key, device,
                              log=logger.info, fresh=fresh)
    meta = backbone_description(nets, pool, cfg.pretrain, progress, inputs, device)
    write_backbone_dir(out_dir, nets.teacher.state_dict(), meta)
    return meta


@flow(name="pretrain")
def pretrain_flow(inputs: list[str], out_dir: str, config: dict[str, Any] | None = None,
                  fresh: bool = False) -> dict[str, Any]:
    """Pretrain a ViT on the inputs; write OUT/backbone.safetensors + OUT/backbone.json."""
    cfg = build_config(config or {})
    out = ensure_output_dir(out_dir)
    rasters = open_inputs(inputs, cfg)
    described = [{"path": str(Path(info.path).resolve()) if Path(info.path).exists()
                  else info.path, "identity": input_checksum(info.path),
                  "bands": list(info.bands), "scaling": scaling.to_dict()}
                 for info, scaling in rasters]
    pool = read_crop_pool(rasters, cfg)
    get_run_logger().info("pretrain: %d crops of %d px from %d raster(s)",
                          pool.images.shape[0], pool.images.shape[-1], len(inputs))
    meta = train(pool, cfg, str(out), described, fresh)
    losses = meta["losses"]
    return {"backbone_dir": str(out), "timm_name": meta["timm_name"],
            "overrides": meta["overrides"], "steps": meta["steps"],
            "seconds": meta["seconds"], "final_loss": losses[-1]["loss"] if losses else None,
            "weights_sha256": meta["weights_sha256"]}
