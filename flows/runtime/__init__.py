"""How the flow runs on Prefect and Dask: the local cluster, submission windows, and the tuning that keeps
orchestration cheap (settings serialized once, frozen garbage collection, worker preloads)."""
