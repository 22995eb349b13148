"""Measuring a segmentation: the metric families (`metrics`: pixel, Rand / V_rand / V_info,
warping), `unet evaluate` over files (`evaluate`) and the HTML report (`report`)."""
