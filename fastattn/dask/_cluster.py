"""An embedded dask.distributed cluster on this machine: :func:`local_cluster`."""

_MISSING = ("fastattn.dask.local_cluster needs dask.distributed: pip install 'fastattn[dask]' "
            "(or pip install 'dask[array,distributed]')")


def _import_fastattn():
    """Run on each worker: the path of the fastattn it imports."""
    import fastattn

    return fastattn.__file__


def local_cluster(n_workers=2, threads_per_worker=1, memory_limit="auto", **cluster_options):
    """Start a ``LocalCluster`` of worker processes on the loopback interface, and a client.

    The client becomes dask's default scheduler, so ``fastattn.dask.attention(...)
    .compute()`` runs on the cluster.  Close both when done (``client.close()`` then
    ``cluster.close()``), or use them as context managers.

    Parameters
    ----------
    n_workers : int, default 2
        Worker processes.
    threads_per_worker : int, default 1
        Threads (concurrent tasks) per worker; each task runs its kernel on one
        thread unless ``fastattn.config_context(num_threads=...)`` says otherwise.
    memory_limit : str, int or float, default "auto"
        Per worker, as ``LocalCluster`` takes it ("300MiB", bytes, a fraction of RAM,
        "auto" = RAM / n_workers).  See docs/distributed.md for what a chunking needs.
    **cluster_options
        Passed on to ``distributed.LocalCluster`` (e.g. ``silence_logs``).  By default
        the workers are processes, everything listens on 127.0.0.1 only, and the
        dashboard is off.

    Returns
    -------
    cluster : distributed.LocalCluster
    client : distributed.Client

    Raises
    ------
    ImportError
        When dask.distributed is not installed, or the workers cannot import fastattn
        (with a source checkout, put its directory on ``PYTHONPATH``).

    Examples
    --------
    >>> import fastattn.dask
    >>> cluster, client = fastattn.dask.local_cluster(n_workers=1)  # doctest: +SKIP
    >>> with cluster, client:                                         # doctest: +SKIP
    ...     out = fastattn.dask.attention(q, k, v, causal=True).compute()
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ImportError(f"{_MISSING}; the import failed with: {error}") from error

    options = dict(processes=True, host="127.0.0.1", dashboard_address=None)
    if "dashboard_address" not in cluster_options and "scheduler_kwargs" not in cluster_options:
        # No dashboard; the scheduler's small HTTP server (health, metrics) takes a free
        # loopback port rather than 8787, which another cluster may hold.
        options["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0"}
    options.update(cluster_options)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker,
                           memory_limit=memory_limit, **options)
    try:
        client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    try:
        client.run(_import_fastattn)
    except ImportError as error:
        client.close()
        cluster.close()
        raise ImportError(f"the dask workers cannot import fastattn ({error}); install it "
                          f"or put the directory that holds the fastattn package on "
                          f"PYTHONPATH") from error
    return cluster, client
