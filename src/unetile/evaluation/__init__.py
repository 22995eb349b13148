"""Measuring a segmentation: the metric families (`metrics`: pixel, Rand / V_rand / V_info,
warping), `unetile evaluate` over files (`evaluate`) and the HTML report (`report`)."""
