"""Self-supervised pretraining of a ViT backbone on the user's own rasters (DINO), for sites
where no pretrained weights can be downloaded: multi-crop views, the DINO objective, the
training loop with its budget and checkpoints, and the backbone directory it writes."""
