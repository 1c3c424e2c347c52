"""highdicom speed work (filled in by the next commit)."""
