"""Whole slides: chunked inputs, blocks of the output, OME-Zarr outputs, cells across blocks, Dask."""
