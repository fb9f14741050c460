"""Pretraining objectives as plug-ins (one module each, resolved by name) and their shared targets."""
