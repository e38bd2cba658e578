"""What runs around a Ray Tune search: the console, the live results tables, the Optuna study on disk."""
