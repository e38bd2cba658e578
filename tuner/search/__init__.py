"""Everything that imports Ray: the driver (Tuner, searcher, scheduler), the cluster, the trainable, the
distributions' Ray and Optuna adapters, the searchers, and what watches a search (console, live tables, study)."""
