"""haven: an emergency fund workflow engine for human-rights defenders at risk."""
