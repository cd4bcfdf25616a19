"""Process tuning for fleet's long-running loops (the CA server, load workers)."""

import gc


def tune_gc() -> None:
    """Freeze what start-up allocated and collect the young generation less often.

    Both loops allocate many short-lived objects per message; with the default thresholds the
    collector took a few percent of the CA's CPU, a tenth of that after this (bench/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
