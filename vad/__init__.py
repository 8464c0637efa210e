"""The VAD library shared by the steps: backbones, models, thresholds, heatmaps, images, reports."""
