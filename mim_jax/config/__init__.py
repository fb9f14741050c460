"""Config defaults, validation with errors that name the field, and the shared CLI flag parsing."""
