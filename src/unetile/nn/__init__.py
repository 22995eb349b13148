"""The network: `UNet` and its config, the geometry of valid convolutions (valid tile sizes,
halo), He initialisation, and the checkpoint file that stores a net with its metadata."""
