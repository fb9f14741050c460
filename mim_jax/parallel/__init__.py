"""Device meshes, logical-axis sharding rules, multi-process start-up and chip peaks."""
