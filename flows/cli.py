"""The ``forge`` command: run a recipe on the embedded defaults, list recipes, serve the OISST replica."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from flows.local import run_stack, warm_up
from flows.server import running_server
from forge.errors import ForgeError

if TYPE_CHECKING:
    from forge.engine.targets import Target


def quiet_prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Our core logs through the standard library; this sends the forge loggers to the Prefect UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "forge")


@contextlib.contextmanager
def local_replica(
    directory: str | None,
    port: int = 0,
    delay: float | None = None,
    bytes_per_second: float | None = None,
    last_day: str | None = None,
    today: str | None = None,
) -> Iterator[str]:
    """Serve the OISST replica on loopback, optionally throttled like a busy source server, optionally
    with nothing after ``last_day`` (as if NOAA had not released it yet), as NCEI is on ``today``
    (default: the real today; a later one shows preliminary days replaced by final ones)."""
    import pandas as pd

    from forge.replicas.oisst import OisstReplica
    from forge.replicas.server import SourceServer

    replica = OisstReplica(
        Path(directory) if directory else None,
        last_day=pd.Timestamp(last_day) if last_day else None,
        today=pd.Timestamp(today) if today else None,
    )
    with SourceServer(
        generate=replica.generate, port=port, delay=delay or 0.0, bytes_per_second=bytes_per_second
    ) as srv:
        yield srv.url


def cmd_run(args: argparse.Namespace) -> int:
    from forge.recipe.loading import load_recipe
    from forge.recipe.patterns import parse_rewrites

    rewrites = dict(parse_rewrites(args.url_rewrite or []))
    if args.dry_run and not args.append:
        raise SystemExit("--dry-run goes with --append")
    if args.rebuild and args.append:
        raise SystemExit("--rebuild builds the whole store anew: it does not go with --append")
    if args.debug:  # full tracebacks, here and in the workers started from here
        os.environ["FORGE_DEBUG"] = "1"
    if not args.append:  # (an append first asks the source whether there is anything new)
        warm_up(args.dask_address)
    load_recipe(args.recipe)  # a recipe that does not load fails here, before any server or cluster starts
    with contextlib.ExitStack() as stack:
        if args.local_replica:
            url = stack.enter_context(local_replica(args.replica_dir, today=args.replica_today))
            rewrites.setdefault("https://www.ncei.noaa.gov/", url + "/")
            print(f"serving the OISST replica at {url}")
        if args.append and append_is_a_no_op(args, rewrites):
            return 0
        t0 = time.perf_counter()
        if args.workers:  # read by the local cluster and by the flow, which plans its write batches for it
            os.environ["FORGE_DASK_WORKERS"] = str(args.workers)
        runner = stack.enter_context(run_stack(args.dask_address))
        api = os.environ["PREFECT_API_URL"]
        print(f"Prefect API {api} and Dask cluster ready in {time.perf_counter() - t0:.1f}s")
        if (kept := running_server()) and kept.api_url == api:
            print(
                f"the Prefect server stays up for later runs (UI: {kept.ui_url}); `forge server stop` ends it"
            )
        from flows.recipe import DEFAULT_CACHE_ROOT, DEFAULT_TARGET_ROOT, recipe

        flow = recipe.with_options(task_runner=runner)
        state = flow(
            recipe=args.recipe,
            target_root=args.target_root or DEFAULT_TARGET_ROOT,
            cache_root=args.cache_root or DEFAULT_CACHE_ROOT,
            prune=args.prune,
            url_rewrites=rewrites or None,
            append=args.append,
            target_format=args.target_format,
            rebuild=args.rebuild,
            return_state=True,
        )
    if not state.is_completed():
        print(f"forge: error: {state.message}", file=sys.stderr)
        return 1
    summary = state.result()
    if summary.get("references"):
        print(f"\nreferences: {summary['url']} ({summary['inputs']} inputs)")
        print(f"open them with: forge.open_references({summary['url']!r})")
    elif "repr" not in summary:
        return 0
    else:
        print(summary["repr"])
        print(f"\nstore: {summary['url']}")
        print(f"open it with: {open_snippet(summary['url'])}")
    if "catalog" in summary:
        from forge.recipe.loading import find_recipe

        print(catalog_hint(summary["catalog"], find_recipe(args.recipe).recipe_id))
    return 0


def catalog_hint(catalog: str, recipe_id: str) -> str:
    """Where the run's catalog is and how to open the dataset through it (``catalog``: a path or a URL,
    whose ``//`` a Path would collapse)."""
    opener = f"forge.open_dataset({recipe_id!r}, catalog={catalog.rsplit('/', 1)[0]!r})"
    page = f"{catalog.rsplit('/', 1)[0]}/index.html"
    return (
        f"catalog: {catalog} (`forge catalog` lists it; or {opener})\n"
        f"page: {page} (`forge catalog --serve` shows it)"
    )


def open_snippet(url: str) -> str:
    """How a reader opens the store: a Zarr store, or an Icechunk repository's main branch."""
    if url.endswith(".icechunk"):
        return (
            f'xr.open_zarr(icechunk.Repository.open(icechunk.local_filesystem_storage("{url}"))'
            '.readonly_session("main").store, consolidated=False)'
            if "://" not in url
            else f"xr.open_zarr(forge.publish.icechunk.published_session({url!r}).store, consolidated=False)"
        )
    return f'xr.open_zarr("{url}")'


def append_is_a_no_op(args: argparse.Namespace, rewrites: dict[str, str]) -> bool:
    """Answer --dry-run, and "nothing new", from the store and the source alone: no Prefect, no cluster."""
    from flows.recipe import DEFAULT_CACHE_ROOT, DEFAULT_TARGET_ROOT, run_spec
    from forge.engine.stages import describe_append, plan_append
    from forge.io.secrets import MissingSecretError
    from forge.recipe.loading import load_recipe

    target_root = args.target_root or DEFAULT_TARGET_ROOT
    run = run_spec(args.recipe, target_root, DEFAULT_CACHE_ROOT, args.prune, rewrites, args.target_format)
    recipe = load_recipe(run.recipe).pruned(run.prune)
    try:
        run, new = plan_append(recipe, run)
    except MissingSecretError:  # only in a Prefect Secret block, perhaps: the flow's plan-append asks
        return False
    if not new or args.dry_run:
        print(describe_append(recipe, run, new, dry_run=True))
        return True
    return False


def cmd_server(args: argparse.Namespace) -> int:
    from flows.server import all_stacks, kept_server, running_server, stop_all_stacks, stop_kept_server

    if args.all and args.action != "start":
        stacks = all_stacks() if args.action == "status" else stop_all_stacks()
        verb = "up" if args.action == "status" else "stopped"
        for process in stacks:
            print(f"{process.kind} {verb}: pid {process.pid}, {process.detail}, PREFECT_HOME {process.home}")
        if not stacks:
            print("no Prefect server or Dask workers kept by forge for this user")
        return 1 if args.action == "status" and not stacks else 0
    if args.action == "start":
        server = kept_server().wait_ready()
        print(f"Prefect server up: API {server.api_url}, UI {server.ui_url} (pid {server.pid})")
    elif args.action == "status":
        server = running_server()
        if server is None:
            print("no Prefect server is kept for this PREFECT_HOME; `forge run` starts one")
            return 1
        print(f"Prefect server up: API {server.api_url}, UI {server.ui_url} (pid {server.pid})")
    else:
        stopped = stop_kept_server()
        print(f"stopped the Prefect server (pid {stopped.pid})" if stopped else "no Prefect server was kept")
    return 0


def _published_target(args: argparse.Namespace, target_format: str = "icechunk") -> str:
    """The Icechunk repository (or the ``target_format`` target) of a recipe under ``--target-root``
    (its current major's, if versioned): found from its id and meta.yaml, without loading the recipe."""
    from flows.recipe import DEFAULT_CACHE_ROOT, DEFAULT_TARGET_ROOT
    from forge.engine.types import RunSpec
    from forge.recipe.loading import find_recipe
    from forge.recipe.meta import version_of

    source = find_recipe(args.recipe)
    version = version_of(source.meta())
    root = args.target_root or DEFAULT_TARGET_ROOT
    return RunSpec(
        source.ref, source.recipe_id, root, DEFAULT_CACHE_ROOT, target_format=target_format, version=version
    ).target_url


def _published(args: argparse.Namespace) -> Target:
    """The recipe's published target, whatever its format (Icechunk's when there is none yet)."""
    from forge.engine.targets import KINDS, target_found
    from forge.io.storage import Storage

    for fmt in dict.fromkeys(kind.format for kind in KINDS):
        url = _published_target(args, fmt)
        parent, name = url.rstrip("/").rsplit("/", 1)
        if Storage(parent).exists(name):
            return target_found(url, fmt)
    return target_found(_published_target(args), "icechunk")


def cmd_history(args: argparse.Namespace) -> int:
    for commit in _published(args).history():
        meta = commit.metadata
        run = f" run {meta['forge:run_id']}" if meta.get("forge:run_id") else ""
        print(f"{commit.id}  {commit.written_at:%Y-%m-%d %H:%M:%S}  {commit.message}{run}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    target = _published(args)
    snapshot = target.rollback(args.to, {"forge:by": "forge rollback"})
    print(f"main of {target.url} is now {snapshot}: the content of {args.to} (`forge history` shows it)")
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    from forge.publish.icechunk import upgrade

    url = _published_target(args)
    before, after = upgrade(url, dry_run=args.dry_run)
    if before == after:
        print(f"{url} is already in Icechunk format {after}: nothing to do")
    elif args.dry_run:
        print(f"{url} can be upgraded from Icechunk format {before} to {after} (dry run: nothing changed)")
    else:
        print(f"{url} upgraded from Icechunk format {before} to {after}; Icechunk 1.x readers cannot open it")
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    from flows.recipe import DEFAULT_TARGET_ROOT
    from forge.catalog.catalog import listing

    root = args.target_root or DEFAULT_TARGET_ROOT
    if args.serve:
        return serve_catalog(root, args.port)
    lines = listing(root)
    print("\n".join(lines) if lines else f"the catalog at {root} lists no datasets")
    return 0


def serve_catalog(root: str, port: int) -> int:
    """Serve a local target root on loopback until Ctrl-C, and print the catalog page's address."""
    from forge.catalog.catalog import CATALOG, PAGE, write_page
    from forge.catalog.serve import catalog_server

    folder = Path(root)
    if "://" in root or not (folder / CATALOG).exists():
        print(f"forge catalog --serve: no catalog at {root} (serve a local target root that has a {CATALOG})")
        return 2
    if not (folder / PAGE).exists():  # a catalog written before pages were
        write_page(str(folder.resolve()))
    server = catalog_server(folder, port)
    print(
        f"catalog page: http://127.0.0.1:{server.server_address[1]}/{PAGE} (serving {folder}; Ctrl-C stops)"
    )
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from forge.check.recipe import check_recipe
    from forge.recipe.patterns import parse_rewrites

    rewrites = dict(parse_rewrites(args.url_rewrite or []))
    with contextlib.ExitStack() as stack:
        if args.local_replica:
            url = stack.enter_context(local_replica(args.replica_dir, today=args.replica_today))
            rewrites.setdefault("https://www.ncei.noaa.gov/", url + "/")
        report = check_recipe(args.recipe, args.prune, rewrites)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_port(args: argparse.Namespace) -> int:
    from forge.port.feedstock import port_path
    from forge.recipe.loading import listed_recipes

    source = Path(args.path)
    if not source.exists():
        raise SystemExit(f"forge port: no such file or folder: {source}")
    out = Path(args.out) if args.out else source.with_name(source.stem + "_forge" + source.suffix)
    ported = port_path(source, out)
    for item in ported:
        print(f"{item.source} -> {item.written}")
        print("".join(f"  {note}\n" for note in item.notes), end="")
    untranslated = sum(len(item.untranslated) for item in ported)
    if untranslated:
        print(f"forge port: {untranslated} NOT TRANSLATED (above, and atop each file): edit those by hand")
        return 1
    listed = listed_recipes(out) if out.is_dir() else None
    recipe = f"{out}/{listed[0].recipe_id}" if listed else out
    print(f"forge port: done; next `forge check {recipe}` and `forge run {recipe} --prune 2`")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from forge.recipe.loading import list_recipes

    for source in list_recipes():
        meta = source.meta()
        print(f"{source.recipe_id:30s} {meta.get('title', '')}")
    return 0


def cmd_replica(args: argparse.Namespace) -> int:
    with local_replica(
        args.dir,
        args.port,
        delay=args.delay,
        bytes_per_second=args.bytes_per_second,
        last_day=args.last_day,
        today=args.today,
    ) as url:
        print(
            f"OISST replica at {url}/ (rewrite https://www.ncei.noaa.gov/={url}/); Ctrl-C to stop", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


def cmd_deployments(args: argparse.Namespace) -> int:
    from flows.deploy import PREFECT_FILE, render, write

    if args.check:
        if PREFECT_FILE.read_text() != render():
            print(f"{PREFECT_FILE} is out of date: run `forge deployments`", file=sys.stderr)
            return 1
        print(f"{PREFECT_FILE} is up to date")
        return 0
    print(f"wrote {write()}")
    return 0


def cmd_bakery_up(args: argparse.Namespace) -> int:
    from flows.deploy import bakery_up

    print(f"work pool {bakery_up(args.bakery)} is ready")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    deploy(args.data_dir)
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    from flows.receiver import serve

    serve(args.host, args.port, args.window)
    return 0


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Where a run reads its sources: mirrors, or the local OISST replica."""
    parser.add_argument(
        "--url-rewrite", action="append", metavar="FROM=TO", help="map a URL prefix to a mirror"
    )
    parser.add_argument("--local-replica", action="store_true", help="serve NOAA OISST from a local replica")
    parser.add_argument("--replica-dir", help="where the replica keeps its files")
    parser.add_argument(
        "--replica-today", metavar="YYYY-MM-DD", help="the replica's today: what NCEI has out (default: now)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe (by id in recipes/ or by path)")
    run.add_argument("recipe")
    run.add_argument("--prune", type=int, help="keep only the first N keys of the concat dimension")
    run.add_argument(
        "--target-root", help="where the store goes: {target_root}/{recipe_id}.zarr (default ./data/target)"
    )
    run.add_argument("--cache-root", help="where inputs are cached (default ./data/cache)")
    add_source_options(run)
    run.add_argument("--append", action="store_true", help="add only the inputs beyond the store's end")
    run.add_argument("--dry-run", action="store_true", help="with --append: list what would be added")
    run.add_argument(
        "--rebuild",
        action="store_true",
        help="build the store anew beside the published one (caught up with appends published meanwhile)",
    )
    run.add_argument("--dask-address", help="an existing Dask scheduler (default: a local cluster)")
    run.add_argument("--workers", type=int, help="local cluster worker processes (default: one per core)")
    run.add_argument("--debug", action="store_true", help="show every traceback in full")
    run.add_argument(
        "--target-format",
        choices=["zarr", "icechunk", "json", "parquet"],
        help="the store's format (default: the recipe's; json and parquet: kerchunk references)",
    )
    run.set_defaults(func=cmd_run)
    srv = sub.add_parser("server", help="the Prefect server `forge run` keeps between runs")
    srv.add_argument("action", choices=["start", "status", "stop"])
    srv.add_argument("--all", action="store_true", help="every server and cluster kept for this user")
    srv.set_defaults(func=cmd_server)
    hist = sub.add_parser("history", help="an Icechunk target's published commits, newest first")
    hist.add_argument("recipe")
    hist.add_argument("--target-root", help="where the repository is (default ./data/target)")
    hist.set_defaults(func=cmd_history)
    back = sub.add_parser("rollback", help="move an Icechunk target's main back to a published commit")
    back.add_argument("recipe")
    back.add_argument("--to", required=True, metavar="SNAPSHOT", help="a commit id from `forge history`")
    back.add_argument("--target-root", help="where the repository is (default ./data/target)")
    back.set_defaults(func=cmd_rollback)
    up = sub.add_parser(
        "upgrade",
        help="move an Icechunk target written by Icechunk 1 to the current format (irreversible; "
        "stop every other reader and writer first)",
    )
    up.add_argument("recipe")
    up.add_argument("--target-root", help="where the repository is (default ./data/target)")
    up.add_argument("--dry-run", action="store_true", help="check that it can be upgraded, change nothing")
    up.set_defaults(func=cmd_upgrade)
    cat = sub.add_parser("catalog", help="what the STAC catalog of a target root holds")
    cat.add_argument("--target-root", help="the catalog's root (default ./data/target)")
    cat.add_argument("--serve", action="store_true", help="serve its page (index.html) on loopback")
    cat.add_argument("--port", type=int, default=8008, help="with --serve: the port (default 8008; 0: any)")
    cat.set_defaults(func=cmd_catalog)
    chk = sub.add_parser(
        "check", help="check a contributed recipe: meta.yaml, loading, a pruned build, CF conventions"
    )
    chk.add_argument("recipe")
    chk.add_argument("--prune", type=int, default=2, help="inputs in the test build (default 2)")
    add_source_options(chk)
    chk.set_defaults(func=cmd_check)
    port = sub.add_parser(
        "port", help="rewrite a pangeo-forge-recipes recipe (0.9 or 0.10) or feedstock folder for forge"
    )
    port.add_argument("path", help="a recipe .py file, or a feedstock folder (meta.yaml and its modules)")
    port.add_argument("-o", "--out", help="where the port goes (default: PATH_forge beside it)")
    port.set_defaults(func=cmd_port)
    ls = sub.add_parser("list", help="list the recipes in recipes/")
    ls.set_defaults(func=cmd_list)
    rep = sub.add_parser("replica", help="serve the NOAA OISST replica on loopback until interrupted")
    rep.add_argument("--port", type=int, default=8080)
    rep.add_argument("--dir", help="where the replica keeps its files")
    rep.add_argument("--delay", type=float, help="throttle: seconds before each response")
    rep.add_argument("--today", metavar="YYYY-MM-DD", help="what NCEI has out on that day (default: now)")
    rep.add_argument("--bytes-per-second", type=float, help="throttle: cap on each response's rate")
    rep.add_argument("--last-day", help="serve nothing after this day (YYYY-MM-DD), as if not released yet")
    rep.set_defaults(func=cmd_replica)
    dep = sub.add_parser("deployments", help="generate deployments/prefect.yaml from the recipes' meta.yaml")
    dep.add_argument("--check", action="store_true", help="fail if the committed file is out of date")
    dep.set_defaults(func=cmd_deployments)
    bakery = sub.add_parser("bakery", help="bakery infrastructure on the Prefect side")
    bakery_sub = bakery.add_subparsers(dest="action", required=True)
    up = bakery_sub.add_parser("up", help="create the bakery's work pool (idempotent)")
    up.add_argument("bakery", help="an id from deployments/bakeries.yaml")
    up.set_defaults(func=cmd_bakery_up)
    deploy = sub.add_parser("deploy", help="register every recipe's deployment (idempotent)")
    deploy.add_argument("--data-dir", help="the local bakery's data directory (default ./data)")
    deploy.set_defaults(func=cmd_deploy)
    rec = sub.add_parser(
        "receiver",
        help="accept S3/GCS/Azure new-object notifications and trigger the recipes' append deployments",
        description="Secrets come from the environment, never the command line: FORGE_RECEIVER_TOKEN (the "
        "X-Forge-Token shared secret), or FORGE_RECEIVER_OIDC_AUDIENCE and FORGE_RECEIVER_OIDC_EMAIL for "
        "Pub/Sub push. Events go to PREFECT_API_URL.",
    )
    rec.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    rec.add_argument("--port", type=int, default=8787)
    rec.add_argument(
        "--window", type=float, default=30.0, help="seconds to gather a burst of new files into one run"
    )
    rec.set_defaults(func=cmd_receiver)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_prefect_env()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ForgeError, ValueError) as e:  # bad arguments, or a recipe that does not load
        print(f"forge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
