"""One-off decision studies, each a folder with its script and a README of its findings."""
