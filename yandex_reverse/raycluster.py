"""Steps 5 and 7.3 on a Ray cluster: the flags, and joining or starting a cluster quietly.

``--executor local`` (the default) is each step's own code on this machine.
``--executor ray`` runs the step's heavy part as Ray tasks or actors: with no
``--ray-address`` an embedded Ray starts on this machine (and stops with the
step), with one the step joins a running cluster (``ray start --head`` ...).
Either way the step's process stays the driver: the only writer of its
SQLite DB and the only one that names final files.

Ray is an optional extra (``pip install .[ray]``): it is imported only here,
and only when ``--executor ray`` is asked for.

Ray is chatty: its C++ core prints a line at start and its driver prints every
worker death and retry on the terminal. The step's terminal shows only its own
progress and summary, so while Ray runs:

* ``RAY_BACKEND_LOG_LEVEL`` defaults to ``fatal`` (a user's own value wins);
* the one line the core writes to file descriptor 2 while it starts goes to
  the step's log file (or nowhere);
* the driver's messages about workers (``(raylet) A worker died ...``) and
  Ray's own loggers go to the step's log file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import StepFailed, UsageError, log, one_line
from .i18n import _, ngettext

EXECUTORS = ("local", "ray")
INSTALL_HINT = 'pip install ".[ray]" (or: pip install "ray[data]>=2.60")'
# Passed to workers on a cluster (an embedded Ray inherits the driver's environment).
FORWARDED_ENV = ("YR_PYIQA_PRETRAINED", "HF_HUB_OFFLINE", "TORCH_HOME", "HF_HOME")


def add_flags(parser: argparse.ArgumentParser, *, gpus: bool = False) -> None:
    """``--executor``, ``--ray-address`` (and ``--gpus-per-worker`` for 7.3)."""
    group = parser.add_argument_group(_("scale-out on a Ray cluster (see docs/scale-out.md)"))
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help=_(
            "local: this machine, as always (default); ray: Ray tasks, on an embedded Ray "
            "on this machine or on the cluster at --ray-address (needs {hint})"
        ).format(hint=INSTALL_HINT),
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDR",
        help=_(
            "join this running Ray cluster (e.g. 10.0.0.5:6379, or 'auto' for the one "
            "'ray start' runs here); default: start an embedded Ray on this machine"
        ),
    )
    if gpus:
        group.add_argument(
            "--gpus-per-worker",
            type=float,
            metavar="N",
            help=_(
                "GPUs for each scoring actor (fractions share a GPU: 0.5 = two actors per "
                "GPU); default: 1 where the cluster has GPUs, else CPU actors"
            ),
        )


def check_flags(args: argparse.Namespace) -> None:
    """Usage errors (exit 2): Ray flags without ``--executor ray``; Ray not installed."""
    gpus = getattr(args, "gpus_per_worker", None)
    if args.executor != "ray":
        if args.ray_address or gpus is not None:
            flag = "--ray-address" if args.ray_address else "--gpus-per-worker"
            raise UsageError(_("{flag} needs --executor ray").format(flag=flag))
        return
    if gpus is not None and gpus < 0:
        raise UsageError(_("--gpus-per-worker must not be negative"))
    require_ray()


def require_ray() -> Any:
    """The ``ray`` module, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            _("--executor ray needs Ray, which is not installed: {hint}").format(hint=INSTALL_HINT)
        ) from None
    return ray


@dataclass(frozen=True)
class Cluster:
    """What the driver learned on joining: for the plan and the summary."""

    address: str | None  # None: the embedded Ray this step started
    cpus: int
    gpus: float
    nodes: int

    def describe(self) -> str:
        where = (
            _("cluster {address}").format(address=self.address)
            if self.address
            else _("embedded Ray on this machine")
        )
        nodes = ngettext("{n} node", "{n} nodes", self.nodes).format(n=self.nodes)
        cpus = ngettext("{n} CPU", "{n} CPUs", self.cpus).format(n=self.cpus)
        text = f"{where}: {nodes}, {cpus}"
        return text + (", " + _("{n:g} GPU(s)").format(n=self.gpus) if self.gpus else "")


@contextmanager
def session(address: str | None, *, num_cpus: int | None = None) -> Iterator[Cluster]:
    """Ray for the length of a step: joined (``address``) or embedded; shut down after.

    An already initialised Ray (a caller's own) is used as it is and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield _cluster(ray, address)
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": False,
    }
    if address:
        # Ray 2.60 clusters check a token (``ray start`` writes ~/.ray/auth_token), but a
        # driver joining one only sends it in token mode: use it where there is one.
        if "RAY_AUTH_MODE" not in os.environ and _has_token():
            os.environ["RAY_AUTH_MODE"] = "token"
            with suppress(ImportError, AttributeError):  # Ray read its config at import
                from ray._private.authentication.authentication_token_setup import (
                    _enable_token_auth,
                )

                _enable_token_auth()
        # Workers on other machines run this driver's code (the package is shipped
        # with the job) and see the switches the step's code reads from the environment.
        import yandex_reverse

        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        kwargs["runtime_env"] = {"py_modules": [yandex_reverse], "env_vars": env}
    else:
        kwargs["num_cpus"] = num_cpus
        # Ray's documented opt-out: an embedded Ray sends no usage report (a user's value wins).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Workers started here import the package from where the driver has it.
        root = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = root if not path else os.pathsep.join((root, path))
    started = time.monotonic()
    try:
        with _stderr_to_log(), _lean_node(embedded=not address):
            # "local": a new Ray of our own, even where RAY_ADDRESS names another one.
            ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        log.exception("ray.init failed")
        text = (
            _("could not join the Ray cluster at {address}: {error}")
            if address
            else _("could not start an embedded Ray: {error}")
        )
        raise StepFailed(text.format(address=address, error=one_line(exc))) from exc
    quiet_loggers()
    _route_driver_messages()
    log.info("ray: %s in %.1f s", "joined" if address else "started", time.monotonic() - started)
    try:
        yield _cluster(ray, address)
    finally:
        stopping = time.monotonic()
        if not address:
            _stop_autoscaler_monitor(ray)
        with suppress(Exception), _stderr_to_log():
            ray.shutdown()
        log.info("ray: shut down in %.1f s", time.monotonic() - stopping)


# What an embedded Ray of one step on one machine does not start (each one more Python
# process importing Ray on the step's cores while it starts): the dashboard head
# (ray.init waits until it is up, even with include_dashboard=False, for the usage
# report and the job API), the autoscaler monitor (nothing to scale) and the log
# monitor (log_to_driver=False: nobody reads its lines). Node's own methods, Ray 2.60.
LEAN_SKIPPED = ("start_api_server", "start_monitor", "start_log_monitor")


@contextmanager
def _lean_node(*, embedded: bool) -> Iterator[None]:
    """While ``ray.init`` starts an embedded Ray: a head node without :data:`LEAN_SKIPPED`.

    ``ray.init`` makes its head with ``ray._private.node.Node(...)``; meanwhile that
    name is a subclass whose :data:`LEAN_SKIPPED` methods do nothing. Joining a cluster
    (``embedded=False``), or a Ray whose Node lacks one of them: nothing is changed.
    Measured (``ray.init`` with 2 CPUs, then 2 tasks; 3 pairs, load 4-6): ray.init
    3.96-7.92 -> 2.10-3.56 s, Ray's processes 2.8-3.6 -> 1.7-1.8 CPU-s, shutdown
    1.35-1.59 -> 0.32 s.
    """
    try:
        from ray._private import node as ray_node

        base: Any = ray_node.Node
    except (ImportError, AttributeError):
        base = None
    if not embedded or base is None or not all(hasattr(base, m) for m in LEAN_SKIPPED):
        yield
        return

    def skipped(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    lean = type("LeanNode", (base,), dict.fromkeys(LEAN_SKIPPED, skipped))
    ray_node.Node = lean
    try:
        yield
    finally:
        if ray_node.Node is lean:
            ray_node.Node = base


def _stop_autoscaler_monitor(ray: Any) -> None:
    """Kill an embedded Ray's autoscaler monitor before ``ray.shutdown``.

    ``ray.shutdown`` stops Ray's processes one after another, each with SIGTERM
    and up to 1 s to exit; the autoscaler monitor (nothing to scale on one
    machine, no state of the step's) always takes the whole second, then gets
    SIGKILL: 1.0 of the 1.3 s shutdown measured. Killed here, it is already gone
    when Ray comes to it. Ray's internals: where they differ, nothing happens.
    """
    with suppress(Exception):
        from ray._private import ray_constants
        from ray._private import worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
        infos = node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []) if node else []
        for info in infos:
            info.process.kill()
            info.process.wait(1)


def _has_token() -> bool:
    """A Ray auth token where Ray looks for one (variable, named file, ~/.ray/auth_token)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(named).is_file() if named else (Path.home() / ".ray" / "auth_token").is_file()


def _cluster(ray: Any, address: str | None) -> Cluster:
    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return Cluster(address, int(resources.get("CPU", 0)), float(resources.get("GPU", 0)), nodes)


def _log_file() -> Path | None:
    for handler in log.handlers:  # console's: set up as setup_logging asked
        name = getattr(handler, "baseFilename", None)
        if name:
            return Path(name)
    return None


@contextmanager
def _stderr_to_log() -> Iterator[None]:
    """File descriptor 2 into the step's log file (or a discarded file) meanwhile.

    Ray's C++ core writes there directly, past Python's ``sys.stderr``.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (an embedding program): leave it
        yield
        return
    target = _log_file()
    try:
        name = target if target is not None else os.devnull
        sink = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.dup2(sink, 2)
        finally:
            os.close(sink)
        yield
    finally:
        with suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_loggers() -> None:
    """Ray's Python loggers and warnings into the step's log file, not the terminal.

    Call again after importing ``ray.data``: it sets up its own handlers then.
    """
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        for handler in log.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")


def _route_driver_messages() -> None:
    """Worker deaths and task retries go to the log file, not the terminal.

    Ray's driver prints them from a listener thread through
    ``ray._private.worker.print_to_stdstream``; that one function is replaced
    (for this process) by one that logs the lines.
    """
    with suppress(ImportError, AttributeError):
        from ray._private import worker

        def to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
            for line in data.get("lines", ()):
                log.warning("ray (%s): %s", data.get("pid", "?"), line)

        worker.print_to_stdstream = to_log
