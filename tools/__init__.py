"""Developer tools (run by hand or in CI, never imported by product code: training/, scheduler/, ui/, app.py)."""
