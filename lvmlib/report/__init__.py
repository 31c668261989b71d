"""HTML pages: rendered notebooks, the run page, the index, the run headline."""
