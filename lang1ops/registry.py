"""The model registry: immutable versions with content hashes, the champion and challenger
aliases (promotion is a compare-and-swap), an audit log, and the locking that lets several
processes share one registry. The promotion gate that decides whether a candidate may replace the
champion is in `lang1ops.promotion`.

A model artifact is a directory written by the training code: at least `artifact.json` (a JSON
object with "name" and "kind", plus whatever else training records) and any files and
subdirectories (weights, tokenizer, metrics.json, model_card.md, plots/...). The registry copies
it into an immutable, numbered version and keeps, per model name, which version is the serving
champion and which one is the challenger. Every change is appended to an audit log.

Layout on disk (a local directory, or one a cluster shares over NFS or a PVC)::

    ROOT/
      <model name>/
        versions/
          v0001/            # immutable copy of the artifact directory, plus registry.json
            artifact.json   #   (the artifact's manifest, as written by training)
            registry.json   #   added by the registry: name, version, content_hash, files, bytes,
            ...             #   registered (UTC ISO time), actor, source
          v0002/
          .tmp-<hex>/       # a copy in progress (or left behind by a killed process); never a version
        aliases.json        # {"champion": "v0003", "challenger": "v0004"}, replaced atomically
        audit.jsonl         # append-only, one JSON object per line (see below)
        .lock               # advisory lock (fcntl.flock) for every read-modify-write

Atomicity and concurrency. The registry keeps no state in the process: every call reads the
directory, so several processes and hosts can share one ROOT. It only relies on operations that
are atomic on POSIX file systems:

* a version appears complete or not at all: the artifact is copied into `versions/.tmp-<hex>`
  (same parent directory), every file and directory is fsync'ed, `registry.json` is written, and
  the temp directory is renamed to `vNNNN` with `os.rename`. A failed copy removes its temp
  directory; one left by a killed process is ignored by every reader and swept by a later
  `register` once it is a day old. Stored files are made read-only.
* `aliases.json` is written to a temp file in the same directory, fsync'ed and `os.replace`d,
  so a reader sees the old or the new aliases, never a mix.
* read-modify-write sequences (choosing the next version number, changing aliases, appending to
  the audit log) run under an exclusive `fcntl.flock` on `<model name>/.lock`. Plain reads
  (`versions`, `get`, `aliases`, `audit`, `verify`) take no lock.
* `promote(..., expected_champion=...)` is a compare-and-swap under that lock: of two promotions
  that read the same champion and race, exactly one wins; the other raises `PromotionConflict`
  (and is audited as a refusal).

On NFS, Linux implements `flock` with NFS byte-range locks (NFSv4, or NLM for NFSv3), which work
across clients. Mount the registry volume with `lookupcache=none` (or `noac`) so that a client
that has just taken the lock sees the directories and the `aliases.json` that another client has
just renamed into place. As a second guard, a version is never overwritten (renaming onto an
existing, non-empty version directory fails, and `register` then tries the next number).

Content hash. `content_hash` is the sha256 over the artifact's regular files, sorted by relative
POSIX path: for each file, the path (UTF-8), a NUL byte, the size in decimal, a NUL byte, then the
bytes. `registry.json` itself is excluded. It is computed from the stored copy at registration and
`verify` recomputes it.

Audit log. Each line of `audit.jsonl` is an object with the keys time (UTC ISO 8601), actor,
action (register | promote | set-alias | clear-alias | refuse), version, alias, previous (the
version the alias named before, or None), reason and details (a JSON object: e.g. the gate's
comparisons and table for promote and refuse). A promotion of the challenger writes a promote
line and a clear-alias line for the challenger.

Aliases. `champion` (the version serving loads) changes only through `promote`, which callers
run after `lang1ops.promotion.promotion_gate` accepted the candidate (or to roll back, with a
reason); `challenger` is set with `set_alias` and cleared with `clear_alias` or by promoting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger")
ACTIONS = ("register", "promote", "set-alias", "clear-alias", "refuse")
MANIFEST = "artifact.json"
REGISTRY_FILE = "registry.json"
VERSIONS_DIR = "versions"
ALIASES_FILE = "aliases.json"
AUDIT_FILE = "audit.jsonl"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


class PromotionConflict(RuntimeError):
    """The champion changed between the caller's read and its promotion (compare-and-swap failed)."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    manifest: dict  # the content of artifact.json
    content_hash: str  # sha256 recorded in registry.json at registration


# --------------------------------------------------------------------------- file helpers


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems do not support fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """`obj` (parsed JSON) with NaN and infinities replaced by None, so the audit log stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` to a temp file next to `path`, fsync it, os.replace it onto `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file; `default` if it does not exist. Retries a stale NFS handle."""
    for attempt in range(5):
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return default
        except OSError as exc:
            if exc.errno != errno.ESTALE or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    return default  # pragma: no cover


def _artifact_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every regular file under `root`, sorted, without registry.json."""
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise ValueError(f"{here / d}: symbolic links to directories are not supported in an artifact")
        for f in filenames:
            path = here / f
            rel = path.relative_to(root).as_posix()
            if rel == REGISTRY_FILE:
                continue
            if not path.is_file():
                raise ValueError(f"{path}: not a regular file (sockets, FIFOs and broken links are not supported)")
            out.append((rel, path))
    out.sort(key=lambda item: item[0])
    return out


def content_hash(directory: Path) -> str:
    """sha256 over the files of an artifact directory (see the module docstring), registry.json excluded."""
    digest = hashlib.sha256()
    for rel, path in _artifact_files(Path(directory)):
        digest.update(rel.encode("utf-8") + b"\0" + str(path.stat().st_size).encode("ascii") + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _version_number(version: str) -> int | None:
    match = _VERSION_RE.match(version)
    return int(match.group(1)) if match else None


def _format_version(number: int) -> str:
    return f"v{number:04d}"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return name


def _check_alias_change(alias: str, actor: str, reason: str, champion_refusal: str) -> None:
    """An alias other than the champion, changed by a named actor for a stated reason."""
    _check_text(actor, "actor")
    _check_text(reason, "reason")
    if alias == "champion":
        raise ValueError(champion_refusal)
    if alias not in ALIASES:
        raise ValueError(f"unknown alias {alias!r}: the registry keeps {', '.join(ALIASES)}")


def _check_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


# --------------------------------------------------------------------------- the registry


class Registry:
    """Versions, aliases and the audit log of models under `root` (see the module docstring).

    `lock_timeout`: seconds to wait for a model's lock before raising TimeoutError (None: wait
    forever).
    """

    def __init__(self, root: Path, *, lock_timeout: float | None = 120.0):
        self.root = Path(root)
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ----- paths and locking

    def _model_dir(self, name: str) -> Path:
        return self.root / _check_name(name)

    def _versions_dir(self, name: str) -> Path:
        return self._model_dir(name) / VERSIONS_DIR

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        model_dir = self._model_dir(name)
        model_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(model_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o664)
        try:
            if self.lock_timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + self.lock_timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TimeoutError(
                                f"could not lock {model_dir / LOCK_FILE} within {self.lock_timeout}s"
                            ) from None
                        time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ----- audit

    def _audit_line(self, action: str, actor: str, version: str | None, alias: str | None,
                    previous: str | None, reason: str, details: dict | None) -> bytes:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        if details is not None and not isinstance(details, dict):
            raise TypeError("details must be a dict or None")
        # Serialised (and NaN made None) before anything changes, so bad details fail early.
        details = _finite(json.loads(json.dumps(details or {}, default=_json_default)))
        record = {
            "time": _utc_now(),
            "actor": actor,
            "action": action,
            "version": version,
            "alias": alias,
            "previous": previous,
            "reason": reason,
            "details": details,
        }
        return (json.dumps(record, sort_keys=False, default=_json_default, allow_nan=False) + "\n").encode()

    def _append_audit(self, name: str, *lines: bytes) -> None:
        """Append lines to audit.jsonl (caller holds the lock); repairs a line torn by a crash."""
        path = self._model_dir(name) / AUDIT_FILE
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664)
        try:
            data = b"".join(lines)
            size = os.fstat(fd).st_size
            if size:
                with open(path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        data = b"\n" + data
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def audit(self, name: str) -> list[dict]:
        """The audit records of `name`, oldest first ([] for an unknown model)."""
        path = self._model_dir(name) / AUDIT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        records = []
        lines = raw.split(b"\n")
        # The last element is b"" when the file ends with a newline; otherwise it is a line
        # being written right now (or torn by a crash), which is not a record yet.
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not valid JSON (torn write?); skipped", path, number)
        return records

    # ----- reading

    def names(self) -> list[str]:
        """Model names that have at least one version, sorted."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and _NAME_RE.match(entry.name) and self._version_ids(entry.name):
                out.append(entry.name)
        return out

    def _unknown_model(self, name: str) -> KeyError:
        known = ", ".join(self.names()) or "none"
        return KeyError(f"no model named {name!r} in the registry at {self.root} (models: {known})")

    def _version_ids(self, name: str) -> list[str]:
        directory = self._versions_dir(name)
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        ids = [e for e in entries if _version_number(e) is not None and (directory / e).is_dir()]
        return sorted(ids, key=lambda v: _version_number(v) or 0)

    def _load(self, name: str, version: str) -> ModelVersion:
        path = self._versions_dir(name) / version
        meta = _read_json(path / REGISTRY_FILE)
        manifest = _read_json(path / MANIFEST)
        if meta is None or manifest is None:
            raise KeyError(f"model {name!r} has no version {version!r} (or it is damaged: missing {REGISTRY_FILE})")
        return ModelVersion(name=name, version=version, path=path, manifest=manifest,
                            content_hash=meta["content_hash"])

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of `name`, oldest first ([] for an unknown model)."""
        return [self._load(name, v) for v in self._version_ids(name)]

    def aliases(self, name: str) -> dict[str, str]:
        """{"champion": "v0003", "challenger": "v0004"}, without the aliases that are not set."""
        data = _read_json(self._model_dir(name) / ALIASES_FILE, default={})
        return {k: v for k, v in data.items() if v}

    def get(self, name: str, ref: str) -> ModelVersion:
        """The version `ref` of `name`: "v0003", "champion", "challenger" or "latest"."""
        ids = self._version_ids(name)
        if not ids:
            raise self._unknown_model(name)
        if ref == "latest":
            version = ids[-1]
        elif ref in ALIASES:
            aliases = self.aliases(name)
            if ref not in aliases:
                raise KeyError(f"model {name!r} has no {ref} (aliases: {aliases or 'none'})")
            version = aliases[ref]
        elif _version_number(ref) is not None:
            version = ref
            if version not in ids:
                raise KeyError(f"model {name!r} has no version {ref!r} (versions: {', '.join(ids)})")
        else:
            raise KeyError(f"unknown ref {ref!r} for model {name!r}: expected a version like 'v0003', "
                           f"'champion', 'challenger' or 'latest'")
        return self._load(name, version)

    def verify(self, name: str, ref: str) -> bool:
        """Whether the stored files of a version still hash to the content_hash recorded at registration."""
        mv = self.get(name, ref)
        try:
            return content_hash(mv.path) == mv.content_hash
        except (OSError, ValueError):
            return False

    # ----- registering

    def register(self, artifact_dir: Path, actor: str, reason: str = "") -> ModelVersion:
        """Copy `artifact_dir` into the next version of the model its artifact.json names."""
        _check_text(actor, "actor")
        artifact_dir = Path(artifact_dir)
        manifest_path = artifact_dir / MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"{artifact_dir} is not a model artifact: it has no {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path} is not valid JSON: {exc}") from exc
        if not isinstance(manifest, dict):
            raise ValueError(f"{manifest_path} must hold a JSON object")
        for key in ("name", "kind"):
            if not manifest.get(key):
                raise ValueError(f"{manifest_path} has no {key!r}")
        name = _check_name(manifest["name"])
        if (artifact_dir / REGISTRY_FILE).exists():
            raise ValueError(f"{artifact_dir} already has a {REGISTRY_FILE}, a name the registry reserves "
                             f"(is it a registered version rather than a training output?)")

        versions_dir = self._versions_dir(name)
        versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = versions_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            # The copy runs outside the lock (it can be large): only the rename needs it.
            files, size = self._copy_tree(artifact_dir, tmp)
            digest = content_hash(tmp)
            with self._locked(name):
                self._sweep_stale(versions_dir)
                numbers = [_version_number(v) or 0 for v in self._version_ids(name)]
                number = max(numbers, default=0) + 1
                meta = {
                    "name": name,
                    "content_hash": digest,
                    "files": files,
                    "bytes": size,
                    "registered": _utc_now(),
                    "actor": actor,
                    "source": str(artifact_dir.resolve()),
                }
                while True:
                    version = _format_version(number)
                    meta["version"] = version
                    _write_json_atomic(tmp / REGISTRY_FILE, meta)
                    os.chmod(tmp / REGISTRY_FILE, _READ_ONLY)
                    _fsync_dir(tmp)
                    try:
                        os.rename(tmp, versions_dir / version)
                        break
                    except OSError as exc:
                        # Only on a stale directory listing (NFS): never overwrite a version.
                        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                            raise
                        number += 1
                _fsync_dir(versions_dir)
                line = self._audit_line("register", actor, version, None, None, reason,
                                        {"content_hash": digest, "kind": manifest["kind"], "files": files,
                                         "bytes": size, "source": str(artifact_dir.resolve())})
                self._append_audit(name, line)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._load(name, version)  # the stored manifest, not the source's (which may change)

    @staticmethod
    def _copy_tree(src: Path, dst: Path) -> tuple[int, int]:
        """Copy the artifact into `dst` (created), fsync files and directories, make files read-only.

        Returns (number of files, bytes). Empty directories of the artifact are kept too (they are
        not part of the content hash)."""
        files = _artifact_files(src)  # validates the tree before anything is created
        dst.mkdir()
        for dirpath, dirnames, _ in os.walk(src):
            for d in dirnames:
                (dst / Path(dirpath).relative_to(src) / d).mkdir(parents=True, exist_ok=True)
        size = 0
        for rel, path in files:
            target = dst / rel
            shutil.copy2(path, target)
            _fsync_file(target)
            os.chmod(target, _READ_ONLY)
            size += target.stat().st_size
        for dirpath, _, _ in os.walk(dst, topdown=False):
            _fsync_dir(Path(dirpath))
        return len(files), size

    @staticmethod
    def _sweep_stale(versions_dir: Path) -> None:
        """Remove temp copies left by killed processes (older than a day; caller holds the lock)."""
        now = time.time()
        for entry in versions_dir.iterdir():
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > STALE_TMP_SECONDS:
                        log.info("removing stale temp copy %s", entry)
                        shutil.rmtree(entry, ignore_errors=True)

    # ----- aliases

    def _require_version(self, name: str, version: str) -> None:
        if _version_number(version) is None:
            raise KeyError(f"{version!r} is not a version id like 'v0003' (resolve aliases with get() first)")
        ids = self._version_ids(name)
        if not ids:
            raise self._unknown_model(name)
        if version not in ids:
            raise KeyError(f"model {name!r} has no version {version!r} (versions: {', '.join(ids)})")

    def _write_aliases(self, name: str, aliases: dict[str, str]) -> None:
        _write_json_atomic(self._model_dir(name) / ALIASES_FILE, {k: v for k, v in sorted(aliases.items()) if v})

    def set_alias(self, name: str, alias: str, version: str, actor: str, reason: str,
                  details: dict | None = None) -> None:
        """Point `alias` at `version`. The champion only changes through `promote`."""
        _check_alias_change(alias, actor, reason, "the champion changes only through promote() (after the promotion gate)")
        self._require_version(name, version)
        with self._locked(name):
            aliases = self.aliases(name)
            if aliases.get("champion") == version:
                raise ValueError(f"{name} {version} is the champion; it cannot also be the {alias}")
            previous = aliases.get(alias)
            line = self._audit_line("set-alias", actor, version, alias, previous, reason, details)
            aliases[alias] = version
            self._write_aliases(name, aliases)
            self._append_audit(name, line)

    def clear_alias(self, name: str, alias: str, actor: str, reason: str,
                    details: dict | None = None) -> str | None:
        """Remove `alias` (the challenger); returns the version it named, None if it was not set."""
        _check_alias_change(alias, actor, reason, "the champion cannot be cleared; promote another version instead")
        if not self._version_ids(name):
            raise self._unknown_model(name)
        with self._locked(name):
            aliases = self.aliases(name)
            previous = aliases.pop(alias, None)
            if previous is None:
                return None
            line = self._audit_line("clear-alias", actor, None, alias, previous, reason, details)
            self._write_aliases(name, aliases)
            self._append_audit(name, line)
            return previous

    def promote(self, name: str, version: str, actor: str, reason: str, details: dict | None = None,
                expected_champion: str | None = None) -> str | None:
        """Make `version` the champion; returns the previous champion (None for the first one).

        If `version` was the challenger, the challenger alias is cleared. `expected_champion` makes
        this a compare-and-swap: when given and the current champion is a different version, nothing
        changes, a refusal is audited and PromotionConflict is raised. Pass "" to expect that there is
        no champion yet.
        """
        _check_text(actor, "actor")
        _check_text(reason, "reason")
        self._require_version(name, version)
        with self._locked(name):
            aliases = self.aliases(name)
            current = aliases.get("champion")
            if expected_champion is not None and (current or "") != expected_champion:
                conflict = {"expected_champion": expected_champion or None, "current_champion": current}
                line = self._audit_line(
                    "refuse", actor, version, "champion", current,
                    f"promotion conflict: champion is {current or 'unset'}, expected "
                    f"{expected_champion or 'unset'} ({reason})",
                    {**(details or {}), "conflict": conflict})
                self._append_audit(name, line)
                raise PromotionConflict(
                    f"{name}: cannot promote {version}: the champion is {current or 'unset'}, "
                    f"not {expected_champion or 'unset'} as expected (another promotion won the race; "
                    f"re-run the gate against the new champion)")
            if current == version:
                raise ValueError(f"{name} {version} is already the champion")
            lines = [self._audit_line("promote", actor, version, "champion", current, reason, details)]
            aliases["champion"] = version
            if aliases.get("challenger") == version:
                del aliases["challenger"]
                lines.append(self._audit_line("clear-alias", actor, None, "challenger", version,
                                              f"{version} promoted to champion", None))
            self._write_aliases(name, aliases)
            self._append_audit(name, *lines)
            return current

    def refuse(self, name: str, version: str, actor: str, reason: str, details: dict | None = None) -> None:
        """Audit that `version` was not promoted (e.g. the gate refused it); aliases do not change."""
        _check_text(actor, "actor")
        _check_text(reason, "reason")
        self._require_version(name, version)
        with self._locked(name):
            current = self.aliases(name).get("champion")
            self._append_audit(name, self._audit_line("refuse", actor, version, "champion", current, reason,
                                                      details))
