"""lvmlib — the logic behind lvm-study (latent vector models over Wikipedia chunk embeddings).

Subpackages in layers, each importing only from those below it (docs/DESIGN.md, checked by `make lint`):
core <- metrics <- model <- data <- train <- eval <- analysis <- plots | report <- app.
Notebooks in notebooks/ tell the story and call into these modules.
"""

__version__ = "0.1.0"
