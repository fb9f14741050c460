"""Before and around a run on a cluster: AOT memory plans, TPU slice shapes, launch checks."""
