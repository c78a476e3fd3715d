"""Output folders: checked before the work, published atomically, replaced only where speechprune wrote them.

Every folder speechprune writes (``compress``, ``save_pruned``, ``finetune``, ``compare``) holds
:data:`MARKER`, a JSON file listing the files it wrote. ``--overwrite`` replaces a folder only if
that marker is there and nothing else is; an ``--out`` equal to, inside or holding an input model
is always refused. A folder is written as a hidden ``.NAME.partial-PID`` sibling and published
under a ``.NAME.lock`` file created with ``O_EXCL``: a rename that fails if another result
appeared meanwhile, or (``--overwrite``) an atomic exchange with the checked old folder. Junk
left by a killed process (its pid is dead) is cleaned at the next run on the same ``--out``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from speechprune._version import __version__
from speechprune.errors import SpeechPruneError, warn

MARKER = ".speechprune-output.json"
# Test seams, read from the environment at each publication step (staged, locked, moved-aside,
# swapped, published): SIGKILL this process there, or wait there until N processes have arrived.
KILL_HOOK = "SPEECHPRUNE_TEST_KILL_AT"  # STEP
BARRIER_HOOK = "SPEECHPRUNE_TEST_BARRIER"  # STEP:N:FOLDER


def _hook(step: str) -> None:
    if os.environ.get(KILL_HOOK) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    at, _, rest = os.environ.get(BARRIER_HOOK, "").partition(":")
    if at == step:
        count, _, folder = rest.partition(":")
        Path(folder, str(os.getpid())).touch()
        for _ in range(1200):
            if len(os.listdir(folder)) >= int(count):
                return
            time.sleep(0.05)


# ---------------------------------------------------------------- what a folder holds


def written_files(folder: Path) -> list[str]:
    """Every file (or link) under ``folder``, as sorted relative POSIX paths, the marker left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            rel = (base / name).relative_to(folder).as_posix()
            if rel != MARKER:
                found.append(rel)
    return sorted(found)


def write_marker(folder: Path, command: str, *, files: Sequence[str] | None = None,
                 folders: Sequence[str] = ()) -> None:
    """Record in ``folder`` what speechprune wrote there: ``files`` (default: everything in it now)
    and ``folders`` whose whole content is its own (a fine-tuning run's checkpoints)."""
    marker = dict(written_by=stamp(), command=command,
                  written=f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} {uuid.uuid4().hex[:12]}",
                  files=sorted(written_files(folder) if files is None else files), folders=sorted(folders))
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _read(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def _safe(rel: object) -> str | None:
    """A plain relative path inside the folder, or None (absolute, '..', empty: a hand-edited marker)."""
    path = PurePosixPath(str(rel))
    if not str(rel).strip("/") or path.is_absolute() or ".." in path.parts:
        return None
    return path.as_posix()


def read_marker(folder: Path) -> list[str] | None:
    """The files the marker in ``folder`` lists, or None where there is no readable marker."""
    marker = _read(folder)
    return None if marker is None else [r for f in marker["files"] if (r := _safe(f))]


def _owned_folders(folder: Path) -> list[str]:
    folders = (_read(folder) or {}).get("folders", [])
    return [r for f in (folders if isinstance(folders, list) else []) if (r := _safe(f))]


def _no_links_between(folder: Path, rel: str) -> bool:
    """True when no folder between ``folder`` and ``folder/rel`` is a link (removal stays inside)."""
    path = folder
    for part in PurePosixPath(rel).parts[:-1]:
        path = path / part
        if path.is_symlink():
            return False
    return True


def in_the_way(folder: Path) -> list[str]:
    """What in ``folder`` speechprune did not write (everything, where it holds no marker)."""
    listed = read_marker(folder)
    if listed is None:
        return sorted(p.name for p in folder.iterdir())
    owned = _owned_folders(folder)
    allowed = set(listed)
    parents = {p.as_posix() for f in listed + [o + "/x" for o in owned] for p in Path(f).parents}

    def ours(rel: str) -> bool:
        return rel in allowed or any(rel == o or rel.startswith(o + "/") for o in owned)

    foreign = [f for f in written_files(folder) if not ours(f)]
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            path = Path(root) / d
            rel = path.relative_to(folder).as_posix()
            if rel not in parents and not ours(rel) and not path.is_symlink() and not any(path.iterdir()):
                foreign.append(rel + "/")  # an empty folder speechprune did not make
    return sorted(foreign)


def _names(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def remove_written(folder: Path) -> list[str]:
    """Delete what the marker in ``folder`` lists (and the marker); return what is left there.

    The folder itself goes only when nothing else is left in it.
    """
    for rel in _owned_folders(folder):
        path = folder / rel
        if path.is_dir() and not path.is_symlink() and _no_links_between(folder, rel):
            shutil.rmtree(path)
    for rel in read_marker(folder) or []:
        path = folder / rel
        if (path.is_file() or path.is_symlink()) and _no_links_between(folder, rel):
            path.unlink()
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER).unlink()
    for root, dirs, _ in sorted(os.walk(folder, topdown=False), key=lambda w: -len(w[0])):
        for d in dirs:
            with contextlib.suppress(OSError):
                (Path(root) / d).rmdir()  # only empty folders go
    left = sorted(p.name for p in folder.iterdir())
    if not left:
        folder.rmdir()
    return left


# ---------------------------------------------------------------- checks before the work


def resolve_out(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The absolute path ``out`` names, with symbolic links in its parents resolved.

    ``out`` itself must not be a link: replacing a link's target would surprise.
    """
    given = Path(out).expanduser()
    if given.is_symlink():
        raise SpeechPruneError(f"{flag} {out} is a symbolic link (to {os.readlink(given)}); "
                               "name the folder itself, or a new folder")
    absolute = Path(os.path.abspath(given))
    if absolute.parent == absolute:
        raise SpeechPruneError(f"{flag} {out} is the root of the file system; name a new folder")
    return absolute.parent.resolve() / absolute.name


def check_writable(path: Path, flag: str = "--out") -> None:
    """Refuse a ``path`` that cannot be created: its nearest existing parent must be a writable folder."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SpeechPruneError(f"cannot create {flag} {path}: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".speechprune-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SpeechPruneError(f"cannot write {flag} {path}: {ancestor} is not writable "
                               f"({err.strerror.lower() if err.strerror else err}); choose another place") from None


def _local_inputs(inputs: Sequence[str | os.PathLike | None]) -> list[Path]:
    paths = []
    for item in inputs:
        if item is None or isinstance(item, str) and item.startswith("embedded"):
            continue
        path = Path(item).expanduser()
        if path.exists():
            paths.append(path.resolve())
    return paths


def check_output_dir(out: str | os.PathLike, *, overwrite: bool = False,
                     inputs: Sequence[str | os.PathLike | None] = (), flag: str = "--out") -> Path:
    """Check ``out`` before any work; return its resolved path. Cleans junk of dead runs beside it.

    Refused: a file; a link; the current folder; a folder equal to, inside or holding an input;
    a non-empty folder without ``overwrite``; with ``overwrite``, a folder holding anything that
    its speechprune marker does not list; a place that cannot be written.
    """
    target = check_place(out, inputs=inputs, flag=flag)
    clean_stale(target)
    if target.exists() and not target.is_dir():
        raise SpeechPruneError(f"{flag} {out} is a file, not a folder; nothing was written")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            held = _names(sorted(p.name for p in target.iterdir()))
            raise SpeechPruneError(f"{flag} {out} is not empty (it holds {held}); "
                                   "choose another folder or pass --overwrite")
        check_replaceable(target, flag)
    check_writable(target, flag)
    return target


def check_place(out: str | os.PathLike, *, inputs: Sequence[str | os.PathLike | None] = (),
                flag: str = "--out") -> Path:
    """Resolve ``out`` and refuse a link, the current folder, or a place in, at or around an input."""
    target = resolve_out(out, flag)
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise SpeechPruneError(f"{flag} {out} is the current folder or holds it; name a new folder")
    for source in _local_inputs(inputs):
        if target == source or source in target.parents:
            raise SpeechPruneError(f"{flag} {out} is {'the' if target == source else 'inside the'} input folder "
                                   f"{source}: the input would be replaced; choose a folder outside it")
        if target in source.parents:
            raise SpeechPruneError(f"{flag} {out} holds the input {source}; choose a folder outside it")
    return target


def check_replaceable(target: Path, flag: str = "--out") -> None:
    """Refuse to replace ``target`` unless it is a speechprune output holding nothing else."""
    if read_marker(target) is None:
        what = "a model" if (target / "config.json").exists() else "files"
        raise SpeechPruneError(
            f"{flag} {target} holds {what} that speechprune did not write (no {MARKER}): "
            f"{_names(sorted(p.name for p in target.iterdir()))}; --overwrite replaces only speechprune outputs: "
            "move them away or choose another folder")
    foreign = in_the_way(target)
    if foreign:
        raise SpeechPruneError(f"{flag} {target} holds files that speechprune did not write: {_names(foreign)}; "
                               "--overwrite replaces only what speechprune wrote: "
                               "move them away or choose another folder")


def output_state(target: Path) -> tuple | None:
    """What ``target`` holds now, to see at publication whether another process changed it."""
    if not target.is_dir() or not any(target.iterdir()):
        return None if not target.exists() or target.is_dir() else ("file",)
    with contextlib.suppress(OSError):
        return ((target / MARKER).read_bytes(), tuple(written_files(target)))
    return ("unreadable",)


# ---------------------------------------------------------------- junk of killed runs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> int | None:
    """The pid in a ``.NAME.partial-PID`` name or in a lock file of this host; None if unknown."""
    if path.name.endswith(".lock"):
        try:
            host, pid = path.read_text().split()[:2]
        except (OSError, ValueError):
            return None
        return int(pid) if host == socket.gethostname() and pid.isdigit() else None
    tail = path.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def clean_stale(target: Path) -> list[str]:
    """Remove what dead processes left beside ``target``; put back an old folder a kill left aside."""
    if not target.parent.is_dir():
        return []
    done = []
    prefix = f".{target.name}."
    for path in sorted(target.parent.glob(f"{glob_escape(prefix)}*")):
        kind = path.name[len(prefix):].partition("-")[0]
        if kind not in ("partial", "replaced", "lock"):
            continue
        pid = _owner(path)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            if kind == "lock":
                path.unlink()
            elif kind == "partial":
                shutil.rmtree(path)
            elif not target.exists():  # killed between moving the old folder aside and publishing
                path.rename(target)
                done.append(f"restored {target.name} from {path.name}")
                continue
            else:
                left = remove_written(path)
                if left:
                    warn(f"{path} (left by a killed run) holds files speechprune did not write: {_names(left)}; "
                         "it was kept: look at it and remove it yourself")
                    continue
        except OSError as err:
            warn(f"could not remove {path}, left by a killed run: {err}")
            continue
        done.append(f"removed {path.name}")
    if done:
        warn(f"cleaned up after an earlier run that was killed beside {target}: {'; '.join(done)}")
    return done


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


# ---------------------------------------------------------------- publication


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    lock = target.parent / f".{target.name}.lock"
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid = _owner(lock)
            if attempt == 0 and pid is not None and not _pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise SpeechPruneError(
                f"another speechprune process{f' (pid {pid})' if pid else ''} is writing {target} now; "
                f"nothing was written (if no such process runs, remove {lock})") from None
    try:
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(staging: Path, target: Path, *, overwrite: bool, expect: tuple | None, command: str,
            flag: str = "--out") -> None:
    """Mark ``staging`` as written by speechprune and move it to ``target``, exclusively.

    ``expect`` is :func:`output_state` of ``target`` when it was checked: if another process
    changed ``target`` since, nothing is replaced and the error says so.
    """
    write_marker(staging, command)
    _hook("staged")
    with _locked(target):
        _hook("locked")
        now = output_state(target)
        if now != expect:
            raise SpeechPruneError(f"{flag} {target} changed while this run worked (another process wrote it); "
                                   "it was left as it is and this result was not saved")
        if now is None:
            try:
                os.rename(staging, target)  # fails if a non-empty folder is there
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise SpeechPruneError(f"{flag} {target} appeared while this run worked; it was left as it is "
                                           "and this result was not saved") from None
                raise
            _hook("published")
            return
        if not overwrite:  # never expected: the check before the work refused it
            raise SpeechPruneError(f"{flag} {target} is not empty; pass --overwrite")
        check_replaceable(target, flag)
        old = target.parent / f".{target.name}.replaced-{os.getpid()}"
        if _exchange(staging, target):
            staging.rename(old)
        else:
            target.rename(old)
            _hook("moved-aside")
            staging.rename(target)
        _hook("swapped")
        left = remove_written(old)
        if left:
            warn(f"the old {target.name} held files speechprune did not write ({_names(left)}); "
                 f"they were kept in {old}")


@contextlib.contextmanager
def staged_output(out: str | os.PathLike, *, overwrite: bool = False, expect: tuple | None | str = "check",
                  inputs: Sequence[str | os.PathLike | None] = (), command: str = "speechprune",
                  flag: str = "--out") -> Iterator[Path]:
    """Yield a hidden staging folder; when the block ends without error, publish it at ``out``.

    ``expect`` is the :func:`output_state` recorded when ``out`` was checked before the work
    (by default it is checked now). On error the staging folder is removed and ``out`` untouched.
    """
    if expect == "check":
        target = check_output_dir(out, overwrite=overwrite, inputs=inputs, flag=flag)
        expect = output_state(target)
    else:  # checked before the work; publish() compares what is there now with what was there then
        target = resolve_out(out, flag)
        check_writable(target, flag)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        publish(staging, target, overwrite=overwrite, expect=expect, command=command, flag=flag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- single files (a JSON record, a results file, a figure)

#: The key (JSON) or PNG text chunk that marks a file as written by speechprune.
WRITTEN_BY = "written_by"
_PNG_TAG = b"tEXtSoftware\x00speechprune"


def stamp() -> str:
    """What a file speechprune writes records as its writer (``speechprune <version>``)."""
    return f"speechprune {__version__}"


def written_by_speechprune(path: Path) -> bool:
    """Whether the file at ``path`` is one speechprune wrote: a JSON object stamped ``written_by``
    (or an older record: a study's results file, an evaluation record), or a PNG whose Software
    text chunk names speechprune. A file that cannot be read is not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
            if head.startswith(b"\x89PNG"):
                return _PNG_TAG in head + handle.read(1 << 16)
            data = json.loads((head + handle.read()).decode("utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    if str(data.get(WRITTEN_BY, "")).startswith("speechprune"):
        return True
    older_study = isinstance(data.get("records"), list) and "study" in data and "n_runs" in data
    older_record = {"wer", "model", "data", "normalizer", "utterances"} <= set(data)
    older_full_scale = {"setting", "data", "records"} <= set(data)
    return older_study or older_record or older_full_scale


def check_output_file(out: str | os.PathLike, *, overwrite: bool = False,
                      inputs: Sequence[str | os.PathLike | None] = (), flag: str = "--out",
                      example: str = "result.json") -> Path:
    """Check a file that a command will write, before the work; return its resolved path.

    Refused: a link (the file itself; links in its parents are followed, then judged); a folder;
    the current folder; a path equal to an input file, inside an input folder or holding an
    input; an existing file that speechprune did not write (unless ``overwrite``); a place that
    cannot be written. Missing parent folders are created when the file is written.
    """
    given = Path(out).expanduser()
    if given.is_symlink():
        raise SpeechPruneError(f"{flag} {out} is a symbolic link (to {os.readlink(given)}); name a file, "
                               "not a link: the link's target would be replaced")
    target = resolve_out(out, flag)
    for source in _local_inputs(inputs):
        if target == source:
            raise SpeechPruneError(f"{flag} {out} is the input {source}; it would be replaced: name another file")
    target = check_place(out, inputs=inputs, flag=flag)
    if target.is_dir():
        raise SpeechPruneError(f"{flag} {out} is a folder; name a file, e.g. {Path(out) / example}")
    if target.exists() and not target.is_file():
        raise SpeechPruneError(f"{flag} {out} is not a regular file; name a file")
    if target.exists() and not overwrite and not written_by_speechprune(target):
        raise SpeechPruneError(f"{flag} {out} is a file that speechprune did not write; it was left as it is: "
                               "name another file, or pass --overwrite to replace it")
    check_writable(target, flag)
    return target


def write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a hidden temporary file beside it, flushed, then renamed
    over it, so that a reader or a crash sees the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike, payload: dict, *, indent: int = 2) -> Path:
    """Write ``payload`` (stamped with :data:`WRITTEN_BY`) as JSON to ``path``, atomically."""
    return write_file(path, json.dumps({**payload, WRITTEN_BY: stamp()}, indent=indent) + "\n")


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure to ``path`` atomically, its PNG stamped as written by speechprune."""
    buffer = io.BytesIO()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    metadata = {"Software": stamp()} if fmt == "png" else None
    fig.savefig(buffer, format=fmt, metadata=metadata, **kwargs)
    return write_file(path, buffer.getvalue())
