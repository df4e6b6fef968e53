"""Independent runs (a study's seeds, compare's method runs) one after another, or as Ray tasks.

`map_runs(fn, items)` returns `[fn(item) for item in items]`. With `ray=` it runs each call as a Ray task
that asks for `num_cpus` CPUs and uses exactly that many threads (torch, OpenMP, MKL), so a 2-CPU run is a
2-CPU run wherever Ray places it; results come back in the items' order. The answers equal the sequential
ones when each run uses the same number of threads either way (the tests run both with one thread).

`ray` is one of:
- "local": start a Ray instance on this machine for this command (all its CPUs), stopped at the end;
- "auto": join the cluster this machine belongs to (`ray start` ran here, or RAY_ADDRESS is set);
- an address: "HOST:PORT" of a cluster's head node (`ray start --head` prints it), or "ray://HOST:10001"
  (Ray Client).
An already initialized Ray in this process (e.g. `ray.init(num_cpus=2)` in a notebook) is used as it is.

Every worker imports this same `rlhf` source: the package folder is shipped with the tasks (Ray's
`runtime_env` `py_modules`), so nodes without the project checked out run the same code. Runs read and
write their run folders by path: on several machines those paths must be on a shared filesystem (the same
mount everywhere); the tasks run in the driver's working directory when it exists on the node.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from rlhf.errors import RLHFError
from rlhf.progress import console

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def default_cpus() -> int:
    """CPUs per run when not given: OMP_NUM_THREADS (the threads a run here would use), else 1."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _threads(n: int) -> None:
    import torch

    for var in THREAD_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)


def _task(fn: Callable, item, threads: int, cwd: str):
    """One run inside a Ray worker: its threads, the driver's working directory, then fn(item)."""
    _threads(threads)
    if Path(cwd).is_dir():
        os.chdir(cwd)
    return fn(item)


def _package_dir() -> str:
    import rlhf

    return str(Path(rlhf.__file__).resolve().parent)


def _check_reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers is an error now: Ray itself retries for ever."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RLHFError(f"--ray {address}: expected 'local', 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise RLHFError(f"--ray {address}: cannot connect to a Ray cluster (nothing answers at {hostport}: "
                        f"{exc.strerror or exc})") from None


def connect(ray_address: str):
    """Ray, initialized for `ray_address` ("local", "auto" or an address); a failure is one line naming it.
    Returns (the ray module, whether this call started it and must shut it down)."""
    try:
        import ray
    except ImportError:
        raise RLHFError(f"--ray {ray_address}: Ray is not installed (pip install 'rlhf[cluster]', "
                        "or pip install 'ray>=2.60')") from None
    if ray.is_initialized():
        return ray, False
    if ray_address not in ("local", "auto"):
        _check_reachable(ray_address)
    kwargs = dict(address=ray_address, runtime_env={"py_modules": [_package_dir()]}, log_to_driver=True,
                  configure_logging=False)
    if ray_address == "local":
        kwargs["include_dashboard"] = False  # only a new local instance takes it
        # Ray starts its workers at niceness 15; on a machine shared with other work the runs then barely get
        # a CPU. A local instance exists for these runs: normal priority (`ray start` takes the same variable)
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ...: all mean "no cluster there"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RLHFError(f"--ray {ray_address}: cannot connect to a Ray cluster ({first})") from None
    return ray, True


def map_runs(fn: Callable, items: Sequence, ray: str | None = None, num_cpus: int = 1) -> list:
    """[fn(item) for item in items], sequentially (ray=None) or as Ray tasks of `num_cpus` CPUs each.
    `fn` must be importable by name (a module-level function) and its items and results picklable."""
    items = list(items)
    if ray is None:
        return [fn(item) for item in items]
    if num_cpus < 1:
        raise RLHFError(f"--ray-cpus: expected a positive number of CPUs per run, got {num_cpus}")
    ray_mod, started = connect(ray)
    try:
        total = ray_mod.cluster_resources().get("CPU", 0)
        if total < num_cpus:
            raise RLHFError(f"--ray {ray}: each run asks for {num_cpus} CPUs, the cluster has {total:g}")
        console.print(f"{len(items)} runs as Ray tasks of {num_cpus} CPU(s) each (--ray {ray}: {total:g} CPUs)")
        task = ray_mod.remote(num_cpus=num_cpus, max_retries=0)(_task)
        refs = [task.remote(fn, item, num_cpus, os.getcwd()) for item in items]
        return ray_mod.get(refs)
    except ray_mod.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RLHFError):  # a run's own clear error, as it would be sequentially
            raise RLHFError(str(cause)) from None
        raise
    finally:
        if started:
            ray_mod.shutdown()
