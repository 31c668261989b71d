"""What a user runs: the CLI, the study runner, notebook execution, the console, JupyterLab."""
