"""lvmlib — the logic behind lvm-study (latent vector models over Wikipedia chunk embeddings).

One module per concern: config, corpus/data, scan, model, losses, train, gates, metrics/evaluate,
runs, plots, runner/cli. Notebooks in notebooks/ tell the story and call into these modules.
"""

__version__ = "0.1.0"
