"""Replay what Binder does with ``binder/``, then run every notebook and record its peak memory.

``python benchmarks/binder_replay.py [--venv DIR] [--keep]``

1. A fresh clone of this repository's HEAD (so no locally built widget bundle or other ignored
   file helps), and a fresh virtual environment that gets exactly
   ``pip install -r binder/requirements.txt`` from the clone's root (what repo2docker runs),
   plus the Jupyter pieces Binder's base image already has (``ipykernel``, ``nbclient``);
   nothing else from this checkout's environment.
2. Each notebook in ``notebooks/`` runs top to bottom in a kernel of that environment, in a
   fresh working folder; a last cell reads the kernel's peak resident memory (``VmHWM`` in
   ``/proc/self/status``: the high-water mark of the kernel process, Linux only).
3. One JSON line: ``peak_mb`` per notebook, ``max_peak_mb``, ``limit_mb`` (Binder's ~2 GB), and
   the install time. Exit status 1 when a notebook fails or goes over the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 2048
#: Binder's base image ships Jupyter itself; binder/requirements.txt adds only the project.
BASE_IMAGE = ("ipykernel>=6.29", "nbclient>=0.10")
PEAK_CELL = "print('VmHWM', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"


def make_env(repo: Path, venv: Path) -> float:
    """Create ``venv`` and install what Binder would for ``repo``; returns the seconds it took."""
    start = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # an index that cannot be reached (a machine without the internet) fails fast instead of retrying
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "0"]
    subprocess.run([*pip, *BASE_IMAGE], check=True, cwd=repo)
    subprocess.run([*pip, "-r", "binder/requirements.txt"], check=True, cwd=repo)
    return time.time() - start


def kernel_spec(venv: Path, where: Path) -> str:
    """A kernelspec that starts ``venv``'s Python; returns its name (``where`` goes on JUPYTER_PATH)."""
    name = "binder-replay"
    folder = where / "kernels" / name
    folder.mkdir(parents=True)
    argv = [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (folder / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return name


def run_notebook(path: Path, kernel: str, workdir: Path) -> float:
    """Run ``path`` in ``kernel`` inside ``workdir``; returns the kernel's peak resident memory, MB."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    NotebookClient(notebook, timeout=900, kernel_name=kernel, resources={"metadata": {"path": str(workdir)}}).execute()
    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    found = re.search(r"VmHWM (\d+)", text)
    if not found:
        raise RuntimeError(f"{path.name}: the kernel did not report its peak memory ({text!r})")
    return int(found.group(1)) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=None, help="reuse this environment instead of a fresh one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (environment, outputs)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="binder-replay-"))
    try:
        repo = scratch / "repo"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
        venv = args.venv or scratch / "venv"
        install_s = 0.0 if args.venv else make_env(repo, venv)
        os.environ["JUPYTER_PATH"] = str(scratch / "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", "")
        kernel = kernel_spec(venv, scratch / "jupyter")
        peaks, failures = {}, {}
        for notebook in sorted((repo / "notebooks").glob("*.ipynb")):
            workdir = scratch / notebook.stem
            workdir.mkdir()
            try:
                peaks[notebook.name] = round(run_notebook(notebook, kernel, workdir), 1)
            except Exception as err:  # noqa: BLE001 - reported per notebook, the replay goes on
                failures[notebook.name] = f"{type(err).__name__}: {str(err)[-400:]}"
            print(f"{notebook.name}: {peaks.get(notebook.name, 'failed')}", file=sys.stderr, flush=True)
        over = [name for name, mb in peaks.items() if mb > LIMIT_MB]
        print(
            json.dumps(
                {
                    "peak_mb": peaks,
                    "max_peak_mb": max(peaks.values(), default=None),
                    "limit_mb": LIMIT_MB,
                    "over_limit": over,
                    "failures": failures,
                    "install_s": round(install_s, 1),
                }
            )
        )
        return 1 if over or failures else 0
    finally:
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
