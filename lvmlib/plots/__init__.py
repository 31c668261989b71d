"""Figures for the reports: one function per figure, seaborn on tidy frames, one theme."""
