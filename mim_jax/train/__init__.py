"""The pretraining program: state, step, loop, checkpoints, resume, optimizer, fault tolerance, run logs."""
