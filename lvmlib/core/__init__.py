"""Kit-wide basics every layer may use: errors, the params schema, run-directory I/O."""
